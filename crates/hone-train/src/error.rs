//! The one error type of the crate. The worker decides from the variant whether a job
//! failed because of its inputs (retrying cannot help) or because of the machine, so the
//! variants follow that line rather than the module that raised them.

use std::path::PathBuf;

/// Everything that can go wrong while loading, training, saving or predicting.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A configuration file (config.json, hone_model.json) is missing, malformed or
    /// describes a model this crate cannot build.
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    /// The directory holds a model family this crate does not implement.
    #[error("unsupported architecture {architecture:?}: {message}")]
    UnsupportedArchitecture {
        architecture: String,
        message: String,
    },
    /// The checkpoint does not fit the architecture its config describes.
    #[error("{}", weights_message(path, missing, mismatched))]
    Weights {
        path: PathBuf,
        /// Tensors the model needs that the file does not hold.
        missing: Vec<String>,
        /// `name: expected [..], found [..]` for each tensor of the wrong shape.
        mismatched: Vec<String>,
    },
    /// The tokenizer could not be loaded, configured or run.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// libtorch reported an error (out of memory, a device problem, a bug in a shape).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The observer asked training to stop; nothing was produced.
    #[error("training was cancelled")]
    Cancelled,
    /// The caller passed something that cannot be trained or predicted on.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// Input `index` of a predict request is an image that does not decode.
    #[error("input {index}: {message}")]
    BadImage { index: usize, message: String },
    /// The checkpoint to resume from cannot be read or belongs to another run; the
    /// caller can train from the start instead.
    #[error("cannot resume: {0}")]
    Resume(String),
}

fn weights_message(path: &std::path::Path, missing: &[String], mismatched: &[String]) -> String {
    let mut message = format!("{} does not fit the model's config", path.display());
    if !missing.is_empty() {
        message.push_str(&format!("; missing tensors: {}", missing.join(", ")));
    }
    if !mismatched.is_empty() {
        message.push_str(&format!("; wrong shapes: {}", mismatched.join(", ")));
    }
    message
}

impl TrainError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub fn config(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Self::Config {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Whether the error comes from what the job asked for (its data, its base model,
    /// its settings) rather than from the machine: the worker fails such jobs at once
    /// instead of retrying them.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Config { .. }
                | Self::UnsupportedArchitecture { .. }
                | Self::Weights { .. }
                | Self::InvalidInput(_)
        )
    }
}
