//! Connections are bounded: one that does not finish its request header within the
//! header-read timeout is closed, a body that stalls or a request that takes too long
//! is answered 408 in the error envelope, and past the connection cap new clients wait
//! for a place instead of exhausting the process. Timeouts are set short here through
//! the configuration.

use std::time::{Duration, Instant};

use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::raw::{post_streaming, read_answer, Body};
use crate::support::TestServer;

/// Opens a connection and sends half a request header.
async fn half_open(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .await
        .expect("send half a header");
    stream
}

/// Whether the server closed `stream` (end of stream or reset), reading at most until
/// `deadline`; what the server wrote before closing (hyper's bodiless 408) is skipped.
async fn closed_by(mut stream: TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

async fn healthz_within(s: &TestServer, limit: Duration) -> Duration {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let started = Instant::now();
    let r = tokio::time::timeout(limit, client.get(s.url("/healthz")).send())
        .await
        .unwrap_or_else(|_| panic!("/healthz did not answer within {limit:?}"))
        .expect("GET /healthz");
    assert_eq!(r.status(), 200);
    started.elapsed()
}

/// The case: 2,000 connections that each sent half a header. New clients are
/// served at once, and every half-open connection is closed after the header timeout.
#[tokio::test]
async fn half_open_connections_are_closed_after_the_header_timeout() {
    let s = TestServer::start_with(&[("HONE_HEADER_READ_TIMEOUT_MS", "2000")]).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.extend(join_all((0..100).map(|_| half_open(&addr))).await);
    }
    let opened = Instant::now();
    let took = healthz_within(&s, Duration::from_secs(1)).await;
    println!(
        "/healthz beside {} half-open connections: {took:?}",
        held.len()
    );
    // Every one is closed within the timeout and a margin for 2,000 timers on 2 cores.
    let deadline = opened + Duration::from_secs(8);
    let closed = join_all(held.into_iter().map(|c| closed_by(c, deadline))).await;
    let open = closed.iter().filter(|c| !**c).count();
    assert_eq!(
        open, 0,
        "{open} of 2000 half-open connections were still open"
    );
    healthz_within(&s, Duration::from_secs(1)).await;
}

/// At the connection cap a new client waits for a place, which a half-open connection
/// frees when its header timeout closes it.
#[tokio::test]
async fn past_the_connection_cap_new_clients_wait_for_a_place() {
    let s = TestServer::start_with(&[
        ("HONE_HEADER_READ_TIMEOUT_MS", "1500"),
        ("HONE_MAX_CONNECTIONS", "4"),
    ])
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let held = join_all((0..4).map(|_| half_open(&addr))).await;
    let waited = healthz_within(&s, Duration::from_secs(5)).await;
    assert!(
        waited >= Duration::from_millis(1000),
        "answered in {waited:?} beside 4 connections at a cap of 4"
    );
    drop(held);
}

/// A body that stops arriving gets 408 after the body-read timeout; a request still
/// unanswered at the request timeout (an upload trickling in) gets 408 too; both in the
/// error envelope.
#[tokio::test]
async fn stalled_bodies_and_slow_requests_get_408() {
    let s = TestServer::start_with(&[
        ("HONE_BODY_READ_TIMEOUT_SECS", "1"),
        ("HONE_REQUEST_TIMEOUT_SECS", "3"),
    ])
    .await;
    let addr = s.base.trim_start_matches("http://").to_owned();

    // Ten bytes of a declared hundred, then nothing.
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let head = format!(
        "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"base_mod",
        s.key
    );
    stream.write_all(head.as_bytes()).await.expect("send");
    let started = Instant::now();
    let answer = read_answer(&mut stream, Duration::from_secs(10))
        .await
        .expect("an answer to a stalled body");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        answer.body["error"]["code"], "request_timeout",
        "{answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );

    // An upload that sends a line every 400 ms: never stalls, never ends.
    let boundary = "hone-slow";
    let headers = vec![
        format!("Authorization: Bearer {}", s.key),
        format!("Content-Type: multipart/form-data; boundary={boundary}"),
    ];
    let started = Instant::now();
    let (answer, _) = post_streaming(
        &addr,
        "/v1/files",
        &headers,
        Body {
            total: 10_000_000,
            declare: true,
            fill: move |at, piece: &mut Vec<u8>| {
                if at == 0 {
                    piece.extend_from_slice(
                        format!(
                            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                             filename=\"slow.jsonl\"\r\n\r\n"
                        )
                        .as_bytes(),
                    );
                }
                piece.extend_from_slice(b"{\"text\":\"slow\",\"label\":\"a\"}\n");
            },
            pace: Duration::from_millis(400),
        },
        Duration::from_secs(15),
    )
    .await;
    let answer = answer.expect("an answer to a slow upload");
    assert_eq!(answer.status, 408, "{answer:?}");
    assert_eq!(
        answer.body["error"]["code"], "request_timeout",
        "{answer:?}"
    );
    let took = started.elapsed();
    assert!(
        (Duration::from_secs(3)..Duration::from_secs(6)).contains(&took),
        "answered after {took:?}"
    );
    // Nothing of it is kept.
    let (_, list) = s.get("/v1/files").await;
    assert_eq!(list["data"], serde_json::json!([]));
}
