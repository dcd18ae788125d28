//! The artifact store in S3-compatible object storage (AWS S3, MinIO, Ceph, …) through
//! the `object_store` crate, for API replicas and workers on many machines.
//!
//! - Uploads stream as multipart uploads (flat memory: a few parts in flight), with a
//!   local copy for `read_back`; one dropped uncommitted is aborted, so nothing appears.
//! - A directory is its files plus a [`DIR_MANIFEST`] object listing them, written last
//!   and read first: readers see a directory whole or not at all.
//! - Code that needs files reads a local copy from a [`DirCache`] with a byte cap.
//! - Transient errors (timeouts, 5xx, throttling) are retried with exponential backoff
//!   by `object_store` itself (`RetryConfig`: up to 10 retries within 3 minutes);
//!   readiness checks use a client that gives up within seconds.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::buffered::BufWriter;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::cache::DirCache;
use super::{check_key, ArtifactStore, Listed, LocalDir, PendingObject};

/// The object, under a directory's prefix, that lists its files; written last.
pub const DIR_MANIFEST: &str = ".hone-dir.json";

/// Multipart part size, and parts in flight per upload: memory per upload is about
/// their product.
const PART_BYTES: usize = 8 * 1024 * 1024;
const PARTS_IN_FLIGHT: usize = 2;

/// Where and how to reach an S3-compatible store. Credentials come from the standard
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, …),
/// never from hone's configuration.
#[derive(Clone, Debug)]
pub struct S3Settings {
    pub bucket: String,
    /// Every key is stored under it ("" for the bucket's root).
    pub prefix: String,
    /// For MinIO and other S3-compatible servers; AWS when `None`.
    pub endpoint: Option<String>,
    pub region: String,
    /// Plain `http://` endpoints (a local MinIO); refused otherwise.
    pub allow_http: bool,
    /// Local copies of directories, and scratch files.
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
    /// An access key and secret given in code (tests, embedding); hone's configuration
    /// leaves it `None` and the environment supplies them.
    pub static_credentials: Option<(String, String)>,
}

#[derive(Debug)]
pub struct ObjectArtifactStore {
    /// Retries transient errors with backoff for minutes: the store work runs on.
    store: Arc<dyn ObjectStore>,
    /// Gives up within seconds: for readiness.
    probe: Arc<dyn ObjectStore>,
    name: String,
    cache: Arc<DirCache>,
}

#[derive(Serialize, Deserialize)]
struct DirManifest {
    files: Vec<DirFile>,
}

#[derive(Serialize, Deserialize)]
struct DirFile {
    path: String,
    bytes: u64,
}

impl ObjectArtifactStore {
    pub fn s3(settings: &S3Settings) -> std::io::Result<Self> {
        let build = |retry: RetryConfig, timeout: Duration| {
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&settings.bucket)
                .with_region(&settings.region)
                .with_allow_http(settings.allow_http)
                .with_retry(retry)
                .with_client_options(
                    ClientOptions::new()
                        .with_allow_http(settings.allow_http)
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(timeout),
                );
            if let Some(endpoint) = &settings.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some((key, secret)) = &settings.static_credentials {
                builder = builder
                    .with_access_key_id(key)
                    .with_secret_access_key(secret);
            }
            let s3 = builder.build().map_err(io_error)?;
            let store: Arc<dyn ObjectStore> = if settings.prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, settings.prefix.as_str()))
            };
            Ok::<_, std::io::Error>(store)
        };
        let store = build(RetryConfig::default(), Duration::from_secs(300))?;
        let probe = build(
            RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            },
            Duration::from_secs(5),
        )?;
        let mut name = format!("s3://{}", settings.bucket);
        if !settings.prefix.is_empty() {
            name = format!("{name}/{}", settings.prefix);
        }
        if let Some(endpoint) = &settings.endpoint {
            name = format!("{name} at {endpoint}");
        }
        Ok(Self {
            store,
            probe,
            name,
            cache: Arc::new(DirCache::open(
                &settings.cache_dir,
                settings.cache_max_bytes,
            )?),
        })
    }

    /// Bytes of the local copies of directories.
    pub fn cached_bytes(&self) -> u64 {
        self.cache.bytes()
    }

    /// Uploads one local file, streaming.
    async fn put_file(&self, key: &ObjectPath, file: &Path) -> std::io::Result<u64> {
        let mut writer = self.writer(key.clone());
        let mut reader = tokio::fs::File::open(file).await?;
        let copied = tokio::io::copy(&mut reader, &mut writer).await;
        match copied {
            Ok(n) => {
                writer.shutdown().await?;
                Ok(n)
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    fn writer(&self, key: ObjectPath) -> BufWriter {
        BufWriter::with_capacity(self.store.clone(), key, PART_BYTES)
            .with_max_concurrency(PARTS_IN_FLIGHT)
    }

    /// Downloads the directory under `prefix` into `into` (which does not exist yet):
    /// its manifest first (none: not published, or not whole yet), then each file it
    /// names, checked against the size it gives.
    async fn fetch_dir(
        store: Arc<dyn ObjectStore>,
        prefix: String,
        into: PathBuf,
    ) -> std::io::Result<u64> {
        let manifest = object_path(&format!("{prefix}/{DIR_MANIFEST}"))?;
        let manifest: DirManifest = match store.get(&manifest).await {
            Ok(got) => serde_json::from_slice(&got.bytes().await.map_err(io_error)?)?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("{prefix} is not a published directory"),
                ))
            }
            Err(e) => return Err(io_error(e)),
        };
        let mut total = 0;
        for file in &manifest.files {
            check_key(&file.path)?;
            let dest = into.join(&file.path);
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await?;
            }
            let source = object_path(&format!("{prefix}/{}", file.path))?;
            let got = store.get(&source).await.map_err(io_error)?;
            let mut reader = tokio_util::io::StreamReader::new(got.into_stream().map_err(io_error));
            let mut out = tokio::fs::File::create(&dest).await?;
            let n = tokio::io::copy(&mut reader, &mut out).await?;
            out.flush().await?;
            if n != file.bytes {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{prefix}/{} has {n} bytes, its manifest says {}",
                        file.path, file.bytes
                    ),
                ));
            }
            total += n;
        }
        Ok(total)
    }
}

fn object_path(key: &str) -> std::io::Result<ObjectPath> {
    check_key(key.trim_end_matches('/'))?;
    ObjectPath::parse(key.trim_end_matches('/')).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("invalid artifact key {key:?}: {e}"),
        )
    })
}

/// `object_store`'s errors as IO errors, keeping "not found" recognisable.
fn io_error(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        other => std::io::Error::other(other.to_string()),
    }
}

/// The files under `dir`, as '/'-separated paths relative to it.
async fn files_under(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let mut todo = vec![(String::new(), dir.to_owned())];
    while let Some((rel, path)) = todo.pop() {
        let mut entries = tokio::fs::read_dir(&path).await?;
        while let Some(entry) = entries.next_entry().await? {
            let name = entry.file_name().into_string().map_err(|name| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    format!("{name:?} is not UTF-8"),
                )
            })?;
            let rel = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            if entry.file_type().await?.is_dir() {
                todo.push((rel, entry.path()));
            } else {
                out.push((rel, entry.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

struct ObjectPending {
    writer: Option<BufWriter>,
    /// The bytes so far, on local disk, for `read_back`.
    copy: Option<tokio::fs::File>,
    copy_path: PathBuf,
}

#[async_trait]
impl PendingObject for ObjectPending {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        let (Some(writer), Some(copy)) = (&mut self.writer, &mut self.copy) else {
            return Err(std::io::Error::other("object already committed"));
        };
        copy.write_all(chunk).await?;
        writer.write_all(chunk).await
    }

    async fn read_back(&mut self) -> std::io::Result<std::fs::File> {
        match &mut self.copy {
            Some(copy) => copy.flush().await?,
            None => return Err(std::io::Error::other("object already committed")),
        }
        std::fs::File::open(&self.copy_path)
    }

    async fn commit(mut self: Box<Self>) -> std::io::Result<()> {
        self.copy = None;
        let _ = tokio::fs::remove_file(&self.copy_path).await;
        match self.writer.take() {
            // A failed completion leaves an incomplete multipart upload, which the
            // bucket's lifecycle rule for incomplete uploads removes.
            Some(mut writer) => writer.shutdown().await,
            None => Err(std::io::Error::other("object already committed")),
        }
    }
}

impl Drop for ObjectPending {
    fn drop(&mut self) {
        if self.copy.take().is_some() {
            let _ = std::fs::remove_file(&self.copy_path);
        }
        if let Some(mut writer) = self.writer.take() {
            // Not committed: abort the multipart upload (if one began) so that its
            // parts are not kept.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = writer.abort().await {
                        tracing::warn!(error = %e, "cannot abort an interrupted upload");
                    }
                });
            }
        }
    }
}

#[async_trait]
impl ArtifactStore for ObjectArtifactStore {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn PendingObject>> {
        let path = object_path(key)?;
        let copy_path = self.cache.scratch();
        let copy = tokio::fs::File::create(&copy_path).await?;
        Ok(Box::new(ObjectPending {
            writer: Some(self.writer(path)),
            copy: Some(copy),
            copy_path,
        }))
    }

    async fn open(&self, key: &str) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        let got = self.store.get(&object_path(key)?).await.map_err(io_error)?;
        Ok(Box::new(tokio_util::io::StreamReader::new(
            got.into_stream().map_err(io_error),
        )))
    }

    async fn read(&self, key: &str) -> std::io::Result<Vec<u8>> {
        let got = self.store.get(&object_path(key)?).await.map_err(io_error)?;
        Ok(got.bytes().await.map_err(io_error)?.to_vec())
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        let key = key.trim_end_matches('/');
        let path = object_path(key)?;
        self.cache.forget(key);
        // A directory's manifest first, so that readers stop seeing it at once.
        let manifest = object_path(&format!("{key}/{DIR_MANIFEST}"))?;
        for single in [manifest, path.clone()] {
            match self.store.delete(&single).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        let under = self
            .store
            .list(Some(&path))
            .map_ok(|meta| meta.location)
            .boxed();
        let mut deleted = self.store.delete_stream(under);
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(io_error(e)),
            }
        }
        Ok(())
    }

    async fn remove_from_dir(&self, prefix: &str, file: &str) -> std::io::Result<u64> {
        let prefix = prefix.trim_end_matches('/');
        let manifest_path = object_path(&format!("{prefix}/{DIR_MANIFEST}"))?;
        let file_path = object_path(&format!("{prefix}/{file}"))?;
        let mut manifest: DirManifest = match self.store.get(&manifest_path).await {
            Ok(got) => serde_json::from_slice(&got.bytes().await.map_err(io_error)?)?,
            Err(object_store::Error::NotFound { .. }) => return Ok(0), // not published
            Err(e) => return Err(io_error(e)),
        };
        let before = manifest.files.len();
        let mut bytes = 0;
        manifest.files.retain(|f| {
            let keep = f.path != file;
            if !keep {
                bytes += f.bytes;
            }
            keep
        });
        if manifest.files.len() != before {
            // The manifest without it first (one PUT replaces it whole), so that a
            // reader from now on never asks for the file; local copies go with it.
            let body = serde_json::to_vec(&manifest)?;
            self.store
                .put(&manifest_path, PutPayload::from(body))
                .await
                .map_err(io_error)?;
            self.cache.forget(prefix);
        }
        match self.store.delete(&file_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(bytes),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn put_dir(&self, prefix: &str, dir: &Path) -> std::io::Result<()> {
        let prefix = prefix.trim_end_matches('/');
        let manifest_path = object_path(&format!("{prefix}/{DIR_MANIFEST}"))?;
        // Published again: hidden until the new manifest is written.
        match self.store.delete(&manifest_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(io_error(e)),
        }
        let mut manifest = DirManifest { files: Vec::new() };
        for (rel, local) in files_under(dir).await? {
            if rel == DIR_MANIFEST {
                continue;
            }
            let bytes = self
                .put_file(&object_path(&format!("{prefix}/{rel}"))?, &local)
                .await?;
            manifest.files.push(DirFile { path: rel, bytes });
        }
        let body = serde_json::to_vec(&manifest)?;
        self.store
            .put(&manifest_path, PutPayload::from(body))
            .await
            .map_err(io_error)?;
        Ok(())
    }

    async fn local_dir(&self, prefix: &str) -> std::io::Result<LocalDir> {
        let prefix = prefix.trim_end_matches('/').to_owned();
        check_key(&prefix)?;
        let store = self.store.clone();
        self.cache
            .get(&prefix, |into| Self::fetch_dir(store, prefix.clone(), into))
            .await
    }

    async fn check(&self) -> std::io::Result<()> {
        // One listing request: the endpoint answers, the bucket exists, the
        // credentials are accepted.
        self.probe
            .list_with_delimiter(None)
            .await
            .map(|_| ())
            .map_err(io_error)
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    async fn list_keys(&self, prefix: &str, depth: usize) -> std::io::Result<Vec<Listed>> {
        let prefix = object_path(prefix)?;
        let mut keys = std::collections::BTreeMap::<String, Listed>::new();
        let mut listed = self.store.list(Some(&prefix));
        while let Some(meta) = listed.next().await {
            let meta = meta.map_err(io_error)?;
            let key: Vec<&str> = meta.location.as_ref().split('/').take(depth).collect();
            let key = key.join("/");
            let at = std::time::SystemTime::from(meta.last_modified);
            let entry = keys.entry(key.clone()).or_insert(Listed {
                key,
                modified: at,
                bytes: 0,
            });
            entry.modified = entry.modified.max(at);
            entry.bytes += meta.size;
        }
        Ok(keys.into_values().collect())
    }

    async fn sweep_scratch(&self, _age: std::time::Duration) -> std::io::Result<usize> {
        // Uploads in flight are multipart uploads, which the bucket's lifecycle rule
        // for incomplete uploads removes; local scratch is this process's cache slot,
        // emptied when the slot is taken.
        Ok(0)
    }
}
