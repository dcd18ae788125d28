//! A bounded loopback load test: 48 clients calling predict and 16 polling a job, for
//! 30 s (`LOAD_TEST_SECONDS` to change it), against one `hone all`. Every answer must
//! be a 200 — no errors, no shedding (the predict queue admits 64) — and the test
//! prints throughput and latency percentiles for BENCHMARKS.md. Its numbers come from
//! whatever profile built `hone`: run it with `--release` to measure.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::{jsonl, two_class_rows, TestServer};

const PREDICT_CLIENTS: usize = 48;
const POLL_CLIENTS: usize = 16;

struct Stats {
    latencies: Vec<Duration>,
    errors: Vec<String>,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[tokio::test]
async fn predict_and_polling_under_64_concurrent_clients_make_no_errors() {
    let seconds: u64 = std::env::var("LOAD_TEST_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let s = TestServer::start().await;
    let rows = two_class_rows(
        40,
        &["a great film, loved it"],
        &["an awful film, hated it"],
    );
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let job = s
        .train(
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 2, "max_seq_len": 32}}),
            Duration::from_secs(300),
        )
        .await;
    let job_id = job["id"].as_str().expect("id").to_owned();
    let model = job["fine_tuned_model"].as_str().expect("model").to_owned();

    let deadline = Instant::now() + Duration::from_secs(seconds);
    let predict_url = s.url(&format!("/v1/models/{model}/predict"));
    let poll_url = s.url(&format!("/v1/fine_tuning/jobs/{job_id}"));
    let client = s
        .client_builder()
        .pool_max_idle_per_host(PREDICT_CLIENTS + POLL_CLIENTS)
        .build()
        .expect("client");
    let run = |predict: bool, n: usize| {
        let client = client.clone();
        let url = if predict {
            predict_url.clone()
        } else {
            poll_url.clone()
        };
        tokio::spawn(async move {
            let mut stats = Stats {
                latencies: Vec::new(),
                errors: Vec::new(),
            };
            // 1 to 3 inputs: concurrent requests share forward passes on the server,
            // and each must still get exactly its own predictions back.
            let inputs: Vec<String> = (0..1 + n % 3)
                .map(|i| format!("client {n}, input {i}: what a film"))
                .collect();
            let body = json!({ "inputs": inputs });
            while Instant::now() < deadline {
                let started = Instant::now();
                let request = if predict {
                    client.post(&url).json(&body)
                } else {
                    client.get(&url)
                };
                match request.send().await {
                    Ok(r) if r.status().is_success() => {
                        let answer: serde_json::Value = r.json().await.unwrap_or_default();
                        let expected = if predict { inputs.len() } else { 0 };
                        let got = answer["predictions"].as_array().map_or(0, Vec::len);
                        if got == expected {
                            stats.latencies.push(started.elapsed());
                        } else {
                            stats
                                .errors
                                .push(format!("{got} predictions for {expected} inputs"));
                        }
                    }
                    Ok(r) => stats.errors.push(format!("status {}", r.status())),
                    Err(e) => stats.errors.push(e.to_string()),
                }
            }
            stats
        })
    };
    let started = Instant::now();
    let predictors: Vec<_> = (0..PREDICT_CLIENTS).map(|n| run(true, n)).collect();
    let pollers: Vec<_> = (0..POLL_CLIENTS).map(|n| run(false, n)).collect();
    let mut report = Vec::new();
    for (name, handles) in [("predict", predictors), ("poll", pollers)] {
        let mut latencies = Vec::new();
        let mut errors = Vec::new();
        for h in handles {
            let stats = h.await.expect("client task");
            latencies.extend(stats.latencies);
            errors.extend(stats.errors);
        }
        let elapsed = started.elapsed().as_secs_f64();
        assert!(
            errors.is_empty(),
            "{name}: {} errors, e.g. {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
        assert!(!latencies.is_empty(), "{name}: no request completed");
        latencies.sort_unstable();
        report.push(format!(
            "{name}: {} requests in {elapsed:.1} s = {:.1}/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            latencies.len(),
            latencies.len() as f64 / elapsed,
            percentile(&latencies, 50.0).as_secs_f64() * 1e3,
            percentile(&latencies, 99.0).as_secs_f64() * 1e3,
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        ));
    }
    eprintln!(
        "load ({PREDICT_CLIENTS} predict + {POLL_CLIENTS} poll clients, {seconds} s):\n{}",
        report.join("\n")
    );
}
