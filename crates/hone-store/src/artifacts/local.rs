//! The artifact store on the local filesystem (the default): one directory, objects
//! as files, a directory published by renaming a finished copy into place.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::fs;
use tokio::io::{AsyncRead, AsyncWriteExt};

use super::{check_key, ArtifactStore, Listed, LocalDir, PendingObject};

#[derive(Debug)]
pub struct LocalArtifactStore {
    root: PathBuf,
}

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
    /// filesystems; random, because processes on other machines (or containers, each
    /// its own pid 1) may share the directory.
    fn scratch(&self) -> PathBuf {
        self.root
            .join(".tmp")
            .join(uuid::Uuid::new_v4().to_string())
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
        fs::rename(&self.tmp, &self.dest).await?;
        sync_parent(&self.dest).await
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

    async fn remove_from_dir(&self, prefix: &str, file: &str) -> std::io::Result<u64> {
        let path = self.path(&format!("{}/{file}", prefix.trim_end_matches('/')))?;
        let bytes = match fs::metadata(&path).await {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => return Err(std::io::Error::other(format!("{file} is not a file"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        match fs::remove_file(&path).await {
            Ok(()) => Ok(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e),
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
            // A directory is only ever there whole (it came by rename) and a key names
            // its content: one published concurrently, or before a crash that lost its
            // record, is this one.
            let published = matches!(
                e.kind(),
                std::io::ErrorKind::DirectoryNotEmpty | std::io::ErrorKind::AlreadyExists
            ) && fs::metadata(&dest).await.is_ok_and(|m| m.is_dir());
            return if published { Ok(()) } else { Err(e) };
        }
        sync_parent(&dest).await
    }

    async fn local_dir(&self, prefix: &str) -> std::io::Result<LocalDir> {
        let path = self.path(prefix)?;
        if fs::metadata(&path).await?.is_dir() {
            Ok(LocalDir::new(path, None))
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{prefix} is not a directory"),
            ))
        }
    }

    async fn check(&self) -> std::io::Result<()> {
        // Writable, on the disk it names: a scratch file made and removed.
        let probe = self.scratch();
        fs::write(&probe, b"").await?;
        fs::remove_file(&probe).await
    }

    async fn list_keys(&self, prefix: &str, depth: usize) -> std::io::Result<Vec<Listed>> {
        let start = self.path(prefix)?;
        let base = prefix.trim_end_matches('/').split('/').count();
        let mut out = Vec::new();
        let mut todo = vec![(prefix.trim_end_matches('/').to_owned(), start, base)];
        while let Some((key, path, at)) = todo.pop() {
            let mut entries = match fs::read_dir(&path).await {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            while let Some(entry) = entries.next_entry().await? {
                let Ok(name) = entry.file_name().into_string() else {
                    continue;
                };
                let key = format!("{key}/{name}");
                let meta = entry.metadata().await?;
                if at + 1 >= depth || !meta.is_dir() {
                    let bytes = if meta.is_dir() {
                        super::dir_bytes(&entry.path()).await?
                    } else {
                        meta.len()
                    };
                    out.push(Listed {
                        key,
                        modified: meta.modified()?,
                        bytes,
                    });
                } else {
                    todo.push((key, entry.path(), at + 1));
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn sweep_scratch(&self, age: std::time::Duration) -> std::io::Result<usize> {
        let mut removed = 0;
        let mut entries = fs::read_dir(self.root.join(".tmp")).await?;
        while let Some(entry) = entries.next_entry().await? {
            let meta = entry.metadata().await?;
            let old = meta
                .modified()?
                .elapsed()
                .is_ok_and(|elapsed| elapsed >= age);
            if !old {
                continue;
            }
            let gone = if meta.is_dir() {
                fs::remove_dir_all(entry.path()).await
            } else {
                fs::remove_file(entry.path()).await
            };
            match gone {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Makes a rename into `path`'s directory durable.
async fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) => fs::File::open(parent).await?.sync_all().await,
        None => Ok(()),
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
            // On disk before the rename publishes it: a crash never leaves a published
            // directory with empty or short files.
            fs::File::open(&target).await?.sync_all().await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::artifacts::ArtifactStore;

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
        store
            .put_dir("models/m1", src.path())
            .await
            .expect("publishing again (concurrently, or after a crash) is done already");
        let local = store.local_dir("models/m1/").await.expect("local");
        assert_eq!(std::fs::read(local.join("sub/w")).expect("read"), b"1");
        assert_eq!(
            store
                .remove_from_dir("models/m1", "sub/w")
                .await
                .expect("rm"),
            1
        );
        assert!(!local.join("sub/w").exists());
        assert_eq!(
            store
                .remove_from_dir("models/m1", "sub/w")
                .await
                .expect("rm"),
            0
        );
        store.delete("models/m1/").await.expect("delete");
        assert!(store.local_dir("models/m1").await.is_err());
    }
}
