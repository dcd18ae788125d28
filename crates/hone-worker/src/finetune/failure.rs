//! How a job's failure is told: the job's own fault (its data, its base model), which no
//! retry mends, or something another attempt may get past. A leaf: every stage returns
//! these.

use hone_domain::resources::JobError;
use hone_train::train::TrainError;

/// Why a job could not be done.
pub(super) enum Failure {
    /// The job itself is wrong (its data, its base model): retrying cannot help.
    User(JobError),
    /// Something that may work on another attempt.
    Transient(JobError),
}

pub(super) fn user(code: &str, message: impl Into<String>, param: Option<&str>) -> Failure {
    Failure::User(JobError {
        code: code.into(),
        message: message.into(),
        param: param.map(str::to_owned),
    })
}

pub(super) fn transient(code: &str, message: impl Into<String>) -> Failure {
    Failure::Transient(JobError {
        code: code.into(),
        message: message.into(),
        param: None,
    })
}

/// A training error as the job's failure: the job's own fault (bad data, a base model
/// that does not fit) fails it for good, anything else may pass on another attempt.
impl From<TrainError> for Failure {
    fn from(e: TrainError) -> Self {
        if e.is_user_error() {
            user("invalid_job", e.to_string(), None)
        } else {
            transient("training_error", e.to_string())
        }
    }
}
