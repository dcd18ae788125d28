//! The layout of a model directory, in one place: what a base model directory holds
//! (config.json and model.safetensors, and for a text model the Hugging Face
//! tokenizer files) and what hone adds when it publishes a model (`hone_model.json`,
//! [`ModelMeta`]). The architectures, the base-model catalogue, training and serving
//! all open such directories; they take the names from here rather than from each
//! other.

use std::path::Path;

use serde::{Deserialize, Serialize};

use hone_domain::dataset::{Modality, TaskType};
use hone_domain::job::{HeadType, PoolingType as Pooling};

use crate::error::TrainError;
use crate::objective::{Objective, TaskSpec};

/// Weights file of base and published models.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Encoder config file of base and published models.
pub const CONFIG_FILE: &str = "config.json";
/// The file a Hugging Face model directory keeps its fast tokenizer in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Base-model files a published model carries so it can be served (and opened by
/// transformers) without the base model directory.
pub(crate) const REQUIRED_FILES: &[&str] = &[CONFIG_FILE, TOKENIZER_FILE];
pub(crate) const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

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
