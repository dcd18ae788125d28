//! The database going away: hone reaches Postgres through a TCP proxy that the test
//! cuts (every open connection dropped, new ones closed at once) and restores. While
//! it is cut, API calls answer 503 with `Retry-After` (not 500, not a hang) and
//! `/healthz` stays up; once it is back, the API and the worker carry on without a
//! restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::support::{jsonl, two_class_rows, TestDb, TestServer};

/// A proxy to the local Postgres that can be cut and restored.
struct Proxy {
    port: u16,
    up: Arc<AtomicBool>,
    /// Bumped on every cut: connections opened before it end.
    cuts: watch::Sender<u64>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (accept_up, accept_cuts) = (up.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !accept_up.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = accept_cuts.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Self { port, up, cuts }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn while_the_database_is_away_the_api_answers_503_and_then_carries_on() {
    let db = TestDb::create().await;
    let proxy = Proxy::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
    let s = TestServer::start_on(db, &[("HONE_DATABASE_URL", url.as_str())]).await;
    let (status, _) = s.get("/v1/files").await;
    assert_eq!(status, 200);

    proxy.cut();
    for path in ["/v1/files", "/v1/fine_tuning/jobs", "/readyz"] {
        let started = tokio::time::Instant::now();
        let r = s.client.get(s.url(path)).send().await.expect("answered");
        assert_eq!(r.status().as_u16(), 503, "{path}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{path} took {:?}",
            started.elapsed()
        );
        if path != "/readyz" {
            assert!(r.headers().contains_key("retry-after"), "{path}");
            let body: serde_json::Value = r.json().await.expect("json");
            assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
        }
    }
    let (status, _) = s.get("/healthz").await;
    assert_eq!(status, 200, "liveness does not depend on the database");

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, _) = s.get("/v1/files").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The worker carries on too: a job queued now gets trained.
    let rows = two_class_rows(40, &["a great film"], &["an awful film"]);
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 1, "max_seq_len": 16}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job = s
        .wait_for_job(job["id"].as_str().expect("id"), Duration::from_secs(300))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
}
