//! The building blocks both architectures share: PyTorch's `nn.Linear`, how new
//! variables are filled, dropout, mean pooling, the optimizer group exempt from weight
//! decay, and where a classifier's heads keep their variables. The text and the image
//! models are made of these, so they live below both (`bert`, `efficientnet`,
//! `classifier`, `vision`) and below the optimizer that reads their groups.

use tch::nn::{self, Init};
use tch::{TchError, Tensor};

use crate::error::TrainError;
use crate::int8::PackedLinear;

/// Optimizer group of the variables AdamW must not decay (biases and LayerNorm
/// parameters), as transformers' `Trainer` does; every other variable is in group 0.
pub const NO_DECAY_GROUP: usize = 1;

/// Variable prefix of the classification head.
pub const HEAD_PREFIX: &str = "head";

/// How new variables are filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WeightInit {
    /// As transformers initialises BERT: weights and embeddings normal with this
    /// standard deviation (the config's `initializer_range`), biases zero, LayerNorm
    /// identity. Draws from libtorch's global generator.
    Random { std: f64 },
    /// Zeros (LayerNorm identity): for variables a checkpoint is about to overwrite.
    /// Draws no random numbers, so loading a model for inference cannot disturb the
    /// seeded generator of a training run in the same process.
    Zeros,
}

impl WeightInit {
    pub(crate) fn init(self) -> Init {
        match self {
            Self::Random { std } => Init::Randn {
                mean: 0.0,
                stdev: std,
            },
            Self::Zeros => Init::Const(0.0),
        }
    }
}

pub(crate) fn dims(sizes: &[usize]) -> Vec<i64> {
    sizes.iter().map(|&s| s as i64).collect()
}

/// `x @ W^T + b` with the weight laid out as PyTorch's `nn.Linear` (`[out, in]`).
#[derive(Debug)]
pub(crate) struct Linear {
    weight: Tensor,
    bias: Tensor,
    /// The same weights in int8, for CPU inference, once [`Linear::quantize_int8`] ran.
    int8: Option<PackedLinear>,
}

impl Linear {
    /// Weights drawn as transformers initialises BERT (see [`Init`]), biases zero and
    /// outside weight decay.
    pub(crate) fn new(
        vs: &nn::Path,
        in_dim: usize,
        out_dim: usize,
        init: WeightInit,
    ) -> Result<Self, TchError> {
        let weight = vs.f_var("weight", &dims(&[out_dim, in_dim]), init.init())?;
        let bias = vs
            .set_group(NO_DECAY_GROUP)
            .f_zeros("bias", &dims(&[out_dim]))?;
        Ok(Self {
            weight,
            bias,
            int8: None,
        })
    }

    pub(crate) fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        match &self.int8 {
            Some(int8) => int8.forward(xs),
            None => xs.f_linear(&self.weight, Some(&self.bias)),
        }
    }

    /// From now on computes in int8 (dynamic quantization, CPU only): for a model that
    /// only serves, as its weights no longer train through this path.
    pub(crate) fn quantize_int8(&mut self) -> Result<(), TchError> {
        self.int8 = Some(PackedLinear::new(&self.weight, Some(&self.bias))?);
        Ok(())
    }
}

pub(crate) fn dropout(xs: Tensor, p: f64, train: bool) -> Result<Tensor, TchError> {
    if train && p > 0.0 {
        xs.f_dropout(p, true)
    } else {
        Ok(xs)
    }
}

/// Mean of `hidden` `[batch, seq, h]` over the positions where `attention_mask` is 1,
/// as a batched matrix product (one kernel instead of a multiply and a sum).
pub fn mean_pool(hidden: &Tensor, attention_mask: &Tensor) -> Result<Tensor, TchError> {
    let mask = attention_mask.f_to_kind(hidden.kind())?.f_unsqueeze(1)?; // [b, 1, seq]
    let summed = mask.f_bmm(hidden)?.f_squeeze_dim(1)?; // [b, h]
    let counts = mask
        .f_sum_dim_intlist(2, false, hidden.kind())?
        .f_clamp_min(1e-9)?; // [b, 1]
    summed.f_div(&counts)
}

/// Where each head's variables live, with its number of outputs: under `head.` for a
/// single head, under `head.{i}.` for task `i` when `per_task`. Refuses a head without
/// labels, and several heads unless `per_task`.
pub(crate) fn head_paths<'a>(
    vs: &nn::Path<'a>,
    outputs: &[usize],
    per_task: bool,
) -> Result<Vec<(nn::Path<'a>, usize)>, TrainError> {
    if outputs.is_empty() || outputs.contains(&0) || (!per_task && outputs.len() != 1) {
        return Err(TrainError::InvalidInput(
            "a classifier needs labels for every head".into(),
        ));
    }
    let root = vs.sub(HEAD_PREFIX);
    Ok(outputs
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let path = if per_task {
                root.sub(i.to_string())
            } else {
                vs.sub(HEAD_PREFIX)
            };
            (path, n)
        })
        .collect())
}

/// Whether a variable belongs to the head, which a base checkpoint does not have.
pub(crate) fn is_head_variable(name: &str) -> bool {
    name.starts_with(HEAD_PREFIX) && name[HEAD_PREFIX.len()..].starts_with('.')
}
