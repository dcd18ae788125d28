//! What training reports: progress after each step ([`StepProgress`]), the metrics of
//! each epoch ([`EpochMetrics`], [`EvalMetrics`]) and the final [`Evaluation`]. The
//! observer, checkpoints, the predictor's `evaluate` and the worker all read them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use hone_domain::metrics::GeneralizationGap;

use crate::objective::Report;

/// Progress after one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepProgress {
    /// 1-based.
    pub epoch: u32,
    /// Global, 1-based.
    pub step: u64,
    pub total_steps: u64,
    /// Mean cross-entropy of this step's batch.
    pub loss: f64,
    /// The learning rate this step used.
    pub learning_rate: f64,
    /// Since training started (model loading and tokenization included).
    pub elapsed: Duration,
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    /// Mean cross-entropy over the epoch's training examples (with dropout on).
    pub train_loss: f64,
    pub validation: Option<EvalMetrics>,
}

/// Metrics on a labelled set, computed in eval mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    /// Unweighted mean of per-class F1 over the classes that occur in the labels or
    /// the predictions (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    pub examples: usize,
    /// Multi-label: the decision threshold tuned on this data, at which the metrics
    /// above were computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
}

/// How well the returned model does, measured once training is over.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// The epoch whose weights the model holds.
    pub best_epoch: u32,
    /// Epochs run, fewer than configured when early stopping ended training.
    pub epochs_run: u32,
    pub stopped_early: bool,
    /// On the validation data: per-class metrics and the confusion matrix (per task
    /// for multi-task), or per-label metrics at the tuned threshold (multi-label).
    pub validation: Report,
    /// On (at most [`TRAIN_EVAL_EXAMPLES`] of) the training data, in eval mode; as
    /// [`Report::accuracy`] defines it for the task type.
    pub train_accuracy: f64,
    pub generalization: GeneralizationGap,
}

/// Training examples scored for the train/validation gap: enough for a stable
/// accuracy, few enough that the extra pass stays cheap next to training.
pub const TRAIN_EVAL_EXAMPLES: usize = 2000;
