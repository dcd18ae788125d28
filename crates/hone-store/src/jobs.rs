//! Fine-tuning jobs: the rows the API shows, and the queue the workers take them from.
//!
//! The queue follows river's design: a claim is committed at once (training runs for
//! minutes to hours, never inside a transaction), the claimed row carries a lease that
//! the worker's heartbeat renews, and every write a worker makes afterwards is guarded
//! by `status = 'running' AND attempt = <its attempt>` so that a worker that lost its
//! lease cannot overwrite whoever has the job now.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hone_domain::job::{Hyperparameters, JobStatus, Method};
use hone_domain::resources::{
    EventLevel, EventType, FineTuningJob, JobError, JobEvent, JobProgress, JobResult,
};
use hone_domain::{JobId, PageRequest, ProjectId};
use sqlx::types::Json;
use uuid::Uuid;

use crate::idempotency::{Idempotency, Once};
use crate::{Db, StoreError};

#[derive(sqlx::FromRow)]
struct JobRow {
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

const COLUMNS: &str = "id, status::text AS status, base_model, training_file, validation_file,
    method, hyperparameters, seed, suffix, metadata, fine_tuned_model, progress, result, error,
    attempt, max_attempts, created_at, started_at, finalized_at";

impl TryFrom<JobRow> for FineTuningJob {
    type Error = StoreError;

    fn try_from(r: JobRow) -> Result<Self, StoreError> {
        let status = JobStatus::parse(&r.status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {} has status {}", r.id, r.status)))?;
        Ok(FineTuningJob {
            id: r.id,
            object: "fine_tuning.job",
            created_at: r.created_at.timestamp(),
            started_at: r.started_at.map(|t| t.timestamp()),
            finished_at: r.finalized_at.map(|t| t.timestamp()),
            base_model: r.base_model,
            fine_tuned_model: r.fine_tuned_model,
            status,
            training_file: r.training_file,
            validation_file: r.validation_file,
            method: r.method.0,
            hyperparameters: r.hyperparameters.0,
            seed: r.seed,
            suffix: r.suffix,
            metadata: r.metadata.map(|m| m.0),
            progress: r.progress.map(|p| p.0),
            result: r.result.map(|p| p.0),
            error: r.error.map(|p| p.0),
            attempt: r.attempt,
            max_attempts: r.max_attempts,
        })
    }
}

/// A validated job, ready to be queued.
#[derive(Clone, Debug)]
pub struct NewJob {
    pub id: JobId,
    pub project: ProjectId,
    pub base_model: String,
    pub training_file: String,
    pub validation_file: Option<String>,
    pub method: Method,
    pub hyperparameters: Hyperparameters,
    pub seed: i64,
    pub suffix: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub max_attempts: i32,
}

/// A job a worker holds: its row, and the attempt number that fences its writes.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub job: FineTuningJob,
    pub attempt: i32,
}

/// What the heartbeat learns besides keeping the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    Held {
        cancel_requested: bool,
    },
    /// The job is no longer ours (rescued after a missed heartbeat, or finished).
    Lost,
}

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub level: EventLevel,
    pub kind: EventType,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl NewEvent {
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            level: EventLevel::Info,
            kind: EventType::Message,
            message: message.into(),
            data: None,
        }
    }

    pub fn warn(message: impl Into<String>) -> Self {
        Self {
            level: EventLevel::Warn,
            ..Self::info(message)
        }
    }

    pub fn metrics(message: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            level: EventLevel::Info,
            kind: EventType::Metrics,
            message: message.into(),
            data: Some(data),
        }
    }
}

fn event_id() -> String {
    format!("ftevent-{}", Uuid::now_v7().simple())
}

async fn insert_event<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    job_id: &str,
    event: &NewEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO fine_tuning_job_events (id, job_id, level, type, message, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id())
    .bind(job_id)
    .bind(level_str(event.level))
    .bind(type_str(event.kind))
    .bind(&event.message)
    .bind(event.data.as_ref().map(Json))
    .execute(exec)
    .await?;
    Ok(())
}

fn level_str(l: EventLevel) -> &'static str {
    match l {
        EventLevel::Info => "info",
        EventLevel::Warn => "warn",
        EventLevel::Error => "error",
    }
}

fn type_str(t: EventType) -> &'static str {
    match t {
        EventType::Message => "message",
        EventType::Metrics => "metrics",
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    level: String,
    r#type: String,
    message: String,
    data: Option<Json<serde_json::Value>>,
    created_at: DateTime<Utc>,
}

impl Db {
    /// Queues a job. The training and validation files are locked for share in the
    /// same transaction, so a concurrent delete cannot remove them from under it.
    pub async fn create_job(&self, new: &NewJob) -> Result<FineTuningJob, StoreError> {
        match self.create_job_once(new, None, None).await? {
            Once::Created(job) => Ok(job),
            _ => Err(StoreError::Corrupt(
                "a job without a key was replayed".into(),
            )),
        }
    }

    /// [`Db::create_job`] made idempotent by `key`: a request with a key used before
    /// creates nothing and gets the first response (or [`Once::Mismatch`]).
    /// With `max_active_jobs`, the project's queued and running jobs are counted with
    /// the project locked, in the transaction that inserts: concurrent creates cannot
    /// both pass the limit.
    pub async fn create_job_once(
        &self,
        new: &NewJob,
        max_active_jobs: Option<i64>,
        key: Option<&Idempotency>,
    ) -> Result<Once<FineTuningJob>, StoreError> {
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            if let Some(earlier) = crate::idempotency::claim(&mut tx, &new.project, key).await? {
                return Ok(earlier);
            }
        }
        if let Some(limit) = max_active_jobs {
            crate::projects::lock(&mut tx, &new.project).await?;
            let active: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM fine_tuning_jobs
                 WHERE project_id = $1 AND status IN ('validating_files', 'queued', 'running')",
            )
            .bind(new.project.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if active >= limit {
                return Err(StoreError::Quota(crate::Quota::ActiveJobs { limit }));
            }
        }
        for file in std::iter::once(&new.training_file).chain(new.validation_file.as_ref()) {
            let found: Option<String> = sqlx::query_scalar(
                "SELECT id FROM files WHERE id = $1 AND project_id = $2 FOR SHARE",
            )
            .bind(file)
            .bind(new.project.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            if found.is_none() {
                return Err(StoreError::Conflict(format!("file {file} was deleted")));
            }
        }
        let row: JobRow = sqlx::query_as(&format!(
            "INSERT INTO fine_tuning_jobs (id, base_model, training_file, validation_file, method,
                 hyperparameters, seed, suffix, metadata, max_attempts, project_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING {COLUMNS}"
        ))
        .bind(new.id.as_str())
        .bind(&new.base_model)
        .bind(&new.training_file)
        .bind(&new.validation_file)
        .bind(Json(&new.method))
        .bind(Json(&new.hyperparameters))
        .bind(new.seed)
        .bind(&new.suffix)
        .bind(new.metadata.as_ref().map(Json))
        .bind(new.max_attempts)
        .bind(new.project.as_str())
        .fetch_one(&mut *tx)
        .await?;
        insert_event(
            &mut *tx,
            new.id.as_str(),
            &NewEvent::info("Job created and queued"),
        )
        .await?;
        let job: FineTuningJob = row.try_into()?;
        if let Some(key) = key {
            crate::idempotency::record(&mut tx, &new.project, key, &job).await?;
        }
        tx.commit().await?;
        Ok(Once::Created(job))
    }

    /// A job of `project`; another project's job is `NotFound`, as a missing one.
    pub async fn get_job(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<FineTuningJob, StoreError> {
        let row: JobRow = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM fine_tuning_jobs WHERE id = $1 AND project_id = $2"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    pub async fn list_jobs(
        &self,
        project: &ProjectId,
        page: &PageRequest,
        status: Option<JobStatus>,
    ) -> Result<Vec<FineTuningJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM fine_tuning_jobs
             WHERE project_id = $4
               AND ($1::text IS NULL
                    OR (created_at, id) < (SELECT created_at, id FROM fine_tuning_jobs
                                           WHERE id = $1 AND project_id = $4))
               AND ($2::text IS NULL OR status::text = $2)
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(page.after.as_deref())
        .bind(status.map(JobStatus::as_str))
        .bind(page.limit + 1)
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(FineTuningJob::try_from).collect()
    }

    /// A queued job is cancelled at once; a running one is flagged and its worker
    /// stops at the next training step. Cancelling a finished job is a conflict.
    pub async fn cancel_job(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<FineTuningJob, StoreError> {
        let mut tx = self.pool.begin().await?;
        let status: String = sqlx::query_scalar(
            "SELECT status::text FROM fine_tuning_jobs
             WHERE id = $1 AND project_id = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        match JobStatus::parse(&status) {
            Some(JobStatus::Queued | JobStatus::ValidatingFiles) => {
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'cancelled', finalized_at = now(),
                         cancel_requested = true WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut *tx,
                    id,
                    &NewEvent::info("Job cancelled before it started"),
                )
                .await?;
            }
            Some(JobStatus::Running) => {
                sqlx::query("UPDATE fine_tuning_jobs SET cancel_requested = true WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                insert_event(
                    &mut *tx,
                    id,
                    &NewEvent::info("Cancellation requested; the worker stops at the next step"),
                )
                .await?;
            }
            _ => {
                return Err(StoreError::Conflict(format!(
                    "job {id} has already finished with status {status}"
                )))
            }
        }
        tx.commit().await?;
        self.get_job(project, id).await
    }

    /// Events newest first, as the OpenAI API lists them.
    /// Events of a job of `project` (none for another project's job).
    pub async fn list_events(
        &self,
        project: &ProjectId,
        job_id: &str,
        page: &PageRequest,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "SELECT e.id, e.level, e.type, e.message, e.data, e.created_at
             FROM fine_tuning_job_events e
             JOIN fine_tuning_jobs j ON j.id = e.job_id AND j.project_id = $4
             WHERE e.job_id = $1
               AND ($2::text IS NULL
                    OR e.seq < (SELECT seq FROM fine_tuning_job_events WHERE id = $2))
             ORDER BY e.seq DESC LIMIT $3",
        )
        .bind(job_id)
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| {
                let level = match r.level.as_str() {
                    "warn" => EventLevel::Warn,
                    "error" => EventLevel::Error,
                    _ => EventLevel::Info,
                };
                let kind = if r.r#type == "metrics" {
                    EventType::Metrics
                } else {
                    EventType::Message
                };
                Ok(JobEvent {
                    id: r.id,
                    object: "fine_tuning.job.event",
                    created_at: r.created_at.timestamp(),
                    level,
                    kind,
                    message: r.message,
                    data: r.data.map(|d| d.0),
                })
            })
            .collect()
    }

    // ----- the queue -------------------------------------------------------------

    /// Claims the next queued job, if any, and commits the claim at once.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "WITH next AS (
                 SELECT id FROM fine_tuning_jobs
                 WHERE status = 'queued' AND scheduled_at <= now()
                 ORDER BY priority, scheduled_at, id
                 LIMIT 1 FOR UPDATE SKIP LOCKED)
             UPDATE fine_tuning_jobs j
             SET status = 'running', attempt = j.attempt + 1, attempted_at = now(),
                 attempted_by = $1, lease_expires_at = now() + $2 * interval '1 millisecond',
                 started_at = coalesce(j.started_at, now())
             FROM next WHERE j.id = next.id
             RETURNING {}",
            COLUMNS
                .split(',')
                .map(|c| format!("j.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(worker)
        .bind(lease_millis(lease))
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                let job = FineTuningJob::try_from(row)?;
                let attempt = job.attempt;
                self.add_event(
                    &job.id,
                    attempt,
                    &NewEvent::info(format!(
                        "Worker {worker} started attempt {attempt} of {}",
                        job.max_attempts
                    )),
                )
                .await?;
                Ok(Some(ClaimedJob { job, attempt }))
            }
            None => Ok(None),
        }
    }

    /// Renews the lease, and tells the worker whether the user asked to cancel.
    pub async fn heartbeat(
        &self,
        id: &str,
        attempt: i32,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let cancel: Option<bool> = sqlx::query_scalar(
            "UPDATE fine_tuning_jobs SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE id = $1 AND status = 'running' AND attempt = $2
             RETURNING cancel_requested",
        )
        .bind(id)
        .bind(attempt)
        .bind(lease_millis(lease))
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cancel {
            Some(cancel_requested) => Lease::Held { cancel_requested },
            None => Lease::Lost,
        })
    }

    /// Records progress; returns false when the job is no longer this worker's.
    pub async fn set_progress(
        &self,
        id: &str,
        attempt: i32,
        progress: &JobProgress,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs SET progress = $3
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .bind(Json(progress))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Replaces the loss and metric curves of a job this worker holds.
    pub async fn set_metrics(
        &self,
        id: &str,
        attempt: i32,
        metrics: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs SET metrics = $3
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .bind(Json(metrics))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The curves `set_metrics` stored, if any.
    pub async fn get_metrics(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<Option<serde_json::Value>, StoreError> {
        let row: Option<Option<Json<serde_json::Value>>> = sqlx::query_scalar(
            "SELECT metrics FROM fine_tuning_jobs WHERE id = $1 AND project_id = $2",
        )
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            None => Err(StoreError::NotFound),
            Some(m) => Ok(m.map(|j| j.0)),
        }
    }

    /// Records the strategy an `auto` job chose (fenced like every worker write).
    pub async fn set_method(
        &self,
        id: &str,
        attempt: i32,
        method: &hone_domain::job::Method,
        hyperparameters: &Hyperparameters,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs SET method = $3, hyperparameters = $4
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .bind(Json(method))
        .bind(Json(hyperparameters))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Adds an event to a job this worker holds (fenced like every worker write).
    pub async fn add_event(
        &self,
        id: &str,
        attempt: i32,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: Option<String> = sqlx::query_scalar(
            "SELECT id FROM fine_tuning_jobs WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        if held.is_none() {
            return Ok(false);
        }
        insert_event(&mut *tx, id, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Finishes a job successfully and registers its model, in one transaction: a job
    /// never shows `succeeded` without its model, nor a model without its job.
    pub async fn succeed_job(
        &self,
        id: &str,
        attempt: i32,
        model: &crate::models::NewModel,
        result: &JobResult,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs
             SET status = 'succeeded', finalized_at = now(), lease_expires_at = NULL,
                 fine_tuned_model = $3, result = $4
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .bind(&model.id)
        .bind(Json(result))
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        crate::models::insert_model(&mut *tx, model, result).await?;
        insert_event(
            &mut *tx,
            id,
            &NewEvent::info(format!("Job succeeded: model {} published", model.id)),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends a job as `failed` (a user error, or the last attempt) or, for a transient
    /// error with attempts left, puts it back in the queue after a backoff.
    pub async fn fail_job(
        &self,
        id: &str,
        attempt: i32,
        error: &JobError,
        retryable: bool,
    ) -> Result<JobStatus, StoreError> {
        let mut tx = self.pool.begin().await?;
        let max: Option<i32> = sqlx::query_scalar(
            "SELECT max_attempts FROM fine_tuning_jobs
             WHERE id = $1 AND status = 'running' AND attempt = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(attempt)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(max) = max else {
            return Ok(JobStatus::Running);
        };
        let history = serde_json::json!([{ "attempt": attempt, "code": error.code, "message": error.message, "at": Utc::now() }]);
        let status = if retryable && attempt < max {
            let backoff = retry_backoff(attempt);
            sqlx::query(
                "UPDATE fine_tuning_jobs
                 SET status = 'queued', lease_expires_at = NULL, errors = errors || $3,
                     scheduled_at = now() + $4 * interval '1 millisecond'
                 WHERE id = $1 AND attempt = $2",
            )
            .bind(id)
            .bind(attempt)
            .bind(Json(&history))
            .bind(lease_millis(backoff))
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut *tx,
                id,
                &NewEvent {
                    level: EventLevel::Warn,
                    kind: EventType::Message,
                    message: format!(
                        "Attempt {attempt} failed ({}); retrying in {} s",
                        error.message,
                        backoff.as_secs()
                    ),
                    data: None,
                },
            )
            .await?;
            JobStatus::Queued
        } else {
            sqlx::query(
                "UPDATE fine_tuning_jobs
                 SET status = 'failed', finalized_at = now(), lease_expires_at = NULL,
                     error = $3, errors = errors || $4
                 WHERE id = $1 AND attempt = $2",
            )
            .bind(id)
            .bind(attempt)
            .bind(Json(error))
            .bind(Json(&history))
            .execute(&mut *tx)
            .await?;
            insert_event(
                &mut *tx,
                id,
                &NewEvent {
                    level: EventLevel::Error,
                    kind: EventType::Message,
                    message: format!("Job failed: {}", error.message),
                    data: None,
                },
            )
            .await?;
            JobStatus::Failed
        };
        tx.commit().await?;
        Ok(status)
    }

    /// Marks a running job cancelled once its worker stopped.
    pub async fn finish_cancelled(&self, id: &str, attempt: i32) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs
             SET status = 'cancelled', finalized_at = now(), lease_expires_at = NULL
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            insert_event(&mut *tx, id, &NewEvent::info("Job cancelled")).await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Hands a job back to the queue without spending an attempt (graceful shutdown).
    pub async fn release_job(&self, id: &str, attempt: i32) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE fine_tuning_jobs
             SET status = 'queued', lease_expires_at = NULL, attempt = attempt - 1,
                 scheduled_at = now()
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 1 {
            insert_event(
                &mut *tx,
                id,
                &NewEvent::info("Worker shut down; job returned to the queue"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Requeues running jobs whose lease expired (their worker died), or fails them
    /// when they have used up their attempts. Returns how many were rescued.
    pub async fn rescue_expired(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(String, i32, i32, bool)> = sqlx::query_as(
            "SELECT id, attempt, max_attempts, cancel_requested FROM fine_tuning_jobs
             WHERE status = 'running' AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempt, max, cancel) in &expired {
            let message = format!("The worker of attempt {attempt} stopped responding");
            if *cancel {
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'cancelled', finalized_at = now(),
                         lease_expires_at = NULL WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut *tx,
                    id,
                    &NewEvent::info(format!("{message}; job cancelled")),
                )
                .await?;
            } else if attempt < max {
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'queued', lease_expires_at = NULL,
                         scheduled_at = now() WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut *tx,
                    id,
                    &NewEvent {
                        level: EventLevel::Warn,
                        kind: EventType::Message,
                        message: format!("{message}; job requeued"),
                        data: None,
                    },
                )
                .await?;
            } else {
                let error = JobError {
                    code: "worker_lost".into(),
                    message: format!("{message} and no attempts are left"),
                    param: None,
                };
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'failed', finalized_at = now(),
                         lease_expires_at = NULL, error = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(Json(&error))
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut *tx,
                    id,
                    &NewEvent {
                        level: EventLevel::Error,
                        kind: EventType::Message,
                        message: error.message.clone(),
                        data: None,
                    },
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(expired.len() as u64)
    }
}

fn lease_millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Exponential backoff between attempts: 10 s, 20 s, 40 s, … capped at 10 minutes.
pub fn retry_backoff(attempt: i32) -> Duration {
    let exp = u32::try_from(attempt.saturating_sub(1)).unwrap_or(0).min(6);
    Duration::from_secs((10u64 << exp).min(600))
}

impl Db {
    /// Like `heartbeat` without renewing: a cheap check between renewals.
    pub async fn cancel_requested(&self, id: &str, attempt: i32) -> Result<Lease, StoreError> {
        let cancel: Option<bool> = sqlx::query_scalar(
            "SELECT cancel_requested FROM fine_tuning_jobs
             WHERE id = $1 AND status = 'running' AND attempt = $2",
        )
        .bind(id)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match cancel {
            Some(cancel_requested) => Lease::Held { cancel_requested },
            None => Lease::Lost,
        })
    }
}
