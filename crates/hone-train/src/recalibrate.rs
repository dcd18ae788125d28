//! BatchNorm statistics that follow the weights: after an image run's weights moved,
//! the running statistics of the BatchNorms above the frozen depth are estimated anew
//! on the training images, as PyTorch's `torch.optim.swa_utils.update_bn` does.
//!
//! Why: EfficientNet-Lite's BatchNorm momentum is 0.01 (TensorFlow's 0.99), so over
//! the few hundred steps of a fine-tuning run the running statistics stay close to
//! ImageNet's while the weights before them change; in inference the network then
//! normalises with statistics of another network and can collapse (measured in issue
//! 19: a full fine-tune that reached training loss 0.22 scored 0.41 on its own training
//! images, 0.91 once its statistics were estimated again).
//!
//! How: every epoch ends with a pass over (up to [`ESTIMATE_IMAGES`] of) the training
//! images, preprocessed as for evaluation (the centre crop inference sees, not the
//! augmented one), without gradients, in which each trained BatchNorm normalises with
//! the batch's statistics and averages them into its running ones over the pass
//! (PyTorch's `momentum=None`, weighted by batch size). No block is dropped and no
//! random number is drawn, so a seeded run stays reproducible. Frozen layers keep their
//! statistics: their inputs and weights do not change. `feature_extraction` has no
//! BatchNorm to estimate. Doing it every epoch, before the validation scoring, means
//! the best epoch is chosen, checkpointed and published with the statistics it will
//! predict with; it costs one forward pass over at most [`ESTIMATE_IMAGES`] images, about
//! a third of a training epoch's time on small data sets and less on larger ones.

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::efficientnet::EfficientNet;
use crate::error::TrainError;
use crate::vision_data::{ImageSet, Mode as ImageMode};

/// The most training images the statistics are estimated on: beyond a thousand the
/// estimate hardly changes, and the pass stays a small part of an epoch on large data.
pub const ESTIMATE_IMAGES: usize = 1024;

/// The examples (of `n`) the statistics are estimated on: all of them up to
/// [`ESTIMATE_IMAGES`], else that many evenly spaced (every class of a file ordered by
/// class keeps its share).
pub fn estimate_sample(n: usize) -> Vec<usize> {
    if n <= ESTIMATE_IMAGES {
        return (0..n).collect();
    }
    (0..ESTIMATE_IMAGES)
        .map(|i| i * n / ESTIMATE_IMAGES)
        .collect()
}

/// Estimates the running statistics of `model`'s BatchNorms above its frozen depth
/// from `batches` of normalised images `[batch, 3, h, w]` (on the model's device): the
/// batch-size-weighted average of the batches' statistics, which replaces the old
/// statistics. Returns the number of images seen; nothing changes when no BatchNorm
/// trains (every layer frozen) or no image comes.
pub fn estimate_batch_norm(
    model: &EfficientNet,
    batches: impl IntoIterator<Item = Result<Tensor, TrainError>>,
) -> Result<usize, TrainError> {
    if !model.trains_batch_norm() {
        return Ok(0);
    }
    tch::no_grad(|| {
        let mut seen = 0usize;
        for images in batches {
            let images = images?;
            let batch = images.size().first().copied().unwrap_or(0).max(0) as usize;
            if batch == 0 {
                continue;
            }
            seen += batch;
            model.estimate_pass(&images, batch as f64 / seen as f64)?;
        }
        Ok(seen)
    })
}

/// [`estimate_batch_norm`] on the images of `set` that [`estimate_sample`] picks,
/// preprocessed for evaluation, in batches of `batch_size`, on `device`.
pub(crate) fn recalibrate(
    model: &EfficientNet,
    set: &Arc<ImageSet>,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<usize, TrainError> {
    if !model.trains_batch_norm() {
        return Ok(0);
    }
    let batches = set.batches(
        estimate_sample(set.len()),
        batch_size.max(1),
        ImageMode::Eval,
    )?;
    estimate_batch_norm(
        model,
        batches.map(|batch| {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            Ok(batch?.images.f_to_device(device)?)
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_is_everything_up_to_the_cap_then_evenly_spaced() {
        assert_eq!(estimate_sample(3), vec![0, 1, 2]);
        assert_eq!(estimate_sample(ESTIMATE_IMAGES).len(), ESTIMATE_IMAGES);
        let sample = estimate_sample(10 * ESTIMATE_IMAGES + 7);
        assert_eq!(sample.len(), ESTIMATE_IMAGES);
        assert_eq!(sample[0], 0);
        assert!(sample.windows(2).all(|w| w[1] - w[0] >= 10));
        assert!(*sample.last().expect("last") >= 10 * ESTIMATE_IMAGES - 10);
    }
}
