//! The model hone trains and serves: a BERT encoder, mean pooling, dropout and a
//! linear head — sentence-transformers' pooling, so a base model trained for sentence
//! embeddings (all-MiniLM-L6-v2) starts from the representation it was trained to give.
//!
//! Encoder variables keep their checkpoint names at the root of the `VarStore` and the
//! head lives under `head.`, so one safetensors file holds a whole published model and
//! reads back with the same loader as a base checkpoint.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::bert::{mean_pool, BertConfig, BertModel, Linear, WeightInit};
use crate::error::TrainError;
use crate::tokenize::Batch;

/// Variable prefix of the classification head.
pub const HEAD_PREFIX: &str = "head";
/// Weights file of base and published models.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Encoder config file of base and published models.
pub const CONFIG_FILE: &str = "config.json";
/// What hone adds to a published model directory so it can be served.
pub const MODEL_META_FILE: &str = "hone_model.json";
/// The `format_version` this crate writes and reads.
pub const MODEL_META_VERSION: u32 = 1;

/// How token states become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// Mean over the real (unpadded) tokens.
    Mean,
}

/// `hone_model.json`: what a published directory needs besides the base model's files
/// to be served — the label order of the head and how inputs were cut. The worker
/// writes its own manifest (job, metrics, lineage) next to it; this one is what the
/// predictor trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    /// The encoder family (config.json's `model_type`).
    pub architecture: String,
    pub pooling: Pooling,
    /// Label names in the order of the head's outputs.
    pub labels: Vec<String>,
    pub max_seq_len: usize,
}

impl ModelMeta {
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(MODEL_META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let meta: Self = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::config(&path, format!("not a hone model file: {e}")))?;
        if meta.format_version != MODEL_META_VERSION {
            return Err(TrainError::config(
                &path,
                format!(
                    "format_version {} is not supported (this build reads {MODEL_META_VERSION})",
                    meta.format_version
                ),
            ));
        }
        if meta.labels.is_empty() {
            return Err(TrainError::config(&path, "no labels"));
        }
        Ok(meta)
    }

    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(MODEL_META_FILE);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| TrainError::config(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
    }
}

/// Encoder + mean pooling + dropout + linear head.
#[derive(Debug)]
pub struct SequenceClassifier {
    encoder: BertModel,
    head: Linear,
    dropout: f64,
    num_labels: usize,
}

impl SequenceClassifier {
    /// Creates the variables of encoder and head under `vs`.
    pub fn new(
        vs: &nn::Path,
        config: &BertConfig,
        num_labels: usize,
        init: WeightInit,
    ) -> Result<Self, TrainError> {
        if num_labels == 0 {
            return Err(TrainError::InvalidInput("a classifier needs labels".into()));
        }
        let encoder = BertModel::new(vs, config, init)?;
        let head = Linear::new(&vs.sub(HEAD_PREFIX), config.hidden_size, num_labels, init)?;
        Ok(Self {
            encoder,
            head,
            dropout: config
                .classifier_dropout
                .unwrap_or(config.hidden_dropout_prob),
            num_labels,
        })
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Logits `[batch, num_labels]`. `train` enables dropout.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        let hidden = self.encoder.forward(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            train,
        )?;
        let mut pooled = mean_pool(&hidden, &batch.attention_mask)?;
        if train && self.dropout > 0.0 {
            pooled = pooled.f_dropout(self.dropout, true)?;
        }
        Ok(self.head.forward(&pooled)?)
    }
}

/// Whether a variable belongs to the head, which a base checkpoint does not have.
pub(crate) fn is_head_variable(name: &str) -> bool {
    name.starts_with(HEAD_PREFIX) && name[HEAD_PREFIX.len()..].starts_with('.')
}
