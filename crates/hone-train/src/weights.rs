//! Reading checkpoints into a `VarStore` by name.
//!
//! tch's `VarStore::load` stops at the first missing name and cannot map the prefixes
//! and legacy names Hugging Face checkpoints use, so this module matches every variable
//! itself and reports all problems at once — a user who picked the wrong base model
//! directory sees the whole mismatch, not its first line.

use std::collections::HashMap;
use std::path::Path;

use tch::{nn, Tensor};

use crate::error::TrainError;

/// Names under which `name` may be stored: as is, under the `bert.` prefix of
/// `BertFor…` checkpoints, and with the TensorFlow-era `gamma`/`beta` LayerNorm names.
fn candidates(name: &str) -> Vec<String> {
    let mut names = vec![name.to_owned()];
    if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
        names.push(format!("{stem}LayerNorm.gamma"));
    } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
        names.push(format!("{stem}LayerNorm.beta"));
    }
    let prefixed: Vec<String> = names.iter().map(|n| format!("bert.{n}")).collect();
    names.extend(prefixed);
    names
}

/// Copies the tensors of the safetensors file at `path` into the variables of `vs`.
///
/// Variables for which `optional` returns true (a freshly initialised classification
/// head when starting from a base model) keep their values when the file lacks them;
/// every other variable must be present with the same shape. The file's extra tensors
/// (pooler, `position_ids` buffers, other heads) are ignored. Dtypes convert on copy,
/// so half-precision checkpoints load into a float model.
pub fn load_safetensors(
    vs: &nn::VarStore,
    path: &Path,
    optional: &dyn Fn(&str) -> bool,
) -> Result<(), TrainError> {
    if !path.is_file() {
        return Err(TrainError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "weights file not found"),
        ));
    }
    let file: HashMap<String, Tensor> = Tensor::read_safetensors(path)?.into_iter().collect();
    let variables = vs.variables();
    let mut names: Vec<&String> = variables.keys().collect();
    names.sort();

    let mut missing = Vec::new();
    let mut mismatched = Vec::new();
    let mut pairs = Vec::with_capacity(names.len());
    for name in names {
        let var = &variables[name];
        let found = candidates(name).into_iter().find_map(|n| file.get(&n));
        match found {
            Some(src) if src.size() == var.size() => pairs.push((var, src)),
            Some(src) => mismatched.push(format!(
                "{name}: expected {:?}, found {:?}",
                var.size(),
                src.size()
            )),
            None if optional(name) => {}
            None => missing.push(name.clone()),
        }
    }
    if !missing.is_empty() || !mismatched.is_empty() {
        return Err(TrainError::Weights {
            path: path.to_owned(),
            missing,
            mismatched,
        });
    }
    tch::no_grad(|| -> Result<(), TrainError> {
        for (var, src) in pairs {
            let mut var = var.shallow_clone();
            var.f_copy_(src)?;
        }
        Ok(())
    })?;
    tracing::debug!(path = %path.display(), tensors = variables.len(), "loaded weights");
    Ok(())
}
