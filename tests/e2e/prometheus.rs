//! `/metrics` end to end, read with the Prometheus project's own parser
//! (`prometheus_client`, from PyPI): it asks for an API key unless `metrics_public` is
//! set, parses, describes each family, and its counters and histograms move as the
//! test drives requests, a job and predictions.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use crate::support::{jsonl, repo_dir, two_class_rows, TestServer};

/// The families of `text`, as the parser read them.
async fn parse(text: &str) -> Vec<Value> {
    let python = repo_dir().join(".deps/prometheus/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run scripts/setup",
        python.display()
    );
    let mut child = tokio::process::Command::new(python)
        .arg(repo_dir().join("tests/e2e/parse_metrics.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run the parser");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let out = child.wait_with_output().await.expect("parser");
    assert!(
        out.status.success(),
        "prometheus_client cannot parse /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `/metrics` with the server's key, parsed.
pub(crate) async fn scrape(s: &TestServer) -> Vec<Value> {
    let response = s.client.get(s.url("/metrics")).send().await.expect("GET");
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().expect("ascii");
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&response.text().await.expect("body")).await
}

/// The value of the sample `name` whose labels include `labels` (0 when absent: a
/// counter not yet incremented has no series).
pub(crate) fn sample(families: &[Value], name: &str, labels: &[(&str, &str)]) -> f64 {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().into_iter().flatten())
        .filter(|s| s["name"] == name)
        .filter(|s| labels.iter().all(|(k, v)| s["labels"][*k] == *v))
        .map(|s| s["value"].as_f64().expect("number"))
        .sum()
}

fn family<'a>(families: &'a [Value], name: &str) -> &'a Value {
    families
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no family {name}"))
}

#[tokio::test]
async fn metrics_parse_describe_themselves_and_move_with_the_work() {
    let s = TestServer::start_with(&[("HONE_DEVICE", "cpu")]).await;

    // Not public by default: no key, 401 in the error envelope.
    let anonymous = reqwest::get(s.url("/metrics")).await.expect("GET");
    assert_eq!(anonymous.status(), 401);
    let body: Value = anonymous.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "missing_api_key", "{body}");

    let files_ok = [("route", "/v1/files"), ("method", "GET"), ("status", "200")];
    let before = scrape(&s).await;
    for _ in 0..3 {
        let (status, _) = s.get("/v1/files").await;
        assert_eq!(status, 200);
    }
    let (status, _) = s.get("/v1/files/file-nope").await;
    assert_eq!(status, 404);

    let rows = two_class_rows(40, &["a great film"], &["an awful film"]);
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let job = s
        .train(
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 2, "max_seq_len": 16}}),
            Duration::from_secs(300),
        )
        .await;
    let model = job["fine_tuned_model"].as_str().expect("model");
    for _ in 0..2 {
        let (status, out) = s
            .post_json(
                &format!("/v1/models/{model}/predict"),
                &json!({"inputs": ["what a great film", "awful"]}),
            )
            .await;
        assert_eq!(status, 200, "{out}");
    }

    let after = scrape(&s).await;
    let name = "hone_http_requests_total";
    assert_eq!(
        sample(&after, name, &files_ok) - sample(&before, name, &files_ok),
        3.0,
        "three GET /v1/files, counted by route template and status"
    );
    assert_eq!(
        sample(
            &after,
            name,
            &[("route", "/v1/files/{file_id}"), ("status", "404")]
        ),
        1.0,
        "the route's template, never the id"
    );
    assert!(
        sample(
            &after,
            "hone_http_request_duration_seconds_count",
            &files_ok[..2]
        ) >= 3.0
    );

    // The job: queued, ran, succeeded; its examples counted per epoch.
    assert_eq!(sample(&after, "hone_jobs", &[("status", "succeeded")]), 1.0);
    assert_eq!(sample(&after, "hone_jobs", &[("status", "queued")]), 0.0);
    let attempt = [
        ("outcome", "succeeded"),
        ("method", "feature_extraction"),
        ("modality", "text"),
    ];
    assert_eq!(sample(&after, "hone_job_attempts_total", &attempt), 1.0);
    assert_eq!(
        sample(&after, "hone_job_attempt_seconds_count", &attempt),
        1.0
    );
    assert_eq!(sample(&after, "hone_job_queued_seconds_count", &[]), 1.0);
    let examples = sample(&after, "hone_train_examples_total", &[("modality", "text")]);
    assert!(
        examples >= 2.0 * 20.0,
        "two epochs of the training split: {examples}"
    );

    // Predictions: one load (a miss), then a hit; batches and their times.
    assert_eq!(
        sample(
            &after,
            "hone_model_cache_requests_total",
            &[("result", "miss")]
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "hone_model_cache_requests_total",
            &[("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        sample(&after, "hone_model_loads_total", &[("outcome", "ok")]),
        1.0
    );
    assert_eq!(sample(&after, "hone_predict_batch_inputs_count", &[]), 2.0);
    assert_eq!(sample(&after, "hone_predict_batch_inputs_sum", &[]), 4.0);
    assert_eq!(sample(&after, "hone_predict_queue_seconds_count", &[]), 2.0);
    assert_eq!(
        sample(&after, "hone_predict_inference_seconds_count", &[]),
        2.0
    );
    assert!(sample(&after, "hone_db_pool_connections", &[("state", "idle")]) >= 0.0);
    family(&after, "hone_db_pool_connections");

    // Types and HELP as Prometheus conventions want them.
    assert_eq!(family(&after, "hone_http_requests")["type"], "counter");
    assert_eq!(
        family(&after, "hone_http_request_duration_seconds")["type"],
        "histogram"
    );
    assert_eq!(family(&after, "hone_jobs")["type"], "gauge");
    for f in &after {
        assert!(
            f["help"].as_str().is_some_and(|h| !h.is_empty()),
            "{} has a HELP line",
            f["name"]
        );
    }
}

#[tokio::test]
async fn metrics_public_needs_no_key() {
    let s = TestServer::start_with(&[("HONE_METRICS_PUBLIC", "true")]).await;
    let anonymous = reqwest::get(s.url("/metrics")).await.expect("GET");
    assert_eq!(anonymous.status(), 200);
    let families = parse(&anonymous.text().await.expect("body")).await;
    family(&families, "hone_jobs");
}
