//! API key look-ups are remembered for a short time (`api_key_cache_ms`, 5 s by
//! default): a flood of unknown keys cannot take the database's connections from
//! requests with a known key, and a revoked key stops working within that time.

use std::time::{Duration, Instant};

use futures::future::join_all;
use sqlx::{Connection, Executor, PgConnection};

use crate::support::{auth_headers, TestServer};

/// A well-formed key that no server issued.
fn bogus_key(i: usize) -> String {
    let tail: String = format!("{i:0>43}");
    format!("hone_sk_{tail}")
}

#[tokio::test]
async fn unknown_keys_cannot_starve_known_ones_and_revocation_takes_effect_in_time() {
    let s = TestServer::start().await;
    let key = s.create_key("flooded").await;
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(&key))
        .build()
        .expect("client");
    let r = client.get(s.url("/v1/files")).send().await.expect("GET");
    assert_eq!(r.status(), 200);
    // Let the first use's `last_used_at` write finish.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The key table held, as a slow or overloaded database would: every key look-up
    // that reaches the database waits, holding a pooled connection.
    let mut holder = PgConnection::connect(s.database_url()).await.expect("db");
    holder.execute("BEGIN").await.expect("begin");
    holder
        .execute("LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    let flood: Vec<_> = (0..300)
        .map(|i| {
            let req = reqwest::Client::new()
                .get(s.url("/v1/files"))
                .bearer_auth(bogus_key(i));
            tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Meanwhile the known key is served, promptly, from the cache.
    for _ in 0..10 {
        let started = Instant::now();
        let r = tokio::time::timeout(
            Duration::from_secs(1),
            client.get(s.url("/v1/files")).send(),
        )
        .await
        .expect("a known key's request waited on the flood")
        .expect("GET");
        assert_eq!(r.status(), 200, "{:?}", r.text().await);
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    holder.execute("COMMIT").await.expect("commit");
    let statuses = join_all(flood).await;
    for status in statuses {
        let status = status.expect("task").expect("an answer");
        assert_eq!(status, 401, "an unknown key");
    }

    // Revoked: refused within the cache time.
    let list = String::from_utf8(s.keys(&["list"]).await.stdout).expect("utf-8");
    let id = list
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("flooded"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the key is listed")
        .to_owned();
    s.keys(&["revoke", &id]).await;
    let revoked = Instant::now();
    loop {
        let r = client.get(s.url("/v1/files")).send().await.expect("GET");
        if r.status() == 401 {
            let body: serde_json::Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "revoked_api_key", "{body}");
            break;
        }
        assert_eq!(r.status(), 200);
        assert!(
            revoked.elapsed() < Duration::from_millis(5500),
            "a revoked key still worked after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("revocation took effect after {:?}", revoked.elapsed());
}
