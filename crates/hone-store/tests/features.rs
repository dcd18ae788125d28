//! The feature cache's bookkeeping against the real Postgres and a local store: entries
//! count in their project's usage, the least recently used go past the cap, and they
//! go with the project's last file of the bytes they came from.

use std::sync::Arc;

use hone_domain::job::PoolingType;
use hone_store::feature_cache::{cache_key, drop_for_file, lookup, store};
use hone_store::{ArtifactStore, LocalArtifactStore};

mod common;
use common::{file, fresh, p};

/// The digest `common::summary` gives every file.
const SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test]
async fn entries_count_are_evicted_least_recently_used_and_go_with_their_last_file() {
    let f = fresh().await;
    let root = tempfile::tempdir().expect("tmp");
    let artifacts: Arc<dyn ArtifactStore> =
        Arc::new(LocalArtifactStore::new(root.path()).await.expect("store"));
    let scratch = tempfile::tempdir().expect("tmp");
    let first = file(&f.db).await;
    let second = file(&f.db).await;

    let key = |len: u32| cache_key(&p(), SHA, "m", "w", SHA, len, PoolingType::Mean);
    let features = scratch.path().join("f.safetensors");
    std::fs::write(&features, vec![7u8; 100]).expect("write");
    // Room for two entries of 100 bytes.
    for len in [8, 16] {
        store(&f.db, &artifacts, &key(len), &features, 250)
            .await
            .expect("store");
    }
    assert_eq!(f.db.usage(&p()).await.expect("usage").feature_bytes, 200);
    // Using the older one makes the newer one the least recently used.
    let (_, hit) = lookup(&f.db, &artifacts, key(8), scratch.path(), "a").await;
    assert!(hit.is_some());
    store(&f.db, &artifacts, &key(32), &features, 250)
        .await
        .expect("store");
    assert_eq!(f.db.usage(&p()).await.expect("usage").feature_bytes, 200);
    for (len, kept) in [(8, true), (16, false), (32, true)] {
        let (_, hit) = lookup(&f.db, &artifacts, key(len), scratch.path(), "b").await;
        assert_eq!(hit.is_some(), kept, "len {len}");
    }

    // Two files of these bytes: deleting one keeps the entries, the last drops them.
    f.db.delete_file(&p(), &first).await.expect("delete");
    drop_for_file(&f.db, &artifacts, &p(), SHA)
        .await
        .expect("drop");
    assert_eq!(f.db.usage(&p()).await.expect("usage").feature_bytes, 200);
    f.db.delete_file(&p(), &second).await.expect("delete");
    drop_for_file(&f.db, &artifacts, &p(), SHA)
        .await
        .expect("drop");
    assert_eq!(f.db.usage(&p()).await.expect("usage").feature_bytes, 0);
    let (_, hit) = lookup(&f.db, &artifacts, key(8), scratch.path(), "c").await;
    assert!(hit.is_none());
    assert!(artifacts
        .list_keys("features", 4)
        .await
        .expect("list")
        .is_empty());
}
