//! Fine-tuning jobs: their states and the validated training recipe.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A job's lifecycle. `validating_files` exists for compatibility with the OpenAI API;
/// hone validates files on upload, so its jobs start `queued`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    ValidatingFiles,
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::ValidatingFiles,
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::ValidatingFiles => "validating_files",
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodType {
    /// Fine-tune every weight of the encoder and the new head.
    #[default]
    Full,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Method {
    #[serde(rename = "type", default)]
    pub kind: MethodType,
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

/// Hyperparameters as a user sends them: every one optional.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HyperparametersInput {
    /// Passes over the training data (1–100). Default 3.
    #[schema(example = 3)]
    pub epochs: Option<u32>,
    /// Examples per optimisation step (1–512). Default 16.
    #[schema(example = 16)]
    pub batch_size: Option<u32>,
    /// Peak learning rate of AdamW (0 < lr ≤ 0.1). Default 5e-5.
    #[schema(example = 5e-5)]
    pub learning_rate: Option<f64>,
    /// Fraction of the steps spent warming the learning rate up linearly (0–0.5). Default 0.1.
    #[schema(example = 0.1)]
    pub warmup_ratio: Option<f64>,
    /// AdamW decoupled weight decay (0–1). Default 0.01.
    #[schema(example = 0.01)]
    pub weight_decay: Option<f64>,
    /// Inputs are truncated to this many tokens (8 to the model's maximum). Default 128.
    #[schema(example = 128)]
    pub max_seq_len: Option<u32>,
}

/// Hyperparameters with every default filled in and every bound checked; stored with
/// the job so that the run is reproducible from the job row alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_seq_len: u32,
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 16,
            learning_rate: 5e-5,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_seq_len: 128,
        }
    }
}

impl HyperparametersInput {
    /// `model_max_len` is the base model's position limit, the upper bound of `max_seq_len`.
    pub fn validate(&self, model_max_len: u32) -> Result<Hyperparameters, ValidationError> {
        let d = Hyperparameters::default();
        let p = |name: &str| format!("hyperparameters.{name}");
        let epochs = self.epochs.unwrap_or(d.epochs);
        if !(1..=100).contains(&epochs) {
            return Err(ValidationError::new(
                p("epochs"),
                "must be between 1 and 100",
            ));
        }
        let batch_size = self.batch_size.unwrap_or(d.batch_size);
        if !(1..=512).contains(&batch_size) {
            return Err(ValidationError::new(
                p("batch_size"),
                "must be between 1 and 512",
            ));
        }
        let learning_rate = self.learning_rate.unwrap_or(d.learning_rate);
        if !(learning_rate > 0.0 && learning_rate <= 0.1) {
            return Err(ValidationError::new(
                p("learning_rate"),
                "must be greater than 0 and at most 0.1",
            ));
        }
        let warmup_ratio = self.warmup_ratio.unwrap_or(d.warmup_ratio);
        if !(0.0..=0.5).contains(&warmup_ratio) {
            return Err(ValidationError::new(
                p("warmup_ratio"),
                "must be between 0 and 0.5",
            ));
        }
        let weight_decay = self.weight_decay.unwrap_or(d.weight_decay);
        if !(0.0..=1.0).contains(&weight_decay) {
            return Err(ValidationError::new(
                p("weight_decay"),
                "must be between 0 and 1",
            ));
        }
        let max_seq_len = self.max_seq_len.unwrap_or(d.max_seq_len.min(model_max_len));
        if !(8..=model_max_len).contains(&max_seq_len) {
            return Err(ValidationError::new(
                p("max_seq_len"),
                format!("must be between 8 and {model_max_len} (the base model's limit)"),
            ));
        }
        Ok(Hyperparameters {
            epochs,
            batch_size,
            learning_rate,
            warmup_ratio,
            weight_decay,
            max_seq_len,
        })
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
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_missing_fields() {
        let hp = HyperparametersInput::default()
            .validate(512)
            .expect("defaults are valid");
        assert_eq!(hp, Hyperparameters::default());
        let hp = HyperparametersInput::default()
            .validate(64)
            .expect("clamped to model");
        assert_eq!(hp.max_seq_len, 64);
    }

    #[test]
    fn each_bound_names_its_field() {
        let cases = [
            (
                HyperparametersInput {
                    epochs: Some(0),
                    ..Default::default()
                },
                "hyperparameters.epochs",
            ),
            (
                HyperparametersInput {
                    batch_size: Some(513),
                    ..Default::default()
                },
                "hyperparameters.batch_size",
            ),
            (
                HyperparametersInput {
                    learning_rate: Some(0.0),
                    ..Default::default()
                },
                "hyperparameters.learning_rate",
            ),
            (
                HyperparametersInput {
                    learning_rate: Some(f64::NAN),
                    ..Default::default()
                },
                "hyperparameters.learning_rate",
            ),
            (
                HyperparametersInput {
                    warmup_ratio: Some(0.9),
                    ..Default::default()
                },
                "hyperparameters.warmup_ratio",
            ),
            (
                HyperparametersInput {
                    weight_decay: Some(-1.0),
                    ..Default::default()
                },
                "hyperparameters.weight_decay",
            ),
            (
                HyperparametersInput {
                    max_seq_len: Some(1024),
                    ..Default::default()
                },
                "hyperparameters.max_seq_len",
            ),
        ];
        for (input, param) in cases {
            assert_eq!(input.validate(512).expect_err(param).param, param);
        }
    }

    #[test]
    fn statuses_round_trip_and_know_terminal_ones() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
            assert_eq!(serde_json::to_value(s).expect("serialize"), s.as_str());
        }
        assert!(JobStatus::Cancelled.is_terminal());
        assert!(!JobStatus::Running.is_terminal());
    }

    #[test]
    fn suffixes_are_path_safe() {
        assert!(validate_suffix("reviews-v2_1").is_ok());
        assert!(validate_suffix("").is_err());
        assert!(validate_suffix("a/b").is_err());
        assert!(validate_suffix(&"x".repeat(41)).is_err());
    }
}
