//! Serving a published text model in int8: the choice is made once, where the job's
//! validation data is at hand (the worker, after training), and recorded in the model's
//! `hone_model.json` with what it changes on that data; [`Classifier::load`] then
//! quantizes the model each time it loads it on the CPU.

use std::path::Path;

use tch::Device;

use crate::data::TrainData;
use crate::error::TrainError;
use crate::model_dir::{ModelMeta, Quantization, QuantizationType, QuantizedEval};
use crate::predict::Classifier;

/// Marks the model in `dir` (text, just published in fp32) to be served in int8, after
/// evaluating it both ways on `validation` when there is some; returns what it recorded.
pub fn quantize_published(
    dir: &Path,
    validation: Option<&TrainData>,
    batch_size: usize,
) -> Result<Quantization, TrainError> {
    let mut meta = ModelMeta::read(dir)?;
    if meta.quantization.is_some() {
        return Err(TrainError::InvalidInput(
            "the model is already quantized".into(),
        ));
    }
    // One load: scored in fp32 first, then quantized in place and scored again.
    let mut model = Classifier::load(dir, Device::Cpu)?;
    let validation = validation.filter(|v| !v.is_empty());
    let fp32 = validation
        .map(|data| model.evaluate(data, batch_size))
        .transpose()?;
    model.quantize_int8()?;
    let validation = match (validation, fp32) {
        (Some(data), Some(fp32)) => Some(QuantizedEval {
            fp32,
            quantized: model.evaluate(data, batch_size)?,
        }),
        _ => None,
    };
    let quantization = Quantization {
        kind: QuantizationType::Int8,
        validation,
    };
    meta.quantization = Some(quantization.clone());
    meta.write(dir)?;
    Ok(quantization)
}
