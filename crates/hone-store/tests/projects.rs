//! Projects, API keys and per-project limits against the real Postgres.

use std::sync::Arc;

use hone_domain::api_key::hash_key;
use hone_domain::{PageRequest, ProjectId};
use hone_store::jobs::NewJob;
use hone_store::projects::KeyLookup;
use hone_store::{Quota, StoreError};

mod common;
use common::{file_in, fresh, p};

fn new_job(project: &ProjectId, file: &str) -> NewJob {
    common::new_job(project, file, 3)
}

#[tokio::test]
async fn keys_resolve_to_their_project_until_revoked_and_only_their_hash_is_stored() {
    let f = fresh().await;
    let a = f.db.ensure_project("team-a").await.expect("project");
    assert_eq!(f.db.ensure_project("team-a").await.expect("again"), a);
    let key = f.db.create_api_key(&a.id).await.expect("key");

    match f
        .db
        .find_api_key(&hash_key(key.expose()))
        .await
        .expect("find")
    {
        KeyLookup::Valid {
            project,
            key: id,
            last_used_at,
        } => {
            assert_eq!(project, a);
            assert_eq!(id, key.id);
            assert_eq!(last_used_at, None);
        }
        other => panic!("{other:?}"),
    }
    f.db.touch_api_key(&key.id).await.expect("touch");
    let stored: (String, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as("SELECT hash, last_used_at FROM api_keys WHERE id = $1")
            .bind(key.id.as_str())
            .fetch_one(&f.db.pool)
            .await
            .expect("row");
    assert_eq!(stored.0, key.hash);
    assert_ne!(stored.0, key.expose());
    assert!(stored.1.is_some(), "last_used_at recorded");

    let listed = f.db.list_api_keys().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].project, "team-a");
    assert!(key.expose().starts_with(&listed[0].prefix));
    assert!(
        listed[0].prefix.len() < 20,
        "the list shows a prefix, not the key"
    );

    assert!(matches!(
        f.db.find_api_key(&hash_key("hone_sk_unknown"))
            .await
            .expect("find"),
        KeyLookup::Unknown
    ));
    f.db.revoke_api_key(key.id.as_str()).await.expect("revoke");
    assert!(matches!(
        f.db.find_api_key(&key.hash).await.expect("find"),
        KeyLookup::Revoked
    ));
    assert!(matches!(
        f.db.revoke_api_key("key-00000000000000000000000000000000")
            .await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn the_first_key_is_made_once_even_when_processes_race() {
    let f = fresh().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(4));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (db, barrier) = (f.db.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            db.bootstrap_api_key().await.expect("bootstrap")
        }));
    }
    let mut made = Vec::new();
    for t in tasks {
        made.extend(t.await.expect("task"));
    }
    assert_eq!(made.len(), 1, "exactly one first key");
    match f.db.find_api_key(&made[0].hash).await.expect("find") {
        KeyLookup::Valid { project, .. } => assert_eq!(project.name, "default"),
        other => panic!("{other:?}"),
    }
    assert!(f.db.bootstrap_api_key().await.expect("again").is_none());
}

#[tokio::test]
async fn another_projects_rows_are_not_found() {
    let f = fresh().await;
    let a = f.db.ensure_project("a").await.expect("a").id;
    let b = f.db.ensure_project("b").await.expect("b").id;
    let file = file_in(&f.db, &a, 10, None).await.expect("file");
    let job = f.db.create_job(&new_job(&a, &file)).await.expect("job").id;
    let page = PageRequest {
        limit: 10,
        after: None,
    };

    assert!(f.db.get_file(&a, &file).await.is_ok());
    assert!(matches!(
        f.db.get_file(&b, &file).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        f.db.list_files(&a, &page, None).await.expect("list").len(),
        1
    );
    assert!(f
        .db
        .list_files(&b, &page, None)
        .await
        .expect("list")
        .is_empty());
    assert!(matches!(
        f.db.delete_file(&b, &file).await,
        Err(StoreError::NotFound)
    ));
    // B cannot train on A's file.
    assert!(matches!(
        f.db.create_job(&new_job(&b, &file)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        f.db.get_job(&b, &job).await,
        Err(StoreError::NotFound)
    ));
    assert!(f
        .db
        .list_jobs(&b, &page, None, None)
        .await
        .expect("list")
        .is_empty());
    assert!(matches!(
        f.db.cancel_job(&b, &job).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        f.db.get_metrics(&b, &job).await,
        Err(StoreError::NotFound)
    ));
    assert!(f
        .db
        .list_events(&b, &job, &page)
        .await
        .expect("events")
        .is_empty());
    assert!(!f
        .db
        .list_events(&a, &job, &page)
        .await
        .expect("events")
        .is_empty());
    assert!(f
        .db
        .list_checkpoints(&b, &job, None, 100)
        .await
        .expect("list")
        .is_empty());
    assert!(f
        .db
        .list_jobs(&p(), &page, None, None)
        .await
        .expect("list")
        .is_empty());
    // A's job is untouched by B's attempts.
    assert_eq!(
        f.db.get_job(&a, &job).await.expect("job").status,
        hone_domain::JobStatus::Queued
    );
}

#[tokio::test]
async fn concurrent_creates_never_pass_the_active_jobs_limit() {
    let f = fresh().await;
    let a = f.db.ensure_project("a").await.expect("a").id;
    let other = f.db.ensure_project("other").await.expect("other").id;
    let file = file_in(&f.db, &a, 10, None).await.expect("file");
    let other_file = file_in(&f.db, &other, 10, None).await.expect("file");
    let barrier = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let (db, barrier, new) = (f.db.clone(), barrier.clone(), new_job(&a, &file));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            db.create_job_once(&new, Some(3), None).await
        }));
    }
    let (mut created, mut refused) = (0, 0);
    for t in tasks {
        match t.await.expect("task") {
            Ok(_) => created += 1,
            Err(StoreError::Quota(Quota::ActiveJobs { limit: 3 })) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!((created, refused), (3, 5));
    // Another project's jobs do not count against this one.
    f.db.create_job_once(&new_job(&other, &other_file), Some(3), None)
        .await
        .expect("other project has room");
    // A finished job frees its slot.
    let page = PageRequest {
        limit: 10,
        after: None,
    };
    let first = f.db.list_jobs(&a, &page, None, None).await.expect("list")[0]
        .id
        .clone();
    f.db.cancel_job(&a, &first).await.expect("cancel");
    f.db.create_job_once(&new_job(&a, &file), Some(3), None)
        .await
        .expect("room after a cancel");
}

#[tokio::test]
async fn stored_bytes_stay_within_the_limit() {
    let f = fresh().await;
    let a = f.db.ensure_project("a").await.expect("a").id;
    file_in(&f.db, &a, 10, Some(25)).await.expect("10 of 25");
    file_in(&f.db, &a, 10, Some(25)).await.expect("20 of 25");
    assert!(matches!(
        file_in(&f.db, &a, 10, Some(25)).await,
        Err(StoreError::Quota(Quota::StoredBytes {
            limit: 25,
            used: 20
        }))
    ));
    assert_eq!(f.db.stored_bytes(&a).await.expect("used"), 20);
    file_in(&f.db, &a, 5, Some(25))
        .await
        .expect("exactly the limit");
    assert_eq!(f.db.stored_bytes(&p()).await.expect("used"), 0);
}
