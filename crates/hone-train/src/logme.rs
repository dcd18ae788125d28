//! LogME (You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for
//! Transfer Learning", ICML 2021): which base model to fine-tune, decided from the
//! features each candidate already produces, without fine-tuning any of them.
//!
//! Each target column `y` (a one-hot class column, or one label of a multi-label task)
//! gets a Bayesian linear model `y = F w + ε` with prior `w ~ N(0, I/α)` and noise
//! `ε ~ N(0, 1/β)`. The score is the logarithm of the evidence `p(y | F, α, β)`,
//! maximised over `α` and `β`, divided by `n` and averaged over columns. The evidence
//! rewards features that explain the labels with small weights and little noise, and
//! penalises capacity the labels do not need, so it tracks transfer accuracy without
//! a validation split.
//!
//! The maximisation is the paper's fixed-point iteration (Algorithm 1), in the
//! eigenbasis of `FᵀF` (or of `FFᵀ` when `n ≤ d`, which is the cheaper matrix and has
//! the same non-zero eigenvalues): after one eigendecomposition every step costs
//! O(min(n, d)) per column. Like the authors' code it starts at `α = β = 1` and stops
//! when `α/β` moves by less than 1e-3 relative, or after 11 steps.
//!
//! Where this differs from the authors' code: it adds no 1e-5 to the denominators of
//! the updates (constant label columns, the case that needed it, are rejected
//! instead), the evidence is evaluated at the final `α, β` with the posterior mean
//! for them, and `log|αI + βFᵀF|` counts all `d` eigenvalues; the authors' code drops
//! the `d − n` zero ones when `n < d`, which adds `(d − n)/(2n) · log α` to its score.
//!
//! `scripts/fixtures/logme_reference.py` is an independent numpy implementation; the
//! tests check this one against the scores it wrote to `tests/fixtures/logme.json`.

use tch::{Device, Kind, Tensor};

use crate::error::TrainError;
use crate::objective::Targets;

/// The fixed-point iteration stops after this many steps even if `α/β` still moves;
/// the authors' code uses 11 ("should converge after at most 10 steps").
const MAX_ITERATIONS: usize = 11;
/// Relative change of `α/β` below which the iteration has converged.
const TOLERANCE: f64 = 1e-3;

/// LogME of `features` (`n × d`, one row per example; f32 or f64, any device) for
/// single-label classification with `labels[i]` in `0..num_classes`: each class is one
/// 0/1 target column.
///
/// How to read the score: it is a log-evidence per example (nats), typically negative,
/// and higher is better — the features separate these labels better under a linear
/// model, which predicts that fine-tuning the model that produced them will do better
/// on this task. It only ranks feature extractors against each other on the **same**
/// examples and labels: its value depends on the dataset (n, number of classes, class
/// balance), so a score is meaningless on its own and across datasets. With fewer
/// examples than feature dimensions (`n ≤ d`) the labels can be fitted exactly, `β`
/// tends to keep growing and the iteration often stops at its 11-step cap rather than
/// at a maximum: rank such models on more examples when possible.
///
/// Every class in `0..num_classes` must occur and at least two must: a class column
/// that is the same for every example says nothing about the features. Errors with
/// [`TrainError::InvalidInput`] for empty data, a label count that differs from `n`, a
/// label out of range, or NaN/infinite features.
pub fn logme_classification(
    features: &Tensor,
    labels: &[usize],
    num_classes: usize,
) -> Result<f64, TrainError> {
    let (n, _) = feature_shape(features)?;
    if labels.len() != n {
        return Err(invalid(format!(
            "{} labels for {n} feature rows",
            labels.len()
        )));
    }
    if let Some((i, &label)) = labels.iter().enumerate().find(|(_, &l)| l >= num_classes) {
        return Err(invalid(format!(
            "label {label} of example {i} is out of range for {num_classes} classes"
        )));
    }
    let mut counts = vec![0usize; num_classes];
    for &label in labels {
        counts[label] += 1;
    }
    if let Some(class) = counts.iter().position(|&c| c == 0 || c == n) {
        let what = if counts[class] == 0 {
            "has no examples"
        } else {
            "is the class of every example"
        };
        return Err(invalid(format!(
            "class {class} {what}; LogME needs every class to occur, and at least two classes"
        )));
    }
    let mut targets = vec![0.0; n * num_classes];
    for (i, &label) in labels.iter().enumerate() {
        targets[i * num_classes + label] = 1.0;
    }
    Ok(mean_evidence(&column_fits(
        features,
        &targets,
        num_classes,
    )?))
}

/// LogME of `features` (`n × d`, as in [`logme_classification`]) for multi-label
/// classification: `targets[i][j]` says whether example `i` has label `j`, and each
/// label is one 0/1 target column.
///
/// The score reads as for [`logme_classification`]: a log-evidence per example,
/// typically negative, higher when the features separate these labels better under a
/// linear model; compare feature extractors on the same examples and labels only.
///
/// Every row must have the same number (≥ 1) of labels and every label must be true
/// for some examples and false for others. Errors with [`TrainError::InvalidInput`]
/// for empty data, a row count that differs from `n`, ragged rows, a constant label
/// or NaN/infinite features.
pub fn logme_multilabel(features: &Tensor, targets: &[Vec<bool>]) -> Result<f64, TrainError> {
    let (n, _) = feature_shape(features)?;
    if targets.len() != n {
        return Err(invalid(format!(
            "{} target rows for {n} feature rows",
            targets.len()
        )));
    }
    // n ≥ 1, so there is a row 0.
    let columns = targets[0].len();
    if columns == 0 {
        return Err(invalid("the targets have no label columns".into()));
    }
    if let Some((i, row)) = targets.iter().enumerate().find(|(_, r)| r.len() != columns) {
        return Err(invalid(format!(
            "target row {i} has {} labels, row 0 has {columns}",
            row.len()
        )));
    }
    for j in 0..columns {
        let positives = targets.iter().filter(|row| row[j]).count();
        if positives == 0 || positives == n {
            return Err(invalid(format!(
                "label {j} is {} for every example; LogME needs each label to vary",
                positives == n
            )));
        }
    }
    let values: Vec<f64> = targets
        .iter()
        .flat_map(|row| row.iter().map(|&t| if t { 1.0 } else { 0.0 }))
        .collect();
    Ok(mean_evidence(&column_fits(features, &values, columns)?))
}

fn invalid(message: String) -> TrainError {
    TrainError::InvalidInput(format!("LogME: {message}"))
}

/// `(n, d)` of a non-empty 2-D floating-point tensor.
fn feature_shape(features: &Tensor) -> Result<(usize, usize), TrainError> {
    let size = features.size();
    let &[n, d] = size.as_slice() else {
        return Err(invalid(format!(
            "features must be an n × d matrix, got shape {size:?}"
        )));
    };
    if n == 0 || d == 0 {
        return Err(invalid(format!("no data: features have shape [{n}, {d}]")));
    }
    if !features.f_is_floating_point()? {
        return Err(invalid(format!(
            "features must be floating point, got {:?}",
            features.f_kind()?
        )));
    }
    // Both are positive i64, so they fit a usize.
    Ok((n as usize, d as usize))
}

fn mean_evidence(fits: &[ColumnFit]) -> f64 {
    fits.iter().map(|f| f.evidence).sum::<f64>() / fits.len() as f64
}

/// The maximum of one column's evidence and where it was reached.
#[derive(Debug, Clone, Copy)]
struct ColumnFit {
    /// `log p(y | F, α, β) / n`.
    evidence: f64,
    alpha: f64,
    beta: f64,
    /// Fixed-point steps taken, at most [`MAX_ITERATIONS`].
    iterations: usize,
}

/// One [`ColumnFit`] per column of `targets` (row-major `n × columns`).
fn column_fits(
    features: &Tensor,
    targets: &[f64],
    columns: usize,
) -> Result<Vec<ColumnFit>, TrainError> {
    let (n, d) = feature_shape(features)?;
    let f = features.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?;
    if !bool::try_from(f.f_isfinite()?.f_all()?)? {
        return Err(invalid("features contain NaN or infinite values".into()));
    }
    let y = Tensor::f_from_slice(targets)?.f_view([n as i64, columns as i64])?;

    // The eigenvalues σ of the Gram matrix are those of FᵀF (padded with d − n zeros
    // when n < d) and its eigenvectors give an orthonormal basis U of F's column space:
    // x = Uᵀy is all the iteration needs of a column.
    let (sigma, x) = if n > d {
        let (sigma, v) = f.f_tr()?.f_mm(&f)?.f_linalg_eigh("L")?;
        // U = F V σ^(-1/2), so Uᵀy = σ^(-1/2) Vᵀ Fᵀ y; the division waits for the rank cut.
        let vt_fty = v.f_tr()?.f_mm(&f.f_tr()?.f_mm(&y)?)?;
        (sigma, vt_fty)
    } else {
        let (sigma, u) = f.f_mm(&f.f_tr()?)?.f_linalg_eigh("L")?;
        (sigma, u.f_tr()?.f_mm(&y)?)
    };
    let sigma = Vec::<f64>::try_from(&sigma)?;
    let x = Vec::<f64>::try_from(&x.f_contiguous()?.f_view([-1])?)?;

    let largest = sigma.iter().copied().fold(0.0, f64::max);
    if !largest.is_finite() {
        return Err(invalid("features are too large: FᵀF overflows".into()));
    }
    if largest == 0.0 {
        return Err(invalid("features are all zero".into()));
    }
    // Eigenvalues below the rounding error of the Gram matrix are zeros of F: their
    // directions hold no signal, only noise that 1/σ would blow up.
    let cutoff = largest * n.max(d) as f64 * f64::EPSILON;
    let kept: Vec<usize> = (0..sigma.len()).filter(|&i| sigma[i] > cutoff).collect();
    let kept_sigma: Vec<f64> = kept.iter().map(|&i| sigma[i]).collect();

    (0..columns)
        .map(|j| {
            let column = |i: usize| x[i * columns + j];
            let x2: Vec<f64> = if n > d {
                kept.iter().map(|&i| column(i).powi(2) / sigma[i]).collect()
            } else {
                kept.iter().map(|&i| column(i).powi(2)).collect()
            };
            // The part of y outside F's column space, which no weights can fit.
            let outside = if n > d {
                let norm2: f64 = (0..n).map(|i| targets[i * columns + j].powi(2)).sum();
                (norm2 - x2.iter().sum::<f64>()).max(0.0)
            } else {
                // U is a full basis of Rⁿ: sum the dropped directions exactly.
                (0..n)
                    .filter(|&i| sigma[i] <= cutoff)
                    .map(|i| column(i).powi(2))
                    .sum()
            };
            let fit = fit_column(n, &kept_sigma, &x2, outside);
            tracing::debug!(
                column = j,
                evidence = fit.evidence,
                alpha = fit.alpha,
                beta = fit.beta,
                iterations = fit.iterations,
                "LogME column"
            );
            if fit.evidence.is_finite() {
                Ok(fit)
            } else {
                Err(invalid(format!(
                    "the evidence of target column {j} is not finite (α = {}, β = {}): \
                     the features carry no linear signal for it",
                    fit.alpha, fit.beta
                )))
            }
        })
        .collect()
}

/// What one step needs at `t = α/β`, in the eigenbasis (`m` is the posterior mean).
struct Moments {
    /// Effective number of parameters, `Σ βσ/(α + βσ)`.
    gamma: f64,
    /// `mᵀm`.
    m2: f64,
    /// `‖Fm − y‖²`.
    residual: f64,
}

impl Moments {
    /// With `m = V diag(√σ/(t + σ)) x`, `Fm − y` is `−t/(t + σ) · x` inside the column
    /// space plus the part of `y` outside it.
    fn at(t: f64, sigma: &[f64], x2: &[f64], outside: f64) -> Self {
        let mut moments = Moments {
            gamma: 0.0,
            m2: 0.0,
            residual: outside,
        };
        for (&s, &x2) in sigma.iter().zip(x2) {
            let denominator = s + t;
            moments.gamma += s / denominator;
            moments.m2 += s * x2 / (denominator * denominator);
            moments.residual += (t / denominator).powi(2) * x2;
        }
        moments
    }
}

/// Maximises one column's evidence over `α, β` (Algorithm 1 of the paper). `sigma`
/// are the non-zero eigenvalues of `FᵀF`, `x2` the squared coordinates of `y` along the
/// matching directions of F's column space, `outside` the rest of `‖y‖²`.
fn fit_column(n: usize, sigma: &[f64], x2: &[f64], outside: f64) -> ColumnFit {
    let n = n as f64;
    let (mut alpha, mut beta) = (1.0, 1.0);
    let mut iterations = 0;
    while iterations < MAX_ITERATIONS {
        iterations += 1;
        let t = alpha / beta;
        let m = Moments::at(t, sigma, x2, outside);
        alpha = m.gamma / m.m2;
        beta = (n - m.gamma) / m.residual;
        // A NaN change (a degenerate column) runs to the cap and fails the caller's check.
        if ((alpha / beta - t) / t).abs() < TOLERANCE {
            break;
        }
    }
    let t = alpha / beta;
    let m = Moments::at(t, sigma, x2, outside);
    // d/2 log α − ½ Σ_d log(α + βσ) = −½ Σ log(1 + σ/t): the d − rank zero eigenvalues
    // cancel their share of d/2 log α, and the rest needs no d.
    let log_det: f64 = sigma.iter().map(|&s| (s / t).ln_1p()).sum();
    let evidence = 0.5 * n * beta.ln()
        - 0.5 * n * (2.0 * std::f64::consts::PI).ln()
        - 0.5 * beta * m.residual
        - 0.5 * alpha * m.m2
        - 0.5 * log_det;
    ColumnFit {
        evidence: evidence / n,
        alpha,
        beta,
        iterations,
    }
}

/// LogME for any task type: classes renumbered to those the rows have (LogME wants
/// every class present); for multi-label one target per label that varies; for
/// multi-task the mean over the tasks, each on the rows that label it.
pub fn logme_targets(features: &Tensor, targets: &Targets) -> Result<f64, TrainError> {
    let classification = |features: &Tensor, labels: &[usize]| {
        let mut present: Vec<usize> = labels.to_vec();
        present.sort_unstable();
        present.dedup();
        let remapped: Vec<usize> = labels
            .iter()
            .map(|l| present.binary_search(l).unwrap_or(0))
            .collect();
        logme_classification(features, &remapped, present.len())
    };
    match targets {
        Targets::Single(labels) => classification(features, labels),
        Targets::Multi(sets) => {
            let width = sets.iter().flatten().max().map_or(0, |&m| m + 1);
            let mut columns: Vec<Vec<bool>> = vec![vec![false; sets.len()]; width];
            for (i, set) in sets.iter().enumerate() {
                for &l in set {
                    columns[l][i] = true;
                }
            }
            columns.retain(|c| c.iter().any(|&b| b) && !c.iter().all(|&b| b));
            if columns.is_empty() {
                return Err(TrainError::InvalidInput(
                    "no label varies across the sample".into(),
                ));
            }
            let rows: Vec<Vec<bool>> = (0..sets.len())
                .map(|i| columns.iter().map(|c| c[i]).collect())
                .collect();
            logme_multilabel(features, &rows)
        }
        Targets::Tasks(table) => {
            let tasks = table.first().map_or(0, Vec::len);
            let mut scores = Vec::with_capacity(tasks);
            for t in 0..tasks {
                let (rows, labels): (Vec<i64>, Vec<usize>) = table
                    .iter()
                    .enumerate()
                    .filter_map(|(i, row)| row[t].map(|l| (i as i64, l)))
                    .unzip();
                if labels
                    .iter()
                    .collect::<std::collections::BTreeSet<_>>()
                    .len()
                    < 2
                {
                    continue;
                }
                let rows = Tensor::f_from_slice(&rows)?;
                scores.push(classification(
                    &features.f_index_select(0, &rows)?,
                    &labels,
                )?);
            }
            if scores.is_empty() {
                return Err(TrainError::InvalidInput(
                    "no task has two labels in the sample".into(),
                ));
            }
            Ok(scores.iter().sum::<f64>() / scores.len() as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Fixture {
        max_iterations: usize,
        tolerance: f64,
        classification: Vec<ClassificationCase>,
        multilabel: Vec<MultilabelCase>,
    }

    #[derive(Deserialize)]
    struct ClassificationCase {
        name: String,
        num_classes: usize,
        labels: Vec<usize>,
        features: Vec<Vec<f64>>,
        score: f64,
        columns: Vec<FixtureColumn>,
    }

    #[derive(Deserialize)]
    struct MultilabelCase {
        name: String,
        targets: Vec<Vec<bool>>,
        features: Vec<Vec<f64>>,
        score: f64,
        columns: Vec<FixtureColumn>,
    }

    #[derive(Deserialize)]
    struct FixtureColumn {
        evidence_per_example: f64,
        alpha: f64,
        beta: f64,
        iterations: usize,
    }

    fn fixture() -> Fixture {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logme.json");
        serde_json::from_slice(&std::fs::read(&path).expect("read logme.json")).expect("parse")
    }

    fn matrix(rows: &[Vec<f64>]) -> Tensor {
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, rows[0].len() as i64])
    }

    fn relative(ours: f64, theirs: f64) -> f64 {
        (ours - theirs).abs() / theirs.abs()
    }

    /// Compares every column and the score with the fixture; returns the largest
    /// relative differences of (an evidence or the score, an α or β).
    fn check_case(
        name: &str,
        fits: &[ColumnFit],
        expected: &[FixtureColumn],
        ours: f64,
        theirs: f64,
    ) -> (f64, f64) {
        assert_eq!(fits.len(), expected.len(), "{name}: column count");
        let score = relative(ours, theirs);
        assert!(score < 1e-6, "{name}: score {ours} vs {theirs}");
        let (mut evidence, mut hyper) = (score, 0.0f64);
        for (j, (fit, want)) in fits.iter().zip(expected).enumerate() {
            // The same number of steps means both took the same path; the stopping
            // rule is not near a tie in any fixture column.
            assert_eq!(
                fit.iterations, want.iterations,
                "{name} column {j}: iterations"
            );
            for (what, a, b) in [("α", fit.alpha, want.alpha), ("β", fit.beta, want.beta)] {
                assert!(
                    relative(a, b) < 1e-6,
                    "{name} column {j}: {what} {a} vs {b}"
                );
                hyper = hyper.max(relative(a, b));
            }
            let diff = relative(fit.evidence, want.evidence_per_example);
            assert!(
                diff < 1e-6,
                "{name} column {j}: evidence {} vs {}",
                fit.evidence,
                want.evidence_per_example
            );
            evidence = evidence.max(diff);
        }
        (evidence, hyper)
    }

    #[test]
    fn matches_the_numpy_reference() {
        let fixture = fixture();
        assert_eq!(fixture.max_iterations, MAX_ITERATIONS);
        assert_eq!(fixture.tolerance, TOLERANCE);
        let (mut evidence, mut hyper) = (0.0f64, 0.0f64);
        for case in &fixture.classification {
            let features = matrix(&case.features);
            let ours = logme_classification(&features, &case.labels, case.num_classes)
                .expect("classification");
            let mut targets = vec![0.0; case.labels.len() * case.num_classes];
            for (i, &l) in case.labels.iter().enumerate() {
                targets[i * case.num_classes + l] = 1.0;
            }
            let fits = column_fits(&features, &targets, case.num_classes).expect("fits");
            let name = format!("classification {}", case.name);
            let (e, h) = check_case(&name, &fits, &case.columns, ours, case.score);
            (evidence, hyper) = (evidence.max(e), hyper.max(h));
        }
        for case in &fixture.multilabel {
            let features = matrix(&case.features);
            let ours = logme_multilabel(&features, &case.targets).expect("multilabel");
            let targets: Vec<f64> = case
                .targets
                .iter()
                .flatten()
                .map(|&t| f64::from(u8::from(t)))
                .collect();
            let fits = column_fits(&features, &targets, case.columns.len()).expect("fits");
            let name = format!("multilabel {}", case.name);
            let (e, h) = check_case(&name, &fits, &case.columns, ours, case.score);
            (evidence, hyper) = (evidence.max(e), hyper.max(h));
        }
        eprintln!(
            "LogME vs numpy: largest relative difference {evidence:e} in an evidence or \
             score, {hyper:e} in α or β"
        );
    }

    /// `n × d` features: a class mean (when `signal`) plus uniform noise.
    fn synthetic(rng: &mut StdRng, labels: &[usize], d: usize, signal: bool) -> Tensor {
        let classes = labels.iter().max().map_or(0, |&m| m + 1);
        let means: Vec<Vec<f64>> = (0..classes)
            .map(|_| (0..d).map(|_| rng.gen_range(-1.0..1.0)).collect())
            .collect();
        let rows: Vec<Vec<f64>> = labels
            .iter()
            .map(|&l| {
                (0..d)
                    .map(|k| {
                        let noise = rng.gen_range(-1.0..1.0);
                        if signal {
                            means[l][k] + noise
                        } else {
                            noise
                        }
                    })
                    .collect()
            })
            .collect();
        matrix(&rows)
    }

    #[test]
    fn informative_features_score_higher_than_noise() {
        let mut rng = StdRng::seed_from_u64(7);
        for (n, d) in [(300, 32), (24, 48)] {
            let labels: Vec<usize> = (0..n).map(|i| i % 4).collect();
            let informative = synthetic(&mut rng, &labels, d, true);
            let noise = synthetic(&mut rng, &labels, d, false);
            let good = logme_classification(&informative, &labels, 4).expect("informative");
            let bad = logme_classification(&noise, &labels, 4).expect("noise");
            assert!(
                good > bad,
                "n={n}, d={d}: informative {good} vs noise {bad}"
            );
        }
    }

    #[test]
    fn one_hot_multilabel_equals_classification_and_f32_is_close() {
        let mut rng = StdRng::seed_from_u64(11);
        let labels: Vec<usize> = (0..90).map(|i| (i * 7) % 3).collect();
        let features = synthetic(&mut rng, &labels, 10, true);
        let single = logme_classification(&features, &labels, 3).expect("classification");
        let one_hot: Vec<Vec<bool>> = labels
            .iter()
            .map(|&l| (0..3).map(|c| c == l).collect())
            .collect();
        let multi = logme_multilabel(&features, &one_hot).expect("multilabel");
        assert!(relative(multi, single) < 1e-12, "{multi} vs {single}");
        assert!(single < 0.0, "a log-evidence per example, got {single}");

        let f32_score =
            logme_classification(&features.to_kind(Kind::Float), &labels, 3).expect("f32 features");
        assert!(
            relative(f32_score, single) < 1e-5,
            "{f32_score} vs {single}"
        );
    }

    #[test]
    fn zero_and_duplicate_columns_are_handled() {
        let mut rng = StdRng::seed_from_u64(3);
        for n in [50, 4] {
            let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
            let base = synthetic(&mut rng, &labels, 3, true);
            let before = logme_classification(&base, &labels, 2).expect("base");
            // A zero column adds a zero eigenvalue to FᵀF, which changes no term.
            let zero = base.zeros_like().narrow(1, 0, 1);
            let padded = Tensor::cat(&[&base, &zero], 1);
            let after = logme_classification(&padded, &labels, 2).expect("zero column");
            assert!(relative(after, before) < 1e-9, "n={n}: {after} vs {before}");
            let duplicated = Tensor::cat(&[&base, &base.narrow(1, 0, 1)], 1);
            let score = logme_classification(&duplicated, &labels, 2).expect("duplicate");
            assert!(score.is_finite(), "n={n}: {score}");
        }
    }

    fn message(result: Result<f64, TrainError>) -> String {
        match result {
            Err(TrainError::InvalidInput(message)) => message,
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }

    #[test]
    fn rejects_invalid_input() {
        let features = Tensor::from_slice(&[1.0f64, 0.0, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        let labels = [0, 1, 0];

        let empty = Tensor::zeros([0, 2], (Kind::Double, Device::Cpu));
        assert!(message(logme_classification(&empty, &[], 2)).contains("no data"));
        let no_dims = Tensor::zeros([3, 0], (Kind::Double, Device::Cpu));
        assert!(message(logme_classification(&no_dims, &labels, 2)).contains("no data"));
        let flat = Tensor::from_slice(&[1.0f64, 2.0, 3.0]);
        assert!(message(logme_classification(&flat, &labels, 2)).contains("n × d"));
        let ints = Tensor::from_slice(&[1i64, 0, 0, 1, 1, 1]).view([3, 2]);
        assert!(message(logme_classification(&ints, &labels, 2)).contains("floating"));

        assert!(message(logme_classification(&features, &[0, 1], 2)).contains("2 labels"));
        assert!(message(logme_classification(&features, &[0, 2, 1], 2)).contains("out of range"));
        assert!(message(logme_classification(&features, &labels, 3)).contains("class 2 has no"));
        assert!(message(logme_classification(&features, &[0, 0, 0], 1)).contains("every"));

        let nan = Tensor::from_slice(&[1.0f64, f64::NAN, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        assert!(message(logme_classification(&nan, &labels, 2)).contains("NaN"));
        let inf = Tensor::from_slice(&[1.0f32, f32::INFINITY, 0.0, 1.0, 1.0, 1.0]).view([3, 2]);
        assert!(message(logme_classification(&inf, &labels, 2)).contains("infinite"));
        let zeros = Tensor::zeros([3, 2], (Kind::Double, Device::Cpu));
        assert!(message(logme_classification(&zeros, &labels, 2)).contains("all zero"));

        let rows = |r: &[&[bool]]| r.iter().map(|row| row.to_vec()).collect::<Vec<_>>();
        let targets = rows(&[&[true, false], &[false, true], &[true, true]]);
        assert!(logme_multilabel(&features, &targets).is_ok());
        assert!(message(logme_multilabel(&features, &targets[..2])).contains("2 target rows"));
        assert!(message(logme_multilabel(&empty, &[])).contains("no data"));
        let none = rows(&[&[], &[], &[]]);
        assert!(message(logme_multilabel(&features, &none)).contains("no label columns"));
        let ragged = rows(&[&[true, false], &[false], &[true, true]]);
        assert!(message(logme_multilabel(&features, &ragged)).contains("row 1 has 1"));
        let constant = rows(&[&[true, true], &[false, true], &[true, true]]);
        assert!(message(logme_multilabel(&features, &constant)).contains("label 1 is true"));
    }
}
