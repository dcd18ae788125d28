//! Text pairs through the whole path: a pair file, a job, predictions on pairs.

use std::time::Duration;

use serde_json::json;

use crate::sentiment::split;
use crate::support::TestServer;

#[tokio::test]
async fn a_pair_model_trains_and_predicts_on_pairs_only() {
    // "Do these two reviews agree?": real snippets, labelled by whether their
    // Rotten Tomatoes verdicts are the same.
    let (rows, _) = split(11);
    let mut lines = String::new();
    for (a, b) in rows.iter().zip(rows.iter().skip(1)).take(60) {
        let label = if a.1 == b.1 { "agree" } else { "disagree" };
        lines.push_str(&json!({"text": a.0, "text_pair": b.0, "label": label}).to_string());
        lines.push('\n');
    }
    let s = TestServer::start().await;
    let (status, file) = s.upload("pairs.jsonl", lines.into_bytes()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["examples"], 60);
    assert_eq!(file["task_type"], "classification", "{file}");
    assert_eq!(file["text_pairs"], true, "{file}");

    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": file["id"],
                "method": {"type": "feature_extraction"},
                "hyperparameters": {"epochs": 2, "max_seq_len": 64},
                "seed": 3,
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job = s
        .wait_for_job(job["id"].as_str().expect("id"), Duration::from_secs(600))
        .await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().expect("model");
    let predict = format!("/v1/models/{model}/predict");

    let (status, out) = s
        .post_json(
            &predict,
            &json!({"inputs": [
                {"text": "A triumph.", "text_pair": "A masterpiece."},
                {"text": "A triumph.", "text_pair": "Dull and lifeless."},
            ]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let predictions = out["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2);
    for p in predictions {
        let sum: f64 = ["agree", "disagree"]
            .iter()
            .map(|l| p["scores"][l].as_f64().expect("score"))
            .sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p}");
    }

    // A pair model needs pairs; inputs may not mix the two kinds.
    let (status, err) = s
        .post_json(&predict, &json!({"inputs": ["A triumph."]}))
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("text_pair"),
        "{err}"
    );
    let (status, err) = s
        .post_json(
            &predict,
            &json!({"inputs": [{"text": "a", "text_pair": "b"}, "c"]}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "inputs[1]", "{err}");
}

#[tokio::test]
async fn jobs_refuse_task_types_the_trainer_does_not_train_yet() {
    let s = TestServer::start().await;
    let mut lines = String::new();
    for (i, labels) in [["a", "b"], ["b", "c"], ["a", "c"]].iter().enumerate() {
        lines.push_str(&json!({"text": format!("text {i}"), "labels": labels}).to_string());
        lines.push('\n');
    }
    let (status, file) = s.upload("tags.jsonl", lines.into_bytes()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["task_type"], "multi_label", "{file}");
    let (status, err) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"]}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "training_file", "{err}");
    assert_eq!(err["error"]["code"], "unsupported_task", "{err}");
}
