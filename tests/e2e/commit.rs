//! A commit whose answer is lost: hone reaches Postgres through a TCP proxy that
//! forwards the worker's `COMMIT` of a job's success and then drops the connection
//! before Postgres's answer reaches hone. The success is recorded, but the worker only
//! sees an error. It must read the job back before it takes anything away: the job
//! reads `succeeded`, and its model answers predictions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{jsonl, two_class_rows, TestDb, TestServer};

/// What the success's `UPDATE` carries (its text goes to Postgres in the statement's
/// Parse message, the first time a connection runs it).
const SUCCESS: &[u8] = b"'succeeded', finalized_at";
/// A simple-protocol `COMMIT`: type `Q`, length 11, the text and its NUL.
const COMMIT: &[u8] = b"Q\0\0\0\x0bCOMMIT\0";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A proxy to the local Postgres that loses the answer to the first `COMMIT` sent on
/// a connection after a job's success was written on it.
struct Proxy {
    port: u16,
    /// Set once the answer of one commit has been lost.
    fired: Arc<AtomicBool>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fired = Arc::new(AtomicBool::new(false));
        let accept_fired = fired.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect("127.0.0.1:5432").await else {
                    continue;
                };
                tokio::spawn(relay(inbound, outbound, accept_fired.clone()));
            }
        });
        Self { port, fired }
    }
}

/// Relays one connection both ways; once the success's commit has gone to Postgres,
/// stops relaying its answers, gives Postgres a moment to commit, and closes both ends.
async fn relay(client: TcpStream, server: TcpStream, fired: Arc<AtomicBool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let hold = Arc::new(AtomicBool::new(false));
    let answers_held = hold.clone();
    let answers = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if answers_held.load(Ordering::SeqCst) {
                return;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 64 * 1024];
    // The end of what came before, so that a pattern split across reads is seen.
    let mut tail: Vec<u8> = Vec::new();
    let mut armed = false;
    loop {
        let n = match client_read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut window = std::mem::take(&mut tail);
        window.extend_from_slice(&buf[..n]);
        if !armed && !fired.load(Ordering::SeqCst) && contains(&window, SUCCESS) {
            armed = true;
        }
        let commit = armed && contains(&window, COMMIT);
        if commit {
            hold.store(true, Ordering::SeqCst);
            fired.store(true, Ordering::SeqCst);
        }
        if server_write.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if commit {
            tokio::time::sleep(Duration::from_millis(500)).await;
            break;
        }
        let keep = window.len().saturating_sub(SUCCESS.len().max(COMMIT.len()));
        tail = window.split_off(keep);
    }
    drop(server_write);
    drop(client_read);
    hold.store(true, Ordering::SeqCst);
    let _ = answers.await;
}

#[tokio::test]
async fn a_success_whose_commit_answer_is_lost_keeps_its_model() {
    let db = TestDb::create().await;
    let proxy = Proxy::start().await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", proxy.port, db.name);
    let s = TestServer::start_on(db, &[("HONE_DATABASE_URL", url.as_str())]).await;
    let rows = two_class_rows(20, &["a great film"], &["an awful film"]);
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
    let id = job["id"].as_str().expect("id");
    let job = s.wait_for_job(id, Duration::from_secs(300)).await;
    assert!(
        proxy.fired.load(Ordering::SeqCst),
        "the proxy never saw the success's commit: {job}"
    );
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().expect("a model");

    // The worker saw an error, read the job back, and kept what it had published.
    let (status, answer) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": ["a great film", "an awful film"]}),
        )
        .await;
    assert_eq!(status, 200, "{answer}");
    let predictions = answer["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2, "{answer}");
    for p in predictions {
        assert!(
            p["label"] == "positive" || p["label"] == "negative",
            "{answer}"
        );
    }
    // And the job stays as it is: no second attempt runs and fails it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (status, again) = s.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["status"], "succeeded", "{again}");
    assert_eq!(again["fine_tuned_model"], model, "{again}");
}
