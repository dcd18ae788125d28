//! A job's checkpoint made into a model directory that predict serves like any other:
//! the job's published model with the checkpoint's weights in place of its own (the
//! frozen weights are the same in both), and a manifest that says which epoch it is.

use std::path::Path;

use hone_train::model_dir::MANIFEST_FILE;
use hone_train::{Manifest, TrainError};

/// Writes the model of `epoch` to `out_dir`: `model_dir` (the job's published model)
/// with the weights of the `checkpoint` file, the epoch's multi-label `threshold` when it
/// has one, and the manifest rewritten to name `model_id` and the epoch. Blocking
/// (libtorch reads and writes the weights): run it off the async runtime.
pub fn materialize(
    model_dir: &Path,
    checkpoint: &Path,
    out_dir: &Path,
    model_id: &str,
    epoch: u32,
    threshold: Option<f32>,
) -> Result<(), TrainError> {
    hone_train::apply_checkpoint(model_dir, checkpoint, out_dir, threshold)?;
    if !out_dir.join(MANIFEST_FILE).is_file() {
        return Ok(());
    }
    Manifest::read(out_dir)?
        .for_checkpoint(model_id, epoch)
        .write(out_dir)
}
