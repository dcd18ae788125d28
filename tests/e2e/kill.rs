//! A worker killed with SIGKILL mid-training: its lease expires, the other worker
//! rescues the job and resumes it from the last checkpoint (not from scratch), and the
//! job ends with the metrics of an uninterrupted run with the same seed and data.
//!
//! Twice: on one machine (API and workers sharing a data directory, artifacts on it),
//! and as on three machines (API and two workers each with a data directory of its
//! own, sharing only Postgres and an S3-compatible server), where the resumed job's
//! model is then served by the API from the object store.

use std::time::Duration;

use serde_json::{json, Value};
use sqlx::{Connection, PgConnection};
use tokio::process::Child;

use crate::s3_server::S3Server;
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

/// The API (`hone serve`) and two `hone worker`s on one database.
struct Cluster {
    s: TestServer,
    url: String,
    workers: Vec<Child>,
    /// The workers' own data directories, when they have their own.
    _worker_dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    /// With `s3`, every process has its own data directory and the artifacts are in
    /// the S3 server; without, they share the API's data directory and keep the
    /// artifacts there.
    async fn start(s3: Option<&S3Server>) -> Cluster {
        let s3_env = s3.map(|s3| s3.env("cluster")).unwrap_or_default();
        let mut env: Vec<(&str, &str)> = ENV.to_vec();
        env.extend(s3_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let db = TestDb::create().await;
        let url = db.url.clone();
        let s =
            TestServer::start_command("serve", db, tempfile::tempdir().expect("tmp"), &env).await;
        let worker_dirs: Vec<tempfile::TempDir> = match s3 {
            Some(_) => (0..2).map(|_| tempfile::tempdir().expect("tmp")).collect(),
            None => Vec::new(),
        };
        let workers = (0..2)
            .map(|i| {
                let dir = worker_dirs.get(i).map_or(s.data_dir.path(), |d| d.path());
                hone_command("worker", &url, dir, &env)
                    .spawn()
                    .expect("start a worker")
            })
            .collect();
        Cluster {
            s,
            url,
            workers,
            _worker_dirs: worker_dirs,
        }
    }
}

#[tokio::test]
async fn a_killed_worker_s_job_resumes_on_another_worker_from_its_checkpoint() {
    let mut cluster = Cluster::start(None).await;
    kill_resume_and_compare(&mut cluster).await;
}

#[tokio::test]
async fn on_machines_sharing_only_postgres_and_s3_a_killed_worker_s_job_resumes_on_another() {
    let s3 = S3Server::start().await;
    let mut cluster = Cluster::start(Some(&s3)).await;
    let model = kill_resume_and_compare(&mut cluster).await;
    let s = &cluster.s;

    // Every artifact is in the object store, none on the API's disk.
    let keys = s3.keys("cluster/").await;
    for kind in ["files/", "models/", "checkpoints/"] {
        assert!(
            keys.iter()
                .any(|k| k.starts_with(&format!("cluster/{kind}"))),
            "no {kind} in {keys:#?}"
        );
    }
    assert!(!s.data_dir.path().join("artifacts").exists());
    // The API serves the model a worker on another machine published.
    let (status, out) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": ["a wonderful film", "a dull mess"]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let labels: Vec<&str> = out["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .filter_map(|p| p["label"].as_str())
        .collect();
    assert_eq!(labels.len(), 2, "{out}");
    let (status, ready) = s.get("/readyz").await;
    assert_eq!(status, 200, "{ready}");
}

/// Trains a job, SIGKILLs the worker holding it after its first checkpoint, checks the
/// other worker resumed it to the result of an uninterrupted run; the resumed job's
/// model id.
async fn kill_resume_and_compare(cluster: &mut Cluster) -> String {
    let (s, url, workers) = (&cluster.s, &cluster.url, &mut cluster.workers);

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
    let mut conn = PgConnection::connect(url).await.expect("db");
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
    let messages = messages(s, &done).await;
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

    let (resumed_m, straight_m) = (metrics(s, &id).await, metrics(s, &again_id).await);
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
    done["fine_tuned_model"]
        .as_str()
        .expect("the job published a model")
        .to_owned()
}
