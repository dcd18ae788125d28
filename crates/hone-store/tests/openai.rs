//! What OpenAI's API has and the store serves: pausing and resuming jobs, the list
//! filters (`metadata`, `purpose`), checkpoint pages, a job's results file. Against the
//! real Postgres, a fresh database per test.

use std::time::Duration;

use hone_domain::dataset::TaskType;
use hone_domain::job::JobStatus;
use hone_domain::resources::{EpochPoint, JobResult};
use hone_domain::{CheckpointId, FileId, JobId, PageRequest};
use hone_store::checkpoints::NewCheckpoint;
use hone_store::files::{ResultsFile, RESULTS_PURPOSE};
use hone_store::models::NewModel;
use hone_store::queue::Lease;
use hone_store::{Db, StoreError};

mod common;
use common::{file, fresh, new_job, p};

const LEASE: Duration = Duration::from_secs(30);

fn page(limit: i64) -> PageRequest {
    PageRequest { limit, after: None }
}

/// A queued job of the default project, on a new file: (job id, file id).
async fn queued(db: &Db) -> (String, String) {
    let file = file(db).await;
    let id = db
        .create_job(&new_job(&p(), &file, 3))
        .await
        .expect("job")
        .id;
    (id, file)
}

/// A job claimed by a worker: (job id, attempt).
async fn running(db: &Db) -> (String, i32) {
    let (id, _) = queued(db).await;
    let c = db.claim_job("w", LEASE).await.expect("claim").expect("job");
    (id, c.attempt)
}

/// A resumable checkpoint of `epoch` (10 steps an epoch) by `attempt`.
fn checkpoint(job: &str, attempt: i32, epoch: u32) -> NewCheckpoint {
    NewCheckpoint {
        epoch,
        step: u64::from(epoch) * 10,
        metrics: EpochPoint {
            epoch,
            train_loss: 1.0 / f64::from(epoch),
            validation: None,
        },
        storage_key: hone_store::checkpoints::storage_key(job, attempt, epoch),
        bytes: 10,
        resumable: true,
    }
}

#[tokio::test]
async fn a_queued_job_pauses_at_once_and_no_worker_claims_it_until_resumed() {
    let f = fresh().await;
    let (id, _) = queued(&f.db).await;

    let paused = f.db.pause_job(&p(), &id).await.expect("pause");
    assert_eq!(paused.status, JobStatus::Paused);
    assert!(f.db.claim_job("w", LEASE).await.expect("claim").is_none());
    // Pausing again changes nothing; resuming twice is a conflict the second time.
    assert_eq!(
        f.db.pause_job(&p(), &id).await.expect("again").status,
        JobStatus::Paused
    );
    let resumed = f.db.resume_job(&p(), &id, None).await.expect("resume");
    assert_eq!(resumed.status, JobStatus::Queued);
    assert!(matches!(
        f.db.resume_job(&p(), &id, None).await,
        Err(StoreError::Conflict(_))
    ));
    let claimed = f.db.claim_job("w", LEASE).await.expect("claim");
    assert_eq!(claimed.expect("claimable again").job.id, id);
}

#[tokio::test]
async fn a_paused_job_resumes_only_below_the_projects_active_job_limit() {
    let f = fresh().await;
    let (paused, _) = queued(&f.db).await;
    f.db.pause_job(&p(), &paused).await.expect("pause");
    // Paused, it is not active: another job takes the project's only place.
    let (other, _) = queued(&f.db).await;
    let err =
        f.db.resume_job(&p(), &paused, Some(1))
            .await
            .expect_err("the limit is reached");
    assert!(
        matches!(
            err,
            StoreError::Quota(hone_store::Quota::ActiveJobs { limit: 1 })
        ),
        "{err:?}"
    );
    assert_eq!(
        f.db.get_job(&p(), &paused).await.expect("job").status,
        JobStatus::Paused,
        "nothing changed"
    );
    f.db.cancel_job(&p(), &other).await.expect("cancel");
    let resumed =
        f.db.resume_job(&p(), &paused, Some(1))
            .await
            .expect("a place is free");
    assert_eq!(resumed.status, JobStatus::Queued);
}

#[tokio::test]
async fn a_running_job_is_paused_by_its_worker_without_spending_an_attempt() {
    let f = fresh().await;
    let (id, attempt) = running(&f.db).await;

    let asked = f.db.pause_job(&p(), &id).await.expect("pause");
    assert_eq!(
        asked.status,
        JobStatus::Running,
        "running until a checkpoint"
    );
    assert_eq!(
        f.db.heartbeat(&id, attempt, LEASE).await.expect("hb"),
        Lease::Held {
            cancel_requested: false,
            pause_requested: true
        }
    );
    assert!(f
        .db
        .finish_paused(&id, attempt, Some(2))
        .await
        .expect("paused"));
    let job = f.db.get_job(&p(), &id).await.expect("job");
    assert_eq!(job.status, JobStatus::Paused);
    assert_eq!(job.attempt, attempt - 1, "a pause is no failed attempt");
    // The stale attempt can no longer write.
    assert!(!f
        .db
        .finish_paused(&id, attempt, Some(2))
        .await
        .expect("fenced"));

    f.db.resume_job(&p(), &id, None).await.expect("resume");
    let again =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert_eq!(again.attempt, attempt, "the same attempt goes on");
    assert_eq!(
        f.db.heartbeat(&id, again.attempt, LEASE).await.expect("hb"),
        Lease::Held {
            cancel_requested: false,
            pause_requested: false
        },
        "resuming cleared the request"
    );
}

#[tokio::test]
async fn a_pause_withdrawn_before_it_took_effect_sends_the_job_back_to_the_queue() {
    let f = fresh().await;
    let (id, attempt) = running(&f.db).await;
    f.db.pause_job(&p(), &id).await.expect("pause");
    let running = f.db.resume_job(&p(), &id, None).await.expect("withdraw");
    assert_eq!(running.status, JobStatus::Running);
    // The worker had already stopped at its checkpoint: the job is not left paused.
    assert!(f.db.finish_paused(&id, attempt, None).await.expect("stop"));
    assert_eq!(
        f.db.get_job(&p(), &id).await.expect("job").status,
        JobStatus::Queued
    );
}

#[tokio::test]
async fn finished_jobs_cannot_be_paused_and_paused_ones_can_be_cancelled() {
    let f = fresh().await;
    let (id, file) = queued(&f.db).await;
    f.db.pause_job(&p(), &id).await.expect("pause");
    assert!(
        matches!(
            f.db.delete_file(&p(), &file).await,
            Err(StoreError::Conflict(_))
        ),
        "a paused job still needs its file"
    );
    let cancelled = f.db.cancel_job(&p(), &id).await.expect("cancel");
    assert_eq!(cancelled.status, JobStatus::Cancelled);
    let err = f.db.pause_job(&p(), &id).await.expect_err("finished");
    assert!(
        matches!(&err, StoreError::Conflict(m) if m.contains("cancelled")),
        "{err:?}"
    );
    assert!(matches!(
        f.db.pause_job(&p(), "ftjob-00000000000000000000000000000000")
            .await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn the_rescuer_pauses_a_dead_workers_job_that_was_being_paused() {
    let f = fresh().await;
    let (id, _) = running(&f.db).await;
    f.db.pause_job(&p(), &id).await.expect("pause");
    sqlx::query(
        "UPDATE fine_tuning_jobs SET lease_expires_at = now() - interval '1 second'
         WHERE status = 'running'",
    )
    .execute(&f.db.pool)
    .await
    .expect("expire");
    assert_eq!(f.db.rescue_expired().await.expect("rescue"), 1);
    assert_eq!(
        f.db.get_job(&p(), &id).await.expect("job").status,
        JobStatus::Paused
    );
}

#[tokio::test]
async fn jobs_are_listed_by_metadata() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut ids = Vec::new();
    for metadata in [
        Some(serde_json::json!({"team": "qa", "run": "1"})),
        Some(serde_json::json!({"team": "ml"})),
        None,
    ] {
        let mut new = new_job(&p(), &file, 3);
        new.metadata = metadata;
        ids.push(f.db.create_job(&new).await.expect("job").id);
    }
    let by = |pairs: serde_json::Value| {
        let map = pairs.as_object().cloned().expect("object");
        let db = f.db.clone();
        async move {
            db.list_jobs(&p(), &page(20), None, Some(&map))
                .await
                .expect("list")
                .into_iter()
                .map(|j| j.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        by(serde_json::json!({"team": "qa"})).await,
        [ids[0].clone()]
    );
    assert_eq!(
        by(serde_json::json!({"team": "qa", "run": "1"})).await,
        [ids[0].clone()]
    );
    assert!(by(serde_json::json!({"team": "qa", "run": "2"}))
        .await
        .is_empty());
    assert_eq!(
        by(serde_json::json!({"team": "ml"})).await,
        [ids[1].clone()]
    );
    let all =
        f.db.list_jobs(&p(), &page(20), None, None)
            .await
            .expect("all");
    assert_eq!(all.len(), 3);
}

#[tokio::test]
async fn checkpoints_have_openai_ids_and_pages() {
    let f = fresh().await;
    let (id, attempt) = running(&f.db).await;
    for epoch in 1..=3u32 {
        assert!(f
            .db
            .put_checkpoint(&id, attempt, &checkpoint(&id, attempt, epoch))
            .await
            .expect("put"));
    }
    let first =
        f.db.list_checkpoints(&p(), &id, None, 2)
            .await
            .expect("list");
    let epochs: Vec<u32> = first.iter().map(|c| c.object.epoch).collect();
    assert_eq!(epochs, [1, 2]);
    let one = &first[1].object;
    let parsed = CheckpointId::parse(&one.id).expect("an ftckpt- id");
    assert_eq!((parsed.job.as_str(), parsed.epoch), (id.as_str(), 2));
    assert_eq!(one.fine_tuning_job_id, id);
    assert_eq!((one.step_number, one.metrics.step), (20, 20));
    assert_eq!(one.metrics.train_loss, 0.5);
    assert_eq!(
        one.fine_tuned_model_checkpoint, None,
        "no model before the job succeeded"
    );
    let rest =
        f.db.list_checkpoints(&p(), &id, Some(parsed.epoch), 2)
            .await
            .expect("next page");
    let epochs: Vec<u32> = rest.iter().map(|c| c.object.epoch).collect();
    assert_eq!(epochs, [3]);
}

#[tokio::test]
async fn a_succeeded_job_lists_its_results_file_which_files_list_by_purpose() {
    let f = fresh().await;
    let upload = file(&f.db).await;
    let job =
        f.db.create_job(&new_job(&p(), &upload, 3))
            .await
            .expect("job");
    let c =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    let results = ResultsFile {
        id: FileId::generate(),
        filename: format!("{}-results.csv", job.id),
        bytes: 42,
        sha256: "11".repeat(32),
        rows: 3,
    };
    let model = NewModel {
        id: format!("ft:m:{}", JobId::parse(&job.id).expect("id").short()),
        job_id: job.id.clone(),
        base_model: "m".into(),
        storage_key: "models/x".into(),
        task_type: TaskType::Classification,
        labels: vec!["a".into(), "b".into()],
        tasks: None,
        checkpoint_epoch: None,
        bytes: 0,
    };
    assert!(f
        .db
        .put_checkpoint(&job.id, c.attempt, &checkpoint(&job.id, c.attempt, 1))
        .await
        .expect("checkpoint"));
    let result = JobResult {
        trained_tokens: Some(600),
        result_file: Some(results.id.to_string()),
        ..JobResult::default()
    };
    assert!(f
        .db
        .succeed_job_with(&job.id, c.attempt, &model, &result, Some(&results))
        .await
        .expect("succeed"));
    let done = f.db.get_job(&p(), &job.id).await.expect("job");
    assert_eq!(done.result_files, [results.id.to_string()]);
    assert_eq!(done.trained_tokens, Some(600));
    assert_eq!(done.model, "m");

    let listed = |purpose: Option<&'static str>| {
        let db = f.db.clone();
        async move {
            db.list_files(&p(), &page(20), purpose)
                .await
                .expect("list")
                .into_iter()
                .map(|f| f.id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        listed(Some(RESULTS_PURPOSE)).await,
        [results.id.to_string()]
    );
    assert_eq!(
        listed(Some("fine-tune")).await,
        std::slice::from_ref(&upload)
    );
    assert_eq!(listed(None).await.len(), 2);
    let stored =
        f.db.get_file(&p(), results.id.as_str())
            .await
            .expect("file");
    assert_eq!(stored.object.purpose, RESULTS_PURPOSE);
    assert_eq!(stored.object.examples, 3);
    // The checkpoints of a succeeded job name the model their publish makes.
    let listed =
        f.db.list_checkpoints(&p(), &job.id, None, 10)
            .await
            .expect("list");
    assert_eq!(
        listed[0].object.fine_tuned_model_checkpoint.as_deref(),
        Some(format!("{}:ckpt-1", model.id).as_str())
    );
}
