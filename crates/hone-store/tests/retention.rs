//! What an ended job and an expired file leave in the store, against the real
//! Postgres, a fresh database per test: the checkpoints kept, and the files removed.

use std::time::Duration;

use hone_domain::dataset::TaskType;
use hone_domain::resources::{EpochPoint, JobError, JobResult};
use hone_store::checkpoints::NewCheckpoint;
use hone_store::models::NewModel;

const LEASE: Duration = Duration::from_secs(30);

mod common;
use common::{file, fresh, job, p};

#[tokio::test]
async fn an_ended_job_keeps_its_last_best_and_published_checkpoints() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let id = job(&f.db, &file, 3).await;
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    let key = |epoch| hone_store::checkpoints::storage_key(&id, claimed.attempt, epoch);
    for epoch in 1..=5 {
        let point = NewCheckpoint {
            epoch,
            step: u64::from(epoch) * 10,
            metrics: EpochPoint {
                epoch,
                train_loss: 0.5,
                validation: None,
            },
            storage_key: key(epoch),
            bytes: 100,
            resumable: true,
        };
        assert!(f
            .db
            .put_checkpoint(&id, claimed.attempt, &point)
            .await
            .expect("checkpoint"));
    }
    // Epoch 2 was published as a model while the job ran; epoch 3 is the best.
    let published = NewModel {
        id: "ft:m:ck2".into(),
        job_id: id.clone(),
        base_model: "m".into(),
        storage_key: "models/ck2".into(),
        task_type: TaskType::Classification,
        labels: vec!["a".into(), "b".into()],
        tasks: None,
        checkpoint_epoch: Some(2),
        bytes: 0,
    };
    assert!(f
        .db
        .add_model(&published, &JobResult::default())
        .await
        .expect("publish"));
    let model = NewModel {
        id: "ft:m:final".into(),
        checkpoint_epoch: None,
        storage_key: "models/final".into(),
        ..published.clone()
    };
    let result = JobResult {
        train_loss: 0.1,
        best_epoch: Some(3),
        ..JobResult::default()
    };
    assert!(f
        .db
        .succeed_job(&id, claimed.attempt, &model, &result)
        .await
        .expect("succeed"));

    let mut removed = f.db.prune_checkpoints(&id).await.expect("prune");
    removed.sort();
    assert_eq!(removed, [key(1), key(4)]);
    let left: Vec<u32> =
        f.db.list_checkpoints(&p(), &id, None, 100)
            .await
            .expect("list")
            .iter()
            .map(|c| c.object.epoch)
            .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    for epoch in [2, 3, 5] {
        assert!(left.contains(&epoch), "{left:?}");
    }
    assert!(f.db.prune_checkpoints(&id).await.expect("again").is_empty());
}

#[tokio::test]
async fn expired_files_go_unless_an_unfinished_job_uses_them() {
    let f = fresh().await;
    let used = file(&f.db).await;
    let unused = file(&f.db).await;
    let lasting = file(&f.db).await;
    let id = job(&f.db, &used, 3).await;
    sqlx::query("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = ANY($1)")
        .bind(vec![used.clone(), unused.clone()])
        .execute(&f.db.pool)
        .await
        .expect("expire");
    let keys = |files: Vec<hone_store::files::ExpiredFile>| {
        files.into_iter().map(|f| f.storage_key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(f.db.expire_files().await.expect("expire")),
        [format!("files/{unused}")]
    );
    assert!(f.db.get_file(&p(), &unused).await.is_err());
    assert!(f.db.get_file(&p(), &lasting).await.is_ok());
    // The job's file goes once the job has ended.
    assert!(f.db.get_file(&p(), &used).await.is_ok());
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    let err = JobError {
        code: "x".into(),
        message: "x".into(),
        param: None,
    };
    f.db.fail_job(&id, claimed.attempt, &err, false)
        .await
        .expect("fail");
    assert_eq!(
        keys(f.db.expire_files().await.expect("expire")),
        [format!("files/{used}")]
    );
}
