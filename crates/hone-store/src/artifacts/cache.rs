//! The local copies of published directories that a remote store hands to code that
//! reads files (libtorch loading a model, a worker resuming from a checkpoint): at most
//! `max_bytes` on disk, least recently used evicted first, never one that is in use.
//!
//! Each process takes a slot of its own under the cache folder (`slot-<n>`, held by an
//! advisory lock on `slot-<n>.lock` for the process's life), so processes that share a
//! folder never remove each other's files; a slot is emptied when taken, since what a
//! dead process left may be half written.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use super::LocalDir;

/// Slots tried before giving up: more processes than this on one cache folder is a
/// configuration mistake (give each its own `cache_dir`).
const MAX_SLOTS: usize = 64;

pub(crate) struct DirCache {
    /// This process's slot: `dirs/` for finished copies, `tmp/` for ones in progress.
    slot: PathBuf,
    max_bytes: u64,
    inner: Mutex<Inner>,
    /// Holds the slot's lock until the process ends.
    _lock: std::fs::File,
}

impl std::fmt::Debug for DirCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirCache")
            .field("slot", &self.slot)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Arc<Entry>>,
    clock: u64,
    bytes: u64,
}

struct Entry {
    ready: tokio::sync::OnceCell<Ready>,
    last_used: AtomicU64,
    /// Set when the entry leaves the cache while held: the last holder removes it.
    discarded: AtomicBool,
}

struct Ready {
    path: PathBuf,
    bytes: u64,
}

impl Drop for Entry {
    fn drop(&mut self) {
        if self.discarded.load(Ordering::Acquire) {
            if let Some(ready) = self.ready.get() {
                remove_dir(&ready.path);
            }
        }
    }
}

fn remove_dir(path: &Path) {
    if let Err(e) = std::fs::remove_dir_all(path) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(error = %e, dir = %path.display(), "cannot remove a cached copy");
        }
    }
}

impl DirCache {
    /// Takes the first free slot under `root` and empties it.
    pub(crate) fn open(root: &Path, max_bytes: u64) -> std::io::Result<Self> {
        std::fs::create_dir_all(root)?;
        for n in 0..MAX_SLOTS {
            let lock = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(root.join(format!("slot-{n}.lock")))?;
            match lock.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => continue,
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
            let slot = root.join(format!("slot-{n}"));
            match std::fs::remove_dir_all(&slot) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            std::fs::create_dir_all(slot.join("dirs"))?;
            std::fs::create_dir_all(slot.join("tmp"))?;
            return Ok(Self {
                slot,
                max_bytes,
                inner: Mutex::new(Inner::default()),
                _lock: lock,
            });
        }
        Err(std::io::Error::other(format!(
            "all {MAX_SLOTS} cache slots under {} are taken by other processes",
            root.display()
        )))
    }

    /// A fresh path for scratch files (uploads in progress, downloads), on the cache's
    /// disk so that finishing one is a rename.
    pub(crate) fn scratch(&self) -> PathBuf {
        self.slot.join("tmp").join(uuid::Uuid::new_v4().to_string())
    }

    /// The local copy of `key`, made by `fetch` into the directory it is given (which
    /// does not exist yet) when there is none; `fetch` returns the bytes it wrote.
    /// Concurrent calls for one key fetch once.
    pub(crate) async fn get<F, Fut>(&self, key: &str, fetch: F) -> std::io::Result<LocalDir>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: Future<Output = std::io::Result<u64>>,
    {
        let entry = {
            let mut inner = self.lock();
            inner.clock += 1;
            let now = inner.clock;
            let entry = inner
                .entries
                .entry(key.to_owned())
                .or_insert_with(|| {
                    Arc::new(Entry {
                        ready: tokio::sync::OnceCell::new(),
                        last_used: AtomicU64::new(now),
                        discarded: AtomicBool::new(false),
                    })
                })
                .clone();
            entry.last_used.store(now, Ordering::Relaxed);
            entry
        };
        let mut fetched = false;
        let fetched_here = &mut fetched;
        let ready = entry
            .ready
            .get_or_try_init(|| async move {
                let tmp = self.scratch();
                let bytes = match fetch(tmp.clone()).await {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        remove_dir(&tmp);
                        return Err(e);
                    }
                };
                let path = self.slot.join("dirs").join(entry_name(key));
                remove_dir(&path);
                tokio::fs::rename(&tmp, &path).await?;
                *fetched_here = true;
                Ok::<Ready, std::io::Error>(Ready { path, bytes })
            })
            .await?;
        if fetched {
            self.admit(key, &entry, ready.bytes);
        }
        let path = ready.path.clone();
        Ok(LocalDir::new(path, Some(entry)))
    }

    /// Counts a new copy and evicts the least recently used ones that nobody holds
    /// until the cache is within its size (the new one stays even when it alone is over).
    fn admit(&self, key: &str, entry: &Arc<Entry>, bytes: u64) {
        let mut evicted = Vec::new();
        {
            let mut inner = self.lock();
            let still_ours = inner
                .entries
                .get(key)
                .is_some_and(|e| Arc::ptr_eq(e, entry));
            if !still_ours {
                // Forgotten while it was fetched: not counted, removed by its last holder.
                entry.discarded.store(true, Ordering::Release);
                return;
            }
            inner.bytes += bytes;
            while inner.bytes > self.max_bytes {
                let victim = inner
                    .entries
                    .iter()
                    .filter(|(k, e)| {
                        k.as_str() != key && Arc::strong_count(e) == 1 && e.ready.initialized()
                    })
                    .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                    .map(|(k, _)| k.clone());
                let Some(victim) = victim else { break };
                if let Some(e) = inner.entries.remove(&victim) {
                    inner.bytes -= e.ready.get().map_or(0, |r| r.bytes);
                    e.discarded.store(true, Ordering::Release);
                    evicted.push(e);
                }
            }
        }
        // Dropping the last handles removes the directories, outside the lock.
        drop(evicted);
    }

    /// Drops the copy of `key` (its objects were deleted): removed now, or by its last
    /// holder.
    pub(crate) fn forget(&self, key: &str) {
        let removed = {
            let mut inner = self.lock();
            let removed = inner.entries.remove(key);
            if let Some(e) = &removed {
                inner.bytes -= e.ready.get().map_or(0, |r| r.bytes);
                e.discarded.store(true, Ordering::Release);
            }
            removed
        };
        drop(removed);
    }

    /// Bytes of the copies in the cache.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The map stays consistent at every await-free step, so a poisoned lock (a
        // panic elsewhere while it was held) still holds a usable map.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Keys flattened to one path component.
fn entry_name(key: &str) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn fill(dir: PathBuf, bytes: usize) -> std::io::Result<u64> {
        tokio::fs::create_dir_all(&dir).await?;
        tokio::fs::write(dir.join("w"), vec![7u8; bytes]).await?;
        Ok(bytes as u64)
    }

    #[tokio::test]
    async fn least_recently_used_copies_nobody_holds_are_evicted_to_fit() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = DirCache::open(root.path(), 250).expect("cache");
        let a = cache.get("a", |d| fill(d, 100)).await.expect("a");
        let a_path = a.path().to_owned();
        drop(a);
        let b = cache.get("b", |d| fill(d, 100)).await.expect("b");
        // `a` is used again, so `b` is now the least recent…
        let again = cache.get("a", |_| async { Err(std::io::Error::other("a is cached")) });
        drop(again.await.expect("a"));
        drop(b);
        let held = cache.get("held", |d| fill(d, 10)).await.expect("held");
        // …and goes when `c` needs room; `held` is held and `a` was used since.
        let c = cache.get("c", |d| fill(d, 100)).await.expect("c");
        assert_eq!(cache.bytes(), 210);
        assert!(a_path.join("w").is_file());
        assert!(held.path().join("w").is_file());
        assert!(c.path().join("w").is_file());
        let mut fetched = false;
        drop(
            cache
                .get("b", |d| {
                    fetched = true;
                    fill(d, 100)
                })
                .await
                .expect("b again"),
        );
        assert!(fetched, "b was evicted, so it is fetched again");
    }

    #[tokio::test]
    async fn a_copy_in_use_outlives_its_eviction_and_a_failed_fetch_leaves_nothing() {
        let root = tempfile::tempdir().expect("tempdir");
        let cache = DirCache::open(root.path(), 1000).expect("cache");
        let held = cache.get("m", |d| fill(d, 100)).await.expect("m");
        cache.forget("m");
        assert!(held.path().join("w").is_file(), "still readable while held");
        let path = held.path().to_owned();
        drop(held);
        assert!(!path.exists(), "removed by its last holder");

        let failed = cache
            .get("bad", |d| async move {
                fill(d, 5).await?;
                Err(std::io::Error::other("connection reset"))
            })
            .await;
        assert!(failed.is_err());
        let tmp = std::fs::read_dir(cache.slot.join("tmp"))
            .expect("tmp")
            .count();
        assert_eq!(tmp, 0, "a failed fetch leaves no scratch files");
        assert_eq!(cache.bytes(), 0);
    }

    #[tokio::test]
    async fn processes_sharing_a_folder_take_slots_of_their_own() {
        let root = tempfile::tempdir().expect("tempdir");
        let first = DirCache::open(root.path(), 1000).expect("first");
        let kept = first.get("k", |d| fill(d, 1)).await.expect("k");
        let second = DirCache::open(root.path(), 1000).expect("second");
        assert_ne!(first.slot, second.slot);
        assert!(
            kept.path().join("w").is_file(),
            "the second did not empty the first's"
        );
    }
}
