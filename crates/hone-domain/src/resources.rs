//! The objects the API returns, shared by the storage layer that builds them and the
//! API that documents and serialises them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::data_report::DataReport;
use crate::dataset::{DatasetFormat, Modality, TaskType};
use crate::job::{Hyperparameters, JobStatus, Method};
use crate::metrics::{ClassificationReport, GeneralizationGap, MultiLabelReport, TaskReport};

/// An uploaded, validated dataset.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FileObject {
    #[schema(example = "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "file")]
    pub object: &'static str,
    /// Size in bytes.
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    #[schema(example = "reviews.jsonl")]
    pub filename: String,
    #[schema(example = "fine-tune")]
    pub purpose: String,
    pub format: DatasetFormat,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
    /// Number of labeled examples.
    pub examples: i64,
    /// Examples per label (for multi-label files: examples carrying the label; empty
    /// for multi-task files, see `task_label_counts`).
    pub label_counts: BTreeMap<String, u64>,
    /// What the file holds, inferred from its first example.
    pub task_type: TaskType,
    /// Texts or images, from the first example (images for a zip): a job needs a base
    /// model of the same modality.
    pub modality: Modality,
    /// Whether every example is a text pair (`text_pair`).
    pub text_pairs: bool,
    /// Multi-task files: examples per label of each task.
    pub task_label_counts: BTreeMap<String, BTreeMap<String, u64>>,
    /// Always `processed`: a file that failed validation is never stored.
    #[schema(example = "processed")]
    pub status: &'static str,
    /// When the file is deleted (Unix seconds), if it was uploaded with
    /// `expires_after`; a file still used by an unfinished job is kept until it ends.
    pub expires_at: Option<i64>,
}

/// Where a running job is, and when it should be done.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobProgress {
    pub epoch: u32,
    pub total_epochs: u32,
    pub step: u64,
    pub total_steps: u64,
    /// Training loss of the last step.
    pub train_loss: Option<f64>,
    pub elapsed_seconds: f64,
    /// Estimated seconds left, from the mean step time so far.
    pub eta_seconds: Option<f64>,
    /// When the job should be done (Unix seconds): the time of this report plus
    /// `eta_seconds`.
    #[serde(default)]
    pub estimated_finish: Option<i64>,
}

/// Validation metrics of one epoch (or of the final model).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EvalReport {
    pub loss: f64,
    /// Single-label: accuracy; multi-label: subset accuracy (the exact label set);
    /// multi-task: the mean of the tasks' accuracies.
    pub accuracy: f64,
    /// For multi-task, the mean of the tasks' macro-F1.
    pub macro_f1: f64,
    pub examples: u64,
    /// Multi-label: the decision threshold tuned on the validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

/// What a finished job achieved.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobResult {
    /// Mean training loss of the epoch whose weights were published.
    pub train_loss: f64,
    /// Validation metrics of that epoch, when there was validation data (a file, or a
    /// split of the training file).
    pub validation: Option<EvalReport>,
    pub trained_examples: u64,
    pub training_seconds: f64,
    /// The epoch whose weights were published: the best by the monitored validation
    /// metric, else the last.
    #[serde(default)]
    pub best_epoch: Option<u32>,
    #[serde(default)]
    pub epochs_run: Option<u32>,
    /// Whether early stopping ended training before `hyperparameters.epochs`.
    #[serde(default)]
    pub stopped_early: bool,
    /// The published model on the validation data, in detail.
    #[serde(default)]
    pub evaluation: Option<EvaluationReport>,
    /// Label balance, duplicates, leakage and truncation of the job's data.
    #[serde(default)]
    pub data_report: Option<DataReport>,
    /// How well the base model's frozen features suited the data before training.
    #[serde(default)]
    pub transferability: Option<Transferability>,
    /// Tokens trained on: each training input's tokens (up to `max_seq_len`) times
    /// the epochs run. None for image jobs.
    #[serde(default)]
    pub trained_tokens: Option<u64>,
    /// The file of per-step metrics (CSV) the job wrote, listed in the job's
    /// `result_files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_file: Option<String>,
    /// With `hyperparameters.quantization`: how the model serves, and what that
    /// changes on the validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<QuantizationReport>,
    /// With `"learning_rate": "auto"`: the rates tried, their validation scores, and the
    /// one the job trained with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub learning_rate_search: Option<crate::job::LearningRateSearch>,
}

/// What serving the published model quantized changes, measured by the job.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct QuantizationReport {
    #[serde(rename = "type")]
    pub kind: crate::job::Quantization,
    /// The validation metrics of the published weights in fp32, and quantized as the
    /// model serves; absent without validation data.
    pub validation_fp32: Option<EvalReport>,
    pub validation_quantized: Option<EvalReport>,
}

/// The final evaluation of a published model.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EvaluationReport {
    /// Single-label models: accuracy, macro-F1, per-class precision/recall/F1/support,
    /// confusion matrix, calibration error, on the validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<ClassificationReport>,
    /// Multi-label models: micro/macro-F1, subset accuracy and per-label metrics at the
    /// decision threshold tuned on the validation data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multi_label: Option<MultiLabelReport>,
    /// Multi-task models: each task's report on the validation examples that label it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskReport>,
    /// Training versus validation accuracy (subset accuracy for multi-label, the mean
    /// over tasks for multi-task), with an overfitting flag.
    pub generalization: GeneralizationGap,
}

/// A transferability estimate: LogME (You et al., ICML 2021), the log evidence per
/// example of a Bayesian linear model on the frozen encoder's features. Higher means
/// the pretrained features already separate the labels better; it compares base models
/// on the same data (not across datasets). `random_init_score` is the same estimate for
/// a randomly initialised encoder of the same shape: the no-transfer reference.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Transferability {
    #[schema(example = "logme")]
    pub metric: String,
    pub score: f64,
    pub random_init_score: Option<f64>,
    /// Training examples the estimate used.
    pub examples: u64,
    /// Dimensions of the features.
    #[serde(default)]
    pub feature_dimensions: u64,
    /// With no more examples than feature dimensions a linear model fits the labels
    /// exactly and the evidence says little: such a score is only a weak hint.
    #[serde(default)]
    pub reliable: bool,
}

/// One point of a job's training-loss curve.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct StepPoint {
    /// The last optimizer step the point covers.
    pub step: u64,
    pub epoch: u32,
    /// Mean training loss over the steps the point covers (one step, unless the job
    /// is long enough that neighbouring steps were averaged).
    pub train_loss: f64,
    pub learning_rate: f64,
}

/// One epoch of a job.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct EpochPoint {
    pub epoch: u32,
    pub train_loss: f64,
    pub validation: Option<EvalReport>,
}

/// The weights a job had at the end of one epoch, with that epoch's metrics: OpenAI's
/// checkpoint object (`id` … `metrics`), and hone's own fields after it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobCheckpoint {
    #[schema(example = "ftckpt-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f-2")]
    pub id: String,
    #[schema(example = "fine_tuning.job.checkpoint")]
    pub object: &'static str,
    pub created_at: i64,
    /// The model id this checkpoint is served under: `published_model` once it was
    /// published, else the id that `POST …/checkpoints/{epoch}/publish` gives it (null
    /// until the job has succeeded, since it is made from the job's model).
    #[schema(example = "ft:all-MiniLM-L6-v2:reviews:9d0e1f2a:ckpt-2")]
    pub fine_tuned_model_checkpoint: Option<String>,
    pub fine_tuning_job_id: String,
    /// Optimizer steps taken by the end of the epoch (= `step`).
    #[schema(example = 120)]
    pub step_number: u64,
    pub metrics: CheckpointMetrics,
    /// = `fine_tuning_job_id`.
    pub job_id: String,
    #[schema(example = 2)]
    pub epoch: u32,
    #[schema(example = 120)]
    pub step: u64,
    /// Size of the stored weights: only those training changed (all of them for
    /// `full`, the unfrozen top for `partial`, the head for `feature_extraction`).
    pub bytes: u64,
    /// The model published from this checkpoint, if it was.
    #[schema(example = "ft:all-MiniLM-L6-v2:reviews:9d0e1f2a:ckpt-2")]
    pub published_model: Option<String>,
}

/// A checkpoint's metrics in OpenAI's names, then hone's epoch metrics. A classifier
/// predicts one label per input, so OpenAI's "mean token accuracy" is its accuracy;
/// the validation set is always evaluated whole, so the `full_` values equal the others.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CheckpointMetrics {
    pub step: u64,
    pub train_loss: f64,
    pub valid_loss: Option<f64>,
    pub valid_mean_token_accuracy: Option<f64>,
    pub full_valid_loss: Option<f64>,
    pub full_valid_mean_token_accuracy: Option<f64>,
    pub epoch: u32,
    /// Every validation metric of the epoch, when there was validation data.
    pub validation: Option<EvalReport>,
}

impl CheckpointMetrics {
    pub fn new(step: u64, point: EpochPoint) -> Self {
        let loss = point.validation.as_ref().map(|v| v.loss);
        let accuracy = point.validation.as_ref().map(|v| v.accuracy);
        Self {
            step,
            train_loss: point.train_loss,
            valid_loss: loss,
            valid_mean_token_accuracy: accuracy,
            full_valid_loss: loss,
            full_valid_mean_token_accuracy: accuracy,
            epoch: point.epoch,
            validation: point.validation,
        }
    }
}

/// The curves a worker stores while a job runs.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobCurves {
    #[serde(default)]
    pub steps: Vec<StepPoint>,
    #[serde(default)]
    pub epochs: Vec<EpochPoint>,
}

/// Everything measured about a job: loss and metric curves while it runs, the data
/// report, the transferability estimate and the final evaluation once it is done.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobMetrics {
    #[schema(example = "fine_tuning.job.metrics")]
    pub object: &'static str,
    pub job_id: String,
    pub status: JobStatus,
    pub steps: Vec<StepPoint>,
    pub epochs: Vec<EpochPoint>,
    /// The epoch whose weights were published.
    pub best_epoch: Option<u32>,
    pub stopped_early: bool,
    pub evaluation: Option<EvaluationReport>,
    pub data_report: Option<DataReport>,
    pub transferability: Option<Transferability>,
}

/// Why a job failed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct JobError {
    /// `invalid_training_file`, `base_model_unavailable`, `training_error`, `worker_lost`, ...
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct FineTuningJob {
    #[schema(example = "ftjob-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "fine_tuning.job")]
    pub object: &'static str,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    /// The base model (OpenAI's name for it).
    #[schema(example = "all-MiniLM-L6-v2")]
    pub model: String,
    /// The base model (hone's name for it; = `model`).
    #[schema(example = "all-MiniLM-L6-v2")]
    pub base_model: String,
    /// The published model's id, once the job succeeded.
    pub fine_tuned_model: Option<String>,
    pub status: JobStatus,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub method: Method,
    /// Every hyperparameter the job runs with, defaults filled in; `n_epochs` repeats
    /// `epochs` under OpenAI's name.
    #[serde(serialize_with = "with_openai_names")]
    #[schema(value_type = JobHyperparameters)]
    pub hyperparameters: Hyperparameters,
    /// Tokens trained on, once the job succeeded (see `result.trained_tokens`).
    pub trained_tokens: Option<u64>,
    /// While the job runs: when it should be done (Unix seconds), from its progress.
    pub estimated_finish: Option<i64>,
    /// Once the job succeeded: the id of a CSV file of its per-step metrics
    /// (`step,epoch,train_loss,learning_rate,valid_loss,valid_accuracy,valid_macro_f1`;
    /// validation columns on each epoch's last step), to download from
    /// `GET /v1/files/{file_id}/content`.
    pub result_files: Vec<String>,
    pub seed: i64,
    pub suffix: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub progress: Option<JobProgress>,
    pub result: Option<JobResult>,
    pub error: Option<JobError>,
    /// Attempts so far; a job whose worker died is retried up to `max_attempts`.
    pub attempt: i32,
    pub max_attempts: i32,
}

/// A job's hyperparameters as the API shows them: hone's, and `n_epochs` (OpenAI's
/// name for `epochs`). `batch_size` and `learning_rate_multiplier` are common to both.
#[derive(Serialize, ToSchema)]
pub struct JobHyperparameters {
    #[serde(flatten)]
    pub hyperparameters: Hyperparameters,
    #[schema(example = 3)]
    pub n_epochs: u32,
}

fn with_openai_names<S: serde::Serializer>(hp: &Hyperparameters, s: S) -> Result<S::Ok, S::Error> {
    JobHyperparameters {
        hyperparameters: hp.clone(),
        n_epochs: hp.epochs,
    }
    .serialize(s)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventLevel {
    Info,
    Warn,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Message,
    Metrics,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct JobEvent {
    #[schema(example = "ftevent-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "fine_tuning.job.event")]
    pub object: &'static str,
    pub created_at: i64,
    pub level: EventLevel,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[schema(example = "Epoch 1/3 done: train loss 0.5312, validation accuracy 0.781")]
    pub message: String,
    /// For `metrics` events: step, epoch, losses, metrics.
    pub data: Option<serde_json::Value>,
}

/// A published fine-tuned model.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModelObject {
    #[schema(example = "ft:all-MiniLM-L6-v2:reviews:9d0e1f2a")]
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    pub created: i64,
    #[schema(example = "user")]
    pub owned_by: &'static str,
    pub base_model: String,
    pub job_id: String,
    /// What predict returns: one label, a set of labels, or one label per task.
    pub task_type: TaskType,
    /// The labels predict can return, in the head's order (empty for multi-task).
    pub labels: Vec<String>,
    /// Multi-task: each task with the labels it can return.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = json!({"sentiment": ["negative", "positive"], "length": ["long", "short"]}))]
    pub tasks: Option<BTreeMap<String, Vec<String>>>,
    /// Set when the model was published from this epoch's checkpoint of its job.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_epoch: Option<u32>,
    pub metrics: Option<JobResult>,
}

/// A base model as `GET /v1/models` lists it beside the fine-tuned ones, so that
/// OpenAI's `models.list()` and `models.retrieve()` find it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SystemModelObject {
    #[schema(example = "all-MiniLM-L6-v2")]
    pub id: String,
    #[schema(example = "model")]
    pub object: &'static str,
    /// When the model's folder was installed (Unix seconds).
    pub created: i64,
    /// Always `system`: the server's own model, not fine-tuned by a project.
    #[schema(example = "system")]
    pub owned_by: &'static str,
    /// `text` or `image`.
    #[schema(example = "text")]
    pub modality: &'static str,
    #[schema(example = "bert")]
    pub architecture: String,
}

/// One entry of `GET /v1/models`: a fine-tuned model (`owned_by: "user"`) or a base
/// model (`owned_by: "system"`).
#[derive(Clone, Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum AnyModel {
    FineTuned(Box<ModelObject>),
    Base(SystemModelObject),
}

impl AnyModel {
    pub fn id(&self) -> &str {
        match self {
            AnyModel::FineTuned(m) => &m.id,
            AnyModel::Base(m) => &m.id,
        }
    }
}

/// A pretrained backbone this server can fine-tune, found in the base-models folder.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct BaseModelObject {
    /// The folder's name.
    #[schema(example = "all-MiniLM-L6-v2")]
    pub id: String,
    #[schema(example = "base_model")]
    pub object: &'static str,
    /// `text` or `image`.
    #[schema(example = "text")]
    pub modality: &'static str,
    /// `model_type` from the model's config.json.
    #[schema(example = "bert")]
    pub architecture: String,
    #[schema(example = 22713216)]
    pub parameters: u64,
    /// Width of the pooled features a head is trained on.
    #[schema(example = 384)]
    pub hidden_size: u64,
    /// The layers the `partial` method can freeze.
    #[schema(example = 6)]
    pub layers: u64,
    /// Text models: the longest input, in tokens, the model accepts.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 512)]
    pub max_seq_len: Option<u64>,
    /// Image models: the side, in pixels, of the square images the model reads.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = 224)]
    pub image_size: Option<u64>,
    /// Where the model came from.
    #[schema(example = "local directory all-MiniLM-L6-v2")]
    pub source: String,
}
