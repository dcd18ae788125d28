//! The artifact store: where dataset bytes, checkpoints, cached features, result files
//! and published model directories live. One interface, two backends chosen by
//! configuration ([`Location`]): a local directory (`file://`, the default, for one
//! machine) and S3-compatible object storage (`s3://`, for API replicas and workers on
//! many machines), in `local.rs` and `object.rs`.
//!
//! Keys are relative, '/'-separated paths made by the server itself (`files/<id>`,
//! `models/<id>`, `checkpoints/<job>/…`), never by users; a key names its content, so
//! what is published under a key is never replaced by something else (a checkpoint's
//! key holds its job, attempt and epoch). Readers may cache on that.

mod cache;
mod local;
mod object;

use std::any::Any;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use tokio::io::AsyncRead;

pub use local::LocalArtifactStore;
pub use object::{ObjectArtifactStore, S3Settings};

/// `check_key` refuses anything that could leave the store's root.
pub(crate) fn check_key(key: &str) -> std::io::Result<()> {
    let ok = !key.is_empty()
        && !key.starts_with('/')
        && key
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..");
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid artifact key {key:?}"),
        ))
    }
}

/// An object being written. Nothing is visible under its key until `commit`; dropping
/// it uncommitted removes what was written, so a refused or interrupted upload leaves
/// nothing behind.
#[async_trait]
pub trait PendingObject: Send {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()>;
    async fn commit(self: Box<Self>) -> std::io::Result<()>;
    /// The bytes written so far, from their start, for checks that need the whole
    /// object before it is committed (a zip's directory is at its end).
    async fn read_back(&mut self) -> std::io::Result<std::fs::File>;
}

/// A local directory holding a published directory's files, for code (libtorch) that
/// can only read files. While it is held, a cache does not evict it.
pub struct LocalDir {
    path: PathBuf,
    _pin: Option<Arc<dyn Any + Send + Sync>>,
}

impl LocalDir {
    pub(crate) fn new(path: PathBuf, pin: Option<Arc<dyn Any + Send + Sync>>) -> Self {
        Self { path, _pin: pin }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl std::fmt::Debug for LocalDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LocalDir").field(&self.path).finish()
    }
}

impl std::ops::Deref for LocalDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.path
    }
}

impl AsRef<Path> for LocalDir {
    fn as_ref(&self) -> &Path {
        &self.path
    }
}

#[async_trait]
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn PendingObject>>;
    async fn open(&self, key: &str) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>>;
    async fn read(&self, key: &str) -> std::io::Result<Vec<u8>>;
    /// Removes an object, or every object under a `prefix/`; a missing key is no error.
    async fn delete(&self, key: &str) -> std::io::Result<()>;
    /// Removes one file of the directory published under `prefix` (readers that
    /// look afterwards never expect it); the bytes it held, 0 when it was not there.
    async fn remove_from_dir(&self, prefix: &str, file: &str) -> std::io::Result<u64>;
    /// Publishes a local directory under `prefix` (atomically: all of it or nothing).
    async fn put_dir(&self, prefix: &str, dir: &Path) -> std::io::Result<()>;
    /// A local directory holding the objects under `prefix`, for code (libtorch) that
    /// can only read files; `NotFound` when nothing (or nothing whole) is published there.
    async fn local_dir(&self, prefix: &str) -> std::io::Result<LocalDir>;
    /// Whether the store answers and this process may use it: checked before a process
    /// reports ready, and by `/readyz`.
    async fn check(&self) -> std::io::Result<()>;
    /// Where the store is, for logs and messages (no credentials).
    fn describe(&self) -> String;
    /// The keys `depth` components deep under `prefix` (`files/<id>` is 2 deep), each
    /// with when it was last written (the newest of the objects under it) and the bytes
    /// stored under it: what the orphan sweep compares with the database's rows.
    async fn list_keys(&self, prefix: &str, depth: usize) -> std::io::Result<Vec<Listed>>;
    /// Removes scratch that a process which died mid-write left, older than `age`;
    /// how many entries went.
    async fn sweep_scratch(&self, age: std::time::Duration) -> std::io::Result<usize>;
}

/// A key found by [`ArtifactStore::list_keys`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    pub modified: std::time::SystemTime,
    /// The bytes of the object, or of every object under the key.
    pub bytes: u64,
}

/// The bytes of the files under a local directory (what publishing it stores).
pub async fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut todo = vec![dir.to_owned()];
    while let Some(path) = todo.pop() {
        let mut entries = tokio::fs::read_dir(&path).await?;
        while let Some(entry) = entries.next_entry().await? {
            let meta = entry.metadata().await?;
            if meta.is_dir() {
                todo.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// Where artifacts are kept, as configured: `file://<dir>` or `s3://<bucket>/<prefix>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(raw: &str) -> Result<Self, String> {
        if let Some(dir) = raw.strip_prefix("file://") {
            if dir.is_empty() {
                return Err("file:// needs a directory, as in file:///var/lib/hone".into());
            }
            return Ok(Location::File(PathBuf::from(dir)));
        }
        if let Some(rest) = raw.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let prefix = prefix.trim_matches('/');
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-.".contains(&b));
            if !bucket_ok {
                return Err(format!(
                    "{bucket:?} is not an S3 bucket name (3 to 63 lower-case letters, \
                     digits, '-' and '.')"
                ));
            }
            if !prefix.is_empty() {
                check_key(prefix).map_err(|e| format!("bad prefix in {raw:?}: {e}"))?;
            }
            return Ok(Location::S3 {
                bucket: bucket.into(),
                prefix: prefix.into(),
            });
        }
        Err(format!(
            "{raw:?} is neither file://<dir> nor s3://<bucket>/<prefix>"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_bad_ones_say_why() {
        assert_eq!(
            Location::parse("file:///var/lib/hone").expect("file"),
            Location::File("/var/lib/hone".into())
        );
        assert_eq!(
            Location::parse("s3://hone-artifacts/prod/eu").expect("s3"),
            Location::S3 {
                bucket: "hone-artifacts".into(),
                prefix: "prod/eu".into()
            }
        );
        assert_eq!(
            Location::parse("s3://hone-artifacts").expect("s3"),
            Location::S3 {
                bucket: "hone-artifacts".into(),
                prefix: String::new()
            }
        );
        for bad in [
            "/var/lib",
            "file://",
            "s3://A_B",
            "s3://ab",
            "s3://bucket/a/../b",
            "gs://b/p",
        ] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }
}
