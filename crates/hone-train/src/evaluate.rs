//! Scoring a network on labelled inputs in eval mode: loss and probabilities
//! ([`ScoredOutputs`]) and the metrics they give. The loop scores every epoch's validation
//! data and the final train/validation gap with it; the predictor's `evaluate` scores
//! user data with it. Neither imports the other for it.

use tch::{Device, Kind, Tensor};

use crate::data::TrainData;
use crate::error::TrainError;
use crate::inputs::Inputs;
use crate::metrics::EvalMetrics;
use crate::network::Network;
use crate::objective::{Objective, Targets};
use crate::vision_data::{ImageSet, LoaderOptions};

/// Loss and probabilities of a model on labelled inputs.
pub(crate) struct ScoredOutputs {
    pub(crate) loss: f64,
    pub(crate) probs: Vec<Vec<f32>>,
}

impl ScoredOutputs {
    pub(crate) fn metrics(&self, objective: &Objective, truth: &Targets) -> EvalMetrics {
        let report = objective.report(truth, &self.probs, None);
        EvalMetrics {
            loss: self.loss,
            accuracy: report.accuracy(),
            macro_f1: report.macro_f1(),
            examples: truth.len(),
            threshold: report.threshold(),
        }
    }
}

/// Mean loss (unweighted, unsmoothed: comparable across recipes) and probabilities, in
/// eval mode under `no_grad`. Results stay on the device until the end, so a GPU is not
/// stalled once per batch.
pub(crate) fn score(
    network: &Network,
    objective: &Objective,
    inputs: &Inputs,
    labels: &Targets,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<ScoredOutputs, TrainError> {
    let n = inputs.len()?;
    tch::no_grad(|| {
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut probs = Vec::new();
        for batch in inputs.batches((0..n).collect(), batch_size, None)? {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            let batch = batch?;
            let indices = batch.indices.as_slice();
            let logits = inputs.logits(network, &batch, false, device)?;
            let loss = objective.loss(&logits, labels, indices, &[], 0.0)?;
            loss_sum = loss_sum.f_add(&loss.f_mul_scalar(indices.len() as f64)?)?;
            probs.push(objective.probabilities(&logits)?);
        }
        let probs = Tensor::f_cat(&probs, 0)?.f_to_device(Device::Cpu)?;
        let probs: Vec<Vec<f32>> = Vec::try_from(&probs)?;
        let loss = loss_sum.f_double_value(&[])? / n.max(1) as f64;
        Ok(ScoredOutputs { loss, probs })
    })
}

/// Probabilities of the examples at `indices`.
pub(crate) fn score_subset(
    network: &Network,
    objective: &Objective,
    inputs: &Inputs,
    indices: &[usize],
    batch_size: usize,
    device: Device,
) -> Result<Vec<Vec<f32>>, TrainError> {
    tch::no_grad(|| {
        let mut probs = Vec::new();
        for batch in inputs.batches(indices.to_vec(), batch_size, None)? {
            let logits = inputs.logits(network, &batch?, false, device)?;
            probs.push(objective.probabilities(&logits)?);
        }
        let probs = Tensor::f_cat(&probs, 0)?.f_to_device(Device::Cpu)?;
        Ok(Vec::try_from(&probs)?)
    })
}

/// Loss, accuracy and macro-F1 of `network` on labelled examples of its modality, in
/// eval mode under `no_grad`.
pub(crate) fn evaluate_data(
    network: &Network,
    objective: &Objective,
    data: &TrainData,
    batch_size: usize,
    device: Device,
) -> Result<EvalMetrics, TrainError> {
    let encoded;
    let set;
    let inputs = match network {
        Network::Text { tokenizer, .. } => {
            encoded = tokenizer.encode_maybe_pairs(&data.texts, data.text_pairs.as_deref())?;
            Inputs::Tokens {
                encoded: &encoded,
                pad_id: tokenizer.pad_id(),
            }
        }
        Network::Image { preprocess, .. } => {
            set = ImageSet::new(
                data.images.clone(),
                preprocess.clone(),
                LoaderOptions::default(),
            )?;
            Inputs::Images {
                set: &set,
                augment: None,
            }
        }
    };
    let scored = score(
        network,
        objective,
        &inputs,
        &data.labels,
        batch_size,
        device,
        &|| false,
    )?;
    Ok(scored.metrics(objective, &data.labels))
}
