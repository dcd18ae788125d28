//! The model hone trains and serves: a BERT encoder, pooling (mean by default —
//! sentence-transformers' pooling, so a base model trained for sentence embeddings such
//! as all-MiniLM-L6-v2 starts from the representation it was trained to give — or the
//! first token's state), dropout and a head (linear, or a small MLP).
//!
//! Encoder variables keep their checkpoint names at the root of the `VarStore` and the
//! head lives under `head.`, so one safetensors file holds a whole published model and
//! reads back with the same loader as a base checkpoint.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

pub use hone_domain::job::{HeadType, PoolingType as Pooling};

use crate::base_model::Modality;
use crate::bert::{BertConfig, BertModel};
use crate::error::TrainError;
use crate::layers::{head_paths, mean_pool, Linear, WeightInit};
use crate::objective::{Objective, TaskSpec};
use crate::tokenize::Batch;
pub use hone_domain::dataset::TaskType;

/// Weights file of base and published models.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Encoder config file of base and published models.
pub const CONFIG_FILE: &str = "config.json";
/// What hone adds to a published model directory so it can be served.
pub const MODEL_META_FILE: &str = "hone_model.json";
/// The `format_version` this crate writes; it reads every version since 1 (version 1
/// had neither `head` nor a pooling other than mean, version 2 no task type, version 3
/// no modality: the defaults describe them).
pub const MODEL_META_VERSION: u32 = 4;

/// `hone_model.json`: what a published directory needs besides the base model's files
/// to be served — the label order of the head and how inputs were cut. The worker
/// writes its own manifest (job, metrics, lineage) next to it; this one is what the
/// predictor trusts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMeta {
    pub format_version: u32,
    /// What the model reads; text for every file before version 4.
    #[serde(default)]
    pub modality: Modality,
    /// The encoder family (config.json's `model_type`).
    pub architecture: String,
    pub pooling: Pooling,
    #[serde(default)]
    pub head: HeadType,
    /// Whether inputs are text pairs (`[CLS] a [SEP] b [SEP]`).
    #[serde(default)]
    pub text_pairs: bool,
    /// Single-label, multi-label, or multi-task.
    #[serde(default)]
    pub task_type: TaskType,
    /// Label names in the order of the head's outputs; empty for multi-task.
    pub labels: Vec<String>,
    /// Multi-task: one head per task, in this order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskSpec>,
    /// Multi-label: a label is predicted when its probability is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// Tokens per text; 0 for an image model, whose input size is config.json's.
    pub max_seq_len: usize,
}

impl ModelMeta {
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(MODEL_META_FILE);
        let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
        let meta: Self = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::config(&path, format!("not a hone model file: {e}")))?;
        if !(1..=MODEL_META_VERSION).contains(&meta.format_version) {
            return Err(TrainError::config(
                &path,
                format!(
                    "format_version {} is not supported (this build reads {MODEL_META_VERSION})",
                    meta.format_version
                ),
            ));
        }
        meta.objective()
            .validate()
            .map_err(|e| TrainError::config(&path, e.to_string()))?;
        Ok(meta)
    }

    /// What the model's heads predict.
    pub fn objective(&self) -> Objective {
        match self.task_type {
            TaskType::Classification => Objective::classification(self.labels.clone()),
            TaskType::MultiLabel => Objective::multi_label(self.labels.clone()),
            TaskType::MultiTask => Objective::multi_task(self.tasks.clone()),
        }
    }

    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(MODEL_META_FILE);
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| TrainError::config(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
    }
}

/// The classifier on top of the pooled vector.
#[derive(Debug)]
enum Head {
    Linear(Linear),
    /// `dense` → tanh → dropout → `out_proj`, named as transformers' RoBERTa head.
    Mlp {
        dense: Linear,
        out_proj: Linear,
    },
}

/// Encoder + pooling + dropout + head.
#[derive(Debug)]
pub struct SequenceClassifier {
    encoder: BertModel,
    /// One head per task, in order; their logits are concatenated.
    heads: Vec<Head>,
    pooling: Pooling,
    dropout: f64,
    num_labels: usize,
}

impl SequenceClassifier {
    /// Creates the variables of encoder and one head of `num_labels` outputs under `vs`.
    pub fn new(
        vs: &nn::Path,
        config: &BertConfig,
        num_labels: usize,
        head: HeadType,
        pooling: Pooling,
        init: WeightInit,
    ) -> Result<Self, TrainError> {
        Self::with_heads(vs, config, &[num_labels], false, head, pooling, init)
    }

    /// Creates the variables of the encoder and of one head per entry of `outputs`:
    /// under `head.` for a single head, under `head.{i}.` for the `i`-th task's head
    /// when `per_task`.
    pub fn with_heads(
        vs: &nn::Path,
        config: &BertConfig,
        outputs: &[usize],
        per_task: bool,
        head: HeadType,
        pooling: Pooling,
        init: WeightInit,
    ) -> Result<Self, TrainError> {
        let paths = head_paths(vs, outputs, per_task)?;
        let encoder = BertModel::new(vs, config, init)?;
        let hidden = config.hidden_size;
        let heads = paths
            .into_iter()
            .map(|(head_vs, n)| {
                Ok(match head {
                    HeadType::Linear => Head::Linear(Linear::new(&head_vs, hidden, n, init)?),
                    HeadType::Mlp => Head::Mlp {
                        dense: Linear::new(&head_vs.sub("dense"), hidden, hidden, init)?,
                        out_proj: Linear::new(&head_vs.sub("out_proj"), hidden, n, init)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let num_labels = outputs.iter().sum();
        Ok(Self {
            encoder,
            heads,
            pooling,
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

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Logits `[batch, num_labels]`. `train` enables dropout.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        let pooled = self.features(batch, train)?;
        self.head_forward(&pooled, train)
    }

    /// The pooled encoder output `[batch, hidden]`: what the head sees, and what
    /// feature extraction caches.
    pub fn features(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        let hidden = self.encoder.forward(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            train,
        )?;
        Ok(pool(&hidden, &batch.attention_mask, self.pooling)?)
    }

    /// Logits from pooled features, every head's side by side; `train` enables
    /// dropout (drawn once per head, as separate heads would).
    pub fn head_forward(&self, pooled: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let dropout = |xs: Tensor| -> Result<Tensor, TrainError> {
            Ok(if train && self.dropout > 0.0 {
                xs.f_dropout(self.dropout, true)?
            } else {
                xs
            })
        };
        let mut logits = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let xs = dropout(pooled.shallow_clone())?;
            logits.push(match head {
                Head::Linear(linear) => linear.forward(&xs)?,
                Head::Mlp { dense, out_proj } => {
                    let xs = dropout(dense.forward(&xs)?.f_tanh()?)?;
                    out_proj.forward(&xs)?
                }
            });
        }
        Ok(match logits.len() {
            1 => logits.remove(0),
            _ => Tensor::f_cat(&logits, 1)?,
        })
    }
}

/// One vector per input from the encoder's last hidden states `[batch, seq, hidden]`.
pub fn pool(
    hidden: &Tensor,
    attention_mask: &Tensor,
    pooling: Pooling,
) -> Result<Tensor, tch::TchError> {
    match pooling {
        Pooling::Mean => mean_pool(hidden, attention_mask),
        Pooling::Cls => hidden.f_select(1, 0),
    }
}
