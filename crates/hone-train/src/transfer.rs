//! What the worker needs around training: token counts for the data report, features
//! of the frozen or of a randomly initialised encoder for the transferability estimate
//! and the feature cache, and their file format.

use std::path::Path;

use tch::{nn, Tensor};

use crate::bert::BertModel;
use crate::error::TrainError;
use crate::features::FeatureRun;
use crate::layers::WeightInit;
use crate::tokenize::TextTokenizer;

/// Name of the tensor in a features file.
const FEATURES_TENSOR: &str = "features";

/// Token counts of `texts` under the base model's tokenizer, special tokens included and
/// nothing truncated: what the data report compares with `max_seq_len`.
pub fn token_lengths(
    base_model_dir: &Path,
    texts: &[String],
    pairs: Option<&[String]>,
) -> Result<Vec<usize>, TrainError> {
    let tokenizer = TextTokenizer::from_dir(base_model_dir, usize::MAX / 2)?;
    Ok(tokenizer
        .encode_maybe_pairs(texts, pairs)?
        .iter()
        .map(|e| e.len())
        .collect())
}

/// Pooled features of `texts` under an encoder of the base model's architecture with
/// random weights drawn from `seed`: the no-transfer reference of a transferability
/// estimate.
pub fn random_init_features(
    run: &FeatureRun,
    texts: &[String],
    pairs: Option<&[String]>,
    seed: u64,
) -> Result<Tensor, TrainError> {
    let device = run.device;
    run.features(texts, pairs, &|| false, |config| {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        // The model keeps its own handles on the variables; the store can go.
        BertModel::new(&vs.root(), config, WeightInit::random(config))
    })
}

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
