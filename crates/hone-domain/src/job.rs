//! Fine-tuning jobs: their states and the validated training recipe.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod auto;
mod auto_search;
mod hyperparameters;
mod learning_rate;
mod openai;

pub use auto::{
    choose_method, data_summary, prior_choice, AutoEvidence, AUTO_LONG_TOKENS,
    AUTO_MIN_CLASS_EXAMPLES, AUTO_PARTIAL_BELOW, AUTO_PROBE_GOOD_ENOUGH,
};
pub use auto_search::{
    choose_by_trials, costlier_candidates, plan_trials, tie_margin, Candidate, CandidateTrial,
    SearchSettings, TrialBar, AUTO_DEFAULT_BUDGET, AUTO_MAX_BUDGET, AUTO_TIE_MARGIN,
};
pub use hyperparameters::{
    Hyperparameters, HyperparametersInput, HEAD_LEARNING_RATE, IMAGE_FINE_TUNE_LEARNING_RATE,
    MAX_DEFAULT_EPOCHS, MAX_LEARNING_RATE, MIN_DEFAULT_STEPS, TEXT_FINE_TUNE_LEARNING_RATE,
};
pub use learning_rate::{
    choose_learning_rate, learning_rate_grid, trial_epochs, LearningRateSearch, LearningRateTrial,
    LEARNING_RATE_FACTORS,
};
pub use openai::{
    base_model_of, check_integrations, AutoOr, MethodInput, MethodInputType, RequestedMethod,
    SupervisedInput,
};

/// A job's lifecycle. `validating_files` exists for compatibility with the OpenAI API;
/// hone validates files on upload, so its jobs start `queued`. `paused` (as OpenAI has
/// it): the job holds no worker and goes on from its last checkpoint once resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    Paused,
}

impl JobStatus {
    pub const ALL: [JobStatus; 7] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
        JobStatus::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
            JobStatus::Paused => "paused",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled
        )
    }
}

/// How the pretrained model is transferred to the user's task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    /// Fine-tune every weight of the encoder and the new head.
    #[default]
    Full,
    /// Freeze the embeddings and the first `frozen_layers` encoder layers; train the
    /// rest and the head. Cheaper than `full` and less prone to overfit small data.
    Partial,
    /// The pretrained encoder is a fixed feature extractor: it runs once over the data
    /// (the features are cached for later jobs on the same file and base model) and only
    /// the head trains. By far the fastest; best when data is scarce.
    FeatureExtraction,
    /// The server picks one of the others: the head alone on frozen features as the
    /// floor, short trials of costlier strategies within `auto_budget`, the best
    /// validation score winning; `method.chosen` lists every candidate and says why.
    Auto,
}

impl MethodType {
    pub fn as_str(self) -> &'static str {
        match self {
            MethodType::Full => "full",
            MethodType::Partial => "partial",
            MethodType::FeatureExtraction => "feature_extraction",
            MethodType::Auto => "auto",
        }
    }

    /// Whether only the head trains, which changes the sensible defaults.
    fn head_only(self) -> bool {
        self == MethodType::FeatureExtraction
    }
}

/// The transfer strategy of a job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "partial", "frozen_layers": 3}))]
pub struct Method {
    #[serde(rename = "type", default)]
    pub kind: MethodType,
    /// `partial` only: encoder layers frozen from the bottom (0 to the model's layer
    /// count). Default: half of the layers, rounded down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_layers: Option<u32>,
    /// `auto` only, set by the worker: the strategy it chose and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub chosen: Option<ChosenMethod>,
    /// The from-scratch baseline: the base model's architecture from random weights,
    /// trained as `type` says (`full` is the usual baseline). Its validation metrics
    /// next to a pretrained job's on the same data are what transfer is worth there.
    /// Not with `auto`. Default `false`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_scratch: bool,
    /// Set when the request used OpenAI's method shape: `supervised` runs as `auto`,
    /// and `chosen.reason` says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(read_only)]
    pub requested_as: Option<RequestedMethod>,
}

/// What `auto` decided.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChosenMethod {
    #[serde(rename = "type")]
    pub kind: MethodType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_layers: Option<u32>,
    /// The evidence, in words and numbers.
    pub reason: String,
    /// Every candidate the search considered, cheapest first (the head alone on the
    /// frozen features first): its trial's validation macro-F1 and time, or why it was
    /// not tried. Empty when the data decided without trials (too few examples a
    /// class, no validation data), and for jobs chosen before trials existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<CandidateTrial>,
}

impl Method {
    /// Checks the strategy against the base model's depth and fills in the default
    /// number of frozen layers, so the stored job says exactly what will run.
    pub fn validate(mut self, model_layers: u32) -> Result<Self, ValidationError> {
        if self.chosen.is_some() {
            return Err(ValidationError::new(
                "method.chosen",
                "is set by the server for `auto` jobs; leave it out",
            ));
        }
        if self.from_scratch && self.kind == MethodType::Auto {
            return Err(ValidationError::new(
                "method.from_scratch",
                "`auto` picks how to transfer pretrained weights; name a strategy for a \
                 from-scratch baseline",
            ));
        }
        match (self.kind, self.frozen_layers) {
            (MethodType::Partial, None) => self.frozen_layers = Some(model_layers / 2),
            (MethodType::Partial, Some(k)) if k > model_layers => {
                return Err(ValidationError::new(
                    "method.frozen_layers",
                    format!("must be between 0 and {model_layers} (the base model's layers)"),
                ))
            }
            (MethodType::Partial, Some(_)) => {}
            (_, Some(_)) => {
                return Err(ValidationError::new(
                    "method.frozen_layers",
                    "only applies to `partial`",
                ))
            }
            (_, None) => {}
        }
        Ok(self)
    }

    /// The strategy that runs: `auto`'s choice once made.
    pub fn effective(&self) -> (MethodType, Option<u32>) {
        match &self.chosen {
            Some(c) => (c.kind, c.frozen_layers),
            None => (self.kind, self.frozen_layers),
        }
    }
}

/// The classifier put on top of the pooled encoder output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadType {
    /// One linear layer: the standard head, and the one LogME scores.
    #[default]
    Linear,
    /// Linear, tanh, dropout, linear (transformers' RoBERTa head): more capacity for
    /// feature extraction, where the encoder cannot adapt.
    Mlp,
}

/// How the published model computes when it serves predictions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Quantization {
    /// fp32, as it trained.
    #[default]
    None,
    /// Text models: the encoder's Linear layers in int8 on the CPU (dynamic
    /// quantization, libtorch's fbgemm kernels), about 1.5–1.7× faster; the job measures
    /// the validation metrics both ways and reports them in `result.quantization`.
    Int8,
}

/// How `feature_extraction` fits a linear head on the frozen features.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum HeadSolver {
    /// AdamW for `epochs` at `learning_rate`, as the other strategies train.
    #[default]
    #[serde(rename = "adamw")]
    AdamW,
    /// L-BFGS to convergence on L2-regularised logistic regression, the
    /// regularisation chosen by 5-fold cross-validation on the training split (as
    /// scikit-learn's `LogisticRegressionCV`): a tuned linear probe, one fit instead
    /// of epochs. An `mlp` head stays on AdamW.
    Lbfgs,
}

/// How token states become one vector per input.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PoolingType {
    /// Mean over the real tokens, as sentence-transformers models were trained.
    #[default]
    Mean,
    /// The first token's state, as BERT's classification recipe.
    Cls,
}

impl PoolingType {
    pub fn as_str(self) -> &'static str {
        match self {
            PoolingType::Mean => "mean",
            PoolingType::Cls => "cls",
        }
    }
}

/// Per-class loss weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ClassWeights {
    #[default]
    None,
    /// `n / (classes · count)` per class, as scikit-learn's `class_weight="balanced"`:
    /// rare classes weigh more, against imbalance.
    Balanced,
}

/// What early stopping and best-epoch selection watch on the validation data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MonitorMetric {
    /// Validation loss (lower is better).
    #[default]
    Loss,
    Accuracy,
    MacroF1,
}

impl MonitorMetric {
    pub fn higher_is_better(self) -> bool {
        !matches!(self, MonitorMetric::Loss)
    }
}

/// A field the user got wrong, named as in the request body.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ValidationError {
    pub param: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// A job's `suffix`: it becomes part of the model id, so it is kept URL- and
/// path-safe.
pub fn validate_suffix(suffix: &str) -> Result<(), ValidationError> {
    let ok = !suffix.is_empty()
        && suffix.len() <= 40
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::new(
            "suffix",
            "must be 1 to 40 characters of letters, digits, '-' or '_'",
        ))
    }
}

#[cfg(test)]
mod tests;
