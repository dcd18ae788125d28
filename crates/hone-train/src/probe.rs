//! A linear head on frozen features fitted as a tuned linear probe: L2-regularised
//! logistic regression solved to convergence with L-BFGS ([`crate::lbfgs`]), its
//! regularisation chosen by cross-validation on the training split, as scikit-learn's
//! `LogisticRegressionCV` does — instead of a fixed number of AdamW epochs at a fixed
//! rate, which leaves the head wherever the last epoch left it.
//!
//! The problem, per head: minimise `Σᵢ wᵢ ℓᵢ / Σᵢ wᵢ + ‖W‖² / (2 C Σᵢ wᵢ)` (scikit-learn's
//! `C Σᵢ wᵢ ℓᵢ + ½‖W‖²` divided by `C Σᵢ wᵢ`, so `C` means what it means there; the
//! bias is not penalised), where `ℓᵢ` is the softmax cross-entropy of a single-label
//! head (multinomial) or the sum of the binary cross-entropies of a multi-label head's
//! outputs (one binary problem per output, solved together at one `C`), and `wᵢ` the
//! `balanced` class weight of the row's label (multi-label: `pos_weight` per output)
//! when the job asks for class weights, else 1. A multi-task model's heads are fitted
//! one task at a time on the rows that label that task (the joint loss of separate
//! heads on shared frozen features is their sum, so its optimum is each task's).
//!
//! The penalty is on the weights of the raw features, as scikit-learn's (without a
//! scaler) is: standardising them first, tried on Fashion-MNIST with Lite0, gave a
//! worse held-out log-loss (0.68 against 0.41) by amplifying the many near-constant
//! pooled channels. They are only centred while solving (which, with an unpenalised
//! bias, leaves the optimum where it is and conditions the problem), and the bias is
//! folded back so the head reads the features the network gives it. `C` is picked from
//! [`c_grid`] (10 values log-spaced over 1e-4..1e4, scikit-learn's `Cs=10`) by the
//! mean held-out accuracy over [`FOLDS`] stratified folds (fewer when the smallest
//! class has fewer examples; none below 2, when `C` = 1, scikit-learn's default),
//! the path warm-started from the previous `C` as scikit-learn does. Accuracy
//! (weighted as the rows are; of a multi-label head, the share of outputs right) is
//! scikit-learn's default score, so that the fit is the probe users compare with. On
//! the quality benchmark's text rows the two scores are within each other's fold noise
//! (accuracy about a point ahead on average at 64 a class, with a wider spread at 16;
//! BENCHMARKS.md, "Transfer quality: epochs sized for the data"). Accuracy does not see
//! how sure a model is, and on a few examples several `C` tie; scikit-learn's first
//! maximum then takes the strongest regularisation, whose probabilities sit near the
//! class frequencies. Here a tie goes to the lower held-out log-loss, so that the
//! probabilities `predict` reports stay calibrated. Past [`CV_EXAMPLES`] rows the
//! folds are drawn from a seeded sample of that many; the final fit uses every
//! training row. Label smoothing does not apply to this fit.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{Device, Kind, Tensor};

use crate::error::TrainError;
use crate::lbfgs::{minimize, LbfgsOptions};

/// Folds of the cross-validation.
pub const FOLDS: usize = 5;
/// The most training rows the cross-validation fits on (the final fit takes all).
pub const CV_EXAMPLES: usize = 2048;

/// Solver settings of the cross-validation's fits (scikit-learn's `max_iter=100`)
/// and of the final one, which is solved further.
const CV_SOLVER: LbfgsOptions = LbfgsOptions {
    history: 10,
    max_iterations: 100,
    tolerance: 1e-5,
};
const FINAL_SOLVER: LbfgsOptions = LbfgsOptions {
    history: 10,
    max_iterations: 1000,
    tolerance: 1e-6,
};

/// The regularisation strengths tried: 10 values log-spaced over `1e-4..=1e4`.
pub fn c_grid() -> Vec<f64> {
    (0..10)
        .map(|i| 10f64.powf(-4.0 + 8.0 * i as f64 / 9.0))
        .collect()
}

/// How a head's outputs turn into probabilities.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// One softmax over the outputs: a single-label head.
    Softmax,
    /// A sigmoid per output: a multi-label head.
    Sigmoid,
}

/// One head's fitting problem on centred features.
pub struct Problem {
    link: Link,
    /// `[n, d]` f64, centred.
    x: Tensor,
    /// `[n, k]` f64: one-hot labels (softmax) or 0/1 per output (sigmoid).
    y: Tensor,
    /// `[n]` f64: each row's weight.
    row_weight: Tensor,
    /// `[k]` f64: sigmoid outputs' weight of a positive (`pos_weight`).
    pos_weight: Option<Tensor>,
    /// Each row's stratum for the folds (its label; 0 for every multi-label row).
    strata: Vec<usize>,
    /// `[1, d]`: what centring took off.
    mean: Tensor,
}

/// A fitted head, on the raw features: `logits = features · weightᵀ + bias`.
#[derive(Debug)]
pub struct FittedHead {
    /// `[k, d]` f32, as PyTorch's `nn.Linear` lays it out.
    pub weight: Tensor,
    /// `[k]` f32.
    pub bias: Tensor,
    /// The regularisation chosen.
    pub c: f64,
    /// The folds `C` was chosen by (0: none, `C` = 1).
    pub folds: usize,
    /// Held-out log-loss of each `C` of [`c_grid`] (empty without folds).
    pub cv_losses: Vec<f64>,
    /// Held-out accuracy of each `C` of [`c_grid`], which chose it (empty without
    /// folds).
    pub cv_accuracies: Vec<f64>,
    /// L-BFGS iterations of the final fit, and whether it converged.
    pub iterations: usize,
    pub converged: bool,
}

fn double(t: &Tensor) -> Result<Tensor, TrainError> {
    Ok(t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?)
}

fn index(rows: &[usize]) -> Result<Tensor, TrainError> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Ok(Tensor::f_from_slice(&rows)?)
}

/// `log(1 + exp(z))` without overflow.
fn softplus(z: &Tensor) -> Result<Tensor, TrainError> {
    Ok(z.f_relu()?
        .f_add(&z.f_abs()?.f_neg()?.f_exp()?.f_log1p()?)?)
}

impl Problem {
    /// A single-label head: `features` `[n, d]`, `labels` in `0..classes`; with
    /// `balanced`, rows weigh `n / (classes · count of their label)`.
    pub fn softmax(
        features: &Tensor,
        labels: &[usize],
        classes: usize,
        balanced: bool,
    ) -> Result<Self, TrainError> {
        let n = labels.len();
        if let Some(&bad) = labels.iter().find(|&&l| l >= classes) {
            return Err(TrainError::InvalidInput(format!(
                "label {bad} is not one of the head's {classes}"
            )));
        }
        let mut counts = vec![0usize; classes];
        for &l in labels {
            counts[l] += 1;
        }
        let weights: Vec<f64> = labels
            .iter()
            .map(|&l| {
                if balanced {
                    n as f64 / (classes as f64 * counts[l] as f64)
                } else {
                    1.0
                }
            })
            .collect();
        let mut onehot = vec![0f64; n * classes];
        for (i, &l) in labels.iter().enumerate() {
            onehot[i * classes + l] = 1.0;
        }
        let y = Tensor::f_from_slice(&onehot)?.f_view([n as i64, classes as i64])?;
        Self::new(Link::Softmax, features, y, weights, None, labels.to_vec())
    }

    /// A multi-label head: `features` `[n, d]`, each row's set of outputs in
    /// `0..outputs`; with `balanced`, a positive of output `j` weighs
    /// `negatives / positives` of `j`.
    pub fn sigmoid(
        features: &Tensor,
        sets: &[Vec<usize>],
        outputs: usize,
        balanced: bool,
    ) -> Result<Self, TrainError> {
        let n = sets.len();
        let mut flat = vec![0f64; n * outputs];
        let mut positives = vec![0usize; outputs];
        for (i, set) in sets.iter().enumerate() {
            for &l in set {
                if l >= outputs {
                    return Err(TrainError::InvalidInput(format!(
                        "label {l} is not one of the head's {outputs}"
                    )));
                }
                flat[i * outputs + l] = 1.0;
                positives[l] += 1;
            }
        }
        let pos_weight = balanced
            .then(|| {
                let w: Vec<f64> = positives
                    .iter()
                    .map(|&p| {
                        if p == 0 {
                            1.0
                        } else {
                            (n - p) as f64 / p as f64
                        }
                    })
                    .collect();
                Tensor::f_from_slice(&w)
            })
            .transpose()?;
        let y = Tensor::f_from_slice(&flat)?.f_view([n as i64, outputs as i64])?;
        Self::new(
            Link::Sigmoid,
            features,
            y,
            vec![1.0; n],
            pos_weight,
            vec![0; n],
        )
    }

    fn new(
        link: Link,
        features: &Tensor,
        y: Tensor,
        row_weight: Vec<f64>,
        pos_weight: Option<Tensor>,
        strata: Vec<usize>,
    ) -> Result<Self, TrainError> {
        let raw = double(features)?;
        let (n, _) = raw.size2()?;
        if n as usize != row_weight.len() || n == 0 {
            return Err(TrainError::InvalidInput(format!(
                "{n} feature rows for {} labelled rows",
                row_weight.len()
            )));
        }
        let mean = raw.f_mean_dim([0i64].as_slice(), true, Kind::Double)?;
        let x = raw.f_sub(&mean)?;
        Ok(Self {
            link,
            x,
            y,
            row_weight: Tensor::f_from_slice(&row_weight)?,
            pos_weight,
            strata,
            mean,
        })
    }

    fn rows(&self) -> usize {
        self.strata.len()
    }

    fn dims(&self) -> Result<(i64, i64), TrainError> {
        Ok((self.x.size2()?.1, self.y.size2()?.1))
    }

    /// The rows `rows` of this problem (centred as the whole was).
    fn subset(&self, rows: &[usize]) -> Result<Self, TrainError> {
        let idx = index(rows)?;
        Ok(Self {
            link: self.link,
            x: self.x.f_index_select(0, &idx)?,
            y: self.y.f_index_select(0, &idx)?,
            row_weight: self.row_weight.f_index_select(0, &idx)?,
            pos_weight: self.pos_weight.as_ref().map(Tensor::shallow_clone),
            strata: rows.iter().map(|&r| self.strata[r]).collect(),
            mean: self.mean.shallow_clone(),
        })
    }

    /// `(W [d, k], b [k])` of the flat parameters.
    fn unpack(&self, theta: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let (d, k) = self.dims()?;
        Ok((
            theta.f_narrow(0, 0, d * k)?.f_view([d, k])?,
            theta.f_narrow(0, d * k, k)?,
        ))
    }

    /// Each row's loss `[n]` and its derivative by the logits `[n, k]`.
    fn losses(&self, theta: &Tensor) -> Result<(Tensor, Tensor), TrainError> {
        let (w, b) = self.unpack(theta)?;
        let z = self.x.f_matmul(&w)?.f_add(&b)?;
        Ok(match self.link {
            Link::Softmax => {
                let lse = z.f_logsumexp([1i64].as_slice(), false)?;
                let picked =
                    z.f_mul(&self.y)?
                        .f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?;
                let probs = z.f_softmax(1, Kind::Double)?;
                (lse.f_sub(&picked)?, probs.f_sub(&self.y)?)
            }
            Link::Sigmoid => {
                // ℓ = p·y·softplus(−z) + (1 − y)·softplus(z), p the positive's weight.
                let py = match &self.pos_weight {
                    Some(p) => self.y.f_mul(p)?,
                    None => self.y.shallow_clone(),
                };
                let negatives = self.y.f_neg()?.f_add_scalar(1.0)?;
                let loss = py
                    .f_mul(&softplus(&z.f_neg()?)?)?
                    .f_add(&negatives.f_mul(&softplus(&z)?)?)?;
                let sig = z.f_sigmoid()?;
                let dz = sig.f_mul(&py.f_add(&negatives)?)?.f_sub(&py)?;
                (
                    loss.f_sum_dim_intlist([1i64].as_slice(), false, Kind::Double)?,
                    dz,
                )
            }
        })
    }

    /// The mean of a value per row `[n]`, weighted as the rows are.
    fn weighted_mean(&self, per_row: &Tensor) -> Result<f64, TrainError> {
        let total = self.row_weight.f_sum(Kind::Double)?.f_double_value(&[])?;
        Ok(per_row
            .f_mul(&self.row_weight)?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?
            / total)
    }

    /// The weighted mean loss (no penalty): what the folds score.
    fn data_loss(&self, theta: &Tensor) -> Result<f64, TrainError> {
        self.weighted_mean(&self.losses(theta)?.0)
    }

    /// The weighted share of rows predicted right: a single-label row whose largest
    /// logit is its label's; of a multi-label row, the share of outputs on the right
    /// side of 0.
    fn data_accuracy(&self, theta: &Tensor) -> Result<f64, TrainError> {
        let (w, b) = self.unpack(theta)?;
        let z = self.x.f_matmul(&w)?.f_add(&b)?;
        let right = match self.link {
            Link::Softmax => z
                .f_argmax(1, false)?
                .f_eq_tensor(&self.y.f_argmax(1, false)?)?
                .f_to_kind(Kind::Double)?,
            Link::Sigmoid => z
                .f_gt(0.0)?
                .f_eq_tensor(&self.y.f_gt(0.5)?)?
                .f_to_kind(Kind::Double)?
                .f_mean_dim([1i64].as_slice(), false, Kind::Double)?,
        };
        self.weighted_mean(&right)
    }

    /// The objective at `theta` for regularisation `c`, and its gradient.
    pub fn objective(&self, theta: &Tensor, c: f64) -> Result<(f64, Tensor), TrainError> {
        let (w, _) = self.unpack(theta)?;
        let (loss, dz) = self.losses(theta)?;
        let total = self.row_weight.f_sum(Kind::Double)?.f_double_value(&[])?;
        let penalty = 1.0 / (c * total);
        let data = loss
            .f_mul(&self.row_weight)?
            .f_sum(Kind::Double)?
            .f_double_value(&[])?;
        let value =
            data / total + 0.5 * penalty * w.f_square()?.f_sum(Kind::Double)?.f_double_value(&[])?;
        let weighted = dz.f_mul(&self.row_weight.f_unsqueeze(1)?)?;
        let grad_w = self
            .x
            .f_tr()?
            .f_matmul(&weighted)?
            .f_div_scalar(total)?
            .f_add(&w.f_mul_scalar(penalty)?)?;
        let grad_b = weighted
            .f_sum_dim_intlist([0i64].as_slice(), false, Kind::Double)?
            .f_div_scalar(total)?;
        Ok((
            value,
            Tensor::f_cat(&[grad_w.f_flatten(0, -1)?, grad_b], 0)?,
        ))
    }

    fn zeros(&self) -> Result<Tensor, TrainError> {
        let (d, k) = self.dims()?;
        Ok(Tensor::f_zeros([(d + 1) * k], (Kind::Double, Device::Cpu))?)
    }

    /// Minimises the objective at `c` from `start`.
    pub fn solve(
        &self,
        c: f64,
        start: Tensor,
        options: LbfgsOptions,
    ) -> Result<crate::lbfgs::Solution, TrainError> {
        minimize(&mut |theta| self.objective(theta, c), start, options)
    }

    /// How many stratified folds the rows allow: [`FOLDS`], or the smallest stratum's
    /// size when that is less; 0 when it is below 2.
    fn folds(&self) -> usize {
        let mut counts = std::collections::BTreeMap::new();
        for &s in &self.strata {
            *counts.entry(s).or_insert(0usize) += 1;
        }
        let smallest = counts.values().copied().min().unwrap_or(0);
        let folds = FOLDS.min(smallest);
        if folds < 2 {
            0
        } else {
            folds
        }
    }

    /// The fold of each row: every stratum's rows, in a seeded shuffle, dealt round
    /// robin.
    fn fold_of(&self, folds: usize, seed: u64) -> Vec<usize> {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut order: Vec<usize> = (0..self.rows()).collect();
        order.shuffle(&mut rng);
        order.sort_by_key(|&r| self.strata[r]);
        let mut fold = vec![0; self.rows()];
        for (dealt, r) in order.into_iter().enumerate() {
            fold[r] = dealt % folds;
        }
        fold
    }

    /// Mean held-out log-loss and accuracy of each `C` of `grid` over the folds (rows
    /// of a seeded sample of at most [`CV_EXAMPLES`]).
    fn cross_validate(
        &self,
        grid: &[f64],
        folds: usize,
        seed: u64,
    ) -> Result<(Vec<f64>, Vec<f64>), TrainError> {
        let sample = if self.rows() > CV_EXAMPLES {
            let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
            let mut rows: Vec<usize> = (0..self.rows()).collect();
            rows.shuffle(&mut rng);
            rows.truncate(CV_EXAMPLES);
            rows.sort_unstable();
            self.subset(&rows)?
        } else {
            self.subset(&(0..self.rows()).collect::<Vec<_>>())?
        };
        let folds = folds.min(sample.folds().max(2));
        let fold_of = sample.fold_of(folds, seed);
        let mut losses = vec![0.0; grid.len()];
        let mut accuracies = vec![0.0; grid.len()];
        for f in 0..folds {
            let (fit, held): (Vec<usize>, Vec<usize>) =
                (0..sample.rows()).partition(|&r| fold_of[r] != f);
            let (fit, held) = (sample.subset(&fit)?, sample.subset(&held)?);
            let mut theta = fit.zeros()?;
            for (i, &c) in grid.iter().enumerate() {
                theta = fit.solve(c, theta, CV_SOLVER)?.x;
                losses[i] += held.data_loss(&theta)? / folds as f64;
                accuracies[i] += held.data_accuracy(&theta)? / folds as f64;
            }
        }
        Ok((losses, accuracies))
    }

    /// Chooses `C` by cross-validation and fits the head on every row at it.
    pub fn fit(&self, seed: u64) -> Result<FittedHead, TrainError> {
        let grid = c_grid();
        let folds = self.folds();
        let (c, cv_losses, cv_accuracies) = if folds == 0 {
            (1.0, Vec::new(), Vec::new())
        } else {
            let (losses, accuracies) = self.cross_validate(&grid, folds, seed)?;
            let mut best = 0;
            for (i, (&a, &l)) in accuracies.iter().zip(&losses).enumerate() {
                let tie = (a - accuracies[best]).abs() <= 1e-9;
                if a > accuracies[best] + 1e-9 || (tie && l < losses[best]) {
                    best = i;
                }
            }
            (grid[best], losses, accuracies)
        };
        let solution = self.solve(c, self.zeros()?, FINAL_SOLVER)?;
        let (w, b) = self.unpack(&solution.x)?;
        // Back to the features as they come: z = (x − μ)·W + b = x·W + (b − μ·W).
        let raw_b = b.f_sub(&self.mean.f_matmul(&w)?.f_view([-1])?)?;
        Ok(FittedHead {
            weight: w.f_tr()?.f_contiguous()?.f_to_kind(Kind::Float)?,
            bias: raw_b.f_to_kind(Kind::Float)?,
            c,
            folds,
            cv_losses,
            cv_accuracies,
            iterations: solution.iterations,
            converged: solution.converged,
        })
    }
}

#[cfg(test)]
mod tests {
    use rand::Rng;

    use super::*;

    /// `n` rows of `d` features: class `c` of `classes` centred at `separation · e_c`
    /// (the first `classes` features) with unit Gaussian noise; a share `flip` of the
    /// labels replaced by a uniformly drawn one. Seeded, no libtorch generator.
    fn blobs(
        n: usize,
        d: usize,
        classes: usize,
        separation: f64,
        flip: f64,
        seed: u64,
    ) -> (Tensor, Vec<usize>) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut gauss = move || {
            let (u, v): (f64, f64) = (rng.gen_range(1e-12..1.0), rng.gen());
            (
                (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos(),
                u,
                v,
            )
        };
        let mut x = Vec::with_capacity(n * d);
        let mut labels = Vec::with_capacity(n);
        for i in 0..n {
            let class = i % classes;
            for j in 0..d {
                let centre = if j == class { separation } else { 0.0 };
                x.push(centre + gauss().0);
            }
            let (_, u, _) = gauss();
            labels.push(if u < flip {
                (class + 1 + (u * 1e6) as usize % (classes - 1)) % classes
            } else {
                class
            });
        }
        let x = Tensor::f_from_slice(&x)
            .and_then(|t| t.f_view([n as i64, d as i64]))
            .expect("features");
        (x, labels)
    }

    fn raw_logits(features: &Tensor, fit: &FittedHead) -> Tensor {
        features
            .to_kind(Kind::Float)
            .linear(&fit.weight, Some(&fit.bias))
    }

    #[test]
    fn constant_features_give_the_class_frequencies() {
        // Nothing to learn from the features: the optimum is the prior, in closed form.
        let features = Tensor::full([10, 3], 2.0, (Kind::Float, Device::Cpu));
        let labels = [0, 0, 0, 0, 0, 0, 1, 1, 1, 2];
        let fit = Problem::softmax(&features, &labels, 3, false)
            .expect("problem")
            .fit(0)
            .expect("fit");
        assert_eq!(
            (fit.folds, fit.c),
            (0, 1.0),
            "one example of class 2: no folds"
        );
        assert!(fit.converged);
        let probs: Vec<f32> =
            Vec::try_from(raw_logits(&features, &fit).softmax(1, Kind::Float).get(0))
                .expect("probs");
        for (p, expected) in probs.iter().zip([0.6, 0.3, 0.1]) {
            assert!((f64::from(*p) - expected).abs() < 1e-5, "{probs:?}");
        }
        // Multi-label: each output's own frequency.
        let sets = vec![vec![0, 1], vec![0], vec![0], vec![], vec![1]];
        let fit = Problem::sigmoid(&features.narrow(0, 0, 5), &sets, 2, false)
            .expect("problem")
            .fit(0)
            .expect("fit");
        let probs: Vec<f32> =
            Vec::try_from(raw_logits(&features.narrow(0, 0, 1), &fit).sigmoid().get(0))
                .expect("probs");
        assert!((f64::from(probs[0]) - 0.6).abs() < 1e-5, "{probs:?}");
        assert!((f64::from(probs[1]) - 0.4).abs() < 1e-5, "{probs:?}");
    }

    #[test]
    fn the_solver_reaches_the_optimum_of_a_regularised_problem() {
        for (separation, flip) in [(1.0, 0.2), (6.0, 0.0)] {
            // Overlapping classes, and separable ones (where only the penalty bounds W).
            let (x, labels) = blobs(90, 6, 3, separation, flip, 3);
            let problem = Problem::softmax(&x, &labels, 3, false).expect("problem");
            let solution = problem
                .solve(10.0, problem.zeros().expect("zeros"), FINAL_SOLVER)
                .expect("solve");
            assert!(solution.converged, "{separation}: {solution:?}");
            let (_, grad) = problem.objective(&solution.x, 10.0).expect("objective");
            let largest = grad.abs().max().double_value(&[]);
            assert!(largest <= 1e-5, "{separation}: gradient {largest}");
            // Weighted rows and sigmoid outputs too.
            let balanced = Problem::softmax(&x, &labels, 3, true).expect("problem");
            let solution = balanced
                .solve(10.0, balanced.zeros().expect("zeros"), FINAL_SOLVER)
                .expect("solve");
            assert!(solution.converged && solution.gradient_max <= 1e-5);
            let sets: Vec<Vec<usize>> = labels.iter().map(|&l| vec![l]).collect();
            let sigmoid = Problem::sigmoid(&x, &sets, 3, true).expect("problem");
            let solution = sigmoid
                .solve(10.0, sigmoid.zeros().expect("zeros"), FINAL_SOLVER)
                .expect("solve");
            assert!(solution.converged && solution.gradient_max <= 1e-5);
        }
        // The gradient is the objective's: a central difference agrees.
        let (x, labels) = blobs(30, 4, 3, 1.0, 0.1, 4);
        let problem = Problem::softmax(&x, &labels, 3, true).expect("problem");
        let theta = Tensor::arange(15, (Kind::Double, Device::Cpu)).sin() * 0.3;
        let (_, grad) = problem.objective(&theta, 0.5).expect("objective");
        for i in [0i64, 7, 12, 14] {
            let h = 1e-6;
            let plus = theta.copy();
            let minus = theta.copy();
            let _ = plus.get(i).f_add_scalar_(h).expect("plus");
            let _ = minus.get(i).f_add_scalar_(-h).expect("minus");
            let (fp, _) = problem.objective(&plus, 0.5).expect("f+");
            let (fm, _) = problem.objective(&minus, 0.5).expect("f-");
            let numeric = (fp - fm) / (2.0 * h);
            let analytic = grad.double_value(&[i]);
            assert!(
                (numeric - analytic).abs() < 1e-6,
                "{i}: {numeric} vs {analytic}"
            );
        }
    }

    #[test]
    fn the_head_reads_the_features_as_the_solver_read_centred_ones() {
        let (x, labels) = blobs(60, 5, 3, 2.0, 0.1, 5);
        let x = x * 7.0 + 3.0; // far from centred
        let problem = Problem::softmax(&x, &labels, 3, false).expect("problem");
        let fit = problem.fit(1).expect("fit");
        let solution = problem
            .solve(fit.c, problem.zeros().expect("zeros"), FINAL_SOLVER)
            .expect("solve");
        let (w, b) = problem.unpack(&solution.x).expect("unpack");
        let centred = problem.x.matmul(&w) + b;
        let raw = raw_logits(&x, &fit).to_kind(Kind::Double);
        let gap = (raw - centred).abs().max().double_value(&[]);
        assert!(gap < 1e-3, "{gap}");
    }

    #[test]
    fn cross_validation_regularises_noisy_labels_more_than_clean_ones() {
        let (clean_x, clean) = blobs(100, 20, 2, 3.0, 0.0, 6);
        let (noisy_x, noisy) = blobs(100, 20, 2, 0.5, 0.45, 6);
        let c_clean = Problem::softmax(&clean_x, &clean, 2, false)
            .expect("problem")
            .fit(0)
            .expect("fit");
        let c_noisy = Problem::softmax(&noisy_x, &noisy, 2, false)
            .expect("problem")
            .fit(0)
            .expect("fit");
        println!("C clean {:.3e} {:?}", c_clean.c, c_clean.cv_accuracies);
        println!("C noisy {:.3e} {:?}", c_noisy.c, c_noisy.cv_accuracies);
        assert_eq!((c_clean.folds, c_noisy.folds), (FOLDS, FOLDS));
        assert_eq!(c_clean.cv_losses.len(), c_grid().len());
        assert!(c_noisy.c < c_clean.c, "{} vs {}", c_noisy.c, c_clean.c);
    }

    #[test]
    fn accuracy_counts_the_rows_and_outputs_predicted_right_as_they_weigh() {
        // One centred feature; logits (−x, x): rows at −2, −1 predict 0, at 1, 2 predict 1.
        let x = Tensor::from_slice(&[-2.0f64, -1.0, 1.0, 2.0]).view([4, 1]);
        let theta = Tensor::from_slice(&[-1.0f64, 1.0, 0.0, 0.0]);
        let labels = [0, 0, 1, 0];
        let plain = Problem::softmax(&x, &labels, 2, false).expect("problem");
        assert!((plain.data_accuracy(&theta).expect("accuracy") - 0.75).abs() < 1e-12);
        // Balanced: the three rows of class 0 weigh 2/3 each, the one of class 1 weighs 2.
        let balanced = Problem::softmax(&x, &labels, 2, true).expect("problem");
        let expected = (2.0 * 2.0 / 3.0 + 2.0) / 4.0;
        let got = balanced.data_accuracy(&theta).expect("accuracy");
        assert!((got - expected).abs() < 1e-12, "{got}");
        // Multi-label: each row's share of outputs right; the last row gets one of two.
        let sets = vec![vec![0], vec![0], vec![1], vec![0, 1]];
        let sigmoid = Problem::sigmoid(&x, &sets, 2, false).expect("problem");
        assert!((sigmoid.data_accuracy(&theta).expect("accuracy") - 0.875).abs() < 1e-12);
    }

    #[test]
    fn c_is_the_best_held_out_accuracy_and_a_tie_the_lower_log_loss() {
        for (separation, flip, seed) in [(3.0, 0.0, 6), (0.8, 0.2, 8), (1.5, 0.1, 9)] {
            let (x, labels) = blobs(100, 10, 3, separation, flip, seed);
            let fit = Problem::softmax(&x, &labels, 3, false)
                .expect("problem")
                .fit(0)
                .expect("fit");
            let chosen = c_grid().iter().position(|&c| c == fit.c).expect("a grid C");
            let (acc, loss) = (&fit.cv_accuracies, &fit.cv_losses);
            assert_eq!((acc.len(), loss.len()), (c_grid().len(), c_grid().len()));
            for i in 0..acc.len() {
                assert!(acc[i] <= acc[chosen] + 1e-9, "{separation}: {acc:?}");
                if (acc[i] - acc[chosen]).abs() <= 1e-9 {
                    assert!(loss[chosen] <= loss[i], "{separation}: {acc:?} {loss:?}");
                }
            }
        }
    }

    #[test]
    fn a_seeded_fit_is_deterministic() {
        let (x, labels) = blobs(80, 8, 4, 1.5, 0.1, 7);
        let fit = |seed| {
            Problem::softmax(&x, &labels, 4, false)
                .expect("problem")
                .fit(seed)
                .expect("fit")
        };
        let (a, b) = (fit(9), fit(9));
        assert_eq!(a.c, b.c);
        assert_eq!(a.cv_losses, b.cv_losses);
        assert_eq!(a.cv_accuracies, b.cv_accuracies);
        assert_eq!((a.weight - b.weight).abs().max().double_value(&[]), 0.0);
        assert_eq!((a.bias - b.bias).abs().max().double_value(&[]), 0.0);
    }

    #[test]
    fn the_grid_is_scikit_learns() {
        let grid = c_grid();
        assert_eq!(grid.len(), 10);
        assert!((grid[0] - 1e-4).abs() < 1e-12 && (grid[9] - 1e4).abs() < 1e-6);
        assert!(grid
            .windows(2)
            .all(|w| (w[1] / w[0] - 10f64.powf(8.0 / 9.0)).abs() < 1e-9));
    }
}
