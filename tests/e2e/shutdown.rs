//! SIGTERM: the API stops taking connections but finishes the requests in flight, and
//! the worker stops its job at the next step and hands it back to the queue (not
//! `failed`), for a later worker.

use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, PgConnection};

use crate::support::{jsonl, two_class_rows, TestServer};

#[tokio::test]
async fn sigterm_finishes_requests_in_flight_and_requeues_the_running_job() {
    let mut s = TestServer::start().await;
    let rows = two_class_rows(
        160,
        &["a wonderful film", "great acting", "loved it", "superb"],
        &["a dull mess", "boring plot", "hated it", "awful"],
    );
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "hyperparameters": {"epochs": 50, "batch_size": 8, "max_seq_len": 16}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, j) = s.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
        if j["progress"]["step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never started: {j}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A request that takes seconds (encoders over the file), in flight at SIGTERM.
    let in_flight = {
        let client = s.client.clone();
        let url = s.url("/v1/transferability");
        let body = json!({"training_file": file["id"], "base_models": ["all-MiniLM-L6-v2"]});
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exit = s.terminate(Duration::from_secs(120)).await;
    assert!(exit.success(), "hone exited with {exit}");
    let answer = in_flight
        .await
        .expect("request task")
        .expect("the in-flight request was answered");
    assert_eq!(answer.status().as_u16(), 200, "{:?}", answer.text().await);

    // New connections are refused once it is down.
    assert!(s.client.get(s.url("/healthz")).send().await.is_err());

    let mut db = PgConnection::connect(s.database_url()).await.expect("db");
    let (status, cancel_requested): (String, bool) =
        sqlx::query_as("SELECT status::text, cancel_requested FROM fine_tuning_jobs WHERE id = $1")
            .bind(&id)
            .fetch_one(&mut db)
            .await
            .expect("job row");
    assert_eq!(status, "queued", "the job must wait for another worker");
    assert!(!cancel_requested);
}
