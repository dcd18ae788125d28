//! The variables training changes: which ones a strategy freezes in a text model
//! (`freeze`), which ones a checkpoint or the best epoch must hold (`trainable`),
//! how they go into and come back out of a checkpoint, and how a checkpoint's weights
//! become a published model again ([`apply_checkpoint`]).

use std::collections::BTreeMap;
use std::path::Path;

use tch::{nn, Tensor};

use hone_domain::dataset::TaskType;

use crate::bert::layer_depth;
use crate::config::Strategy;
use crate::error::TrainError;
use crate::model_dir::{ModelMeta, MODEL_META_FILE, WEIGHTS_FILE};
use crate::resume;

/// Freezes what `strategy` keeps fixed; returns the number of frozen scalars.
pub(crate) fn freeze(
    vs: &nn::VarStore,
    strategy: Strategy,
    layers: usize,
) -> Result<i64, TrainError> {
    let frozen_depth = match strategy {
        Strategy::Full => return Ok(0),
        Strategy::Partial { frozen_layers } => frozen_layers,
        Strategy::FeatureExtraction => layers,
    };
    let mut count = 0;
    for (name, tensor) in vs.variables() {
        if layer_depth(&name, layers) <= frozen_depth {
            let _ = tensor.f_set_requires_grad(false)?;
            count += tensor.numel() as i64;
        }
    }
    Ok(count)
}

/// The variables of `vs` that training changes, by name: those that require a
/// gradient and BatchNorm's running statistics (which training updates in place; the
/// frozen layers' ones are included too, they are small and never change), so a
/// checkpoint or the best epoch restores an image model exactly.
pub(crate) fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, t)| {
            t.requires_grad() || name.ends_with(".running_mean") || name.ends_with(".running_var")
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Copies a checkpoint's weights into the trainable variables of `vs`; every one of
/// them must be there, in its shape.
pub(crate) fn load_trainable(
    vs: &nn::VarStore,
    weights: &BTreeMap<String, Tensor>,
    dir: &Path,
) -> Result<(), TrainError> {
    let live = trainable(vs);
    if live.len() != weights.len() {
        return Err(TrainError::config(
            dir.join(resume::WEIGHTS_FILE),
            format!(
                "the checkpoint holds {} variables, the model trains {}",
                weights.len(),
                live.len()
            ),
        ));
    }
    tch::no_grad(|| {
        for (name, mut tensor) in live {
            match weights.get(&name) {
                Some(saved) if saved.size() == tensor.size() => {
                    tensor.f_copy_(saved)?;
                }
                _ => {
                    return Err(TrainError::config(
                        dir.join(resume::WEIGHTS_FILE),
                        format!("{name} is missing or has another shape"),
                    ))
                }
            }
        }
        Ok(())
    })
}

pub(crate) fn with_prefix(tensors: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t))
        .collect()
}

/// The tensors under `prefix`, with it removed.
pub(crate) fn prefixed(
    tensors: &BTreeMap<String, Tensor>,
    prefix: &str,
) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_owned(), t.shallow_clone())))
        .collect()
}

/// Writes to `out_dir` the model of `model_dir` (a published model) with the weights
/// of `checkpoint` (a [`Checkpoint`] file of the same job) in place of its own, and,
/// for a multi-label model, `threshold` as its decision threshold. Every other file is
/// copied as it is. Refuses a checkpoint whose variables the model lacks or shapes
/// differently.
///
/// [`Checkpoint`]: crate::observer::Checkpoint
pub fn apply_checkpoint(
    model_dir: &Path,
    checkpoint: &Path,
    out_dir: &Path,
    threshold: Option<f32>,
) -> Result<(), TrainError> {
    let mut meta = ModelMeta::read(model_dir)?;
    let weights = model_dir.join(WEIGHTS_FILE);
    let mut tensors: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&weights)?.into_iter().collect();
    for (name, tensor) in Tensor::read_safetensors(checkpoint)? {
        match tensors.get(&name) {
            Some(t) if t.size() == tensor.size() && t.kind() == tensor.kind() => {
                tensors.insert(name, tensor);
            }
            Some(t) => {
                return Err(TrainError::config(
                    checkpoint,
                    format!(
                        "{name} is {:?} {:?} in the checkpoint but {:?} {:?} in the model",
                        tensor.kind(),
                        tensor.size(),
                        t.kind(),
                        t.size()
                    ),
                ))
            }
            None => {
                return Err(TrainError::config(
                    checkpoint,
                    format!("{name} is not a variable of the model"),
                ))
            }
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let entries = std::fs::read_dir(model_dir).map_err(|e| TrainError::io(model_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(model_dir, e))?;
        let name = entry.file_name();
        if name == WEIGHTS_FILE || name == MODEL_META_FILE {
            continue;
        }
        if entry.path().is_file() {
            std::fs::copy(entry.path(), out_dir.join(&name))
                .map_err(|e| TrainError::io(entry.path(), e))?;
        }
    }
    let named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&named, out_dir.join(WEIGHTS_FILE))?;
    if meta.task_type == TaskType::MultiLabel {
        meta.threshold = threshold.or(meta.threshold);
    }
    // The job measured int8 on its final weights, not these: a checkpoint serves fp32.
    meta.quantization = None;
    meta.write(out_dir)
}
