//! The feature cache: pooled outputs of a frozen base model over a stored file, kept in
//! the artifact store so that every later epoch and every later job on the same data,
//! base model, length and pooling skips the encoder. The worker fills it for
//! `feature_extraction` and `auto` jobs, `POST /v1/transferability` for its estimates;
//! each reuses what the other computed, within one project (keys start with it).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hone_domain::job::PoolingType;
use hone_domain::ProjectId;
use sha2::{Digest, Sha256};

use crate::{ArtifactStore, Db, StoreError};

/// Bumped when the way features are computed changes, so old entries are not reused.
const FORMAT: &str = "hone-features-v1";

/// SHA-256 of the base model's weights: a directory replaced under the same name must
/// not hit the old entries.
pub async fn base_weights_digest(base_dir: &Path) -> std::io::Result<String> {
    let path = base_dir.join("model.safetensors");
    tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        let mut file = std::fs::File::open(&path)?;
        let mut hasher = Sha256::new();
        std::io::copy(&mut file, &mut hasher)?;
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// The artifact key of the features of one file, under its project and the file's
/// bytes: a project reuses only what it computed itself, so whether an entry exists
/// (`features_cached`, the "reusing" event) says nothing about another project's data;
/// and the entries of a file's bytes go with the project's last file of those bytes.
/// `data_sha256` names the data the features were computed from: the file's digest, or
/// a sample's.
pub fn cache_key(
    project: &ProjectId,
    file_sha256: &str,
    base_model: &str,
    weights_sha256: &str,
    data_sha256: &str,
    max_seq_len: u32,
    pooling: PoolingType,
) -> String {
    let mut h = Sha256::new();
    for part in [
        FORMAT,
        base_model,
        weights_sha256,
        data_sha256,
        &max_seq_len.to_string(),
        pooling.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!(
        "features/{}/{file_sha256}/{}.safetensors",
        project.as_str(),
        hex::encode(h.finalize())
    )
}

/// The project and file digest a key of [`cache_key`] names.
fn owner(key: &str) -> Option<(&str, &str)> {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next()) {
        (Some("features"), Some(project), Some(file)) => Some((project, file)),
        _ => None,
    }
}

/// The cached entry copied into `dir` (the training thread reads files), or just the
/// key when there is none.
pub async fn lookup(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    key: String,
    dir: &Path,
    name: &str,
) -> (String, Option<PathBuf>) {
    let bytes = match artifacts.read(&key).await {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (key, None),
        Err(e) => {
            tracing::warn!(error = %e, key, "cannot read the feature cache");
            return (key, None);
        }
    };
    let path = dir.join(format!("{name}-cached.safetensors"));
    match tokio::fs::write(&path, bytes).await {
        Ok(()) => {
            tracing::info!(key, "feature cache hit");
            // Recently used: the last to be evicted.
            if let Err(e) = sqlx::query("UPDATE feature_cache SET used_at = now() WHERE key = $1")
                .bind(&key)
                .execute(&db.pool)
                .await
            {
                tracing::warn!(error = %e, "cannot mark a feature cache entry used");
            }
            (key, Some(path))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot stage cached features");
            (key, None)
        }
    }
}

/// Stores a features file under `key` (atomically: readers see all of it or nothing),
/// records it in its project's usage, then evicts the project's least recently used
/// entries past `max_bytes`.
pub async fn store(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    key: &str,
    path: &Path,
    max_bytes: u64,
) -> Result<(), StoreError> {
    let (project, file) = owner(key)
        .ok_or_else(|| StoreError::Corrupt(format!("{key:?} is not a feature cache key")))?;
    let bytes = tokio::fs::read(path).await?;
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    let mut object = artifacts.create(key).await?;
    object.write(&bytes).await?;
    object.commit().await?;
    sqlx::query(
        "INSERT INTO feature_cache (key, project_id, file_sha256, bytes) VALUES ($1, $2, $3, $4)
         ON CONFLICT (key) DO UPDATE SET bytes = EXCLUDED.bytes, used_at = now()",
    )
    .bind(key)
    .bind(project)
    .bind(file)
    .bind(size)
    .execute(&db.pool)
    .await?;
    // Newest first; whatever lies past the cap goes, rows first.
    let evicted: Vec<String> = sqlx::query_scalar(
        "DELETE FROM feature_cache WHERE key IN (
             SELECT key FROM (
                 SELECT key, sum(bytes) OVER (ORDER BY used_at DESC, key) AS upto
                 FROM feature_cache WHERE project_id = $1) ranked
             WHERE upto > $2)
         RETURNING key",
    )
    .bind(project)
    .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
    .fetch_all(&db.pool)
    .await?;
    for gone in evicted {
        tracing::info!(key = gone, "evicting a feature cache entry");
        artifacts.delete(&gone).await?;
    }
    Ok(())
}

/// Removes the project's entries computed from files with `file_sha256` once the
/// project has no such file left.
pub async fn drop_for_file(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    project: &ProjectId,
    file_sha256: &str,
) -> Result<(), StoreError> {
    let keys: Vec<String> = sqlx::query_scalar(
        "DELETE FROM feature_cache c
         WHERE c.project_id = $1 AND c.file_sha256 = $2
           AND NOT EXISTS (SELECT 1 FROM files f WHERE f.project_id = $1 AND f.sha256 = $2)
         RETURNING c.key",
    )
    .bind(project.as_str())
    .bind(file_sha256)
    .fetch_all(&db.pool)
    .await?;
    if !keys.is_empty() {
        artifacts
            .delete(&format!("features/{}/{file_sha256}", project.as_str()))
            .await?;
    }
    Ok(())
}
