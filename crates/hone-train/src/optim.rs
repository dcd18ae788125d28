//! AdamW whose state hone owns.
//!
//! libtorch's `torch::optim::AdamW` (tch's `COptimizer`) keeps its moments where tch
//! cannot read or write them, so a job that dies could only restart from scratch. This
//! is the same algorithm, step for step (`torch/csrc/api/src/optim/adamw.cpp`), over
//! tensors we can checkpoint and load: a resumed run takes the very steps the
//! uninterrupted one would have.

use std::collections::{BTreeMap, HashSet};

use tch::{nn, Tensor};

use crate::bert::layer_depth;
use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::layers::NO_DECAY_GROUP;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One trainable variable and its AdamW state.
#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Steps this variable took (it skips steps in which it got no gradient, as
    /// libtorch's does).
    steps: u64,
    weight_decay: f64,
    /// Layer-wise learning-rate multiplier.
    lr_multiplier: f64,
}

/// AdamW over the store's variables that require gradients (frozen ones get no
/// optimizer state), each layer at its own rate (layer-wise decay), biases and
/// LayerNorm parameters without weight decay; and a clip of the global gradient norm
/// that stays on the device (no host sync, as `torch.nn.utils.clip_grad_norm_`).
/// Public so that `examples/bench.rs` measures the very step the service trains with.
#[derive(Debug)]
pub struct Optimizer {
    params: Vec<Param>,
    max_grad_norm: f64,
}

impl Optimizer {
    /// AdamW with `config`'s learning rate, weight decay, layer-wise decay and
    /// gradient clip over every variable of `vs` that requires a gradient.
    pub fn new(vs: &nn::VarStore, config: &TrainConfig) -> Result<Self, TrainError> {
        let variables = vs
            .variables_
            .lock()
            .map_err(|_| TrainError::InvalidInput("the variable store is poisoned".into()))?;
        let no_decay: HashSet<usize> = variables
            .trainable_variables
            .iter()
            .filter(|v| v.group == NO_DECAY_GROUP)
            .map(|v| v.tensor.data_ptr() as usize)
            .collect();
        let mut named: Vec<(&String, &Tensor)> = variables
            .named_variables
            .iter()
            .filter(|(_, t)| t.requires_grad())
            .collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let layers = named
            .iter()
            .filter_map(|(name, _)| {
                name.strip_prefix("encoder.layer.")?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |i| i + 1);
        let params = named
            .into_iter()
            .map(|(name, tensor)| {
                let depth = layer_depth(name, layers);
                let decays = !no_decay.contains(&(tensor.data_ptr() as usize));
                Ok(Param {
                    name: name.clone(),
                    tensor: tensor.shallow_clone(),
                    exp_avg: tensor.f_zeros_like()?,
                    exp_avg_sq: tensor.f_zeros_like()?,
                    steps: 0,
                    weight_decay: if decays { config.weight_decay } else { 0.0 },
                    lr_multiplier: config.layer_lr_decay.powi((layers + 1 - depth) as i32),
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        Ok(Self {
            params,
            max_grad_norm: config.grad_clip,
        })
    }

    /// Zeroes the gradients, backpropagates `loss`, clips, and updates the variables
    /// at `learning_rate` (times each layer's multiplier).
    pub fn step(&mut self, loss: &Tensor, learning_rate: f64) -> Result<(), TrainError> {
        for p in &mut self.params {
            p.tensor.zero_grad();
        }
        loss.f_backward()?;
        if self.max_grad_norm > 0.0 {
            self.clip_grad_norm()?;
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                p.update(learning_rate * p.lr_multiplier)?;
            }
            Ok(())
        })
    }

    fn clip_grad_norm(&self) -> Result<(), TrainError> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(|p| p.tensor.grad())
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return Ok(());
            }
            let norms = grads
                .iter()
                .map(|g| g.f_norm())
                .collect::<Result<Vec<_>, _>>()?;
            let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(self.max_grad_norm)?
                .f_clamp_max(1.0)?;
            for mut g in grads {
                let _ = g.f_mul_(&coef)?;
            }
            Ok(())
        })
    }

    /// The moments of every variable, as `{name}.exp_avg` and `{name}.exp_avg_sq`,
    /// for a checkpoint; [`Optimizer::steps`] goes with them.
    pub fn state_tensors(&self) -> Result<Vec<(String, Tensor)>, TrainError> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for p in &self.params {
            out.push((format!("{}.exp_avg", p.name), p.exp_avg.f_detach_copy()?));
            out.push((
                format!("{}.exp_avg_sq", p.name),
                p.exp_avg_sq.f_detach_copy()?,
            ));
        }
        Ok(out)
    }

    /// Steps each variable took, by name.
    pub fn steps(&self) -> BTreeMap<String, u64> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.steps))
            .collect()
    }

    /// Puts back the state [`Optimizer::state_tensors`] and [`Optimizer::steps`] saved
    /// from an optimizer over the same variables; refuses a state that does not cover
    /// every variable with the right shapes.
    pub fn load_state(
        &mut self,
        tensors: &BTreeMap<String, Tensor>,
        steps: &BTreeMap<String, u64>,
    ) -> Result<(), TrainError> {
        let invalid = |m: String| TrainError::InvalidInput(format!("optimizer state: {m}"));
        if steps.len() != self.params.len() {
            return Err(invalid(format!(
                "it covers {} variables, the model trains {}",
                steps.len(),
                self.params.len()
            )));
        }
        tch::no_grad(|| {
            for p in &mut self.params {
                p.steps = *steps
                    .get(&p.name)
                    .ok_or_else(|| invalid(format!("{} is missing", p.name)))?;
                for (suffix, live) in [
                    ("exp_avg", &mut p.exp_avg),
                    ("exp_avg_sq", &mut p.exp_avg_sq),
                ] {
                    let key = format!("{}.{suffix}", p.name);
                    let saved = tensors
                        .get(&key)
                        .ok_or_else(|| invalid(format!("{key} is missing")))?;
                    if saved.size() != live.size() {
                        return Err(invalid(format!(
                            "{key} is {:?}, expected {:?}",
                            saved.size(),
                            live.size()
                        )));
                    }
                    live.f_copy_(saved)?;
                }
            }
            Ok(())
        })
    }
}

impl Param {
    /// libtorch's AdamW update of one variable, in its order of operations.
    fn update(&mut self, lr: f64) -> Result<(), TrainError> {
        let grad = self.tensor.grad();
        if !grad.defined() {
            return Ok(());
        }
        if self.weight_decay != 0.0 {
            let _ = self.tensor.f_mul_scalar_(1.0 - lr * self.weight_decay)?;
        }
        self.steps += 1;
        let bias_correction1 = 1.0 - BETA1.powf(self.steps as f64);
        let bias_correction2 = 1.0 - BETA2.powf(self.steps as f64);
        let _ = self.exp_avg.f_mul_scalar_(BETA1)?;
        let _ = self.exp_avg.f_add_(&grad.f_mul_scalar(1.0 - BETA1)?)?;
        let _ = self.exp_avg_sq.f_mul_scalar_(BETA2)?;
        let _ = self
            .exp_avg_sq
            .f_add_(&grad.f_mul(&grad)?.f_mul_scalar(1.0 - BETA2)?)?;
        let denom = self
            .exp_avg_sq
            .f_sqrt()?
            .f_div_scalar(bias_correction2.sqrt())?
            .f_add_scalar(EPS)?;
        let step_size = lr / bias_correction1;
        let _ = self
            .tensor
            .f_sub_(&self.exp_avg.f_div(&denom)?.f_mul_scalar(step_size)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{COptimizer, Device, Kind};

    /// libtorch's generator is global: tests drawing from it in parallel threads
    /// would draw each other's numbers.
    static RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Two linear "encoder layers" and a head, with biases in the no-decay group, as
    /// the BERT code registers them.
    fn model(seed: i64) -> (nn::VarStore, Vec<Tensor>) {
        let _lock = RNG.lock().unwrap_or_else(|e| e.into_inner());
        tch::manual_seed(seed);
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let mut layers = Vec::new();
        for path in [
            root.clone() / "encoder" / "layer" / "0",
            root.clone() / "encoder" / "layer" / "1",
            root.clone() / "head",
        ] {
            let w = path.randn("weight", &[4, 4], 0.0, 0.5);
            let b = path.set_group(NO_DECAY_GROUP).randn("bias", &[4], 0.0, 0.5);
            layers.push(w);
            layers.push(b);
        }
        (vs, layers)
    }

    fn loss(layers: &[Tensor], x: &Tensor) -> Tensor {
        let mut h = x.shallow_clone();
        for pair in layers.chunks(2) {
            h = h.matmul(&pair[0].tr()).g_add(&pair[1]).tanh();
        }
        h.pow_tensor_scalar(2).mean(Kind::Float)
    }

    #[test]
    fn matches_libtorch_adamw() {
        let config = TrainConfig {
            learning_rate: 1e-2,
            weight_decay: 0.1,
            layer_lr_decay: 0.8,
            grad_clip: 0.5,
            ..TrainConfig::default()
        };
        let (ours_vs, ours) = model(3);
        let (theirs_vs, theirs) = model(3);
        let mut optimizer = Optimizer::new(&ours_vs, &config).expect("optimizer");

        // The reference: COptimizer with the groups Optimizer derives (depth d of 3:
        // multiplier 0.8^(3-d)), decay off for the biases.
        let mut reference = COptimizer::adamw(1e-2, BETA1, BETA2, 0.1, EPS, false).expect("adamw");
        let mut groups = Vec::new();
        for (name, tensor) in theirs_vs.variables() {
            let depth = layer_depth(&name, 2);
            let bias = name.ends_with("bias");
            let group = 2 * depth + usize::from(bias);
            reference.add_parameters(&tensor, group).expect("add");
            if !groups.iter().any(|&(g, _)| g == group) {
                groups.push((group, 0.8f64.powi((3 - depth) as i32)));
                reference
                    .set_weight_decay_group(group, if bias { 0.0 } else { 0.1 })
                    .expect("decay");
            }
        }
        let params: Vec<Tensor> = theirs_vs.trainable_variables();

        let x = Tensor::f_from_slice(&[0.5f32, -1.0, 0.25, 2.0])
            .and_then(|t| t.f_repeat([8, 1]))
            .expect("inputs");
        for step in 0..6 {
            let lr = 1e-2 * (1.0 - step as f64 / 6.0);
            optimizer.step(&loss(&ours, &x), lr).expect("step");

            reference.zero_grad().expect("zero");
            loss(&theirs, &x).backward();
            // The same clip, by hand.
            let total = Tensor::stack(
                &params.iter().map(|p| p.grad().norm()).collect::<Vec<_>>(),
                0,
            )
            .norm();
            let coef = (0.5 / (total.double_value(&[]) + 1e-6)).min(1.0);
            for p in &params {
                let _ = p.grad().g_mul_scalar_(coef);
            }
            for &(group, multiplier) in &groups {
                reference
                    .set_learning_rate_group(group, lr * multiplier)
                    .expect("lr");
            }
            reference.step().expect("step");
        }
        for (a, b) in ours.iter().zip(&theirs) {
            let diff = (a - b).abs().max().double_value(&[]);
            assert!(diff < 1e-6, "weights differ by {diff}");
        }
        assert!(optimizer.steps().values().all(|&s| s == 6));
    }

    #[test]
    fn state_round_trips() {
        let config = TrainConfig::default();
        let (vs, layers) = model(4);
        let x = Tensor::ones([8, 4], (Kind::Float, Device::Cpu));
        let mut first = Optimizer::new(&vs, &config).expect("optimizer");
        first.step(&loss(&layers, &x), 1e-2).expect("step");
        let saved: BTreeMap<String, Tensor> =
            first.state_tensors().expect("state").into_iter().collect();
        let mut second = Optimizer::new(&vs, &config).expect("optimizer");
        second.load_state(&saved, &first.steps()).expect("load");
        assert_eq!(second.steps(), first.steps());
        for (a, b) in first.params.iter().zip(&second.params) {
            assert!(a.exp_avg_sq.equal(&b.exp_avg_sq) && a.exp_avg.equal(&b.exp_avg));
        }
        let mut partial: BTreeMap<String, Tensor> = saved
            .iter()
            .map(|(k, t)| (k.clone(), t.shallow_clone()))
            .collect();
        partial.remove("head.bias.exp_avg");
        let err = second
            .load_state(&partial, &first.steps())
            .expect_err("a partial state is refused");
        assert!(err.to_string().contains("head.bias.exp_avg"), "{err}");
    }
}
