//! The queue against the real Postgres, a fresh database per test.

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
use common::{file, fresh, new_job, p};

async fn job(db: &Db, file: &str, max_attempts: i32) -> String {
    db.create_job(&new_job(&p(), file, max_attempts))
        .await
        .expect("job")
        .id
}

async fn status(db: &Db, id: &str) -> JobStatus {
    db.get_job(&p(), id).await.expect("job").status
}

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
async fn claims_take_ready_jobs_by_priority_then_schedule_then_id_with_their_event() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(job(&f.db, &file, 3).await);
    }
    // (priority, seconds from now it is scheduled at) for each job, in creation order.
    let when = [(2, -30), (1, -10), (1, -20), (1, 3600), (2, -40)];
    for (id, (priority, seconds)) in ids.iter().zip(when) {
        sqlx::query(
            "UPDATE fine_tuning_jobs SET priority = $2,
                 scheduled_at = now() + $3 * interval '1 second' WHERE id = $1",
        )
        .bind(id)
        .bind(priority as i16)
        .bind(seconds as f64)
        .execute(&f.db.pool)
        .await
        .expect("schedule");
    }
    let mut order = Vec::new();
    while let Some(c) = f.db.claim_job("w", LEASE).await.expect("claim") {
        order.push(c.job.id);
    }
    let expected: Vec<String> = [2, 1, 4, 0].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(order, expected, "the job scheduled in an hour waits");
    assert_eq!(status(&f.db, &ids[3]).await, JobStatus::Queued);

    // The claim and its event are one commit: every claimed job has its event.
    let page = PageRequest::new(Some(100), None).expect("page");
    for id in &order {
        let events = f.db.list_events(&p(), id, &page).await.expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.message == "Worker w started attempt 1 of 3"),
            "{events:?}"
        );
    }
}

#[tokio::test]
async fn a_claim_probes_each_project_s_head_not_the_whole_queue() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let template = job(&f.db, &file, 3).await;
    // A long queue over 20 projects, copied from one job in a single statement
    // (creating each through the API's path would take the test most of its time).
    sqlx::query(
        "INSERT INTO projects (id, name)
         SELECT 'proj-' || md5('p' || g::text), 'p' || g FROM generate_series(1, 20) g",
    )
    .execute(&f.db.pool)
    .await
    .expect("projects");
    sqlx::query(
        "INSERT INTO fine_tuning_jobs (id, base_model, training_file, method, hyperparameters,
             seed, max_attempts, project_id, priority, scheduled_at)
         SELECT 'ftjob-' || md5(g::text), base_model, training_file, method, hyperparameters,
             seed, max_attempts, 'proj-' || md5('p' || (1 + g % 20)::text), 1 + g % 3,
             now() - g * interval '1 second'
         FROM fine_tuning_jobs, generate_series(1, 20000) g WHERE id = $1",
    )
    .bind(&template)
    .execute(&f.db.pool)
    .await
    .expect("fill the queue");
    sqlx::query("ANALYZE fine_tuning_jobs")
        .execute(&f.db.pool)
        .await
        .expect("analyze");

    let mut tx = f.db.pool.begin().await.expect("begin");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        hone_store::queue::NEXT_QUEUED
    ))
    .bind(None::<Vec<String>>)
    .fetch_all(&mut *tx)
    .await
    .expect("explain");
    tx.rollback().await.expect("rollback");
    let plan = plan.join("\n");
    assert!(
        plan.contains("using fine_tuning_jobs_project_claim_idx"),
        "{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on fine_tuning_jobs"),
        "the queue is never read whole: {plan}"
    );
    // A few pages per project (21 with the default one): the skip scan's probe, the
    // head's index path, heap page and lock, the running count; not the queue's
    // hundreds (about 11 each, measured).
    let read: u64 = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: "))
        .expect("buffers in the plan")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(read < 21 * 16, "read {read} pages for one claim: {plan}");

    // And the claim takes a head: with no project running anything, the oldest job
    // of the first priority over all projects.
    let first: String = sqlx::query_scalar(
        "SELECT id FROM fine_tuning_jobs WHERE status = 'queued'
         ORDER BY priority, scheduled_at, id LIMIT 1",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("head");
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert_eq!(claimed.job.id, first);
}

#[tokio::test]
async fn a_worker_claims_only_jobs_on_base_models_it_has() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut big = new_job(&p(), &file, 3);
    big.base_model = "vit-large".into();
    let big = f.db.create_job(&big).await.expect("job").id;
    let small = job(&f.db, &file, 3).await;

    let has = |models: &[&str]| models.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    // The big job is older, but this worker lacks its model: it takes the other one.
    let claimed =
        f.db.claim_job_of("cpu", LEASE, Some(&has(&["m", "minilm"])))
            .await
            .expect("claim")
            .expect("a job on m");
    assert_eq!(claimed.job.id, small);
    assert!(
        f.db.claim_job_of("cpu", LEASE, Some(&has(&["m"])))
            .await
            .expect("claim")
            .is_none(),
        "the vit-large job waits for a worker that has it"
    );
    assert!(f
        .db
        .claim_job_of("none", LEASE, Some(&[]))
        .await
        .expect("claim")
        .is_none());
    assert_eq!(status(&f.db, &big).await, JobStatus::Queued);
    let claimed =
        f.db.claim_job_of("gpu", LEASE, Some(&has(&["vit-large"])))
            .await
            .expect("claim")
            .expect("the vit-large job");
    assert_eq!(claimed.job.id, big);
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

#[tokio::test]
async fn claims_are_fair_across_projects() {
    let f = fresh().await;
    let quiet = f.db.ensure_project("quiet").await.expect("project").id;
    let busy_file = file(&f.db).await;
    let quiet_file = common::file_in(&f.db, &quiet, 10, None)
        .await
        .expect("file");
    // The busy project queued five jobs first; the quiet one queues one later.
    let mut busy_jobs = Vec::new();
    for _ in 0..5 {
        busy_jobs.push(job(&f.db, &busy_file, 3).await);
    }
    let quiet_job =
        f.db.create_job(&new_job(&quiet, &quiet_file, 3))
            .await
            .expect("job")
            .id;
    let claim = || async {
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("a job")
    };
    // No project runs anything: the oldest goes first.
    assert_eq!(claim().await.job.id, busy_jobs[0]);
    // The busy project now runs one, the quiet one none: the quiet one's job is next,
    // although four of the busy project's are older.
    assert_eq!(claim().await.job.id, quiet_job);
    // Then each runs one; the busy project's queue goes on in order.
    assert_eq!(claim().await.job.id, busy_jobs[1]);
    assert_eq!(claim().await.job.id, busy_jobs[2]);
}

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
