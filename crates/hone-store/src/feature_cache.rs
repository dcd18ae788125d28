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

use crate::ArtifactStore;

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

/// The artifact key of the features of one file, under its project: a project reuses
/// only what it computed itself, so whether an entry exists (`features_cached`, the
/// "reusing" event) says nothing about another project's data.
pub fn cache_key(
    project: &ProjectId,
    base_model: &str,
    weights_sha256: &str,
    file_sha256: &str,
    max_seq_len: u32,
    pooling: PoolingType,
) -> String {
    let mut h = Sha256::new();
    for part in [
        FORMAT,
        base_model,
        weights_sha256,
        file_sha256,
        &max_seq_len.to_string(),
        pooling.as_str(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!(
        "features/{}/{}.safetensors",
        project.as_str(),
        hex::encode(h.finalize())
    )
}

/// The cached entry copied into `dir` (the training thread reads files), or just the
/// key when there is none.
pub async fn lookup(
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
            (key, Some(path))
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot stage cached features");
            (key, None)
        }
    }
}

/// Stores a features file under `key` (atomically: readers see all of it or nothing).
pub async fn store(
    artifacts: &Arc<dyn ArtifactStore>,
    key: &str,
    path: &Path,
) -> std::io::Result<()> {
    let bytes = tokio::fs::read(path).await?;
    let mut object = artifacts.create(key).await?;
    object.write(&bytes).await?;
    object.commit().await?;
    Ok(())
}
