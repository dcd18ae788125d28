//! The queue against the real Postgres, a fresh database per test: leases, attempts,
//! cancellation, wake-ups and what a job's writes may record. How claims choose is in
//! `claims.rs`, what an ended job leaves in `retention.rs`.

use std::sync::Arc;
use std::time::Duration;

use hone_domain::dataset::TaskType;
use hone_domain::job::JobStatus;
use hone_domain::resources::{EpochPoint, JobError, JobProgress, JobResult};
use hone_domain::PageRequest;
use hone_store::checkpoints::NewCheckpoint;
use hone_store::events::NewEvent;
use hone_store::models::NewModel;
use hone_store::queue::Lease;
use hone_store::Db;

const LEASE: Duration = Duration::from_secs(30);

mod common;
use common::{file, fresh, job, new_job, p, status};

async fn expire_leases(db: &Db) {
    sqlx::query("UPDATE fine_tuning_jobs SET lease_expires_at = now() - interval '1 second' WHERE status = 'running'")
        .execute(&db.pool)
        .await
        .expect("expire");
}

#[tokio::test]
async fn concurrent_workers_never_claim_the_same_job() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(job(&f.db, &file, 3).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let mut workers = Vec::new();
    for w in 0..6 {
        let db = f.db.clone();
        let barrier = barrier.clone();
        workers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::new();
            while let Some(c) = db.claim_job(&format!("w{w}"), LEASE).await.expect("claim") {
                assert_eq!(c.attempt, 1);
                mine.push(c.job.id);
            }
            mine
        }));
    }
    let mut claimed = Vec::new();
    for w in workers {
        claimed.extend(w.await.expect("worker"));
    }
    claimed.sort();
    ids.sort();
    assert_eq!(claimed, ids, "every job claimed exactly once");
}

#[tokio::test]
async fn a_worker_that_lost_its_lease_cannot_write() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let id = job(&f.db, &file, 3).await;
    let first =
        f.db.claim_job("a", LEASE)
            .await
            .expect("claim")
            .expect("a job");
    assert_eq!(
        f.db.heartbeat(&id, 1, LEASE).await.expect("hb"),
        Lease::Held {
            cancel_requested: false,
            pause_requested: false
        }
    );

    expire_leases(&f.db).await;
    assert_eq!(f.db.rescue_expired().await.expect("rescue"), 1);
    assert_eq!(status(&f.db, &id).await, JobStatus::Queued);
    let second =
        f.db.claim_job("b", LEASE)
            .await
            .expect("claim")
            .expect("requeued");
    assert_eq!(second.attempt, 2);

    // The first worker's writes are all refused now.
    assert_eq!(
        f.db.heartbeat(&id, first.attempt, LEASE).await.expect("hb"),
        Lease::Lost
    );
    assert!(!f
        .db
        .set_progress(&id, first.attempt, &JobProgress::default())
        .await
        .expect("progress"));
    let model = NewModel {
        id: "ft:m:x".into(),
        job_id: id.clone(),
        base_model: "m".into(),
        storage_key: "models/x".into(),
        task_type: TaskType::Classification,
        labels: vec!["a".into(), "b".into()],
        tasks: None,
        checkpoint_epoch: None,
        bytes: 0,
    };
    let checkpoint = |epoch: u32| NewCheckpoint {
        epoch,
        step: u64::from(epoch) * 10,
        metrics: EpochPoint {
            epoch,
            train_loss: 0.5 / f64::from(epoch),
            validation: None,
        },
        storage_key: hone_store::checkpoints::storage_key(&id, second.attempt, epoch),
        bytes: 1234,
        resumable: epoch > 1,
    };
    assert!(!f
        .db
        .put_checkpoint(&id, first.attempt, &checkpoint(1))
        .await
        .expect("fenced checkpoint"));
    for epoch in [2, 1] {
        assert!(f
            .db
            .put_checkpoint(&id, second.attempt, &checkpoint(epoch))
            .await
            .expect("checkpoint"));
    }
    // The same epoch again (a retried attempt) replaces the row.
    let mut again = checkpoint(2);
    again.bytes = 99;
    assert!(f
        .db
        .put_checkpoint(&id, second.attempt, &again)
        .await
        .expect("again"));
    let listed =
        f.db.list_checkpoints(&p(), &id, None, 100)
            .await
            .expect("list");
    let epochs: Vec<u32> = listed.iter().map(|c| c.object.epoch).collect();
    assert_eq!(epochs, [1, 2]);
    assert_eq!(listed[1].object.bytes, 99);
    assert_eq!(listed[0].object.step, 10);
    assert_eq!(listed[0].object.metrics.train_loss, 0.5);
    assert!(f.db.get_checkpoint(&p(), &id, 3).await.is_err());

    // Every other write of the stale attempt is refused too, and changes nothing.
    let stale = first.attempt;
    assert!(!f
        .db
        .add_event(&id, stale, &NewEvent::info("stale"))
        .await
        .expect("event"));
    let events =
        f.db.list_events(&p(), &id, &PageRequest::new(Some(100), None).expect("page"))
            .await
            .expect("events");
    assert!(events.iter().all(|e| e.message != "stale"));
    assert!(!f
        .db
        .set_metrics(&id, stale, &serde_json::json!({"stale": true}))
        .await
        .expect("metrics"));
    assert!(f
        .db
        .get_metrics(&p(), &id)
        .await
        .expect("metrics")
        .is_none());
    let mut method = f.db.get_job(&p(), &id).await.expect("job").method;
    let hyperparameters = f.db.get_job(&p(), &id).await.expect("job").hyperparameters;
    method.kind = hone_domain::job::MethodType::FeatureExtraction;
    assert!(!f
        .db
        .set_method(&id, stale, &method, &hyperparameters)
        .await
        .expect("method"));
    let error = JobError {
        code: "x".into(),
        message: "stale failure".into(),
        param: None,
    };
    assert_eq!(
        f.db.fail_job(&id, stale, &error, true).await.expect("fail"),
        JobStatus::Running,
        "a stale failure changes nothing"
    );
    assert!(!f.db.finish_cancelled(&id, stale).await.expect("cancelled"));
    assert!(!f.db.release_job(&id, stale).await.expect("release"));
    let now = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(
        (now.status, now.attempt),
        (JobStatus::Running, second.attempt)
    );
    assert!(now.error.is_none());

    // A third attempt resumes from the latest checkpoint that carries a training state;
    // an earlier attempt never sees a later one's.
    let point =
        f.db.resume_point(&id, second.attempt + 1)
            .await
            .expect("resume point")
            .expect("a resumable checkpoint");
    assert_eq!(
        (point.epoch, point.step, point.attempt),
        (2, 20, second.attempt)
    );
    assert_eq!(point.storage_key, listed[1].storage_key);
    assert!(f
        .db
        .resume_point(&id, first.attempt)
        .await
        .expect("resume point")
        .is_none());

    let result = JobResult {
        train_loss: 0.1,
        validation: None,
        trained_examples: 2,
        training_seconds: 1.0,
        ..JobResult::default()
    };
    assert!(!f
        .db
        .succeed_job(&id, first.attempt, &model, &result)
        .await
        .expect("succeed"));
    assert!(
        f.db.get_model(&p(), "ft:m:x").await.is_err(),
        "a fenced-off success registered a model"
    );

    assert!(f
        .db
        .succeed_job(&id, second.attempt, &model, &result)
        .await
        .expect("succeed"));
    let done = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(done.status, JobStatus::Succeeded);
    assert_eq!(done.fine_tuned_model.as_deref(), Some("ft:m:x"));
    assert!(done.finished_at.is_some());
    assert_eq!(
        f.db.get_model(&p(), "ft:m:x")
            .await
            .expect("model")
            .object
            .job_id,
        id
    );

    // A checkpoint published as a model: listed with the checkpoint, not as the job's own.
    let from_checkpoint = NewModel {
        id: "ft:m:x:ckpt-1".into(),
        storage_key: "models/x-ckpt-1".into(),
        checkpoint_epoch: Some(1),
        ..model.clone()
    };
    assert!(f
        .db
        .add_model(&from_checkpoint, &result)
        .await
        .expect("add"));
    assert!(!f
        .db
        .add_model(&from_checkpoint, &result)
        .await
        .expect("again"));
    assert_eq!(
        f.db.final_model_of(&p(), &id)
            .await
            .expect("final")
            .object
            .id,
        "ft:m:x"
    );
    let stored = f.db.get_checkpoint(&p(), &id, 1).await.expect("checkpoint");
    assert_eq!(
        stored.object.published_model.as_deref(),
        Some("ft:m:x:ckpt-1")
    );
    let model_object =
        f.db.get_model(&p(), "ft:m:x:ckpt-1")
            .await
            .expect("model")
            .object;
    assert_eq!(model_object.checkpoint_epoch, Some(1));
    assert_eq!(model_object.task_type, TaskType::Classification);
}

#[tokio::test]
async fn attempts_are_bounded_and_user_errors_are_not_retried() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let err = JobError {
        code: "training_error".into(),
        message: "boom".into(),
        param: None,
    };

    let id = job(&f.db, &file, 2).await;
    f.db.claim_job("a", LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(
        f.db.fail_job(&id, 1, &err, true).await.expect("fail"),
        JobStatus::Queued
    );
    let j = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(j.status, JobStatus::Queued);
    assert!(
        f.db.claim_job("a", LEASE).await.expect("claim").is_none(),
        "backoff delays the retry"
    );
    sqlx::query("UPDATE fine_tuning_jobs SET scheduled_at = now()")
        .execute(&f.db.pool)
        .await
        .expect("skip backoff");
    let again =
        f.db.claim_job("a", LEASE)
            .await
            .expect("claim")
            .expect("retry");
    assert_eq!(again.attempt, 2);
    assert_eq!(
        f.db.fail_job(&id, 2, &err, true).await.expect("fail"),
        JobStatus::Failed
    );
    let j = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(
        j.error.as_ref().map(|e| e.code.as_str()),
        Some("training_error")
    );

    let id = job(&f.db, &file, 3).await;
    f.db.claim_job("a", LEASE)
        .await
        .expect("claim")
        .expect("job");
    assert_eq!(
        f.db.fail_job(&id, 1, &err, false).await.expect("fail"),
        JobStatus::Failed
    );

    // A dead worker on the last attempt fails the job instead of requeueing it.
    let id = job(&f.db, &file, 1).await;
    f.db.claim_job("a", LEASE)
        .await
        .expect("claim")
        .expect("job");
    expire_leases(&f.db).await;
    f.db.rescue_expired().await.expect("rescue");
    let j = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(j.status, JobStatus::Failed);
    assert_eq!(j.error.map(|e| e.code), Some("worker_lost".into()));
}

#[tokio::test]
async fn cancellation_and_release() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let queued = job(&f.db, &file, 3).await;
    assert_eq!(
        f.db.cancel_job(&p(), &queued).await.expect("cancel").status,
        JobStatus::Cancelled
    );
    assert!(
        f.db.cancel_job(&p(), &queued).await.is_err(),
        "cancelling twice is a conflict"
    );

    let running = job(&f.db, &file, 3).await;
    let c =
        f.db.claim_job("a", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert_eq!(
        f.db.cancel_job(&p(), &running)
            .await
            .expect("cancel")
            .status,
        JobStatus::Running
    );
    assert_eq!(
        f.db.heartbeat(&running, c.attempt, LEASE)
            .await
            .expect("hb"),
        Lease::Held {
            cancel_requested: true,
            pause_requested: false
        }
    );
    assert!(f
        .db
        .finish_cancelled(&running, c.attempt)
        .await
        .expect("finish"));
    assert_eq!(status(&f.db, &running).await, JobStatus::Cancelled);

    // A worker shutting down hands its job back without spending an attempt.
    let handed = job(&f.db, &file, 3).await;
    let c =
        f.db.claim_job("a", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert!(f.db.release_job(&handed, c.attempt).await.expect("release"));
    let c =
        f.db.claim_job("b", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert_eq!((c.job.id.as_str(), c.attempt), (handed.as_str(), 1));

    let page = PageRequest::new(Some(100), None).expect("page");
    let events =
        f.db.list_events(&p(), &handed, &page)
            .await
            .expect("events");
    assert!(events
        .iter()
        .any(|e| e.message.contains("returned to the queue")));
}

#[tokio::test]
async fn files_in_use_cannot_be_deleted_and_deleted_files_cannot_be_used() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let id = job(&f.db, &file, 3).await;
    assert!(matches!(
        f.db.delete_file(&p(), &file).await,
        Err(hone_store::StoreError::Conflict(_))
    ));
    f.db.cancel_job(&p(), &id).await.expect("cancel");
    f.db.delete_file(&p(), &file)
        .await
        .expect("delete once the job finished");
    assert!(matches!(
        f.db.create_job(&new_job(&p(), &file, 3)).await,
        Err(hone_store::StoreError::Conflict(_))
    ));
}

#[tokio::test]
async fn queued_jobs_wake_listening_workers() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let wake = Arc::new(tokio::sync::Notify::new());
    let stop = tokio_util::sync::CancellationToken::new();
    // Wait for the listener's first wake-up: it is listening from then on.
    let up = wake.notified();
    tokio::pin!(up);
    up.as_mut().enable();
    let listener = tokio::spawn(hone_store::listener::listen_for_jobs(
        f.db.clone(),
        wake.clone(),
        stop.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(10), up)
        .await
        .expect("listener up");
    let notified = wake.notified();
    tokio::pin!(notified);
    notified.as_mut().enable();
    job(&f.db, &file, 3).await;
    tokio::time::timeout(Duration::from_secs(5), notified)
        .await
        .expect("NOTIFY woke the worker");
    stop.cancel();
    listener.await.expect("listener");
}

#[tokio::test]
async fn a_success_under_a_model_id_that_is_taken_writes_nothing() {
    let f = fresh().await;
    let file_id = file(&f.db).await;
    let model = |job_id: &str, storage_key: &str| NewModel {
        id: "ft:m:taken".into(),
        job_id: job_id.to_owned(),
        base_model: "m".into(),
        storage_key: storage_key.into(),
        task_type: TaskType::Classification,
        labels: vec!["a".into(), "b".into()],
        tasks: None,
        checkpoint_epoch: None,
        bytes: 0,
    };
    let result = JobResult::default();
    let first = job(&f.db, &file_id, 1).await;
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("a job");
    assert!(f
        .db
        .succeed_job(&first, claimed.attempt, &model(&first, "models/a"), &result)
        .await
        .expect("succeed"));

    let second = job(&f.db, &file_id, 1).await;
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("a job");
    let refused =
        f.db.succeed_job(
            &second,
            claimed.attempt,
            &model(&second, "models/b"),
            &result,
        )
        .await;
    assert!(
        matches!(refused, Err(hone_store::StoreError::Conflict(_))),
        "{refused:?}"
    );
    assert_eq!(status(&f.db, &second).await, JobStatus::Running);
    let kept = f.db.get_model(&p(), "ft:m:taken").await.expect("model");
    assert_eq!(kept.storage_key, "models/a", "the first model is untouched");
}

#[tokio::test]
async fn a_value_that_cannot_be_read_back_is_never_written() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let id = job(&f.db, &file, 3).await;
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    // serde_json writes NaN as null, which `elapsed_seconds: f64` cannot read.
    let progress = JobProgress {
        epoch: 1,
        total_epochs: 2,
        step: 3,
        total_steps: 6,
        train_loss: Some(0.5),
        elapsed_seconds: f64::NAN,
        eta_seconds: None,
        estimated_finish: None,
    };
    let refused = f.db.set_progress(&id, claimed.attempt, &progress).await;
    assert!(
        matches!(&refused, Err(hone_store::StoreError::Unwritable(m)) if m.contains("progress")),
        "{refused:?}"
    );
    let model = NewModel {
        id: "ft:m:nan".into(),
        job_id: id.clone(),
        base_model: "m".into(),
        storage_key: "models/nan".into(),
        task_type: TaskType::Classification,
        labels: vec!["a".into(), "b".into()],
        tasks: None,
        checkpoint_epoch: None,
        bytes: 0,
    };
    let result = JobResult {
        train_loss: f64::INFINITY,
        ..JobResult::default()
    };
    let refused =
        f.db.succeed_job(&id, claimed.attempt, &model, &result)
            .await;
    assert!(
        matches!(refused, Err(hone_store::StoreError::Unwritable(_))),
        "{refused:?}"
    );
    // The job is still running, readable, in the list too, and no model was made.
    let job = f.db.get_job(&p(), &id).await.expect("readable");
    assert_eq!(job.status, JobStatus::Running);
    assert!(job.progress.is_none());
    f.db.list_jobs(
        &p(),
        &PageRequest::new(Some(100), None).expect("page"),
        None,
        None,
    )
    .await
    .expect("the list reads");
    assert!(f.db.get_model(&p(), "ft:m:nan").await.is_err());
    assert!(!f.db.recorded_success(&id, "ft:m:nan").await.expect("read"));

    // Finite values pass, and the success reads back as recorded.
    let result = JobResult {
        train_loss: 0.25,
        ..JobResult::default()
    };
    assert!(f
        .db
        .succeed_job(&id, claimed.attempt, &model, &result)
        .await
        .expect("succeed"));
    assert!(f.db.recorded_success(&id, "ft:m:nan").await.expect("read"));
    assert!(!f
        .db
        .recorded_success(&id, "ft:m:other")
        .await
        .expect("read"));
}
