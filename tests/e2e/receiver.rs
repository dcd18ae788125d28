//! A webhook receiver on loopback for the webhook tests: a real HTTP server that keeps
//! every request it gets and answers as the test scripts it (a status, or no answer at
//! all), and the independent verifier its requests are checked with.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

use crate::support::repo_dir;

/// How the receiver answers one request.
#[derive(Clone, Copy, Debug)]
pub enum Answer {
    Status(u16),
    /// Holds the request open, never answering.
    Hang,
}

/// One request as it arrived.
#[derive(Clone, Debug)]
pub struct Request {
    /// The `webhook-*` and `content-type` headers.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub json: Value,
}

impl Request {
    pub fn event_type(&self) -> &str {
        self.json["type"].as_str().unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    got: Mutex<Vec<Request>>,
    /// Answers still to give, per event type; then 200.
    plan: Mutex<HashMap<String, VecDeque<Answer>>>,
    arrived: Notify,
}

pub struct Receiver {
    pub url: String,
    inner: Arc<Inner>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn hook(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let kept = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with("webhook-") || k.as_str() == "content-type")
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
        .collect();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let request = Request {
        headers: kept,
        body: body.to_vec(),
        json,
    };
    let answer = inner
        .plan
        .lock()
        .expect("plan")
        .get_mut(request.event_type())
        .and_then(VecDeque::pop_front)
        .unwrap_or(Answer::Status(200));
    inner.got.lock().expect("got").push(request);
    inner.arrived.notify_waiters();
    match answer {
        Answer::Status(code) => StatusCode::from_u16(code).expect("status"),
        Answer::Hang => std::future::pending().await,
    }
}

impl Receiver {
    pub async fn start() -> Self {
        let inner = Arc::new(Inner::default());
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(hook))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("receiver");
        });
        Self {
            url: format!("http://{addr}/hook"),
            inner,
            server,
        }
    }

    /// The next requests for `event_type` get `answers`, in order, then 200s.
    pub fn answer(&self, event_type: &str, answers: &[Answer]) {
        self.inner
            .plan
            .lock()
            .expect("plan")
            .insert(event_type.to_owned(), answers.iter().copied().collect());
    }

    pub fn received(&self) -> Vec<Request> {
        self.inner.got.lock().expect("got").clone()
    }

    /// Waits up to `limit` for the requests to satisfy `done`; they, then.
    pub async fn wait_for(
        &self,
        what: &str,
        limit: Duration,
        done: impl Fn(&[Request]) -> bool,
    ) -> Vec<Request> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let arrived = self.inner.arrived.notified();
            let got = self.received();
            if done(&got) {
                return got;
            }
            let summary: Vec<&str> = got.iter().map(Request::event_type).collect();
            assert!(
                tokio::time::Instant::now() < deadline,
                "the receiver did not get {what} within {limit:?}; it got {summary:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(200), arrived).await;
        }
    }
}

/// How many requests of `event_type` arrived.
pub fn count(got: &[Request], event_type: &str) -> usize {
    got.iter().filter(|r| r.event_type() == event_type).count()
}

/// Each request verified with `secret` by the Standard Webhooks project's Python
/// library: `Ok(payload)` or `Err(why)`.
pub async fn verify(secret: &str, requests: &[Request]) -> Vec<Result<Value, String>> {
    let python = repo_dir().join(".deps/webhooks/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run scripts/setup",
        python.display()
    );
    let input = json!({
        "secret": secret,
        "deliveries": requests
            .iter()
            .map(|r| json!({"headers": r.headers, "body": STANDARD.encode(&r.body)}))
            .collect::<Vec<_>>(),
    });
    let mut child = tokio::process::Command::new(python)
        .arg(repo_dir().join("tests/e2e/verify_webhooks.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the verifier");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(input.to_string().as_bytes())
        .await
        .expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("verifier");
    assert!(
        out.status.success(),
        "the verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&out.stdout).expect("verifier output");
    results
        .into_iter()
        .map(|r| match r["ok"].as_bool() {
            Some(true) => Ok(r["payload"].clone()),
            _ => Err(r["error"].as_str().unwrap_or("?").to_owned()),
        })
        .collect()
}
