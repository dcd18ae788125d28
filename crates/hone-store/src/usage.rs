//! What a project stores and runs: the bytes of its files, checkpoints and published
//! models (what its `max_stored_bytes` limits), and its active jobs.

use hone_domain::ProjectId;

use crate::{Db, StoreError};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub file_bytes: u64,
    pub checkpoint_bytes: u64,
    pub model_bytes: u64,
    /// The feature cache's entries computed for the project.
    pub feature_bytes: u64,
    /// Jobs validating, queued or running.
    pub active_jobs: u64,
}

impl Usage {
    /// What counts toward the stored-bytes limit.
    pub fn stored_bytes(&self) -> u64 {
        self.file_bytes
            .saturating_add(self.checkpoint_bytes)
            .saturating_add(self.model_bytes)
            .saturating_add(self.feature_bytes)
    }
}

/// The project's usage, read in `exec` (a transaction that holds the project's lock,
/// for a quota check).
pub(crate) async fn usage<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    project: &ProjectId,
) -> Result<Usage, StoreError> {
    let (files, checkpoints, models, features, active): (i64, i64, i64, i64, i64) = sqlx::query_as(
        "SELECT
             (SELECT coalesce(sum(bytes), 0) FROM files WHERE project_id = $1)::bigint,
             (SELECT coalesce(sum(c.bytes), 0) FROM fine_tuning_job_checkpoints c
              JOIN fine_tuning_jobs j ON j.id = c.job_id WHERE j.project_id = $1)::bigint,
             (SELECT coalesce(sum(bytes), 0) FROM models WHERE project_id = $1)::bigint,
             (SELECT coalesce(sum(bytes), 0) FROM feature_cache WHERE project_id = $1)::bigint,
             (SELECT count(*) FROM fine_tuning_jobs WHERE project_id = $1
                AND status IN ('validating_files', 'queued', 'running'))::bigint",
    )
    .bind(project.as_str())
    .fetch_one(exec)
    .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok(Usage {
        file_bytes: count(files),
        checkpoint_bytes: count(checkpoints),
        model_bytes: count(models),
        feature_bytes: count(features),
        active_jobs: count(active),
    })
}

impl Db {
    pub async fn usage(&self, project: &ProjectId) -> Result<Usage, StoreError> {
        usage(&self.pool, project).await
    }
}
