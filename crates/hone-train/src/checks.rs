//! The checks a request passes before any weight is touched: a job's data against its
//! objective, modality and settings ([`check_job`]), and a tokenizer against the
//! embedding table it indexes ([`check_vocab`]). Training, feature extraction and
//! the predictor call them; they call none of those.

use std::path::Path;

use crate::base_model::Modality;
use crate::bert::BertConfig;
use crate::classifier::HeadType;
use crate::config::TrainConfig;
use crate::data::TrainData;
use crate::error::TrainError;
use crate::model_dir::TOKENIZER_FILE;
use crate::objective::Objective;
use crate::tokenize::TextTokenizer;

pub(crate) fn check_job(
    objective: &Objective,
    train: &TrainData,
    validation: Option<&TrainData>,
    config: &TrainConfig,
    modality: Modality,
) -> Result<(), TrainError> {
    let invalid = |m: String| Err(TrainError::InvalidInput(m));
    objective.validate()?;
    if train.is_empty() {
        return invalid("the training set is empty".into());
    }
    for (name, data) in
        std::iter::once(("training", train)).chain(validation.map(|v| ("validation", v)))
    {
        let (inputs, what, other) = match modality {
            Modality::Text => (data.texts.len(), "texts", data.images.len()),
            Modality::Image => (
                data.images.len(),
                "images",
                data.texts.len() + data.text_pairs.as_ref().map_or(0, Vec::len),
            ),
        };
        if other > 0 {
            return invalid(format!(
                "the {name} set is not made of {what}, as the base model reads"
            ));
        }
        if inputs != data.labels.len() {
            return invalid(format!(
                "the {name} set has {inputs} {what} but {} labels",
                data.labels.len()
            ));
        }
        objective.check(&data.labels, name)?;
    }
    for (name, data) in
        std::iter::once(("training", train)).chain(validation.map(|v| ("validation", v)))
    {
        if let Some(pairs) = &data.text_pairs {
            if pairs.len() != data.texts.len() {
                return invalid(format!(
                    "the {name} set has {} texts but {} text pairs",
                    data.texts.len(),
                    pairs.len()
                ));
            }
        }
    }
    if let Some(v) = validation {
        if v.text_pairs.is_some() != train.text_pairs.is_some() {
            return invalid(
                "the training and validation sets must both be text pairs, or neither".into(),
            );
        }
    }
    if validation.is_some_and(TrainData::is_empty) {
        return invalid("the validation set is empty".into());
    }
    if modality == Modality::Image && config.head != HeadType::Linear {
        return invalid("image models take a linear head only".into());
    }
    if config.epochs == 0 || config.batch_size == 0 {
        return invalid("epochs and batch_size must be positive".into());
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return invalid(format!(
            "learning_rate {} must be positive",
            config.learning_rate
        ));
    }
    if !(0.0..=1.0).contains(&config.warmup_ratio) {
        return invalid(format!(
            "warmup_ratio {} is not in [0, 1]",
            config.warmup_ratio
        ));
    }
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return invalid(format!("weight_decay {} must be >= 0", config.weight_decay));
    }
    if !(config.grad_clip.is_finite() && config.grad_clip >= 0.0) {
        return invalid(format!("grad_clip {} must be >= 0", config.grad_clip));
    }
    Ok(())
}

/// An id at or above the embedding table's size would be an index error on CPU and a
/// device-side assert (a dead CUDA context) on GPU: refuse such a pair up front.
pub(crate) fn check_vocab(
    tokenizer: &TextTokenizer,
    config: &BertConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(TrainError::config(
            dir.join(TOKENIZER_FILE),
            format!(
                "the tokenizer knows {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(())
}
