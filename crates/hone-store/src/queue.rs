//! The queue the workers take jobs from, after river's design. Its invariants, and why:
//!
//! - A claim is committed at once, and no transaction is held while a job trains:
//!   training runs for minutes to hours, and a transaction that long would hold row
//!   locks and a pool connection, and lose the claim with any blip of the connection.
//! - The claimed row carries a lease that the worker's heartbeat renews, so that a
//!   worker that died (killed, machine gone) is noticed without anyone telling us.
//! - The rescuer requeues `running` jobs whose lease expired (or fails them when no
//!   attempts are left), so a dead worker's job is not stuck `running` for ever.
//! - Every write a worker makes to its job, finishing writes above all, is guarded by
//!   `status = 'running' AND attempt = <its attempt>` (`HELD`, which `update_held`
//!   puts on every UPDATE): a worker that lost its lease (paused past it, then woke
//!   up) must not overwrite whoever holds the job now.

use std::time::Duration;

use chrono::Utc;
use hone_domain::job::{Hyperparameters, JobStatus};
use hone_domain::resources::{
    EventLevel, EventType, FineTuningJob, JobError, JobProgress, JobResult,
};
use hone_domain::ProjectId;
use sqlx::error::BoxDynError;
use sqlx::postgres::PgArguments;
use sqlx::types::Json;
use sqlx::{Arguments, PgExecutor};

use crate::db::readable;
use crate::events::{insert_event, NewEvent};
use crate::job_rows::{JobRow, COLUMNS};
use crate::{Db, StoreError};

/// The guard on every write a worker makes to the job it holds: the job is still
/// running, at the worker's attempt ($1 the job id, $2 the attempt).
const HELD: &str = "id = $1 AND status = 'running' AND attempt = $2";

/// `UPDATE fine_tuning_jobs SET {set}` under [`HELD`]; false when the job is no longer
/// the worker's at `attempt`, and then nothing was written. `set` is a clause of ours,
/// never built from input: its values are placeholders from $3 on, which `values` adds
/// in that order after the id and attempt bound here.
async fn update_held<'e>(
    exec: impl PgExecutor<'e>,
    id: &str,
    attempt: i32,
    set: &'static str,
    values: impl FnOnce(&mut PgArguments) -> Result<(), BoxDynError>,
) -> Result<bool, StoreError> {
    let mut args = PgArguments::default();
    args.add(id).map_err(sqlx::Error::Encode)?;
    args.add(attempt).map_err(sqlx::Error::Encode)?;
    values(&mut args).map_err(sqlx::Error::Encode)?;
    let done = sqlx::query_with(
        &format!("UPDATE fine_tuning_jobs SET {set} WHERE {HELD}"),
        args,
    )
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// How a claim picks its job: fairly across projects, then in queue order. Of the
/// projects with ready jobs, the one with the fewest running jobs goes first (ties by
/// its head's priority, schedule and id), so one project's many long jobs cannot hold
/// every worker while another's wait. It walks the projects that have queued jobs (a
/// skip scan of `fine_tuning_jobs_project_claim_idx`: one probe per project, not a read
/// of the queue), takes each one's first ready job from the same index, skipping those
/// another claimer holds, and counts each one's running jobs from
/// `fine_tuning_jobs_project_running_idx`. Public so that a test and the claims
/// benchmark can `EXPLAIN` the very text the claim runs.
/// `$1` is the base models the claiming worker has (`NULL`: any).
pub const NEXT_QUEUED: &str = "WITH RECURSIVE projects(project_id) AS (
        (SELECT project_id FROM fine_tuning_jobs WHERE status = 'queued'
         ORDER BY project_id LIMIT 1)
      UNION ALL
        SELECT (SELECT q.project_id FROM fine_tuning_jobs q
                WHERE q.status = 'queued' AND q.project_id > p.project_id
                ORDER BY q.project_id LIMIT 1)
        FROM projects p WHERE p.project_id IS NOT NULL
    ), heads AS (
        SELECT h.id, h.priority, h.scheduled_at,
               (SELECT count(*) FROM fine_tuning_jobs r
                WHERE r.project_id = p.project_id AND r.status = 'running') AS running
        FROM projects p
        CROSS JOIN LATERAL (
            SELECT q.id, q.priority, q.scheduled_at FROM fine_tuning_jobs q
            WHERE q.project_id = p.project_id AND q.status = 'queued'
              AND q.scheduled_at <= now()
              AND ($1::text[] IS NULL OR q.base_model = ANY($1))
            ORDER BY q.priority, q.scheduled_at, q.id
            LIMIT 1 FOR UPDATE SKIP LOCKED
        ) h
        WHERE p.project_id IS NOT NULL
    )
    SELECT id FROM heads ORDER BY running, priority, scheduled_at, id LIMIT 1";

/// A job a worker holds: its row, and the attempt number that fences its writes.
#[derive(Clone, Debug)]
pub struct ClaimedJob {
    pub job: FineTuningJob,
    /// The project the job belongs to (what it may reuse is this project's).
    pub project: ProjectId,
    pub attempt: i32,
    /// How long it waited to be claimed, from when it could run.
    pub queued_for: Duration,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    row: JobRow,
    project_id: String,
    queued_seconds: f64,
}

/// What the heartbeat learns besides keeping the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    Held {
        cancel_requested: bool,
        /// The user paused the job: stop after the next checkpoint.
        pause_requested: bool,
    },
    /// The job is no longer ours (rescued after a missed heartbeat, or finished).
    Lost,
}

impl Db {
    /// Claims the next queued job, if any, and commits the claim at once, together with
    /// the event that says so: one commit (one WAL flush) per claim, where the claim and
    /// its event apart took two, and a job is never seen `running` without its event.
    pub async fn claim_job(
        &self,
        worker: &str,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        self.claim_job_of(worker, lease, None).await
    }

    /// [`Db::claim_job`] for a worker that can run only jobs on some base models (the
    /// ones it has): other jobs stay queued for the workers that have theirs.
    pub async fn claim_job_of(
        &self,
        worker: &str,
        lease: Duration,
        base_models: Option<&[String]>,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<ClaimedRow> = sqlx::query_as(&format!(
            "WITH next AS ({NEXT_QUEUED})
             UPDATE fine_tuning_jobs j
             SET status = 'running', attempt = j.attempt + 1, attempted_at = now(),
                 attempted_by = $2, lease_expires_at = now() + $3 * interval '1 millisecond',
                 started_at = coalesce(j.started_at, now())
             FROM next WHERE j.id = next.id
             RETURNING {}, j.project_id,
                 greatest(extract(epoch FROM now() - j.scheduled_at), 0)::float8
                     AS queued_seconds",
            COLUMNS
                .split(',')
                .map(|c| format!("j.{}", c.trim()))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .bind(base_models)
        .bind(worker)
        .bind(lease_millis(lease))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(ClaimedRow {
            row,
            project_id,
            queued_seconds,
        }) = row
        else {
            // Nothing was written: ending the transaction flushes nothing.
            tx.commit().await?;
            return Ok(None);
        };
        let job = FineTuningJob::try_from(row)?;
        let project = ProjectId::parse(&project_id).ok_or_else(|| {
            StoreError::Corrupt(format!("job {} has project {project_id:?}", job.id))
        })?;
        let attempt = job.attempt;
        insert_event(
            &mut tx,
            &job.id,
            &NewEvent::info(format!(
                "Worker {worker} started attempt {attempt} of {}",
                job.max_attempts
            )),
        )
        .await?;
        tx.commit().await?;
        Ok(Some(ClaimedJob {
            job,
            project,
            attempt,
            queued_for: Duration::try_from_secs_f64(queued_seconds).unwrap_or_default(),
        }))
    }

    /// Renews the lease, and tells the worker whether the user asked to cancel.
    pub async fn heartbeat(
        &self,
        id: &str,
        attempt: i32,
        lease: Duration,
    ) -> Result<Lease, StoreError> {
        let flags: Option<(bool, bool)> = sqlx::query_as(&format!(
            "UPDATE fine_tuning_jobs SET lease_expires_at = now() + $3 * interval '1 millisecond'
             WHERE {HELD}
             RETURNING cancel_requested, pause_requested"
        ))
        .bind(id)
        .bind(attempt)
        .bind(lease_millis(lease))
        .fetch_optional(&self.pool)
        .await?;
        Ok(lease_of(flags))
    }

    /// Records progress; returns false when the job is no longer this worker's.
    pub async fn set_progress(
        &self,
        id: &str,
        attempt: i32,
        progress: &JobProgress,
    ) -> Result<bool, StoreError> {
        let progress = readable(progress, "the job's progress")?;
        update_held(&self.pool, id, attempt, "progress = $3", |v| {
            v.add(progress)
        })
        .await
    }

    /// Replaces the loss and metric curves of a job this worker holds.
    pub async fn set_metrics(
        &self,
        id: &str,
        attempt: i32,
        metrics: &serde_json::Value,
    ) -> Result<bool, StoreError> {
        update_held(&self.pool, id, attempt, "metrics = $3", |v| {
            v.add(Json(metrics))
        })
        .await
    }

    /// Records the strategy an `auto` job chose (fenced like every worker write).
    pub async fn set_method(
        &self,
        id: &str,
        attempt: i32,
        method: &hone_domain::job::Method,
        hyperparameters: &Hyperparameters,
    ) -> Result<bool, StoreError> {
        update_held(
            &self.pool,
            id,
            attempt,
            "method = $3, hyperparameters = $4",
            |v| {
                v.add(Json(method))?;
                v.add(Json(hyperparameters))
            },
        )
        .await
    }

    /// Adds an event to a job this worker holds (fenced like every worker write).
    pub async fn add_event(
        &self,
        id: &str,
        attempt: i32,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: Option<String> =
            sqlx::query_scalar(&format!("SELECT id FROM fine_tuning_jobs WHERE {HELD}"))
                .bind(id)
                .bind(attempt)
                .fetch_optional(&mut *tx)
                .await?;
        if held.is_none() {
            return Ok(false);
        }
        insert_event(&mut tx, id, event).await?;
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
        self.succeed_job_with(id, attempt, model, result, None)
            .await
    }

    /// Whether `attempt` of the job is the one running now: a worker's scratch folder
    /// of any other attempt is left from a process that died, and may go.
    pub async fn attempt_is_running(&self, id: &str, attempt: i32) -> Result<bool, StoreError> {
        let running: Option<String> =
            sqlx::query_scalar(&format!("SELECT id FROM fine_tuning_jobs WHERE {HELD}"))
                .bind(id)
                .bind(attempt)
                .fetch_optional(&self.pool)
                .await?;
        Ok(running.is_some())
    }

    /// Whether the job reads `succeeded` with `model` as its model: after an error
    /// from [`Db::succeed_job_with`] that may hide a commit (the connection lost while
    /// the commit was answered), asked before the attempt takes its upload back.
    pub async fn recorded_success(&self, id: &str, model: &str) -> Result<bool, StoreError> {
        let done: Option<bool> = sqlx::query_scalar(
            "SELECT status = 'succeeded' AND fine_tuned_model IS NOT DISTINCT FROM $2
             FROM fine_tuning_jobs WHERE id = $1",
        )
        .bind(id)
        .bind(model)
        .fetch_optional(&self.pool)
        .await?;
        Ok(done.unwrap_or(false))
    }

    /// [`Db::succeed_job`], with the job's results file (`result.result_file` names
    /// it) recorded in the same transaction: a job never lists a file that does not
    /// exist, and a file is never left from a success that was not recorded.
    pub async fn succeed_job_with(
        &self,
        id: &str,
        attempt: i32,
        model: &crate::models::NewModel,
        result: &JobResult,
        results_file: Option<&crate::files::ResultsFile>,
    ) -> Result<bool, StoreError> {
        let checked = readable(result, "the job's result")?;
        let mut tx = self.pool.begin().await?;
        let held = update_held(
            &mut *tx,
            id,
            attempt,
            "status = 'succeeded', finalized_at = now(), lease_expires_at = NULL,
             fine_tuned_model = $3, result = $4",
            |v| {
                v.add(&model.id)?;
                v.add(checked)
            },
        )
        .await?;
        if !held {
            return Ok(false);
        }
        if let Some(file) = results_file {
            crate::files::insert_results_file(&mut tx, id, file).await?;
        }
        if !crate::models::insert_model(&mut *tx, model, result).await? {
            // Another model has this id: recording the success would point the job at
            // someone else's model. Nothing is written (the transaction rolls back).
            return Err(StoreError::Conflict(format!(
                "a model with the id {} exists already",
                model.id
            )));
        }
        insert_event(
            &mut tx,
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
        let max: Option<i32> = sqlx::query_scalar(&format!(
            "SELECT max_attempts FROM fine_tuning_jobs WHERE {HELD} FOR UPDATE"
        ))
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
                &mut tx,
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
                &mut tx,
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
        let held = update_held(
            &mut *tx,
            id,
            attempt,
            "status = 'cancelled', finalized_at = now(), lease_expires_at = NULL",
            |_| Ok(()),
        )
        .await?;
        if held {
            insert_event(&mut tx, id, &NewEvent::info("Job cancelled")).await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Hands a job back to the queue without spending an attempt (graceful shutdown).
    pub async fn release_job(&self, id: &str, attempt: i32) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held = update_held(
            &mut *tx,
            id,
            attempt,
            "status = 'queued', lease_expires_at = NULL, attempt = attempt - 1,
             scheduled_at = now()",
            |_| Ok(()),
        )
        .await?;
        if held {
            insert_event(
                &mut tx,
                id,
                &NewEvent::info("Worker shut down; job returned to the queue"),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(held)
    }

    /// Requeues running jobs whose lease expired (their worker died), or fails them
    /// when they have used up their attempts. Returns how many were rescued.
    pub async fn rescue_expired(&self) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(String, i32, i32, bool, bool)> = sqlx::query_as(
            "SELECT id, attempt, max_attempts, cancel_requested, pause_requested
             FROM fine_tuning_jobs
             WHERE status = 'running' AND lease_expires_at < now()
             FOR UPDATE SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        for (id, attempt, max, cancel, pause) in &expired {
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
                    &mut tx,
                    id,
                    &NewEvent::info(format!("{message}; job cancelled")),
                )
                .await?;
            } else if *pause {
                // The user wanted it stopped anyway: it waits, paused, for a resume.
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'paused', lease_expires_at = NULL,
                         pause_requested = false WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut tx,
                    id,
                    &NewEvent::info(format!("{message}; job paused as requested")),
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
                    &mut tx,
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
                    &mut tx,
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
        let flags: Option<(bool, bool)> = sqlx::query_as(&format!(
            "SELECT cancel_requested, pause_requested FROM fine_tuning_jobs WHERE {HELD}"
        ))
        .bind(id)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        Ok(lease_of(flags))
    }

    /// Hands a job whose user paused it back as `paused`, after its worker stopped at
    /// a checkpoint: like [`Db::release_job`] it spends no attempt, but no worker
    /// claims it until it is resumed. When the pause was withdrawn meanwhile, the job
    /// goes back to the queue instead. False when the job is no longer this worker's.
    pub async fn finish_paused(
        &self,
        id: &str,
        attempt: i32,
        epoch: Option<u32>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let held = update_held(
            &mut *tx,
            id,
            attempt,
            "status = CASE WHEN pause_requested THEN 'paused'::job_status ELSE 'queued' END,
             lease_expires_at = NULL, attempt = attempt - 1, scheduled_at = now(),
             pause_requested = false",
            |_| Ok(()),
        )
        .await?;
        if held {
            let at = epoch.map_or("before its first checkpoint".to_owned(), |e| {
                format!("after the checkpoint of epoch {e}")
            });
            insert_event(
                &mut tx,
                id,
                &NewEvent::info(format!("Job paused {at}; resume it to go on from there")),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(held)
    }
}

fn lease_of(flags: Option<(bool, bool)>) -> Lease {
    match flags {
        Some((cancel_requested, pause_requested)) => Lease::Held {
            cancel_requested,
            pause_requested,
        },
        None => Lease::Lost,
    }
}
