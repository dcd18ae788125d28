//! Per-epoch checkpoints of fine-tuning jobs: the row (epoch, metrics, where the
//! weights are) in Postgres, the weights in the artifact store.

use chrono::{DateTime, Utc};
use hone_domain::resources::{CheckpointMetrics, EpochPoint, JobCheckpoint};
use hone_domain::{CheckpointId, JobId, ProjectId};
use sqlx::types::Json;

use crate::{ArtifactStore, Db, StoreError};

/// A checkpoint a worker has just stored.
#[derive(Clone, Debug)]
pub struct NewCheckpoint {
    pub epoch: u32,
    pub step: u64,
    pub metrics: EpochPoint,
    pub storage_key: String,
    pub bytes: u64,
    /// Whether the folder also holds the training state a later attempt resumes from.
    pub resumable: bool,
}

/// A checkpoint as the API shows it, plus where its weights are.
#[derive(Clone, Debug)]
pub struct StoredCheckpoint {
    pub object: JobCheckpoint,
    pub storage_key: String,
}

#[derive(sqlx::FromRow)]
struct CheckpointRow {
    job_id: String,
    epoch: i32,
    step: i64,
    metrics: Json<EpochPoint>,
    storage_key: String,
    bytes: i64,
    created_at: DateTime<Utc>,
    published_model: Option<String>,
    /// The job's own model, once it succeeded.
    job_model: Option<String>,
}

impl TryFrom<CheckpointRow> for StoredCheckpoint {
    type Error = StoreError;

    fn try_from(r: CheckpointRow) -> Result<Self, StoreError> {
        let job = JobId::parse(&r.job_id)
            .ok_or_else(|| StoreError::Corrupt(format!("checkpoint of job {:?}", r.job_id)))?;
        let epoch = u32::try_from(r.epoch).unwrap_or(0);
        let step = u64::try_from(r.step).unwrap_or(0);
        // The id `POST …/checkpoints/{epoch}/publish` gives the checkpoint's model.
        let model = r
            .published_model
            .clone()
            .or_else(|| r.job_model.map(|m| format!("{m}:ckpt-{epoch}")));
        Ok(StoredCheckpoint {
            object: JobCheckpoint {
                id: CheckpointId { job, epoch }.to_string(),
                object: "fine_tuning.job.checkpoint",
                created_at: r.created_at.timestamp(),
                fine_tuned_model_checkpoint: model,
                fine_tuning_job_id: r.job_id.clone(),
                step_number: step,
                metrics: CheckpointMetrics::new(step, r.metrics.0),
                job_id: r.job_id,
                epoch,
                step,
                bytes: u64::try_from(r.bytes).unwrap_or(0),
                published_model: r.published_model,
            },
            storage_key: r.storage_key,
        })
    }
}

const SELECT: &str = "SELECT c.job_id, c.epoch, c.step, c.metrics, c.storage_key, c.bytes,
                             c.created_at, m.id AS published_model,
                             j.fine_tuned_model AS job_model
                      FROM fine_tuning_job_checkpoints c
                      JOIN fine_tuning_jobs j ON j.id = c.job_id
                      LEFT JOIN models m
                        ON m.job_id = c.job_id AND m.checkpoint_epoch = c.epoch";

impl Db {
    /// Records a checkpoint of the running attempt `attempt` (a later attempt's
    /// checkpoint of the same epoch replaces it); `false` when the attempt no longer
    /// owns the job, in which case nothing is written.
    pub async fn put_checkpoint(
        &self,
        job_id: &str,
        attempt: i32,
        checkpoint: &NewCheckpoint,
    ) -> Result<bool, StoreError> {
        let metrics = crate::db::readable(&checkpoint.metrics, "the checkpoint's metrics")?;
        let done = sqlx::query(
            "INSERT INTO fine_tuning_job_checkpoints
                 (job_id, epoch, step, metrics, storage_key, bytes, attempt, resumable)
             SELECT $1, $3, $4, $5, $6, $7, $2, $8 FROM fine_tuning_jobs
             WHERE id = $1 AND status = 'running' AND attempt = $2
             ON CONFLICT (job_id, epoch) DO UPDATE SET
                 step = EXCLUDED.step, metrics = EXCLUDED.metrics,
                 storage_key = EXCLUDED.storage_key, bytes = EXCLUDED.bytes,
                 attempt = EXCLUDED.attempt, resumable = EXCLUDED.resumable,
                 created_at = now()",
        )
        .bind(job_id)
        .bind(attempt)
        .bind(checkpoint.epoch as i32)
        .bind(checkpoint.step as i64)
        .bind(metrics)
        .bind(&checkpoint.storage_key)
        .bind(checkpoint.bytes as i64)
        .bind(checkpoint.resumable)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The checkpoints of a job of `project`, oldest epoch first (a checkpoint belongs
    /// to its job's project): up to `limit` of them, after epoch `after` if given.
    pub async fn list_checkpoints(
        &self,
        project: &ProjectId,
        job_id: &str,
        after: Option<u32>,
        limit: i64,
    ) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows: Vec<CheckpointRow> = sqlx::query_as(&format!(
            "{SELECT} WHERE c.job_id = $1 AND j.project_id = $2
                        AND ($3::integer IS NULL OR c.epoch > $3)
             ORDER BY c.epoch LIMIT $4"
        ))
        .bind(job_id)
        .bind(project.as_str())
        .bind(after.map(|e| i32::try_from(e).unwrap_or(i32::MAX)))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TryInto::try_into).collect()
    }

    pub async fn get_checkpoint(
        &self,
        project: &ProjectId,
        job_id: &str,
        epoch: u32,
    ) -> Result<StoredCheckpoint, StoreError> {
        self.find_checkpoint(Some(project), job_id, epoch).await
    }

    /// A checkpoint whatever its project, for the worker that trains its job.
    pub async fn get_checkpoint_of_job(
        &self,
        job_id: &str,
        epoch: u32,
    ) -> Result<StoredCheckpoint, StoreError> {
        self.find_checkpoint(None, job_id, epoch).await
    }

    async fn find_checkpoint(
        &self,
        project: Option<&ProjectId>,
        job_id: &str,
        epoch: u32,
    ) -> Result<StoredCheckpoint, StoreError> {
        let row: CheckpointRow = sqlx::query_as(&format!(
            "{SELECT} WHERE c.job_id = $1 AND c.epoch = $2
                        AND ($3::text IS NULL OR j.project_id = $3)"
        ))
        .bind(job_id)
        .bind(epoch as i32)
        .bind(project.map(ProjectId::as_str))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }
}

/// The checkpoint a new attempt of a job goes on from.
#[derive(Clone, Debug)]
pub struct ResumePoint {
    pub epoch: u32,
    pub step: u64,
    pub storage_key: String,
    /// The attempt that wrote it.
    pub attempt: i32,
}

impl Db {
    /// The latest checkpoint of `job_id` that carries a training state, written by
    /// `attempt` or one before it, for `attempt` to go on from at its start. Its own
    /// number counts: a job handed back on shutdown is claimed again under the number
    /// of the attempt that handed it back.
    pub async fn resume_point(
        &self,
        job_id: &str,
        attempt: i32,
    ) -> Result<Option<ResumePoint>, StoreError> {
        let row: Option<(i32, i64, String, i32)> = sqlx::query_as(
            "SELECT epoch, step, storage_key, attempt FROM fine_tuning_job_checkpoints
             WHERE job_id = $1 AND resumable AND attempt <= $2
             ORDER BY epoch DESC LIMIT 1",
        )
        .bind(job_id)
        .bind(attempt)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(epoch, step, storage_key, attempt)| ResumePoint {
            epoch: u32::try_from(epoch).unwrap_or(0),
            step: u64::try_from(step).unwrap_or(0),
            storage_key,
            attempt,
        }))
    }

    /// Keeps only the checkpoints of an ended job worth keeping: the last epoch's, the
    /// best epoch's (its result's `best_epoch`) and any that was published as a model;
    /// forgets the others and returns their storage keys, for the caller to remove
    /// (rows first: an object left by a failed removal has no row, and the orphan
    /// sweep takes it).
    pub async fn prune_checkpoints(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "WITH last AS (
                 SELECT max(epoch) AS epoch FROM fine_tuning_job_checkpoints WHERE job_id = $1
             ), best AS (
                 SELECT (result->>'best_epoch')::int AS epoch FROM fine_tuning_jobs WHERE id = $1
             )
             DELETE FROM fine_tuning_job_checkpoints c USING last, best
             WHERE c.job_id = $1 AND c.epoch <> last.epoch
               AND c.epoch IS DISTINCT FROM best.epoch
               AND NOT EXISTS (SELECT 1 FROM models m
                               WHERE m.job_id = c.job_id AND m.checkpoint_epoch = c.epoch)
             RETURNING c.storage_key",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The job has ended and resumes no more: its checkpoints stop being resume points
    /// (before their optimizer state goes); returns their storage keys. Each key is
    /// returned once, to whichever caller (the job's worker or the sweep) ends it first.
    pub async fn end_resumability(&self, job_id: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE fine_tuning_job_checkpoints SET resumable = false
             WHERE job_id = $1 AND resumable RETURNING storage_key",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The checkpoint stored under `storage_key` lost `removed` bytes (its optimizer
    /// state): its size, and so the project's usage, counts what is left.
    pub async fn checkpoint_shrunk(
        &self,
        storage_key: &str,
        removed: u64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE fine_tuning_job_checkpoints SET bytes = greatest(bytes - $2, 0)
             WHERE storage_key = $1",
        )
        .bind(storage_key)
        .bind(i64::try_from(removed).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes the optimizer state of the checkpoints stored under `keys` (ended
    /// resumability first: [`Db::end_resumability`]) and shrinks their recorded size;
    /// how many held some. A removal that fails leaves the file counted.
    pub async fn drop_optimizer_state(
        &self,
        artifacts: &dyn ArtifactStore,
        keys: &[String],
    ) -> usize {
        let mut dropped = 0;
        for key in keys {
            match artifacts.remove_from_dir(key, OPTIMIZER_STATE_FILE).await {
                Ok(0) => {}
                Ok(removed) => {
                    dropped += 1;
                    if let Err(e) = self.checkpoint_shrunk(key, removed).await {
                        tracing::warn!(error = %e, key, "cannot record a checkpoint's new size");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, key, "cannot remove a checkpoint's optimizer state")
                }
            }
        }
        dropped
    }

    /// Forgets a job's checkpoints; how many there were. Their files all lie under
    /// [`job_prefix`], which the caller removes.
    pub async fn delete_checkpoints(&self, job_id: &str) -> Result<u64, StoreError> {
        Ok(
            sqlx::query("DELETE FROM fine_tuning_job_checkpoints WHERE job_id = $1")
                .bind(job_id)
                .execute(&self.pool)
                .await?
                .rows_affected(),
        )
    }
}

/// Where a checkpoint's weights go in the artifact store (a folder, so the local
/// store can hand it out as a directory). Each attempt writes under its own key, so a
/// worker that lost its lease and cleans up after itself cannot touch the files of the
/// attempt that owns the job now.
pub fn storage_key(job_id: &str, attempt: i32, epoch: u32) -> String {
    format!("{}/attempt-{attempt}/epoch-{epoch}", job_prefix(job_id))
}

/// The folder of every checkpoint of a job.
pub fn job_prefix(job_id: &str) -> String {
    format!("checkpoints/{job_id}")
}

/// The weights file inside a checkpoint's folder.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// The optimizer's moments and the best epoch's weights inside a checkpoint's folder
/// (hone-train's `resume::STATE_TENSORS_FILE`): what only resuming needs.
pub const OPTIMIZER_STATE_FILE: &str = "state.safetensors";
