//! The orphan sweep against the real Postgres and a local artifact store: objects that
//! no row names go once they are older than the grace period, everything a row names
//! stays, one process sweeps at a time.

use std::time::Duration;

use hone_store::sweep::Swept;
use hone_store::{ArtifactStore, LocalArtifactStore};

mod common;
use common::{file, fresh};

async fn put(store: &LocalArtifactStore, key: &str, bytes: &[u8]) {
    let mut object = store.create(key).await.expect("create");
    object.write(bytes).await.expect("write");
    object.commit().await.expect("commit");
}

#[tokio::test]
async fn objects_no_row_names_go_after_the_grace_period_and_the_rest_stays() {
    let f = fresh().await;
    let root = tempfile::tempdir().expect("tmp");
    let store = LocalArtifactStore::new(root.path()).await.expect("store");

    // A file with its row, and what crashes between object and row leave: a file, a
    // published model directory and a checkpoint folder that no row names, and an
    // upload's scratch.
    let kept = file(&f.db).await;
    put(&store, &format!("files/{kept}"), b"kept").await;
    put(
        &store,
        "files/file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
        b"orphan",
    )
    .await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("model.safetensors"), b"weights").expect("write");
    store
        .put_dir("models/ft_m_x_1-attempt-1", dir.path())
        .await
        .expect("model");
    store
        .put_dir("checkpoints/ftjob-x/attempt-1/epoch-1", dir.path())
        .await
        .expect("checkpoint");
    std::fs::write(root.path().join(".tmp/dead-upload"), b"half").expect("scratch");

    // Younger than the grace period: nothing goes (a write may be between its object
    // and its row).
    let swept =
        f.db.sweep_orphans(&store, Duration::from_secs(3600))
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(swept, Swept::default());

    let swept =
        f.db.sweep_orphans(&store, Duration::ZERO)
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(
        swept,
        Swept {
            files: 1,
            models: 1,
            checkpoints: 1,
            features: 0,
            scratch: 1
        }
    );
    assert_eq!(
        store.read(&format!("files/{kept}")).await.expect("kept"),
        b"kept"
    );
    let listed: Vec<String> = store
        .list_keys("files", 2)
        .await
        .expect("list")
        .into_iter()
        .map(|l| l.key)
        .collect();
    assert_eq!(listed, [format!("files/{kept}")]);
    for (kind, depth) in [("models", 2), ("checkpoints", 4)] {
        let left = store.list_keys(kind, depth).await.expect("list");
        assert!(left.is_empty(), "{left:?}");
    }

    // Another process sweeping holds the lock: this one skips.
    let mut other = f.db.pool.acquire().await.expect("connection");
    sqlx::query("SELECT pg_advisory_lock(x'686f6e6573776570'::bigint)")
        .execute(&mut *other)
        .await
        .expect("lock");
    assert_eq!(
        f.db.sweep_orphans(&store, Duration::ZERO)
            .await
            .expect("sweep"),
        None
    );
}
