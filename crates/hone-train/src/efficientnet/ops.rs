//! The building blocks of [`super::EfficientNet`]: TensorFlow-`"SAME"`-padded
//! convolutions, BatchNorm with its running statistics, ReLU6 and stochastic depth.
//! Kept apart from the network so that `efficientnet.rs` reads as the architecture
//! (config, blocks, depths) and this file as the operations it is made of.

use tch::nn;
use tch::{TchError, Tensor};

use crate::layers::NO_DECAY_GROUP;

/// In place on a BatchNorm's output, as the reference's `ReLU6(inplace=True)`: no
/// second activation-sized buffer. ATen's relu6 is hardtanh(0, 6), whose backward is
/// one fused kernel; `clamp`'s backward is ge, le, and, where over the whole activation
/// (10 % of a full fine-tuning step's time on Lite0, measured with perf).
pub(super) fn relu6(mut xs: Tensor) -> Result<Tensor, TchError> {
    xs.f_relu6_()
}

/// TensorFlow's `"SAME"` padding along one axis: (before, after).
fn same_padding(input: i64, kernel: i64, stride: i64) -> (i64, i64) {
    let output = (input + stride - 1) / stride;
    let total = ((output - 1) * stride + kernel - input).max(0);
    (total / 2, total - total / 2)
}

/// A bias-free convolution with TensorFlow's `"SAME"` padding; `groups` equal to the
/// channels makes it depthwise.
#[derive(Debug)]
pub(super) struct Conv2dSame {
    weight: Tensor,
    kernel: i64,
    stride: i64,
    groups: i64,
}

impl Conv2dSame {
    pub(super) fn new(
        vs: &nn::Path,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
        init: nn::Init,
    ) -> Result<Self, TchError> {
        let (k, g) = (kernel as i64, groups as i64);
        let weight = vs.f_var(
            "weight",
            &[out_channels as i64, in_channels as i64 / g, k, k],
            init,
        )?;
        Ok(Self {
            weight,
            kernel: k,
            stride: stride as i64,
            groups: g,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor) -> Result<Tensor, TchError> {
        let size = xs.size();
        let (h, w) = (size[size.len() - 2], size[size.len() - 1]);
        let (top, bottom) = same_padding(h, self.kernel, self.stride);
        let (left, right) = same_padding(w, self.kernel, self.stride);
        let conv = |xs: &Tensor, padding: [i64; 2]| {
            xs.f_conv2d(
                &self.weight,
                None::<Tensor>,
                [self.stride, self.stride],
                padding,
                [1, 1],
                self.groups,
            )
        };
        if top == bottom && left == right {
            conv(xs, [top, left])
        } else {
            conv(&xs.f_constant_pad_nd([left, right, top, bottom])?, [0, 0])
        }
    }
}

/// BatchNorm2d with its running statistics as untrained variables, so they are saved
/// and loaded with the weights but never given to the optimizer.
#[derive(Debug)]
pub(super) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    momentum: f64,
    eps: f64,
}

impl BatchNorm {
    /// `momentum` weighs the new batch statistic (PyTorch's convention).
    pub(super) fn new(
        vs: &nn::Path,
        channels: usize,
        momentum: f64,
        eps: f64,
    ) -> Result<Self, TchError> {
        let c = [channels as i64];
        let params = vs.set_group(NO_DECAY_GROUP);
        Ok(Self {
            weight: params.f_ones("weight", &c)?,
            bias: params.f_zeros("bias", &c)?,
            running_mean: vs.f_zeros_no_train("running_mean", &c)?,
            running_var: vs.f_ones_no_train("running_var", &c)?,
            momentum,
            eps,
        })
    }

    pub(super) fn forward(&self, xs: &Tensor, stats: Stats) -> Result<Tensor, TchError> {
        let (train, momentum) = match stats {
            Stats::Running => (false, self.momentum),
            Stats::Batch => (true, self.momentum),
            Stats::Estimate { weight } => (true, weight),
        };
        xs.f_batch_norm(
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            momentum,
            self.eps,
            true,
        )
    }
}

/// Which statistics a [`BatchNorm`] normalises with, and what becomes of its running
/// ones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Stats {
    /// The running statistics, left as they are: inference, and frozen layers.
    Running,
    /// The batch's, folded into the running ones at the layer's momentum: training.
    Batch,
    /// The batch's, folded into the running ones with `weight` (PyTorch's momentum):
    /// re-estimating the running statistics batch by batch, where weight
    /// `batch / images seen so far` makes them the average over every batch
    /// (PyTorch's `momentum=None`), the first batch's replacing what was there.
    Estimate { weight: f64 },
}

/// Drops the residual branch of whole samples with probability `p` and rescales the
/// kept ones, as the reference's `drop_connect` does.
pub(super) fn drop_connect(xs: &Tensor, p: f64) -> Result<Tensor, TchError> {
    let keep = 1.0 - p;
    let batch = xs.size()[0];
    let mask = Tensor::f_rand([batch, 1, 1, 1], (xs.kind(), xs.device()))?
        .f_add_scalar(keep)?
        .f_floor()?;
    xs.f_div_scalar(keep)?.f_mul(&mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        // 224 → 112 with a 3×3 stride-2 kernel: one extra row at the bottom only.
        assert_eq!(same_padding(224, 3, 2), (0, 1));
        assert_eq!(same_padding(112, 3, 1), (1, 1));
        assert_eq!(same_padding(28, 5, 2), (1, 2));
        assert_eq!(same_padding(7, 1, 1), (0, 0));
    }
}
