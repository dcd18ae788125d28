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

    let job = s
        .train(
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": file["id"],
                "method": {"type": "feature_extraction"},
                "hyperparameters": {"epochs": 2, "max_seq_len": 64},
                "seed": 3,
            }),
            Duration::from_secs(600),
        )
        .await;
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
async fn multi_label_jobs_train_and_predict_label_sets() {
    let s = TestServer::start().await;
    // Genre tags that words in the text carry; a line may have both, one or none.
    let funny = ["hilarious", "a comedy", "laugh out loud", "witty jokes"];
    let scary = [
        "terrifying",
        "a horror film",
        "gory and creepy",
        "nightmares",
    ];
    let neutral = [
        "about a family",
        "set in Boston",
        "two hours long",
        "in colour",
    ];
    let mut lines = String::new();
    for i in 0..48 {
        let (f, h) = (i % 4 == 1 || i % 4 == 3, i % 4 >= 2);
        let mut parts = vec![neutral[i % 4]];
        let mut labels = Vec::new();
        if f {
            parts.push(funny[(i / 4) % 4]);
            labels.push("comedy");
        }
        if h {
            parts.push(scary[(i / 3) % 4]);
            labels.push("horror");
        }
        let text = format!("A movie {}.", parts.join(", "));
        lines.push_str(&json!({"text": text, "labels": labels}).to_string());
        lines.push('\n');
    }
    let (status, file) = s.upload("tags.jsonl", lines.clone().into_bytes()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["task_type"], "multi_label", "{file}");
    assert_eq!(file["label_counts"], json!({"comedy": 24, "horror": 24}));

    // Stating another task type refuses the file at its first line, and keeps nothing.
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .text("task_type", "classification")
        .part(
            "file",
            reqwest::multipart::Part::bytes(lines.into_bytes()).file_name("tags.jsonl"),
        );
    let (status, err) = s.post_form("/v1/files", form).await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1")),
        "{err}"
    );

    let job = s
        .train(
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 40, "learning_rate": 0.01,
                                        "validation_split": 0.25}, "seed": 3}),
            Duration::from_secs(600),
        )
        .await;
    let report = &job["result"]["evaluation"]["multi_label"];
    assert_eq!(report["examples"], 12, "{report}");
    assert!(
        report["micro_f1"].as_f64().is_some_and(|f| f >= 0.8),
        "{report}"
    );
    assert!(job["result"]["evaluation"]["validation"].is_null());

    let model = job["fine_tuned_model"].as_str().expect("model");
    let (status, out) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": ["A movie in colour, a comedy, a horror film.",
                               "A movie about a family."]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let p = &out["predictions"];
    assert_eq!(p[0]["labels"], json!(["comedy", "horror"]), "{out}");
    assert_eq!(p[1]["labels"], json!([]), "{out}");
    let threshold = p[0]["threshold"].as_f64().expect("threshold");
    assert_eq!(Some(threshold), report["threshold"].as_f64());
    assert!(
        p[0]["scores"]["comedy"].as_f64() >= Some(threshold),
        "{out}"
    );
}
