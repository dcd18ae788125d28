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

/// A failure another attempt may get past. `detail` (paths, storage and database
/// errors, libtorch's exception text) is for the operator: it is logged with a short
/// reference, and the job's error carries only a message about its kind and that
/// reference, so a tenant never reads the server's internals.
pub(super) fn transient(code: &str, detail: impl Into<String>) -> Failure {
    let detail = detail.into();
    if code == STOPPED {
        return Failure::Transient(JobError {
            code: code.into(),
            message: detail,
            param: None,
        });
    }
    let reference = &uuid::Uuid::new_v4().simple().to_string()[..12];
    tracing::warn!(code, reference, detail, "attempt failed");
    Failure::Transient(JobError {
        code: code.into(),
        message: format!("{} (reference {reference})", public_message(code)),
        param: None,
    })
}

/// The code of the failure that says training stopped (cancelled, paused, shut down,
/// lease lost): never shown as the job's error.
pub(super) const STOPPED: &str = "stopped";

/// What a tenant reads of an internal failure of `code`.
fn public_message(code: &str) -> &'static str {
    match code {
        "storage_error" => "the worker could not read or write the job's stored data",
        "training_error" => "training stopped on an internal error",
        _ => "the worker met an internal error",
    }
}

/// A training error as the job's failure: the job's own fault (bad data, a base model
/// that does not fit) fails it for good, anything else may pass on another attempt.
impl From<TrainError> for Failure {
    fn from(e: TrainError) -> Self {
        if !e.is_user_error() {
            return transient("training_error", e.to_string());
        }
        // A file of the base model is named as the model's own, not by where this
        // worker keeps it.
        let message = match &e {
            TrainError::Config { path, message } => {
                format!("the base model's {}: {message}", file_name(path))
            }
            TrainError::Weights { path, .. } => {
                let full = e.to_string();
                let shown = path.display().to_string();
                full.replacen(&shown, &format!("the base model's {}", file_name(path)), 1)
            }
            other => other.to_string(),
        };
        user("invalid_job", message, None)
    }
}

fn file_name(path: &std::path::Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "files".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_stay_in_the_log_and_the_tenant_reads_a_reference() {
        let Failure::Transient(e) = transient(
            "storage_error",
            "cannot read /var/lib/hone/artifacts/files/file-1: Permission denied (os error 13)",
        ) else {
            panic!("transient");
        };
        assert_eq!(e.code, "storage_error");
        assert!(
            e.message.starts_with(
                "the worker could not read or write the job's stored data (reference "
            ),
            "{}",
            e.message
        );
        for internal in ["/var/lib", "Permission", "os error"] {
            assert!(!e.message.contains(internal), "{}", e.message);
        }
        let Failure::Transient(e) =
            transient("training_error", "CUDA error: out of memory at c10/…")
        else {
            panic!("transient");
        };
        assert!(!e.message.contains("CUDA"), "{}", e.message);
        let Failure::User(e) = Failure::from(TrainError::config(
            "/opt/hone/models/bert/config.json",
            "hidden_size 0",
        )) else {
            panic!("a user error");
        };
        assert_eq!(e.message, "the base model's config.json: hidden_size 0");
        let Failure::Transient(e) = transient(STOPPED, "training stopped") else {
            panic!("transient");
        };
        assert_eq!(e.message, "training stopped");
    }
}
