//! The artifact store: where dataset bytes and published model directories live.
//! One interface, so that a second backend (S3-compatible storage for many machines)
//! can be added without touching its callers; the local filesystem is the default.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use tokio::fs;
use tokio::io::{AsyncRead, AsyncWriteExt};

/// Object keys are relative, '/'-separated paths made by the server itself
/// (`files/<id>`, `models/<id>/`), never by users; `check_key` still refuses anything
/// that could leave the store's root.
fn check_key(key: &str) -> std::io::Result<()> {
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

#[async_trait]
pub trait ArtifactStore: Send + Sync + std::fmt::Debug {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn PendingObject>>;
    async fn open(&self, key: &str) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>>;
    async fn read(&self, key: &str) -> std::io::Result<Vec<u8>>;
    /// Removes an object, or every object under a `prefix/`; a missing key is no error.
    async fn delete(&self, key: &str) -> std::io::Result<()>;
    /// Publishes a local directory under `prefix` (atomically: all of it or nothing).
    async fn put_dir(&self, prefix: &str, dir: &Path) -> std::io::Result<()>;
    /// A local directory holding the objects under `prefix`, for code (libtorch) that
    /// can only read files.
    async fn local_dir(&self, prefix: &str) -> std::io::Result<PathBuf>;
}

#[derive(Debug)]
pub struct LocalArtifactStore {
    root: PathBuf,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl LocalArtifactStore {
    pub async fn new(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(root.join(".tmp")).await?;
        Ok(Self { root })
    }

    fn path(&self, key: &str) -> std::io::Result<PathBuf> {
        check_key(key.trim_end_matches('/'))?;
        Ok(self.root.join(key.trim_end_matches('/')))
    }

    /// Scratch paths live inside the root so that the final rename never crosses
    /// filesystems.
    fn scratch(&self) -> PathBuf {
        let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        self.root
            .join(".tmp")
            .join(format!("{}-{n}", std::process::id()))
    }
}

struct LocalPending {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<fs::File>,
}

#[async_trait]
impl PendingObject for LocalPending {
    async fn write(&mut self, chunk: &[u8]) -> std::io::Result<()> {
        match &mut self.file {
            Some(f) => f.write_all(chunk).await,
            None => Err(std::io::Error::other("object already committed")),
        }
    }

    async fn read_back(&mut self) -> std::io::Result<std::fs::File> {
        match &mut self.file {
            Some(f) => f.flush().await?,
            None => return Err(std::io::Error::other("object already committed")),
        }
        std::fs::File::open(&self.tmp)
    }

    async fn commit(mut self: Box<Self>) -> std::io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().await?;
            f.sync_all().await?;
        }
        if let Some(parent) = self.dest.parent() {
            fs::create_dir_all(parent).await?;
        }
        fs::rename(&self.tmp, &self.dest).await
    }
}

impl Drop for LocalPending {
    fn drop(&mut self) {
        if self.file.is_some() {
            // Not committed: remove the partial bytes.
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[async_trait]
impl ArtifactStore for LocalArtifactStore {
    async fn create(&self, key: &str) -> std::io::Result<Box<dyn PendingObject>> {
        let dest = self.path(key)?;
        let tmp = self.scratch();
        let file = fs::File::create(&tmp).await?;
        Ok(Box::new(LocalPending {
            tmp,
            dest,
            file: Some(file),
        }))
    }

    async fn open(&self, key: &str) -> std::io::Result<Box<dyn AsyncRead + Send + Unpin>> {
        Ok(Box::new(fs::File::open(self.path(key)?).await?))
    }

    async fn read(&self, key: &str) -> std::io::Result<Vec<u8>> {
        fs::read(self.path(key)?).await
    }

    async fn delete(&self, key: &str) -> std::io::Result<()> {
        let path = self.path(key)?;
        let result = match fs::metadata(&path).await {
            Ok(m) if m.is_dir() => fs::remove_dir_all(&path).await,
            Ok(_) => fs::remove_file(&path).await,
            Err(e) => Err(e),
        };
        match result {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn put_dir(&self, prefix: &str, dir: &Path) -> std::io::Result<()> {
        let dest = self.path(prefix)?;
        let tmp = self.scratch();
        copy_dir(dir, &tmp).await?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).await?;
        }
        if let Err(e) = fs::rename(&tmp, &dest).await {
            let _ = fs::remove_dir_all(&tmp).await;
            return Err(e);
        }
        Ok(())
    }

    async fn local_dir(&self, prefix: &str) -> std::io::Result<PathBuf> {
        let path = self.path(prefix)?;
        if fs::metadata(&path).await?.is_dir() {
            Ok(path)
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{prefix} is not a directory"),
            ))
        }
    }
}

async fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to).await?;
    let mut entries = fs::read_dir(from).await?;
    while let Some(entry) = entries.next_entry().await? {
        let target = to.join(entry.file_name());
        if entry.file_type().await?.is_dir() {
            Box::pin(copy_dir(&entry.path(), &target)).await?;
        } else {
            fs::copy(entry.path(), &target).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uncommitted_objects_leave_nothing_and_committed_ones_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalArtifactStore::new(dir.path()).await.expect("store");
        let mut pending = store.create("files/a").await.expect("create");
        pending.write(b"partial").await.expect("write");
        drop(pending);
        assert!(store.read("files/a").await.is_err());
        assert_eq!(
            std::fs::read_dir(dir.path().join(".tmp"))
                .expect("tmp")
                .count(),
            0
        );

        let mut pending = store.create("files/a").await.expect("create");
        pending.write(b"hello ").await.expect("write");
        pending.write(b"world").await.expect("write");
        let mut back = String::new();
        std::io::Read::read_to_string(
            &mut pending.read_back().await.expect("read back"),
            &mut back,
        )
        .expect("read");
        assert_eq!(back, "hello world");
        pending.commit().await.expect("commit");
        assert_eq!(store.read("files/a").await.expect("read"), b"hello world");
        store.delete("files/a").await.expect("delete");
        store
            .delete("files/a")
            .await
            .expect("deleting twice is fine");
    }

    #[tokio::test]
    async fn keys_cannot_escape_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LocalArtifactStore::new(dir.path()).await.expect("store");
        for key in ["../x", "/etc/passwd", "a/../../b", "", "a//b"] {
            assert!(store.create(key).await.is_err(), "{key}");
        }
    }

    #[tokio::test]
    async fn directories_are_published_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let src = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(src.path().join("sub")).expect("mkdir");
        std::fs::write(src.path().join("sub/w"), b"1").expect("write");
        let store = LocalArtifactStore::new(dir.path()).await.expect("store");
        store.put_dir("models/m1", src.path()).await.expect("put");
        let local = store.local_dir("models/m1/").await.expect("local");
        assert_eq!(std::fs::read(local.join("sub/w")).expect("read"), b"1");
        store.delete("models/m1/").await.expect("delete");
        assert!(store.local_dir("models/m1").await.is_err());
    }
}
