//! The `fine_tuning_jobs` row as both the API's queries and the queue's claim read it,
//! so that the two cannot disagree on its columns.

use chrono::{DateTime, Utc};
use hone_domain::job::{Hyperparameters, JobStatus, Method};
use hone_domain::resources::{FineTuningJob, JobError, JobProgress, JobResult};
use sqlx::types::Json;

use crate::StoreError;

#[derive(sqlx::FromRow)]
pub(crate) struct JobRow {
    id: String,
    status: String,
    base_model: String,
    training_file: String,
    validation_file: Option<String>,
    method: Json<Method>,
    hyperparameters: Json<Hyperparameters>,
    seed: i64,
    suffix: Option<String>,
    metadata: Option<Json<serde_json::Value>>,
    fine_tuned_model: Option<String>,
    progress: Option<Json<JobProgress>>,
    result: Option<Json<JobResult>>,
    error: Option<Json<JobError>>,
    attempt: i32,
    max_attempts: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finalized_at: Option<DateTime<Utc>>,
}

pub(crate) const COLUMNS: &str =
    "id, status::text AS status, base_model, training_file, validation_file,
    method, hyperparameters, seed, suffix, metadata, fine_tuned_model, progress, result, error,
    attempt, max_attempts, created_at, started_at, finalized_at";

impl TryFrom<JobRow> for FineTuningJob {
    type Error = StoreError;

    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        let status = JobStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {} has status {}", r.id, r.status)))?;
        let progress = r.progress.map(|p| p.0);
        let result = r.result.map(|p| p.0);
        Ok(FineTuningJob {
            id: r.id,
            object: "fine_tuning.job",
            created_at: r.created_at.timestamp(),
            started_at: r.started_at.map(|t| t.timestamp()),
            finished_at: r.finalized_at.map(|t| t.timestamp()),
            model: r.base_model.clone(),
            base_model: r.base_model,
            fine_tuned_model: r.fine_tuned_model,
            status,
            training_file: r.training_file,
            validation_file: r.validation_file,
            method: r.method.0,
            hyperparameters: r.hyperparameters.0,
            trained_tokens: result.as_ref().and_then(|r| r.trained_tokens),
            estimated_finish: progress
                .as_ref()
                .filter(|_| status == JobStatus::Running)
                .and_then(|p| p.estimated_finish),
            result_files: result
                .as_ref()
                .and_then(|r| r.result_file.clone())
                .into_iter()
                .collect(),
            seed: r.seed,
            suffix: r.suffix,
            metadata: r.metadata.map(|m| m.0),
            progress,
            result,
            error: r.error.map(|p| p.0),
            attempt: r.attempt,
            max_attempts: r.max_attempts,
        })
    }
}
