//! The orphan sweep against the real Postgres and a local artifact store: objects that
//! no row names go once they are older than the grace period, everything a row names
//! stays, one process sweeps at a time, ended jobs' checkpoints lose their
//! optimizer state, and models recorded before models had a size are measured.

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
            scratch: 1,
            optimizer_states: 0,
            models_measured: 0,
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

#[tokio::test]
async fn ended_jobs_checkpoints_lose_their_optimizer_state_and_running_ones_keep_it() {
    let f = fresh().await;
    let root = tempfile::tempdir().expect("tmp");
    let store = LocalArtifactStore::new(root.path()).await.expect("store");
    let file = file(&f.db).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("weights.safetensors"), b"weights").expect("write");
    std::fs::write(dir.path().join("state.safetensors"), b"moments!!").expect("write");

    // Two jobs, each with a resumable checkpoint; one then fails for good (as a job's
    // worker stopped before it dropped the state would leave it), one still runs.
    let mut keys = Vec::new();
    for _ in 0..2 {
        let id =
            f.db.create_job(&common::new_job(&common::p(), &file, 3))
                .await
                .expect("job")
                .id;
        let claimed =
            f.db.claim_job("w", Duration::from_secs(60))
                .await
                .expect("claim")
                .expect("the job");
        assert_eq!(claimed.job.id, id);
        let key = hone_store::checkpoints::storage_key(&id, claimed.attempt, 1);
        store.put_dir(&key, dir.path()).await.expect("checkpoint");
        let checkpoint = hone_store::checkpoints::NewCheckpoint {
            epoch: 1,
            step: 5,
            metrics: hone_domain::resources::EpochPoint {
                epoch: 1,
                train_loss: 0.5,
                validation: None,
            },
            storage_key: key.clone(),
            bytes: 16,
            resumable: true,
        };
        assert!(f
            .db
            .put_checkpoint(&id, claimed.attempt, &checkpoint)
            .await
            .expect("row"));
        keys.push((id, key));
    }
    let error = hone_domain::resources::JobError {
        code: "training_failed".into(),
        message: "it ended".into(),
        param: None,
    };
    f.db.fail_job(&keys[0].0, 1, &error, false)
        .await
        .expect("ended");

    let swept =
        f.db.sweep_orphans(&store, Duration::ZERO)
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(swept.optimizer_states, 1, "{swept:?}");
    assert_eq!(swept.checkpoints, 0, "rows name both: {swept:?}");
    let (ended, running) = (&keys[0].1, &keys[1].1);
    let local = store.local_dir(ended).await.expect("ended");
    assert!(local.join("weights.safetensors").is_file());
    assert!(!local.join("state.safetensors").exists());
    let local = store.local_dir(running).await.expect("running");
    assert!(local.join("state.safetensors").is_file());
    let rows: Vec<(String, i64, bool)> = sqlx::query_as(
        "SELECT storage_key, bytes, resumable FROM fine_tuning_job_checkpoints ORDER BY job_id = $1 DESC",
    )
    .bind(&keys[0].0)
    .fetch_all(&f.db.pool)
    .await
    .expect("rows");
    assert_eq!(
        rows,
        [(ended.clone(), 7, false), (running.clone(), 16, true)]
    );
    // Once is enough: a second sweep finds nothing to drop.
    let again =
        f.db.sweep_orphans(&store, Duration::ZERO)
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(again.optimizer_states, 0);
}

#[tokio::test]
async fn models_recorded_without_a_size_are_measured_and_counted_in_the_usage() {
    let f = fresh().await;
    let root = tempfile::tempdir().expect("tmp");
    let store = LocalArtifactStore::new(root.path()).await.expect("store");
    let file = file(&f.db).await;
    let job = common::job(&f.db, &file, 3).await;
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(dir.path().join("model.safetensors"), [0u8; 1000]).expect("write");
    std::fs::create_dir(dir.path().join("tokenizer")).expect("mkdir");
    std::fs::write(dir.path().join("tokenizer/vocab.txt"), b"a\nb\n").expect("write");
    // Two models as rows from before the size column read them (0 bytes), and one
    // recorded with its size, which the sweep leaves as it is.
    let mut models = Vec::new();
    for (name, bytes) in [("old", 0), ("older", 0), ("new", 7)] {
        let key = format!("models/{name}");
        store.put_dir(&key, dir.path()).await.expect("model");
        let model = hone_store::models::NewModel {
            id: format!("ft:m:{name}"),
            job_id: job.clone(),
            base_model: "m".into(),
            storage_key: key,
            task_type: hone_domain::dataset::TaskType::Classification,
            labels: vec!["a".into(), "b".into()],
            tasks: None,
            checkpoint_epoch: None,
            bytes,
        };
        let result = hone_domain::resources::JobResult::default();
        assert!(f.db.add_model(&model, &result).await.expect("row"));
        models.push(model.id);
    }
    let before = f.db.usage(&common::p()).await.expect("usage");
    assert_eq!(before.model_bytes, 7);

    let swept =
        f.db.sweep_orphans(&store, Duration::from_secs(3600))
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(swept.models_measured, 2, "{swept:?}");
    assert_eq!(swept.models, 0, "rows name them all: {swept:?}");
    let on_disk = 1000 + 4;
    let after = f.db.usage(&common::p()).await.expect("usage");
    assert_eq!(after.model_bytes, 2 * on_disk + 7);
    let again =
        f.db.sweep_orphans(&store, Duration::from_secs(3600))
            .await
            .expect("sweep")
            .expect("the lock");
    assert_eq!(again.models_measured, 0);
}
