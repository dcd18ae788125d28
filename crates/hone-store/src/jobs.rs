//! Fine-tuning jobs as the API sees them: create (with files locked and limits
//! counted in one transaction), read, list, cancel, and their curves (their events are
//! `events.rs`'s).
//! What a worker does to the job it holds is the queue's, in `queue.rs`.

use hone_domain::job::{Hyperparameters, JobStatus, Method};
use hone_domain::resources::FineTuningJob;
use hone_domain::{JobId, PageRequest, ProjectId};
use sqlx::types::Json;

use crate::events::{insert_event, NewEvent};
use crate::idempotency::{Idempotency, Once};
use crate::job_rows::{JobRow, COLUMNS};
use crate::{Db, StoreError};

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
            below_active_limit(&mut tx, &new.project, limit).await?;
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
            &mut tx,
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

    /// A page of the project's jobs, newest first; with `status`, only jobs in it;
    /// with `metadata`, only jobs whose metadata holds every one of its pairs.
    pub async fn list_jobs(
        &self,
        project: &ProjectId,
        page: &PageRequest,
        status: Option<JobStatus>,
        metadata: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Result<Vec<FineTuningJob>, StoreError> {
        let rows: Vec<JobRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM fine_tuning_jobs
             WHERE project_id = $4
               AND ($1::text IS NULL
                    OR (created_at, id) < (SELECT created_at, id FROM fine_tuning_jobs
                                           WHERE id = $1 AND project_id = $4))
               AND ($2::text IS NULL OR status::text = $2)
               AND ($5::jsonb IS NULL OR metadata @> $5)
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(page.after.as_deref())
        .bind(status.map(JobStatus::as_str))
        .bind(page.limit + 1)
        .bind(project.as_str())
        .bind(metadata.map(Json))
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
            Some(JobStatus::Queued | JobStatus::ValidatingFiles | JobStatus::Paused) => {
                sqlx::query(
                    "UPDATE fine_tuning_jobs SET status = 'cancelled', finalized_at = now(),
                         cancel_requested = true, pause_requested = false WHERE id = $1",
                )
                .bind(id)
                .execute(&mut *tx)
                .await?;
                insert_event(
                    &mut tx,
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
                    &mut tx,
                    id,
                    &NewEvent::info("Cancellation requested; the worker stops at the next step"),
                )
                .await?;
            }
            _ => {
                // Ended explicitly, as in `transition`: only dropped, the transaction
                // would keep the row locked until its connection is next used.
                tx.rollback().await?;
                return Err(StoreError::Conflict(format!(
                    "job {id} has already finished with status {status}"
                )));
            }
        }
        tx.commit().await?;
        self.get_job(project, id).await
    }

    /// Pauses a job: a queued one at once; a running one is flagged, and its worker
    /// hands it back as `paused` after its next checkpoint. Pausing a paused job
    /// changes nothing; a finished one is a conflict.
    pub async fn pause_job(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<FineTuningJob, StoreError> {
        self.transition(project, id, None, |status, pause_requested| match status {
            JobStatus::Queued | JobStatus::ValidatingFiles => Ok(Some((
                "status = 'paused', pause_requested = false",
                "Job paused before it ran again; resume it to queue it",
            ))),
            JobStatus::Running if !pause_requested => Ok(Some((
                "pause_requested = true",
                "Pause requested; the worker stops after the next checkpoint",
            ))),
            JobStatus::Running | JobStatus::Paused => Ok(None),
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Cancelled => Err(format!(
                "job {id} has already finished with status {}; only a queued or \
                     running job can be paused",
                status.as_str()
            )),
        })
        .await
    }

    /// Resumes a paused job: it is queued again, and the attempt that claims it goes
    /// on from its last checkpoint. A running job whose pause has not taken effect
    /// yet just keeps running. Any other job is a conflict. With `max_active_jobs`, a
    /// paused job is queued only while the project has fewer active jobs (counted as
    /// a create counts them), else [`crate::Quota::ActiveJobs`].
    pub async fn resume_job(
        &self,
        project: &ProjectId,
        id: &str,
        max_active_jobs: Option<i64>,
    ) -> Result<FineTuningJob, StoreError> {
        let requeue_limit = max_active_jobs.map(|limit| (JobStatus::Paused, limit));
        self.transition(
            project,
            id,
            requeue_limit,
            |status, pause_requested| match status {
                JobStatus::Paused => Ok(Some((
                    "status = 'queued', scheduled_at = now(), pause_requested = false",
                    "Job resumed; queued to go on from its last checkpoint",
                ))),
                JobStatus::Running if pause_requested => Ok(Some((
                    "pause_requested = false",
                    "Pause withdrawn before it took effect; the job keeps running",
                ))),
                _ => Err(format!("job {id} is {}, not paused", status.as_str())),
            },
        )
        .await
    }

    /// With the job's row locked, `decide` sees its status and pause flag and names
    /// the change (`SET` clause, event message; `None`: nothing to do) or the conflict;
    /// the job after it is returned. With `active_limit` `(from, limit)`, a change of a
    /// job in status `from` makes it active again, and is made only below the project's
    /// limit of active jobs (the project locked after the job, in the same transaction).
    async fn transition(
        &self,
        project: &ProjectId,
        id: &str,
        active_limit: Option<(JobStatus, i64)>,
        decide: impl FnOnce(JobStatus, bool) -> Result<Option<(&'static str, &'static str)>, String>,
    ) -> Result<FineTuningJob, StoreError> {
        let mut tx = self.pool.begin().await?;
        let (status, pause_requested): (String, bool) = sqlx::query_as(
            "SELECT status::text, pause_requested FROM fine_tuning_jobs
             WHERE id = $1 AND project_id = $2 FOR UPDATE",
        )
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let status = JobStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("job {id} has status {status}")))?;
        // Ended explicitly either way: a transaction only dropped keeps the row locked
        // until its connection is next used, and a claim would skip the job meanwhile.
        match decide(status, pause_requested) {
            Ok(Some((set, message))) => {
                if let Some((_, limit)) = active_limit.filter(|(from, _)| *from == status) {
                    if let Err(e) = below_active_limit(&mut tx, project, limit).await {
                        tx.rollback().await?;
                        return Err(e);
                    }
                }
                sqlx::query(&format!("UPDATE fine_tuning_jobs SET {set} WHERE id = $1"))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                insert_event(&mut tx, id, &NewEvent::info(message)).await?;
                tx.commit().await?;
            }
            Ok(None) => tx.rollback().await?,
            Err(conflict) => {
                tx.rollback().await?;
                return Err(StoreError::Conflict(conflict));
            }
        }
        self.get_job(project, id).await
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
}

/// Refuses ([`crate::Quota::ActiveJobs`]) when `project` has `limit` active jobs
/// (validating, queued or running) or more; locks the project first, so that two
/// transactions adding active jobs cannot both pass.
async fn below_active_limit(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    project: &ProjectId,
    limit: i64,
) -> Result<(), StoreError> {
    crate::projects::lock(tx, project).await?;
    let active: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fine_tuning_jobs
         WHERE project_id = $1 AND status IN ('validating_files', 'queued', 'running')",
    )
    .bind(project.as_str())
    .fetch_one(&mut **tx)
    .await?;
    if active >= limit {
        return Err(StoreError::Quota(crate::Quota::ActiveJobs { limit }));
    }
    Ok(())
}
