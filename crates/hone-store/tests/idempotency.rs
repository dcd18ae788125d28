//! `Idempotency-Key`s are remembered for their time to live, then are new keys again,
//! and a project's expired keys are deleted when it claims another.

mod common;

use std::time::Duration;

use hone_domain::FileId;
use hone_store::files::StoredFile;
use hone_store::idempotency::{Idempotency, Once};

fn key(name: &str, digest: &str, ttl: Duration) -> Idempotency {
    Idempotency {
        scope: "POST /v1/files",
        key: name.into(),
        request_sha256: digest.repeat(32),
        ttl,
    }
}

async fn upload(db: &hone_store::Db, key: &Idempotency) -> Once<StoredFile> {
    db.insert_file_once(
        &common::p(),
        &FileId::generate(),
        "f.jsonl",
        "fine-tune",
        &common::summary(10),
        &Default::default(),
        Some(key),
    )
    .await
    .expect("insert")
}

async fn keys(db: &hone_store::Db) -> Vec<String> {
    sqlx::query_scalar("SELECT key FROM idempotency_keys ORDER BY key")
        .fetch_all(&db.pool)
        .await
        .expect("keys")
}

#[tokio::test]
async fn a_key_is_replayed_within_its_time_to_live_and_new_after_it() {
    let fresh = common::fresh().await;
    let db = &fresh.db;
    let day = Duration::from_secs(24 * 3600);
    let second = Duration::from_secs(1);
    assert!(matches!(
        upload(db, &key("k-1", "ab", day)).await,
        Once::Created(_)
    ));
    assert!(matches!(
        upload(db, &key("k-1", "ab", day)).await,
        Once::Replayed(_)
    ));
    assert!(matches!(
        upload(db, &key("k-1", "cd", day)).await,
        Once::Mismatch
    ));
    assert!(matches!(
        upload(db, &key("k-2", "ab", day)).await,
        Once::Created(_)
    ));

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Past a one-second life, the same key with another request creates again…
    let again = upload(db, &key("k-1", "cd", second)).await;
    assert!(matches!(again, Once::Created(_)), "{again:?}");
    // …is remembered from then on…
    assert!(matches!(
        upload(db, &key("k-1", "cd", second)).await,
        Once::Replayed(_)
    ));
    // …and the claim deleted the project's other expired key.
    assert_eq!(keys(db).await, ["k-1"]);
}
