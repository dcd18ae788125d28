//! The webhook outbox against the real Postgres, a fresh database per test: events are
//! written with the status change they report (or not at all), claims never hand one
//! delivery to two deliverers, leases bring lost attempts back, and results are fenced
//! by the attempt.

use std::sync::Arc;
use std::time::Duration;

use hone_domain::resources::JobError;
use hone_domain::webhook::{DeliveryStatus, WebhookEventType, WebhookSecret};
use hone_domain::{PageRequest, ProjectId, WebhookId};
use hone_store::webhook_outbox::AttemptResult;
use hone_store::webhooks::{EndpointChange, NewEndpoint};
use hone_store::{Db, StoreError};

mod common;
use common::{file, fresh, new_job, p};

const LEASE: Duration = Duration::from_secs(30);

fn new_endpoint(project: &ProjectId, events: &[WebhookEventType]) -> NewEndpoint {
    NewEndpoint {
        id: WebhookId::generate(),
        project: project.clone(),
        url: "https://example.com/hook".into(),
        events: events.to_vec(),
        description: None,
        enabled: true,
        secret: WebhookSecret::generate(),
    }
}

async fn endpoint(db: &Db, project: &ProjectId, events: &[WebhookEventType]) -> String {
    db.create_webhook(&new_endpoint(project, events), 100)
        .await
        .expect("endpoint")
        .id
}

/// (event type, object id) of every delivery to `webhook`, oldest first.
async fn outbox(db: &Db, webhook: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT ev.type, ev.object_id FROM webhook_deliveries d
         JOIN webhook_events ev ON ev.id = d.event_id
         WHERE d.endpoint_id = $1 ORDER BY ev.created_at, d.created_at",
    )
    .bind(webhook)
    .fetch_all(&db.pool)
    .await
    .expect("outbox")
}

fn failed(code: &str) -> JobError {
    JobError {
        code: code.into(),
        message: "broken".into(),
        param: None,
    }
}

fn answered(status: i32) -> AttemptResult {
    AttemptResult {
        succeeded: (200..300).contains(&status),
        status_code: Some(status),
        latency_ms: 3,
        error: None,
        response_body: None,
    }
}

#[tokio::test]
async fn every_status_change_writes_its_event_in_its_own_transaction() {
    let f = fresh().await;
    let db = &f.db;
    let all = endpoint(db, &p(), &WebhookEventType::ALL).await;
    let finished = endpoint(
        db,
        &p(),
        &[WebhookEventType::JobSucceeded, WebhookEventType::JobFailed],
    )
    .await;
    let file = file(db).await;

    // Queued then cancelled by the API; claimed (running) then failed by its worker.
    let cancelled = db.create_job(&new_job(&p(), &file, 1)).await.expect("job");
    db.cancel_job(&p(), &cancelled.id).await.expect("cancel");
    let job = db.create_job(&new_job(&p(), &file, 1)).await.expect("job");
    let claimed = db
        .claim_job("w", LEASE)
        .await
        .expect("claim")
        .expect("a job");
    assert_eq!(claimed.job.id, job.id);
    // A worker that does not hold the job writes nothing, and so no event either.
    db.fail_job(&job.id, claimed.attempt + 1, &failed("x"), false)
        .await
        .expect("stale fail");
    db.fail_job(&job.id, claimed.attempt, &failed("x"), false)
        .await
        .expect("fail");

    let s = |t: WebhookEventType, id: &str| (t.as_str().to_owned(), id.to_owned());
    assert_eq!(
        outbox(db, &all).await,
        [
            s(WebhookEventType::FileProcessed, &file),
            s(WebhookEventType::JobCancelled, &cancelled.id),
            s(WebhookEventType::JobRunning, &job.id),
            s(WebhookEventType::JobFailed, &job.id),
        ]
    );
    assert_eq!(
        outbox(db, &finished).await,
        [s(WebhookEventType::JobFailed, &job.id)]
    );
    // One event per change, whatever the number of endpoints.
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_events")
        .fetch_one(&db.pool)
        .await
        .expect("count");
    assert_eq!(events, 4);

    // A change rolled back leaves no event behind.
    let mut tx = db.pool.begin().await.expect("tx");
    sqlx::query(
        "UPDATE fine_tuning_jobs SET status = 'cancelled', finalized_at = now() WHERE id = $1",
    )
    .bind(&cancelled.id)
    .execute(&mut *tx)
    .await
    .expect("no-op update");
    let other = db.create_job(&new_job(&p(), &file, 1)).await.expect("job");
    sqlx::query(
        "UPDATE fine_tuning_jobs SET status = 'cancelled', finalized_at = now() WHERE id = $1",
    )
    .bind(&other.id)
    .execute(&mut *tx)
    .await
    .expect("update");
    tx.rollback().await.expect("rollback");
    assert_eq!(outbox(db, &all).await.len(), 4);
}

#[tokio::test]
async fn projects_get_only_their_own_events_and_endpoints() {
    let f = fresh().await;
    let db = &f.db;
    let other = db.ensure_project("other").await.expect("project").id;
    let theirs = endpoint(db, &other, &WebhookEventType::ALL).await;
    let ours = endpoint(db, &p(), &[WebhookEventType::FileProcessed]).await;
    file(db).await;
    assert_eq!(outbox(db, &theirs).await, []);
    assert_eq!(outbox(db, &ours).await.len(), 1);
    assert!(matches!(
        db.get_webhook(&p(), &theirs).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.delete_webhook(&p(), &theirs).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        db.list_deliveries(&p(), &theirs, &PageRequest::new(None, None).expect("page"))
            .await,
        Err(StoreError::NotFound)
    ));
    let listed = db
        .list_webhooks(&p(), &PageRequest::new(None, None).expect("page"))
        .await
        .expect("list");
    assert_eq!(listed.iter().map(|w| &w.id).collect::<Vec<_>>(), [&ours]);
}

#[tokio::test]
async fn a_project_has_at_most_its_limit_of_endpoints_even_when_created_at_once() {
    let f = fresh().await;
    let db = &f.db;
    let other = db.ensure_project("other").await.expect("project").id;
    // Eight creates at once against a limit of three: exactly three are written.
    let creates = (0..8).map(|_| {
        let db = db.clone();
        tokio::spawn(async move {
            db.create_webhook(&new_endpoint(&p(), &WebhookEventType::ALL), 3)
                .await
        })
    });
    let mut made = 0;
    for create in creates {
        match create.await.expect("task") {
            Ok(_) => made += 1,
            Err(StoreError::Quota(hone_store::Quota::WebhookEndpoints { limit: 3 })) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(made, 3);
    let page = PageRequest::new(Some(100), None).expect("page");
    assert_eq!(db.list_webhooks(&p(), &page).await.expect("list").len(), 3);
    // The limit is per project.
    db.create_webhook(&new_endpoint(&other, &WebhookEventType::ALL), 3)
        .await
        .expect("another project's first endpoint");
}

#[tokio::test]
async fn concurrent_deliverers_never_claim_the_same_delivery() {
    let f = fresh().await;
    let ours = endpoint(&f.db, &p(), &[WebhookEventType::FileProcessed]).await;
    for _ in 0..30 {
        file(&f.db).await;
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(6));
    let mut deliverers = Vec::new();
    for d in 0..6 {
        let db = f.db.clone();
        let barrier = barrier.clone();
        deliverers.push(tokio::spawn(async move {
            barrier.wait().await;
            let mut mine = Vec::new();
            loop {
                let batch = db
                    .claim_deliveries(&format!("d{d}"), LEASE, 2)
                    .await
                    .expect("claim");
                if batch.is_empty() {
                    return mine;
                }
                for c in batch {
                    assert_eq!(c.attempt, 1);
                    mine.push(c.id);
                }
            }
        }));
    }
    let mut claimed = Vec::new();
    for d in deliverers {
        claimed.extend(d.await.expect("deliverer"));
    }
    let mut all: Vec<String> =
        sqlx::query_scalar("SELECT id FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind(&ours)
            .fetch_all(&f.db.pool)
            .await
            .expect("ids");
    claimed.sort();
    all.sort();
    assert_eq!(all.len(), 30);
    assert_eq!(claimed, all, "every delivery claimed exactly once");
}

#[tokio::test]
async fn failed_attempts_are_retried_lost_ones_come_back_and_stale_results_are_only_logged() {
    let f = fresh().await;
    let db = &f.db;
    let ours = endpoint(db, &p(), &[WebhookEventType::FileProcessed]).await;
    let file_id = file(db).await;

    let first = db.claim_deliveries("a", LEASE, 10).await.expect("claim");
    assert_eq!(first.len(), 1);
    let d = &first[0];
    assert_eq!((d.attempt, d.event.data.id.as_str()), (1, file_id.as_str()));
    assert_eq!(d.secrets.len(), 1);
    // Claimed: nobody else gets it while the lease lasts.
    assert!(db
        .claim_deliveries("b", LEASE, 10)
        .await
        .expect("claim")
        .is_empty());

    // A 500, retried later: not due before then.
    let status = db
        .record_attempt(&d.id, 1, &answered(500), Some(Duration::from_millis(300)))
        .await
        .expect("record");
    assert_eq!(status, Some(DeliveryStatus::Pending));
    assert!(db
        .claim_deliveries("b", LEASE, 10)
        .await
        .expect("claim")
        .is_empty());
    let due = db.next_delivery_in().await.expect("due").expect("pending");
    assert!(due <= Duration::from_millis(300), "{due:?}");
    tokio::time::sleep(Duration::from_millis(350)).await;

    // The second attempt's deliverer dies (its lease is short): the third takes over.
    let second = db
        .claim_deliveries("b", Duration::from_millis(100), 10)
        .await
        .expect("claim");
    assert_eq!(second[0].attempt, 2);
    tokio::time::sleep(Duration::from_millis(150)).await;
    let third = db.claim_deliveries("c", LEASE, 10).await.expect("claim");
    assert_eq!(third[0].attempt, 3);
    // The late second attempt is logged, but does not decide the delivery.
    let late = db
        .record_attempt(&d.id, 2, &answered(500), None)
        .await
        .expect("record");
    assert_eq!(late, None);
    let done = db
        .record_attempt(&d.id, 3, &answered(204), None)
        .await
        .expect("record");
    assert_eq!(done, Some(DeliveryStatus::Succeeded));
    assert_eq!(db.next_delivery_in().await.expect("due"), None);

    let page = PageRequest::new(None, None).expect("page");
    let listed = db.list_deliveries(&p(), &ours, &page).await.expect("list");
    assert_eq!(listed.len(), 1);
    let delivery = &listed[0];
    assert_eq!(delivery.status, DeliveryStatus::Succeeded);
    assert!(delivery.finished_at.is_some() && delivery.next_attempt_at.is_none());
    let codes: Vec<_> = delivery
        .attempts
        .iter()
        .map(|a| (a.attempt, a.status_code))
        .collect();
    assert_eq!(codes, [(1, Some(500)), (2, Some(500)), (3, Some(204))]);

    // The last attempt failing fails the delivery; a redelivery sends the event again.
    let again = db
        .redeliver(&p(), &ours, &delivery.id)
        .await
        .expect("redeliver");
    assert_eq!(again.status, DeliveryStatus::Pending);
    assert_eq!(again.redelivery_of.as_deref(), Some(delivery.id.as_str()));
    assert_eq!(again.event_id, delivery.event_id);
    let claimed = db.claim_deliveries("a", LEASE, 10).await.expect("claim");
    assert_eq!(
        (claimed[0].id.as_str(), claimed[0].attempt),
        (again.id.as_str(), 1)
    );
    let status = db
        .record_attempt(&again.id, 1, &answered(410), None)
        .await
        .expect("record");
    assert_eq!(status, Some(DeliveryStatus::Failed));
}

#[tokio::test]
async fn disabled_endpoints_get_no_events_and_their_pending_deliveries_wait() {
    let f = fresh().await;
    let db = &f.db;
    let ours = endpoint(db, &p(), &[WebhookEventType::FileProcessed]).await;
    file(db).await;
    let off = EndpointChange {
        enabled: Some(false),
        ..EndpointChange::default()
    };
    db.update_webhook(&p(), &ours, &off).await.expect("disable");
    file(db).await;
    assert_eq!(outbox(db, &ours).await.len(), 1);
    assert!(db
        .claim_deliveries("a", LEASE, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(db.next_delivery_in().await.expect("due"), None);
    let on = EndpointChange {
        enabled: Some(true),
        ..EndpointChange::default()
    };
    db.update_webhook(&p(), &ours, &on).await.expect("enable");
    assert_eq!(
        db.claim_deliveries("a", LEASE, 10)
            .await
            .expect("claim")
            .len(),
        1
    );
}

#[tokio::test]
async fn a_rotated_secret_signs_beside_the_new_one_until_it_expires() {
    let f = fresh().await;
    let db = &f.db;
    let ours = endpoint(db, &p(), &[WebhookEventType::FileProcessed]).await;
    let new = WebhookSecret::generate();
    let rotated = db
        .rotate_webhook_secret(&p(), &ours, &new, Duration::from_secs(3600))
        .await
        .expect("rotate");
    assert!(rotated.previous_secret_expires_at.is_some());
    file(db).await;
    let claimed = db.claim_deliveries("a", LEASE, 10).await.expect("claim");
    assert_eq!(claimed[0].secrets.len(), 2);
    assert_eq!(claimed[0].secrets[0].expose(), new.expose());

    // Past the overlap, only the new one signs.
    db.rotate_webhook_secret(&p(), &ours, &WebhookSecret::generate(), Duration::ZERO)
        .await
        .expect("rotate");
    file(db).await;
    let claimed = db.claim_deliveries("a", LEASE, 10).await.expect("claim");
    assert_eq!(claimed[0].secrets.len(), 1);
}
