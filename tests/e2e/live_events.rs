//! Live job events over SSE, read with a parser written elsewhere
//! (`eventsource-stream`): a stream follows a job from queued to succeeded with every
//! epoch's metrics, ends by itself after the terminal event, and a reconnect with
//! `Last-Event-ID` misses nothing and repeats nothing; the page and the stream carry the
//! same events; bad resumption points and paging a stream are refused by name; open
//! streams are capped per project and in all, and a closed one gives its place back.

use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use serde_json::{json, Value};

use crate::support::{jsonl, two_class_rows, TestDb, TestServer};

const EPOCHS: u64 = 3;

/// One SSE message as the client parsed it: its `id:` and its `data:` as JSON.
#[derive(Debug)]
struct Message {
    id: String,
    data: Value,
}

async fn stream_request(
    s: &TestServer,
    key: Option<&str>,
    job: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = s
        .client
        .get(s.url(&format!("/v1/fine_tuning/jobs/{job}/events?stream=true")));
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id);
    }
    request.send().await.expect("GET events?stream=true")
}

async fn open(
    s: &TestServer,
    job: &str,
    last_event_id: Option<&str>,
) -> impl Stream<Item = Message> + Unpin {
    let response = stream_request(s, None, job, last_event_id).await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    Box::pin(response.bytes_stream().eventsource().map(|event| {
        let event = event.expect("a well-formed SSE message");
        Message {
            id: event.id,
            data: serde_json::from_str(&event.data).expect("data is JSON"),
        }
    }))
}

/// Every message until the server ends the stream; fails past `limit`.
async fn until_end(
    stream: &mut (impl Stream<Item = Message> + Unpin),
    limit: Duration,
) -> Vec<Message> {
    tokio::time::timeout(limit, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends after the job's terminal event")
}

async fn create_job(s: &TestServer) -> String {
    let rows = two_class_rows(
        40,
        &["a great film", "loved it"],
        &["an awful film", "hated it"],
    );
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": EPOCHS, "max_seq_len": 16}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    job["id"].as_str().expect("id").to_owned()
}

#[tokio::test]
async fn a_stream_follows_a_job_to_its_end_and_resumes_after_the_last_event_id() {
    let s = TestServer::start_with(&[("HONE_DEVICE", "cpu")]).await;
    let job = create_job(&s).await;

    // The first two messages, then the client goes away mid-job.
    let mut first = open(&s, &job, None).await;
    let mut streamed = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(60), first.next())
            .await
            .expect("an event within a minute")
            .expect("the stream goes on");
        streamed.push(m);
    }
    drop(first);
    assert_eq!(streamed[0].data["message"], "Job created and queued");

    // Resumed after the last id received: the rest, to the end.
    let last = streamed[1].id.clone();
    let mut rest = open(&s, &job, Some(&last)).await;
    streamed.extend(until_end(&mut rest, Duration::from_secs(300)).await);

    let (status, finished) = s.get(&format!("/v1/fine_tuning/jobs/{job}")).await;
    assert_eq!(status, 200);
    assert_eq!(finished["status"], "succeeded", "{finished}");

    // Nothing lost or repeated: the stream is the page, oldest first, message for
    // message (each `id:` is its event's id, each `data:` the page's item).
    let (status, page) = s
        .get(&format!("/v1/fine_tuning/jobs/{job}/events?limit=100"))
        .await;
    assert_eq!(status, 200, "{page}");
    let mut listed = page["data"].as_array().expect("data").clone();
    listed.reverse();
    let ids: Vec<&str> = streamed.iter().map(|m| m.id.as_str()).collect();
    let listed_ids: Vec<&str> = listed
        .iter()
        .map(|e| e["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, listed_ids);
    for (m, item) in streamed.iter().zip(&listed) {
        assert_eq!(&m.data, item);
    }

    // What a watcher wants to see: every epoch's metrics, progress with an ETA, the
    // terminal event last.
    for epoch in 1..=EPOCHS {
        assert!(
            streamed.iter().any(|m| m.data["type"] == "metrics"
                && m.data["data"]["epoch"] == epoch
                && m.data["data"].get("train_loss").is_some()
                && m.data["data"].get("step").is_none()),
            "epoch {epoch}'s metrics are streamed"
        );
    }
    assert!(streamed.iter().any(|m| m.data["data"].get("step").is_some()
        && m.data["data"].get("eta_seconds").is_some()
        && m.data["data"]["total_epochs"] == EPOCHS));
    let end = &streamed.last().expect("events").data["message"];
    assert!(
        end.as_str().is_some_and(|m| m.starts_with("Job succeeded")),
        "{end}"
    );

    // A finished job's stream gives everything and ends at once.
    let mut again = open(&s, &job, None).await;
    let replay = until_end(&mut again, Duration::from_secs(30)).await;
    assert_eq!(replay.len(), streamed.len());
    // Resuming after the last event: nothing more, and the end.
    let last = streamed.last().expect("events").id.clone();
    let mut after_end = open(&s, &job, Some(&last)).await;
    assert!(until_end(&mut after_end, Duration::from_secs(30))
        .await
        .is_empty());

    // Refused by name: an id that is not this job's event, and paging a stream.
    let response = stream_request(&s, None, &job, Some("ftevent-0000")).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["error"]["param"], "Last-Event-ID", "{body}");
    let (status, body) = s
        .get(&format!(
            "/v1/fine_tuning/jobs/{job}/events?stream=true&limit=5"
        ))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "limit", "{body}");
}

#[tokio::test]
async fn open_streams_are_capped_per_project_and_in_all() {
    // The API alone: nothing trains, so the jobs stay queued and their streams open.
    let s = TestServer::start_command(
        "serve",
        TestDb::create().await,
        tempfile::tempdir().expect("tempdir"),
        &[
            ("HONE_MAX_EVENT_STREAMS_PER_PROJECT", "2"),
            ("HONE_MAX_EVENT_STREAMS", "3"),
        ],
    )
    .await;
    let job = create_job(&s).await;
    let mut mine = vec![
        stream_request(&s, None, &job, None).await,
        stream_request(&s, None, &job, None).await,
    ];
    assert!(mine.iter().all(|r| r.status() == 200));
    let refused = stream_request(&s, None, &job, None).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_streams", "{body}");

    // Another project still gets a place, up to the server's cap.
    let other = s.create_key("other").await;
    let rows = two_class_rows(20, &["good"], &["bad"]);
    let (status, file) = s.upload_as(&other, "o.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let their_job: Value = s
        .client
        .post(s.url("/v1/fine_tuning/jobs"))
        .bearer_auth(&other)
        .json(&json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"]}))
        .send()
        .await
        .expect("POST")
        .json()
        .await
        .expect("JSON");
    let their_job = their_job["id"].as_str().expect("id");
    let theirs = stream_request(&s, Some(&other), their_job, None).await;
    assert_eq!(theirs.status(), 200);
    let full = stream_request(&s, Some(&other), their_job, None).await;
    assert_eq!(full.status(), 429, "the server's cap of 3 is reached");

    // A client that goes away gives its place back (the server notices at its next
    // write, a keep-alive at the latest).
    drop(mine.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let retry = stream_request(&s, None, &job, None).await;
        if retry.status() == 200 {
            break;
        }
        assert_eq!(retry.status(), 429);
        assert!(
            tokio::time::Instant::now() < deadline,
            "a closed stream's place is given back"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
