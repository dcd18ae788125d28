//! A model served in int8 (`hyperparameters.quantization`): the job reports its
//! validation metrics in fp32 and in int8, and predict serves the int8 model, whose
//! probabilities are close to, but not the same as, those of the same job trained in
//! fp32 (same seed, same weights).

use std::time::Duration;

use serde_json::{json, Value};

use crate::sentiment::{held_out_accuracy, split};
use crate::support::{jsonl, TestServer};

async fn train(s: &TestServer, file: &Value, quantization: &str) -> Value {
    s.train(
        &json!({
            "base_model": "all-MiniLM-L6-v2",
            "training_file": file["id"],
            "method": {"type": "feature_extraction"},
            "hyperparameters": {"epochs": 10, "quantization": quantization},
            "seed": 7,
        }),
        Duration::from_secs(600),
    )
    .await
}

async fn probabilities(s: &TestServer, model: &str, texts: &[&str]) -> Vec<f64> {
    let (status, out) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({ "inputs": texts }),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    out["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["scores"]["fresh"].as_f64().expect("a score"))
        .collect()
}

#[tokio::test]
async fn an_int8_model_reports_its_change_and_serves_close_to_fp32() {
    let (train_rows, test) = split(2027);
    let s = TestServer::start().await;
    let rows: Vec<(&str, &str)> = train_rows
        .iter()
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, file) = s.upload("rt.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");

    let int8 = train(&s, &file, "int8").await;
    assert_eq!(int8["hyperparameters"]["quantization"], "int8", "{int8}");
    let report = &int8["result"]["quantization"];
    assert_eq!(report["type"], "int8", "{int8}");
    let (fp32_acc, int8_acc) = (
        report["validation_fp32"]["accuracy"]
            .as_f64()
            .expect("fp32"),
        report["validation_quantized"]["accuracy"]
            .as_f64()
            .expect("int8"),
    );
    // The default split holds out 26 of the 128 examples.
    assert_eq!(report["validation_quantized"]["examples"], 26, "{report}");
    // The fp32 figure is the published epoch's (to one example: the training loop
    // scored cached features, this the whole model on the texts).
    let trained = int8["result"]["validation"]["accuracy"]
        .as_f64()
        .expect("trained");
    assert!((fp32_acc - trained).abs() < 0.04, "{int8}");
    assert!((fp32_acc - int8_acc).abs() <= 0.1, "{report}");
    let model = int8["fine_tuned_model"].as_str().expect("model");
    let (status, listed) = s.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["metrics"]["quantization"], *report, "{listed}");
    let accuracy = held_out_accuracy(&s, model, &test).await;
    assert!(accuracy >= 0.6, "int8 held-out accuracy {accuracy:.3}");

    // The same job in fp32 trains the same weights; its model serves them unquantized.
    let fp32 = train(&s, &file, "none").await;
    assert!(fp32["result"].get("quantization").is_none(), "{fp32}");
    let texts: Vec<&str> = test.iter().take(16).map(|r| r.0.as_str()).collect();
    let a = probabilities(
        &s,
        fp32["fine_tuned_model"].as_str().expect("model"),
        &texts,
    )
    .await;
    let b = probabilities(&s, model, &texts).await;
    let largest = a
        .iter()
        .zip(&b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(largest > 0.0, "the int8 model serves in int8");
    assert!(largest < 0.1, "probabilities moved by {largest}");
}
