//! The file format of cached features: one pooled-feature matrix as a one-tensor
//! safetensors file, written once and read back with its shape checked (a stale or
//! foreign cache entry is refused, not trained on). The worker's feature cache and the
//! transferability estimate store [`crate::features`]' output this way.

use std::path::Path;

use tch::Tensor;

use crate::error::TrainError;

/// Name of the tensor in a features file.
const FEATURES_TENSOR: &str = "features";

/// Writes features as a one-tensor safetensors file.
pub fn save_features(features: &Tensor, path: &Path) -> Result<(), TrainError> {
    Tensor::write_safetensors(&[(FEATURES_TENSOR, features)], path)?;
    Ok(())
}

/// Reads a file [`save_features`] wrote, checking its shape against what the caller
/// expects (a stale or foreign cache entry is refused, not trained on).
pub fn load_features(path: &Path, rows: usize, hidden: usize) -> Result<Tensor, TrainError> {
    let tensors = Tensor::read_safetensors(path)?;
    let features = tensors
        .into_iter()
        .find(|(name, _)| name == FEATURES_TENSOR)
        .map(|(_, t)| t)
        .ok_or_else(|| TrainError::config(path, "no features tensor"))?;
    if features.size() != [rows as i64, hidden as i64] {
        return Err(TrainError::config(
            path,
            format!(
                "features have shape {:?}, expected [{rows}, {hidden}]",
                features.size()
            ),
        ));
    }
    Ok(features)
}
