//! Every transfer strategy on real data (Rotten Tomatoes snippets) with the real
//! all-MiniLM-L6-v2, through the API: accuracy on held-out snippets, the evaluation and
//! data reports, the transferability estimate, the feature cache and `auto`'s choice.

use std::time::Duration;

use serde_json::{json, Value};

use crate::sentiment::{held_out_accuracy, split};
use crate::support::{jsonl, messages, TestServer};

async fn train(s: &TestServer, file: &Value, method: Value, hyperparameters: Value) -> Value {
    s.train(
        &json!({
            "base_model": "all-MiniLM-L6-v2",
            "training_file": file["id"],
            "method": method,
            "hyperparameters": hyperparameters,
            "seed": 7,
        }),
        Duration::from_secs(1200),
    )
    .await
}

#[tokio::test]
async fn every_strategy_transfers_minilm_to_rotten_tomatoes() {
    let (train_rows, test) = split(2027);
    let s = TestServer::start().await;
    let rows: Vec<(&str, &str)> = train_rows
        .iter()
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, file) = s.upload("rt.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");

    // Feature extraction: only a head trains, on features computed once and cached.
    let fe = train(
        &s,
        &file,
        json!({"type": "feature_extraction"}),
        json!({"epochs": 20, "early_stopping_patience": 4, "early_stopping_metric": "macro_f1"}),
    )
    .await;
    let fe_accuracy =
        held_out_accuracy(&s, fe["fine_tuned_model"].as_str().expect("model"), &test).await;
    eprintln!("feature_extraction: held-out accuracy {fe_accuracy:.3}");
    assert!(
        fe_accuracy >= 0.6,
        "feature_extraction accuracy {fe_accuracy:.3}"
    );
    let result = &fe["result"];
    // The default split held out 20% of the 128 examples, stratified.
    assert_eq!(result["trained_examples"], 102, "{result}");
    let evaluation = &result["evaluation"]["validation"];
    assert_eq!(evaluation["examples"], 26, "{evaluation}");
    assert_eq!(
        evaluation["confusion_matrix"].as_array().map(Vec::len),
        Some(2)
    );
    assert_eq!(evaluation["per_class"][0]["label"], "fresh");
    assert!(result["evaluation"]["generalization"]["gap"].is_number());
    let best = result["best_epoch"].as_u64().expect("best epoch");
    assert!((1..=20).contains(&best), "{result}");
    let transfer = &result["transferability"];
    assert_eq!(transfer["metric"], "logme");
    assert!(
        transfer["score"].as_f64().is_some_and(f64::is_finite),
        "{transfer}"
    );
    assert!(
        transfer["random_init_score"]
            .as_f64()
            .is_some_and(f64::is_finite),
        "{transfer}"
    );
    // 102 examples against 384 dimensions: flagged as a weak hint, with a warning.
    assert_eq!(transfer["reliable"], false, "{transfer}");
    let report = &result["data_report"];
    assert_eq!(report["training_examples"], 102, "{report}");
    assert_eq!(report["validation_examples"], 26, "{report}");
    assert!(report["truncation"]["rate"].is_number(), "{report}");
    let fe_messages = messages(&s, &fe).await;
    assert!(
        fe_messages.iter().any(|m| m.contains("LogME")),
        "{fe_messages:#?}"
    );
    assert!(
        fe_messages.iter().any(|m| m.contains("weak hint")),
        "{fe_messages:#?}"
    );
    let (status, metrics) = s
        .get(&format!(
            "/v1/fine_tuning/jobs/{}/metrics",
            fe["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200, "{metrics}");
    let epochs = metrics["epochs"].as_array().expect("epochs");
    assert_eq!(
        epochs.len() as u64,
        result["epochs_run"].as_u64().expect("run")
    );
    assert!(epochs[0]["validation"]["accuracy"].is_number(), "{metrics}");
    assert_eq!(
        metrics["steps"].as_array().map(Vec::len),
        Some(epochs.len() * 7), // ceil(102 / 16) steps per epoch
    );
    assert_eq!(metrics["evaluation"], result["evaluation"]);

    // The same data and base model again: the features come from the cache. With a
    // final fit, the published head trained on the validation rows too.
    let again = train(
        &s,
        &file,
        json!({"type": "feature_extraction"}),
        json!({"epochs": 2, "refit_on_validation": true}),
    )
    .await;
    let again_messages = messages(&s, &again).await;
    assert!(
        again_messages.iter().any(|m| m.contains("cached features")),
        "{again_messages:#?}"
    );
    assert_eq!(again["result"]["trained_examples"], 128, "{again}");
    assert_eq!(again["result"]["evaluation"]["validation"]["examples"], 26);
    assert!(
        again_messages
            .iter()
            .any(|m| m.starts_with("Final fit") && m.contains("on 128 training and validation")),
        "{again_messages:#?}"
    );
    assert!(
        !fe_messages.iter().any(|m| m.contains("cached features")),
        "the first job cannot have hit the cache"
    );

    // An AdamW head on the default epochs: 10, raised to the 15 that make at least
    // 100 steps of ceil(102 / 16) = 7; the job shows the count it trains.
    let sized = train(
        &s,
        &file,
        json!({"type": "feature_extraction"}),
        json!({"learning_rate": 1e-3}),
    )
    .await;
    assert_eq!(sized["hyperparameters"]["epochs"], 15, "{sized}");
    assert_eq!(sized["result"]["epochs_run"], 15, "{sized}");
    let sized_messages = messages(&s, &sized).await;
    assert!(
        sized_messages.iter().any(|m| m.contains("for 15 epochs")),
        "{sized_messages:#?}"
    );

    // Partial: the bottom half frozen.
    let partial = train(
        &s,
        &file,
        json!({"type": "partial", "frozen_layers": 3}),
        json!({"epochs": 4, "layer_lr_decay": 0.9}),
    )
    .await;
    assert_eq!(
        partial["method"],
        json!({"type": "partial", "frozen_layers": 3})
    );
    let partial_accuracy = held_out_accuracy(
        &s,
        partial["fine_tuned_model"].as_str().expect("model"),
        &test,
    )
    .await;
    eprintln!("partial: held-out accuracy {partial_accuracy:.3}");
    assert!(
        partial_accuracy >= 0.6,
        "partial accuracy {partial_accuracy:.3}"
    );

    // Auto: the server chooses, says why, and records it on the job.
    let auto = train(&s, &file, json!({"type": "auto"}), json!({})).await;
    let chosen = &auto["method"]["chosen"];
    assert!(
        matches!(
            chosen["type"].as_str(),
            Some("partial" | "feature_extraction" | "full")
        ),
        "{auto}"
    );
    let reason = chosen["reason"].as_str().expect("reason");
    assert!(reason.contains("102 training examples"), "{reason}");
    // By trial: the head alone, partial with 3 of 6 layers frozen, full, each scored
    // on the validation split and timed; the events tell each trial.
    let candidates = chosen["candidates"].as_array().expect("candidates");
    let tried: Vec<(&str, Option<u64>)> = candidates
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap_or(""),
                c["frozen_layers"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        tried,
        [
            ("feature_extraction", None),
            ("partial", Some(3)),
            ("full", None)
        ],
        "{chosen}"
    );
    for c in candidates {
        assert!(
            c["validation_macro_f1"].as_f64().is_some() && c["seconds"].as_f64().is_some(),
            "{c}"
        );
    }
    assert!(reason.contains("by trial"), "{reason}");
    let auto_messages = messages(&s, &auto).await;
    assert!(
        auto_messages.iter().any(|m| m.starts_with("auto chose")),
        "{auto_messages:#?}"
    );
    assert_eq!(
        auto_messages
            .iter()
            .filter(|m| m.starts_with("auto tried"))
            .count(),
        3,
        "{auto_messages:#?}"
    );
    eprintln!(
        "auto: {}\ncandidates: {}",
        chosen["reason"], chosen["candidates"]
    );
    let auto_accuracy =
        held_out_accuracy(&s, auto["fine_tuned_model"].as_str().expect("model"), &test).await;
    eprintln!(
        "auto ({}): held-out accuracy {auto_accuracy:.3}",
        chosen["type"]
    );
    assert!(auto_accuracy >= 0.6, "auto accuracy {auto_accuracy:.3}");
}
