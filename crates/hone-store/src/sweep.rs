//! The orphan sweep: artifacts that no row names. Every write path commits its
//! object before its row (an upload, a model, a checkpoint) and takes the object back
//! when the row is not written; a process killed in between leaves the object, which no
//! listing shows and no quota counts. At start-up (and once a day after) one process
//! at a time (an advisory lock) lists the stored keys older than a grace period, longer
//! than any write takes between its object and its row, and removes those without a
//! row, then the scratch that dead writers left, then the optimizer state that ended
//! jobs' checkpoints still hold. It also measures the published models that were
//! recorded before models had a size (their rows say 0 bytes; a published model is
//! never empty), so that the project's usage counts them.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use crate::{ArtifactStore, Db, Listed, StoreError};

/// Taken with `pg_try_advisory_lock` so that one process sweeps at a time.
const SWEEP_LOCK: i64 = 0x686f_6e65_7377_6570; // "honeswep"

/// What one sweep removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub files: usize,
    pub models: usize,
    pub checkpoints: usize,
    pub features: usize,
    pub scratch: usize,
    /// Kept checkpoints of ended jobs that lost their optimizer state here.
    pub optimizer_states: usize,
    /// Published models whose size was not yet recorded, measured here.
    pub models_measured: usize,
}

/// The kinds of stored keys, how deep their keys are, and the query that gives the
/// ones with rows among a list of candidates.
const KINDS: [(&str, usize, &str); 4] = [
    (
        "files",
        2,
        "SELECT storage_key FROM files WHERE storage_key = ANY($1)",
    ),
    (
        "models",
        2,
        "SELECT storage_key FROM models WHERE storage_key = ANY($1)",
    ),
    (
        "checkpoints",
        4,
        "SELECT storage_key FROM fine_tuning_job_checkpoints WHERE storage_key = ANY($1)",
    ),
    (
        "features",
        4,
        "SELECT key FROM feature_cache WHERE key = ANY($1)",
    ),
];

impl Db {
    /// Removes stored objects older than `grace` that no row names, and scratch older
    /// than `grace`; `None` when another process holds the sweep.
    pub async fn sweep_orphans(
        &self,
        artifacts: &dyn ArtifactStore,
        grace: Duration,
    ) -> Result<Option<Swept>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(SWEEP_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if !locked {
            return Ok(None);
        }
        let result = self.sweep_locked(artifacts, grace).await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(SWEEP_LOCK)
            .execute(&mut *conn)
            .await;
        result.map(Some)
    }

    async fn sweep_locked(
        &self,
        artifacts: &dyn ArtifactStore,
        grace: Duration,
    ) -> Result<Swept, StoreError> {
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let mut swept = Swept::default();
        for (prefix, depth, with_rows) in KINDS {
            let listed = artifacts.list_keys(prefix, depth).await?;
            if prefix == "models" {
                swept.models_measured = self.measure_models(&listed).await?;
            }
            let old: Vec<String> = listed
                .into_iter()
                .filter(|l| l.modified <= cutoff)
                .map(|l| l.key)
                .collect();
            let mut removed = 0;
            for chunk in old.chunks(1000) {
                let kept: HashSet<String> = sqlx::query_scalar(with_rows)
                    .bind(chunk)
                    .fetch_all(&self.pool)
                    .await?
                    .into_iter()
                    .collect();
                for key in chunk.iter().filter(|k| !kept.contains(*k)) {
                    tracing::info!(key, "removing a stored object that no row names");
                    artifacts.delete(key).await?;
                    removed += 1;
                }
            }
            match prefix {
                "files" => swept.files = removed,
                "models" => swept.models = removed,
                "checkpoints" => swept.checkpoints = removed,
                _ => swept.features = removed,
            }
        }
        swept.scratch = artifacts.sweep_scratch(grace).await?;
        // Ended jobs' checkpoints that still hold their optimizer state: kept from
        // before it went at a job's end, or left by a worker stopped in between.
        let ended: Vec<String> = sqlx::query_scalar(
            "UPDATE fine_tuning_job_checkpoints c SET resumable = false
             FROM fine_tuning_jobs j
             WHERE j.id = c.job_id AND c.resumable AND c.created_at <= $1
               AND j.status IN ('succeeded', 'failed', 'cancelled')
             RETURNING c.storage_key",
        )
        .bind(chrono::DateTime::<chrono::Utc>::from(cutoff))
        .fetch_all(&self.pool)
        .await?;
        swept.optimizer_states = self.drop_optimizer_state(artifacts, &ended).await;
        Ok(swept)
    }

    /// Records the size of the listed models whose rows say 0 bytes (published before
    /// models had a size); how many there were.
    async fn measure_models(&self, listed: &[Listed]) -> Result<usize, StoreError> {
        let (keys, bytes): (Vec<&str>, Vec<i64>) = listed
            .iter()
            .filter(|l| l.bytes > 0)
            .map(|l| (l.key.as_str(), i64::try_from(l.bytes).unwrap_or(i64::MAX)))
            .unzip();
        let measured = sqlx::query(
            "UPDATE models m SET bytes = v.bytes
             FROM unnest($1::text[], $2::bigint[]) AS v(key, bytes)
             WHERE m.storage_key = v.key AND m.bytes = 0",
        )
        .bind(&keys)
        .bind(&bytes)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(usize::try_from(measured).unwrap_or(usize::MAX))
    }
}
