//! `POST /v1/transferability` on real data (Rotten Tomatoes snippets) with the real
//! all-MiniLM-L6-v2: its ranking against a random encoder, the feature cache it shares
//! with fine-tuning jobs, and the requests it refuses.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sentiment::split;
use crate::support::{jsonl, TestServer};

const MINILM: &str = "all-MiniLM-L6-v2";

async fn upload_rt(s: &TestServer) -> Value {
    let (train, _) = split(2028);
    let rows: Vec<(&str, &str)> = train
        .iter()
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, file) = s.upload("rt.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["examples"], 128, "{file}");
    file
}

fn minilm(response: &Value) -> &Value {
    response["results"]
        .as_array()
        .expect("results")
        .iter()
        .find(|r| r["base_model"] == MINILM)
        .unwrap_or_else(|| panic!("{MINILM} is missing: {response}"))
}

fn number(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test]
async fn minilm_beats_a_random_encoder_and_its_features_are_cached() {
    let s = TestServer::start().await;
    let file = upload_rt(&s).await;
    let request = json!({"training_file": file["id"], "base_models": [MINILM]});

    // Two at once: one estimate runs, the other is told to come back.
    let started = Instant::now();
    let send = || {
        s.client
            .post(s.url("/v1/transferability"))
            .json(&request)
            .send()
    };
    let (a, b) = tokio::join!(send(), send());
    let first_wall = started.elapsed();
    let (a, b) = (a.expect("POST"), b.expect("POST"));
    let (ok, busy) = if a.status() == 200 { (a, b) } else { (b, a) };
    assert_eq!((ok.status().as_u16(), busy.status().as_u16()), (200, 429));
    assert!(busy.headers().contains_key("retry-after"));
    let busy: Value = busy.json().await.expect("json");
    assert_eq!(busy["error"]["code"], "overloaded", "{busy}");
    let first: Value = ok.json().await.expect("json");
    assert_eq!(first["object"], "transferability", "{first}");
    assert_eq!(first["training_file"], file["id"], "{first}");
    assert_eq!(first["metric"], "logme", "{first}");
    assert_eq!(
        (&first["examples"], &first["classes"]),
        (&json!(128), &json!(2))
    );
    let r = minilm(&first);
    assert_eq!(r["rank"], 1, "{first}");
    assert_eq!(r["features_cached"], false, "{first}");
    assert_eq!(r["max_seq_len"], 128, "{first}");
    let (score, random) = (number(&r["score"]), number(&r["random_init_score"]));
    assert!(
        score > random,
        "pretrained {score} should beat random {random}"
    );
    assert!((number(&r["gain"]) - (score - random)).abs() < 1e-12, "{r}");

    let started = Instant::now();
    let (status, second) = s.post_json("/v1/transferability", &request).await;
    let second_wall = started.elapsed();
    assert_eq!(status, 200, "{second}");
    let again = minilm(&second);
    assert_eq!(again["features_cached"], true, "{second}");
    assert!(
        (number(&again["score"]) - score).abs() < 1e-9,
        "{first} {second}"
    );
    assert!(
        (number(&again["random_init_score"]) - random).abs() < 1e-9,
        "{first} {second}"
    );
    eprintln!(
        "transferability of {MINILM} on 128 examples: LogME {score:.4}, random {random:.4}; \
         first call {:.2} s ({:.2} s estimating), second {:.2} s ({:.2} s estimating)",
        first_wall.as_secs_f64(),
        number(&r["seconds"]),
        second_wall.as_secs_f64(),
        number(&again["seconds"]),
    );
    assert!(second_wall < Duration::from_secs(10), "{second_wall:?}");

    // Leaving the models out compares every installed one, MiniLM among them.
    let (status, all) = s
        .post_json("/v1/transferability", &json!({"training_file": file["id"]}))
        .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(minilm(&all)["features_cached"], true, "{all}");

    // Another project with the same bytes computes its own: the cache is per project,
    // so no answer tells one project what another uploaded.
    let other = s.create_key("other-project").await;
    let (train, _) = split(2028);
    let rows: Vec<(&str, &str)> = train
        .iter()
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, theirs) = s.upload_as(&other, "rt.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{theirs}");
    let response = s
        .client
        .post(s.url("/v1/transferability"))
        .headers(crate::support::auth_headers(&other))
        .json(&json!({"training_file": theirs["id"], "base_models": [MINILM]}))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), 200);
    let theirs: Value = response.json().await.expect("json");
    assert_eq!(minilm(&theirs)["features_cached"], false, "{theirs}");

    // A larger file than `max_examples` is scored on a stratified sample, whose
    // features are cached apart from the whole file's.
    let sampled =
        json!({"training_file": file["id"], "base_models": [MINILM], "max_examples": 100});
    let (status, first_sample) = s.post_json("/v1/transferability", &sampled).await;
    assert_eq!(status, 200, "{first_sample}");
    assert_eq!(
        (&first_sample["examples"], &first_sample["classes"]),
        (&json!(100), &json!(2))
    );
    let r = minilm(&first_sample);
    assert_eq!(r["features_cached"], false, "{first_sample}");
    assert_ne!(number(&r["score"]), score, "{first_sample}");
    let (status, again) = s.post_json("/v1/transferability", &sampled).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(minilm(&again)["features_cached"], true, "{again}");
    assert!((number(&minilm(&again)["score"]) - number(&r["score"])).abs() < 1e-9);

    // The cache is the worker's: a feature-extraction job on the same file skips the
    // encoder.
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": MINILM,
                "training_file": file["id"],
                "method": {"type": "feature_extraction"},
                "hyperparameters": {"epochs": 2},
                "seed": 1,
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id");
    let job = s.wait_for_job(id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let (status, events) = s
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    assert_eq!(status, 200, "{events}");
    let reused = events["data"].as_array().expect("events").iter().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("Reusing the cached features"))
    });
    assert!(
        reused,
        "the job did not reuse the estimate's features: {events}"
    );
}

#[tokio::test]
async fn bad_estimate_requests_name_the_field() {
    let s = TestServer::start().await;
    let rows: Vec<(String, &str)> = (0..30)
        .map(|i| (format!("a plain example number {i}"), "common"))
        .chain(std::iter::once(("the one rare example".to_owned(), "rare")))
        .collect();
    let rows: Vec<(&str, &str)> = rows.iter().map(|(t, l)| (t.as_str(), *l)).collect();
    let (status, file) = s.upload("skewed.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].clone();

    let refused = |body: Value, param: &'static str, code: &'static str| {
        let s = &s;
        async move {
            let (status, err) = s.post_json("/v1/transferability", &body).await;
            assert_eq!(status, 400, "{body} → {err}");
            assert_eq!(err["error"]["param"], param, "{body} → {err}");
            assert_eq!(err["error"]["code"], code, "{body} → {err}");
        }
    };
    refused(
        json!({"training_file": id, "base_models": ["no-such-model"]}),
        "base_models[0]",
        "model_not_found",
    )
    .await;
    refused(
        json!({"training_file": id, "base_models": [MINILM, "../etc"]}),
        "base_models[1]",
        "model_not_found",
    )
    .await;
    refused(
        json!({"training_file": id, "base_models": [MINILM, MINILM]}),
        "base_models[1]",
        "invalid_value",
    )
    .await;
    refused(
        json!({"training_file": "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f"}),
        "training_file",
        "file_not_found",
    )
    .await;
    refused(
        json!({"training_file": "nonsense"}),
        "training_file",
        "file_not_found",
    )
    .await;
    refused(
        json!({"training_file": id, "max_examples": 1}),
        "max_examples",
        "invalid_value",
    )
    .await;
    refused(
        json!({"training_file": id, "max_seq_len": 100000}),
        "max_seq_len",
        "invalid_value",
    )
    .await;
    refused(
        json!({"training_file": id, "pooling": "max"}),
        "pooling",
        "invalid_json",
    )
    .await;
    refused(
        json!({"training_file": id, "epochs": 3}),
        "epochs",
        "invalid_json",
    )
    .await;
    // A sample of 10 of the 31 rows keeps only the common class: nothing to rank on.
    refused(
        json!({"training_file": id, "max_examples": 10}),
        "training_file",
        "too_few_classes",
    )
    .await;
}

/// Every task type and text pairs are estimated, each with its own LogME (per label
/// column for multi-label, the mean over tasks for multi-task).
#[tokio::test]
async fn every_task_type_and_text_pairs_are_estimated() {
    let s = TestServer::start().await;
    let lines = |rows: Vec<serde_json::Value>| -> Vec<u8> {
        rows.iter()
            .flat_map(|r| format!("{r}\n").into_bytes())
            .collect()
    };
    let good = [
        "a wonderful film",
        "great acting",
        "loved it",
        "superb and moving",
    ];
    let bad = ["a dull mess", "boring plot", "hated it", "awful and slow"];
    let files = [
        (
            "pairs",
            lines(
                (0..24)
                    .map(|i| {
                        json!({"text": good[i % 4], "text_pair": if i % 2 == 0 { good[(i + 1) % 4] } else { bad[i % 4] },
                               "label": if i % 2 == 0 { "same" } else { "different" }})
                    })
                    .collect(),
            ),
            "classification",
        ),
        (
            "multi_label",
            lines(
                (0..24)
                    .map(|i| {
                        let mut labels = vec![];
                        if i % 2 == 0 { labels.push("positive"); }
                        if i % 3 == 0 { labels.push("short"); }
                        json!({"text": if i % 2 == 0 { good[i % 4] } else { bad[i % 4] }, "labels": labels})
                    })
                    .collect(),
            ),
            "multi_label",
        ),
        (
            "multi_task",
            lines(
                (0..24)
                    .map(|i| {
                        let sentiment = if i % 2 == 0 { "positive" } else { "negative" };
                        if i % 5 == 0 {
                            json!({"text": bad[i % 4], "labels": {"topic": "film"}})
                        } else {
                            json!({"text": if i % 2 == 0 { good[i % 4] } else { bad[i % 4] },
                                   "labels": {"sentiment": sentiment, "topic": if i % 3 == 0 { "film" } else { "acting" }}})
                        }
                    })
                    .collect(),
            ),
            "multi_task",
        ),
    ];
    for (name, bytes, task_type) in files {
        let (status, file) = s.upload(&format!("{name}.jsonl"), bytes).await;
        assert_eq!(status, 200, "{file}");
        let (status, out) = s
            .post_json(
                "/v1/transferability",
                &json!({"training_file": file["id"], "base_models": ["all-MiniLM-L6-v2"]}),
            )
            .await;
        assert_eq!(status, 200, "{name}: {out}");
        assert_eq!(out["task_type"], task_type, "{out}");
        assert_eq!(out["examples"], 24, "{out}");
        let result = &out["results"][0];
        assert!(
            result["score"].as_f64().is_some_and(f64::is_finite),
            "{name}: {out}"
        );
        assert!(result["random_init_score"]
            .as_f64()
            .is_some_and(f64::is_finite));
    }
}
