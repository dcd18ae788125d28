//! A worker killed with SIGKILL mid-training: its lease expires, the other worker
//! rescues the job and resumes it from the last checkpoint (not from scratch), and the
//! job ends with the metrics of an uninterrupted run with the same seed and data.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::process::Child;

use crate::support::{hone_command, jsonl, messages, two_class_rows, TestDb, TestServer};

/// Short enough that the test waits seconds for the rescue; libtorch on one thread in
/// every worker, so both runs add up their floats in the same order.
const ENV: &[(&str, &str)] = &[
    ("HONE_LEASE_SECONDS", "3"),
    ("HONE_POLL_INTERVAL_MS", "100"),
    ("HONE_TRAINING_THREADS", "1"),
    ("HONE_DEVICE", "cpu"),
];

fn close(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-5,
        _ => a == b,
    }
}

async fn metrics(s: &TestServer, id: &str) -> Value {
    let (status, m) = s.get(&format!("/v1/fine_tuning/jobs/{id}/metrics")).await;
    assert_eq!(status, 200, "{m}");
    m
}

#[tokio::test]
async fn a_killed_worker_s_job_resumes_on_another_worker_from_its_checkpoint() {
    let db = TestDb::create().await;
    let url = db.url.clone();
    let data_dir = tempfile::tempdir().expect("tempdir");
    let data_path = data_dir.path().to_owned();
    let s = TestServer::start_command("serve", db, data_dir, ENV).await;
    let mut workers: Vec<Child> = (0..2)
        .map(|_| {
            hone_command("worker", &url, &data_path, ENV)
                .spawn()
                .expect("start a worker")
        })
        .collect();

    let rows = two_class_rows(
        48,
        &["a wonderful film", "great acting", "loved it", "superb"],
        &["a dull mess", "boring plot", "hated it", "awful"],
    );
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let request = json!({
        "base_model": "all-MiniLM-L6-v2", "training_file": file["id"], "seed": 7,
        "method": {"type": "full"},
        "hyperparameters": {"epochs": 4, "batch_size": 8, "max_seq_len": 16}
    });
    let (status, job) = s.post_json("/v1/fine_tuning/jobs", &request).await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();

    // Wait for a checkpoint while the job still runs, then kill whoever holds it.
    let mut conn = PgConnection::connect(&url).await.expect("db");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let (holder, epoch) = loop {
        let (_, checkpoints) = s
            .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
            .await;
        let epoch = checkpoints["data"]
            .as_array()
            .and_then(|c| c.iter().filter_map(|c| c["epoch"].as_u64()).max());
        let (status, holder): (String, Option<String>) =
            sqlx::query_as("SELECT status::text, attempted_by FROM fine_tuning_jobs WHERE id = $1")
                .bind(&id)
                .fetch_one(&mut conn)
                .await
                .expect("job row");
        assert!(
            matches!(status.as_str(), "queued" | "running"),
            "the job must still run at the kill, not be {status}"
        );
        if let (Some(epoch), Some(holder), "running") = (epoch, holder, status.as_str()) {
            break (holder, epoch);
        }
        assert!(tokio::time::Instant::now() < deadline, "no checkpoint came");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(epoch < 4, "the kill must come before the last epoch");
    // Worker ids are host:pid:random.
    let pid: u32 = holder
        .split(':')
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("a worker id with a pid");
    let victim = workers
        .iter()
        .position(|w| w.id() == Some(pid))
        .expect("the holder is one of our workers");
    let mut killed = workers.remove(victim);
    killed.start_kill().expect("SIGKILL");
    let _ = killed.wait().await;

    let done = s.wait_for_job(&id, Duration::from_secs(180)).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2, "{done}");
    let messages = messages(&s, &done).await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("stopped responding; job requeued")),
        "{messages:#?}"
    );
    let resumed = messages
        .iter()
        .find(|m| m.starts_with("Resumed from epoch"))
        .unwrap_or_else(|| panic!("the job started over: {messages:#?}"));
    // The latest checkpoint by the time of the kill, or one the dying worker wrote
    // just after the look.
    let resumed_epoch: u64 = resumed
        .trim_start_matches("Resumed from epoch ")
        .split(' ')
        .next()
        .and_then(|e| e.parse().ok())
        .expect("an epoch");
    assert!(resumed_epoch >= epoch, "{resumed} (saw epoch {epoch})");
    assert!(resumed.ends_with("(checkpoint of attempt 1)"), "{resumed}");

    // The same job again, uninterrupted, on the worker left.
    let (status, again) = s.post_json("/v1/fine_tuning/jobs", &request).await;
    assert_eq!(status, 200, "{again}");
    let again_id = again["id"].as_str().expect("id").to_owned();
    let straight = s.wait_for_job(&again_id, Duration::from_secs(180)).await;
    assert_eq!(straight["status"], "succeeded", "{straight}");
    assert_eq!(straight["attempt"], 1);

    let (resumed_m, straight_m) = (metrics(&s, &id).await, metrics(&s, &again_id).await);
    let (a, b) = (
        resumed_m["epochs"].as_array().expect("epochs"),
        straight_m["epochs"].as_array().expect("epochs"),
    );
    assert_eq!(
        a.len(),
        4,
        "the resumed job's curves cover every epoch: {a:?}"
    );
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        for key in ["epoch", "train_loss"] {
            assert!(close(&x[key], &y[key]), "{key}: {x} vs {y}");
        }
        for key in ["loss", "accuracy", "macro_f1"] {
            assert!(
                close(&x["validation"][key], &y["validation"][key]),
                "validation {key}: {x} vs {y}"
            );
        }
    }
    let (a, b) = (
        resumed_m["steps"].as_array().expect("steps"),
        straight_m["steps"].as_array().expect("steps"),
    );
    assert_eq!(a.len(), b.len(), "the step curve has no gap or repeat");
    for (x, y) in a.iter().zip(b) {
        assert!(close(&x["step"], &y["step"]) && close(&x["train_loss"], &y["train_loss"]));
    }
    for key in ["train_loss", "best_epoch", "epochs_run"] {
        assert!(
            close(&done["result"][key], &straight["result"][key]),
            "{key}: {} vs {}",
            done["result"],
            straight["result"]
        );
    }
    for key in ["loss", "accuracy", "macro_f1"] {
        assert!(close(
            &done["result"]["validation"][key],
            &straight["result"]["validation"][key]
        ));
    }
}
