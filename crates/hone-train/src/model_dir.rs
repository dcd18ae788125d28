//! The layout of a model directory, in one place: what a base model directory holds
//! (config.json and model.safetensors, and for a text model the Hugging Face
//! tokenizer files) and what hone adds when it publishes a model: `hone_model.json`
//! ([`ModelMeta`], what the predictor trusts) and `manifest.json` ([`Manifest`], the
//! job's lineage and metrics). The architectures, the base-model catalogue, training,
//! the worker and serving all open such directories; they take the names and the two
//! file types from here rather than from each other.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use hone_domain::dataset::{Modality, TaskType};
use hone_domain::job::{HeadType, Hyperparameters, Method, PoolingType as Pooling};
use hone_domain::resources::JobResult;

use crate::error::TrainError;
use crate::metrics::EvalMetrics;
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
    /// Served other than in fp32 (a text model on the CPU); absent: fp32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<Quantization>,
}

/// How a model is served when not in fp32, and what that changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quantization {
    #[serde(rename = "type")]
    pub kind: QuantizationType,
    /// The validation data's metrics both ways, when the job had validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<QuantizedEval>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantizationType {
    /// The encoder's Linear layers in int8 (dynamic quantization, fbgemm), on the CPU.
    Int8,
}

/// One evaluation of the same weights in fp32 and quantized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantizedEval {
    pub fp32: EvalMetrics,
    pub quantized: EvalMetrics,
}

impl ModelMeta {
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(MODEL_META_FILE);
        let meta: Self = read_json(&path, "a hone model file")?;
        check_version(&path, meta.format_version, 1..=MODEL_META_VERSION)?;
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

/// What the worker writes next to `hone_model.json`: the job a published model came
/// from, for people and for lineage.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The `format_version` of [`Manifest`]s this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 2;

/// `manifest.json`: the job a published model came from (base model, data, method,
/// settings, seed), what it achieved, and which model it was materialised from when
/// it is a checkpoint's. The predictor never reads it.
///
/// The file's keys are sorted at every level, as the `serde_json::json!` literal that
/// wrote it before this type did (serde_json without `preserve_order`): [`write`]
/// goes through a `serde_json::Value` to keep those bytes. Fields are declared in the
/// same order. `null` stands for an absent `tasks` or `validation_file`, as before;
/// `metrics`, `published_from` and `checkpoint_epoch` are left out when absent (only a
/// checkpoint's manifest lacks `metrics`, and only it has the other two).
///
/// [`write`]: Manifest::write
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub base_model: String,
    /// A checkpoint's model: the epoch whose weights it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_epoch: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub format_version: u32,
    pub hone_version: String,
    pub hyperparameters: Hyperparameters,
    pub job_id: String,
    /// Label names in the order of the head's outputs; empty for multi-task.
    pub labels: Vec<String>,
    pub method: Method,
    /// The job's result; a checkpoint's model has none (its weights are another
    /// epoch's than the ones the result describes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<JobResult>,
    pub model_id: String,
    /// A checkpoint's model: the id of the job's published model it was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_from: Option<String>,
    pub seed: i64,
    pub task_type: TaskType,
    /// Multi-task: each task's labels, by task name.
    pub tasks: Option<BTreeMap<String, Vec<String>>>,
    pub training_file: String,
    pub validation_file: Option<String>,
}

impl Manifest {
    /// The manifest of the model of a checkpoint's `epoch`, published as `model_id`
    /// from the job's model this manifest describes: it names the new id, keeps the
    /// old one as `published_from`, and drops the job's metrics, which describe
    /// another epoch's weights.
    pub fn for_checkpoint(self, model_id: &str, epoch: u32) -> Self {
        Self {
            published_from: Some(self.model_id),
            model_id: model_id.to_owned(),
            checkpoint_epoch: Some(epoch),
            metrics: None,
            ..self
        }
    }

    /// The file's bytes: pretty-printed JSON with every object's keys sorted.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec_pretty(&serde_json::to_value(self)?)
    }

    /// Writes `manifest.json` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), TrainError> {
        let path = dir.join(MANIFEST_FILE);
        let json = self
            .to_json()
            .map_err(|e| TrainError::config(&path, e.to_string()))?;
        std::fs::write(&path, json).map_err(|e| TrainError::io(&path, e))
    }

    /// Reads `dir`'s `manifest.json`; refuses another format version.
    pub fn read(dir: &Path) -> Result<Self, TrainError> {
        let path = dir.join(MANIFEST_FILE);
        let manifest: Self = read_json(&path, "a hone manifest")?;
        check_version(
            &path,
            manifest.format_version,
            MANIFEST_VERSION..=MANIFEST_VERSION,
        )?;
        Ok(manifest)
    }
}

/// The JSON file at `path` as a `T`; `what` names a `T` when the file is not one.
fn read_json<T: DeserializeOwned>(path: &Path, what: &str) -> Result<T, TrainError> {
    let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| TrainError::config(path, format!("not {what}: {e}")))
}

/// Refuses a file of a `format_version` outside `supported`.
fn check_version(
    path: &Path,
    version: u32,
    supported: RangeInclusive<u32>,
) -> Result<(), TrainError> {
    if supported.contains(&version) {
        return Ok(());
    }
    Err(TrainError::config(
        path,
        format!(
            "format_version {version} is not supported (this build reads {})",
            supported.end()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use hone_domain::job::MethodType;
    use hone_domain::resources::EvalReport;

    use super::*;

    /// A job's values as the worker has them when it publishes a model, with what its
    /// objective says of the heads.
    struct Job {
        id: String,
        base_model: String,
        training_file: String,
        validation_file: Option<String>,
        method: Method,
        hyperparameters: Hyperparameters,
        seed: i64,
        result: JobResult,
        created_at: DateTime<Utc>,
        task_type: TaskType,
        labels: Vec<String>,
        tasks: Option<BTreeMap<String, Vec<String>>>,
    }

    fn job(validation_file: Option<String>, task_type: TaskType) -> Job {
        let labels = vec!["neg".to_owned(), "pos".to_owned()];
        let tasks = BTreeMap::from([
            ("topic".to_owned(), vec!["a".to_owned(), "b".to_owned()]),
            ("tone".to_owned(), vec!["x".to_owned(), "y".to_owned()]),
        ]);
        let multi_task = task_type == TaskType::MultiTask;
        Job {
            id: "ftjob-1".into(),
            base_model: "all-MiniLM-L6-v2".into(),
            training_file: "file-1".into(),
            validation_file,
            method: Method {
                kind: MethodType::Partial,
                frozen_layers: Some(3),
                ..Method::default()
            },
            hyperparameters: Hyperparameters::default(),
            seed: 7,
            result: JobResult {
                train_loss: 0.25,
                validation: Some(EvalReport {
                    loss: 0.5,
                    accuracy: 0.75,
                    macro_f1: 0.7,
                    examples: 20,
                    threshold: None,
                }),
                trained_examples: 80,
                training_seconds: 1.5,
                best_epoch: Some(2),
                epochs_run: Some(3),
                ..JobResult::default()
            },
            created_at: DateTime::from_timestamp(1_700_000_000, 123_456_789).expect("a time"),
            task_type,
            labels: if multi_task { Vec::new() } else { labels },
            tasks: multi_task.then_some(tasks),
        }
    }

    fn samples() -> [Job; 3] {
        [
            job(Some("file-2".into()), TaskType::Classification),
            job(None, TaskType::MultiLabel),
            job(None, TaskType::MultiTask),
        ]
    }

    /// The worker's `write_manifest` literal, as it stood before [`Manifest`].
    fn old_literal(job: &Job, model_id: &str) -> serde_json::Value {
        serde_json::json!({
            "format_version": 2,
            "model_id": model_id,
            "job_id": job.id,
            "base_model": job.base_model,
            "task_type": job.task_type,
            "labels": job.labels,
            "tasks": job.tasks,
            "method": job.method,
            "hyperparameters": job.hyperparameters,
            "seed": job.seed,
            "training_file": job.training_file,
            "validation_file": job.validation_file,
            "metrics": job.result,
            "created_at": job.created_at,
            "hone_version": env!("CARGO_PKG_VERSION"),
        })
    }

    fn manifest(job: &Job, model_id: &str) -> Manifest {
        Manifest {
            base_model: job.base_model.clone(),
            checkpoint_epoch: None,
            created_at: job.created_at,
            format_version: MANIFEST_VERSION,
            hone_version: env!("CARGO_PKG_VERSION").into(),
            hyperparameters: job.hyperparameters.clone(),
            job_id: job.id.clone(),
            labels: job.labels.clone(),
            method: job.method.clone(),
            metrics: Some(job.result.clone()),
            model_id: model_id.into(),
            published_from: None,
            seed: job.seed,
            task_type: job.task_type,
            tasks: job.tasks.clone(),
            training_file: job.training_file.clone(),
            validation_file: job.validation_file.clone(),
        }
    }

    /// `hone-serving`'s `materialize` edit of a manifest, as it stood before
    /// [`Manifest::for_checkpoint`].
    fn old_checkpoint_edit(
        mut manifest: serde_json::Value,
        model_id: &str,
        epoch: u32,
    ) -> serde_json::Value {
        if let Some(fields) = manifest.as_object_mut() {
            if let Some(final_id) = fields.insert("model_id".into(), model_id.into()) {
                fields.insert("published_from".into(), final_id);
            }
            fields.insert("checkpoint_epoch".into(), epoch.into());
            fields.remove("metrics");
        }
        manifest
    }

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).expect("utf-8")
    }

    #[test]
    fn manifest_writes_the_bytes_of_the_old_literal() {
        for job in samples() {
            let old = serde_json::to_vec_pretty(&old_literal(&job, "ft:model-1")).expect("json");
            let new = manifest(&job, "ft:model-1").to_json().expect("json");
            assert_eq!(text(new), text(old));
        }
    }

    #[test]
    fn for_checkpoint_is_the_old_value_edit() {
        for job in samples() {
            let old = old_checkpoint_edit(old_literal(&job, "ft:model-1"), "ft:model-1:ckpt-2", 2);
            let old = serde_json::to_vec_pretty(&old).expect("json");
            let new = manifest(&job, "ft:model-1")
                .for_checkpoint("ft:model-1:ckpt-2", 2)
                .to_json()
                .expect("json");
            assert_eq!(text(new), text(old));
        }
    }

    #[test]
    fn manifest_reads_back_what_it_wrote() {
        let dir = tempfile::tempdir().expect("tempdir");
        for job in samples() {
            let written = manifest(&job, "ft:model-1");
            written.write(dir.path()).expect("write");
            assert_eq!(Manifest::read(dir.path()).expect("read"), written);
            let checkpoint = written.for_checkpoint("ft:model-1:ckpt-1", 1);
            checkpoint.write(dir.path()).expect("write");
            assert_eq!(Manifest::read(dir.path()).expect("read"), checkpoint);
        }
    }
}
