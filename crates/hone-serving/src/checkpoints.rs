//! A job's checkpoint made into a model directory that predict serves like any other:
//! the job's published model with the checkpoint's weights in place of its own (the
//! frozen weights are the same in both), and a manifest that says which epoch it is.

use std::path::Path;

use hone_train::TrainError;

const MANIFEST: &str = "manifest.json";

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
    let path = out_dir.join(MANIFEST);
    if !path.is_file() {
        return Ok(());
    }
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let mut manifest: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::config(&path, format!("unreadable manifest: {e}")))?;
    if let Some(fields) = manifest.as_object_mut() {
        if let Some(final_id) = fields.insert("model_id".into(), model_id.into()) {
            fields.insert("published_from".into(), final_id);
        }
        fields.insert("checkpoint_epoch".into(), epoch.into());
        // The job's final metrics describe another epoch's weights.
        fields.remove("metrics");
    }
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| TrainError::config(&path, e.to_string()))?;
    std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
}
