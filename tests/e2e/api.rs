//! The API's contract, request by request, against a real server process.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{jsonl, TestDb, TestServer};

fn toy_rows() -> Vec<(&'static str, &'static str)> {
    let pos = [
        "a wonderful, moving film",
        "great acting and a clever plot",
        "I loved every minute",
        "brilliant and funny",
        "a joy to watch",
        "superb direction, superb cast",
    ];
    let neg = [
        "a dull, lifeless film",
        "terrible acting and a silly plot",
        "I hated every minute",
        "boring and far too long",
        "a chore to sit through",
        "clumsy direction, wasted cast",
    ];
    pos.iter()
        .map(|t| (*t, "pos"))
        .chain(neg.iter().map(|t| (*t, "neg")))
        .collect()
}

fn assert_error(body: &Value, param: Option<&str>, message_part: &str) {
    let e = &body["error"];
    assert!(
        e["type"].is_string() && e["code"].is_string(),
        "not an error envelope: {body}"
    );
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(message_part),
        "{message:?} lacks {message_part:?}"
    );
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
}

#[tokio::test]
async fn uploads_are_validated_listed_downloaded_and_deleted() {
    let s = TestServer::start().await;
    let body = jsonl(&toy_rows());
    let (status, file) = s.upload("reviews.jsonl", body.clone()).await;
    assert_eq!(status, 200, "{file}");
    let id = file["id"].as_str().expect("id").to_owned();
    assert!(id.starts_with("file-"));
    assert_eq!(file["examples"], 12);
    assert_eq!(file["label_counts"], json!({"neg": 6, "pos": 6}));
    assert_eq!(file["task_type"], "classification");
    assert_eq!(file["text_pairs"], false);
    assert_eq!(file["bytes"], body.len());
    assert_eq!(file["format"], "jsonl");

    let csv = "label,text\npos,\"fine, \"\"really\"\" fine\"\nneg,bad\n";
    let (status, csv_file) = s.upload("r.csv", csv.as_bytes().to_vec()).await;
    assert_eq!(status, 200, "{csv_file}");
    assert_eq!(csv_file["format"], "csv");

    let (status, list) = s.get("/v1/files?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));
    assert_eq!(list["has_more"], true);
    assert_eq!(list["data"][0]["id"], csv_file["id"], "newest first");
    let after = list["last_id"].as_str().expect("last_id");
    let (_, rest) = s.get(&format!("/v1/files?limit=10&after={after}")).await;
    assert_eq!(rest["data"][0]["id"], file["id"]);
    assert_eq!(rest["has_more"], false);

    let content = s
        .client
        .get(s.url(&format!("/v1/files/{id}/content")))
        .send()
        .await
        .expect("get");
    assert_eq!(content.status(), 200);
    assert_eq!(content.bytes().await.expect("bytes").to_vec(), body);

    let (status, deleted) = s.delete(&format!("/v1/files/{id}")).await;
    assert_eq!((status, &deleted["deleted"]), (200, &json!(true)));
    let (status, missing) = s.get(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 404);
    assert_error(&missing, None, &id);
    let (status, _) = s.get("/v1/files/not-an-id").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn bad_files_are_refused_with_the_line_and_nothing_is_kept() {
    let s = TestServer::start_with(&[("HONE_MAX_UPLOAD_BYTES", "4096")]).await;
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "a.jsonl",
            b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\": \"x\"\n".to_vec(),
            400,
            "line 2",
        ),
        (
            "a.jsonl",
            b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"x\"}\n".to_vec(),
            400,
            "label",
        ),
        (
            "a.jsonl",
            b"{\"text\":\"\",\"label\":\"a\"}\n".to_vec(),
            400,
            "text",
        ),
        (
            "a.jsonl",
            b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"ok\",\"label\":\"a\"}\n".to_vec(),
            400,
            "two labels",
        ),
        (
            "a.jsonl",
            b"{\"text\":\"ok\",\"label\":\"a\"}\n{\"text\":\"\xff\",\"label\":\"b\"}\n".to_vec(),
            400,
            "line 2",
        ),
        (
            "a.jsonl",
            b"{\"text\":5,\"label\":\"a\"}\n".to_vec(),
            400,
            "text",
        ),
        ("a.csv", b"words,label\nhi,a\n".to_vec(), 400, "text"),
        ("a.txt", b"hello".to_vec(), 400, "jsonl"),
        (
            "big.jsonl",
            jsonl(&vec![("some text that takes room", "a"); 400]),
            413,
            "",
        ),
    ];
    for (name, bytes, status, needle) in cases {
        let (got, body) = s.upload(name, bytes).await;
        assert_eq!(got, status, "{name}: {body}");
        assert_error(&body, None, needle);
    }
    let (_, list) = s.get("/v1/files").await;
    assert_eq!(list["data"], json!([]), "a refused file left a row");
    let leftovers: Vec<_> = s
        .stored_files()
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "artifacts"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "a refused file left bytes: {leftovers:?}"
    );
}

#[tokio::test]
async fn base_models_include_minilm() {
    let s = TestServer::start().await;
    let (status, list) = s.get("/v1/base-models").await;
    assert_eq!(status, 200, "{list}");
    let minilm = list["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == "all-MiniLM-L6-v2"))
        .unwrap_or_else(|| panic!("all-MiniLM-L6-v2 missing: {list}"));
    assert_eq!(minilm["architecture"], "bert");
    assert_eq!(minilm["hidden_size"], 384);
    assert_eq!(minilm["layers"], 6);
    assert_eq!(minilm["max_seq_len"], 512);
    assert_eq!(minilm["modality"], "text");
    let params = minilm["parameters"].as_u64().expect("parameters");
    assert!((22_000_000..23_000_000).contains(&params), "{params}");
    // scripts/setup also installs an image backbone: no sequence length, an image size.
    let lite0 = list["data"]
        .as_array()
        .and_then(|d| d.iter().find(|m| m["id"] == "efficientnet-lite0"))
        .unwrap_or_else(|| panic!("efficientnet-lite0 missing: {list}"));
    assert_eq!(lite0["modality"], "image", "{lite0}");
    assert_eq!(lite0["architecture"], "efficientnet_lite", "{lite0}");
    assert_eq!(lite0["image_size"], 224, "{lite0}");
    assert_eq!(
        (&lite0["hidden_size"], &lite0["layers"]),
        (&json!(1280), &json!(17))
    );
    assert_eq!(lite0["parameters"], 4_652_008, "{lite0}");
    assert!(lite0.get("max_seq_len").is_none(), "{lite0}");
    assert!(minilm.get("image_size").is_none(), "{minilm}");
    let (status, _) = s.get("/v1/base-models/nope").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn job_requests_are_validated_with_the_field_at_fault() {
    let s = TestServer::start().await;
    let (_, file) = s.upload("t.jsonl", jsonl(&toy_rows())).await;
    let fid = file["id"].as_str().expect("id");
    let cases = [
        (
            json!({"base_model": "nope", "training_file": fid}),
            "base_model",
        ),
        (
            // An image model on a text file: the file's modality is at fault.
            json!({"base_model": "efficientnet-lite0", "training_file": fid}),
            "training_file",
        ),
        (
            // An image model has no token limit.
            json!({"base_model": "efficientnet-lite0", "training_file": fid, "hyperparameters": {"max_seq_len": 64}}),
            "hyperparameters.max_seq_len",
        ),
        (
            // Augmentation is for images.
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"augment": false}}),
            "hyperparameters.augment",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": "file-00000000000000000000000000000000"}),
            "training_file",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "validation_file": "x"}),
            "validation_file",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"epochs": 0}}),
            "hyperparameters.epochs",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"epochs": "three"}}),
            "hyperparameters.epochs",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"max_seq_len": 4096}}),
            "hyperparameters.max_seq_len",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "method": {"type": "magic"}}),
            "method.type",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "suffix": "no spaces"}),
            "suffix",
        ),
        (
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": fid, "metadata": {"k": 1}}),
            "metadata",
        ),
        // OpenAI's spellings: `model` is the base model, and two names must agree.
        (json!({"model": "nope", "training_file": fid}), "model"),
        (
            json!({"model": "all-MiniLM-L6-v2", "base_model": "efficientnet-lite0", "training_file": fid}),
            "model",
        ),
        (json!({"training_file": fid}), "model"),
        (
            json!({"model": "all-MiniLM-L6-v2", "training_file": fid, "integrations": [{"type": "wandb"}]}),
            "integrations",
        ),
        (
            json!({"model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"n_epochs": 2, "epochs": 3}}),
            "hyperparameters.n_epochs",
        ),
        (
            json!({"model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"batch_size": "big"}}),
            "hyperparameters.batch_size",
        ),
        (
            json!({"model": "all-MiniLM-L6-v2", "training_file": fid, "hyperparameters": {"n_epochs": 2},
                   "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}),
            "method.supervised.hyperparameters",
        ),
    ];
    for (body, param) in cases {
        let (status, err) = s.post_json("/v1/fine_tuning/jobs", &body).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["param"], param, "{body}: {err}");
    }
    let r = s
        .client
        .post(s.url("/v1/fine_tuning/jobs"))
        .body("{")
        .header("content-type", "application/json")
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 400);
    let (_, list) = s.get("/v1/fine_tuning/jobs").await;
    assert_eq!(list["data"], json!([]), "an invalid request created a job");
    let (status, _) = s.get("/v1/fine_tuning/jobs?status=bogus").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn a_job_trains_publishes_and_predicts() {
    let s = TestServer::start().await;
    let (_, train) = s.upload("train.jsonl", jsonl(&toy_rows())).await;
    let (_, valid) = s
        .upload(
            "valid.jsonl",
            jsonl(
                &toy_rows()[..4]
                    .iter()
                    .chain(&toy_rows()[8..])
                    .copied()
                    .collect::<Vec<_>>(),
            ),
        )
        .await;
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": train["id"],
                "validation_file": valid["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": 2, "batch_size": 4, "max_seq_len": 32},
                "seed": 7,
                "suffix": "toy",
                "metadata": {"team": "qa"}
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["status"], "queued");
    assert_eq!(
        job["hyperparameters"]["learning_rate"], 5e-5,
        "defaults are filled in"
    );
    let id = job["id"].as_str().expect("id").to_owned();

    let job = s.wait_for_job(&id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let progress = &job["progress"];
    assert_eq!(progress["total_steps"], 6, "{job}");
    assert_eq!(progress["step"], 6);
    assert_eq!(progress["epoch"], 2);
    assert!(
        job["result"]["validation"]["accuracy"].as_f64().is_some(),
        "{job}"
    );
    let model = job["fine_tuned_model"]
        .as_str()
        .expect("model id")
        .to_owned();
    assert!(model.starts_with("ft:all-MiniLM-L6-v2:toy:"), "{model}");

    let (_, events) = s
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await;
    let events = events["data"].as_array().expect("events").clone();
    assert!(events
        .iter()
        .any(|e| e["type"] == "metrics" && e["data"]["train_loss"].is_number()));
    assert!(events
        .iter()
        .any(|e| e["data"]["validation_accuracy"].is_number()));
    assert!(events.iter().any(|e| e["message"]
        .as_str()
        .is_some_and(|m| m.contains("succeeded"))));

    let (status, m) = s.get(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["labels"], json!(["neg", "pos"]));
    let (status, listed) = s.get("/v1/models").await;
    assert_eq!(
        (status, listed["data"][0]["id"].as_str()),
        (200, Some(model.as_str()))
    );

    let (status, out) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": ["a joy, brilliant", "dull and boring", ""]}),
        )
        .await;
    assert_eq!(status, 200, "{out}");
    let preds = out["predictions"].as_array().expect("predictions");
    assert_eq!(preds.len(), 3);
    for p in preds {
        let scores = p["scores"].as_object().expect("scores");
        let sum: f64 = scores.values().filter_map(Value::as_f64).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{p}");
        assert_eq!(p["score"], scores[p["label"].as_str().expect("label")]);
    }

    // A text may also come as a training row holds it, `{"text": …}`; the answers
    // are the same as for the strings.
    let (status, objects) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": [{"text": "a joy, brilliant"}, "dull and boring", {"text": ""}]}),
        )
        .await;
    assert_eq!(status, 200, "{objects}");
    assert_eq!(objects["predictions"], out["predictions"]);
    let (status, err) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": [{"text": "fine", "label": "positive"}]}),
        )
        .await;
    assert_eq!(status, 400, "an unknown field is refused: {err}");
    assert_eq!(err["error"]["param"], "inputs[0]", "{err}");

    let (status, err) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": []}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["param"], "inputs");
    let (status, err) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": [1]}),
        )
        .await;
    assert_eq!(status, 400, "{err}");
    let (status, _) = s
        .post_json("/v1/models/ft:nope/predict", &json!({"inputs": ["x"]}))
        .await;
    assert_eq!(status, 404);

    let (status, _) = s
        .post_json(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 409, "a finished job cannot be cancelled");
    let (status, _) = s
        .delete(&format!("/v1/files/{}", train["id"].as_str().expect("id")))
        .await;
    assert_eq!(status, 200, "files of finished jobs can be deleted");

    let (status, _) = s.delete(&format!("/v1/models/{model}")).await;
    assert_eq!(status, 200);
    let (status, _) = s
        .post_json(
            &format!("/v1/models/{model}/predict"),
            &json!({"inputs": ["x"]}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn queued_jobs_cancel_at_once_and_running_ones_at_the_next_step() {
    // One worker slot: while the first job runs, the second stays queued.
    let s = TestServer::start().await;
    // 20 steps an epoch, 20 epochs: a checkpoint comes soon, the end does not.
    let rows: Vec<(&str, &str)> = toy_rows().into_iter().cycle().take(160).collect();
    let (_, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    let body = json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
        "hyperparameters": {"epochs": 20, "batch_size": 8, "max_seq_len": 16}});
    let (_, running) = s.post_json("/v1/fine_tuning/jobs", &body).await;
    let (_, queued) = s.post_json("/v1/fine_tuning/jobs", &body).await;
    let running_id = running["id"].as_str().expect("id");
    let queued_id = queued["id"].as_str().expect("id");

    // Wait until the first job has made progress.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, j) = s.get(&format!("/v1/fine_tuning/jobs/{running_id}")).await;
        if j["progress"]["step"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job never started: {j}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, q) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{queued_id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(
        (status, q["status"].as_str()),
        (200, Some("cancelled")),
        "{q}"
    );

    let (status, _) = s
        .delete(&format!("/v1/files/{}", file["id"].as_str().expect("id")))
        .await;
    assert_eq!(status, 409, "a running job's file cannot be deleted");

    // Let the running job leave a checkpoint behind before it is cancelled.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let checkpoints = format!("/v1/fine_tuning/jobs/{running_id}/checkpoints");
    loop {
        let (_, list) = s.get(&checkpoints).await;
        if list["data"].as_array().is_some_and(|d| !d.is_empty()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint: {list}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (status, _) = s
        .post_json(
            &format!("/v1/fine_tuning/jobs/{running_id}/cancel"),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
    let job = s.wait_for_job(running_id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    assert!(job["fine_tuned_model"].is_null());
    // Its partial artifacts are gone: checkpoints (rows and weights) and scratch files.
    let (_, list) = s.get(&checkpoints).await;
    assert_eq!(list["data"], json!([]), "{list}");
    let left: Vec<_> = s
        .stored_files()
        .into_iter()
        .filter(|p| !p.to_string_lossy().contains("/files/"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let (_, list) = s.get("/v1/fine_tuning/jobs?status=cancelled").await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn docs_openapi_and_health_are_served() {
    let db = TestDb::unborn();
    let s = TestServer::start_on(db, &[]).await; // hone creates the database itself
    let (status, health) = s.get("/healthz").await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let (status, _) = s.get("/readyz").await;
    assert_eq!(status, 200);

    let (status, doc) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")));
    let paths = doc["paths"].as_object().expect("paths");
    for p in [
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/base-models",
        "/v1/transferability",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/pause",
        "/v1/fine_tuning/jobs/{job_id}/resume",
        "/v1/fine_tuning/jobs/{job_id}/events",
        "/v1/fine_tuning/jobs/{job_id}/metrics",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints/{epoch}/publish",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/models/{model}/predict",
        "/v1/models/{model}/content",
        "/v1/webhooks",
        "/v1/webhooks/{webhook_id}",
        "/v1/webhooks/{webhook_id}/rotate_secret",
        "/v1/webhooks/{webhook_id}/deliveries",
        "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
        "/v1/usage",
        "/healthz",
        "/readyz",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    // The payloads hone POSTs to webhook endpoints, as OpenAPI 3.1 `webhooks`.
    for event in [
        "fine_tuning.job.succeeded",
        "fine_tuning.job.failed",
        "fine_tuning.job.cancelled",
        "fine_tuning.job.running",
        "file.processed",
    ] {
        let post = &doc["webhooks"][event]["post"];
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/WebhookEvent",
            "{event}: {post}"
        );
        assert_eq!(
            post["requestBody"]["content"]["application/json"]["example"]["type"],
            event
        );
        let headers: Vec<&str> = post["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| p["name"].as_str())
            .collect();
        assert_eq!(
            headers,
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
    }
    let event = &doc["components"]["schemas"]["WebhookEvent"]["properties"];
    for field in ["id", "object", "type", "created_at", "data"] {
        assert!(event.get(field).is_some(), "WebhookEvent.{field}: {event}");
    }
    for (path, item) in paths {
        for (method, op) in item.as_object().expect("item") {
            let responses = op["responses"].as_object().expect("responses");
            assert!(
                !responses.is_empty(),
                "{method} {path} documents no response"
            );
            assert!(
                op["summary"].is_string() || op["description"].is_string(),
                "{method} {path} has no description"
            );
        }
    }

    let r = s.client.get(s.url("/docs/")).send().await.expect("docs");
    assert_eq!(r.status(), 200);
    let html = r.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");
    let r = s
        .client
        .get(s.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .expect("bundle");
    assert_eq!(r.status(), 200, "Swagger UI must be served from the binary");

    let (status, err) = s.get("/v1/nothing-here").await;
    assert_eq!(status, 404, "{err}");
}

#[tokio::test]
async fn an_unreachable_database_is_one_clear_line() {
    let out = tokio::process::Command::new(crate::support::hone_bin())
        .arg("migrate")
        .env(
            "HONE_DATABASE_URL",
            "postgres://postgres:pw@127.0.0.1:1/hone",
        )
        .output()
        .await
        .expect("run hone");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains("cannot reach Postgres at postgres://postgres:***@127.0.0.1:1/hone"),
        "{stderr}"
    );
}

#[tokio::test]
async fn idempotency_keys_replay_the_first_response_and_refuse_other_requests() {
    let s = TestServer::start().await;
    let upload = |key: &'static str, bytes: Vec<u8>| {
        let s = &s;
        async move {
            let form = reqwest::multipart::Form::new()
                .text("purpose", "fine-tune")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(bytes).file_name("t.jsonl"),
                );
            let r = s
                .client
                .post(s.url("/v1/files"))
                .header("Idempotency-Key", key)
                .multipart(form)
                .send()
                .await
                .expect("upload");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let bytes = jsonl(&toy_rows());
    let (status, first) = upload("upload-1", bytes.clone()).await;
    assert_eq!(status, 200, "{first}");
    let stored = s.stored_files().len();
    let (status, again) = upload("upload-1", bytes.clone()).await;
    assert_eq!((status, &again), (200, &first));
    let mut other = bytes.clone();
    other.extend_from_slice(b"{\"text\": \"one more\", \"label\": \"positive\"}\n");
    let (status, err) = upload("upload-1", other).await;
    assert_eq!(status, 409, "{err}");
    assert_eq!(err["error"]["param"], "Idempotency-Key");
    assert_eq!(
        s.stored_files().len(),
        stored,
        "a replay or conflict kept bytes"
    );
    let (_, files) = s.get("/v1/files").await;
    assert_eq!(files["data"].as_array().map(Vec::len), Some(1), "{files}");
    let (status, err) = upload("bad key with spaces", bytes).await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["param"], "Idempotency-Key");

    let create = |key: &'static str, body: String| {
        let s = &s;
        async move {
            let r = s
                .client
                .post(s.url("/v1/fine_tuning/jobs"))
                .header("Idempotency-Key", key)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .expect("create");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let fid = first["id"].as_str().expect("id");
    let body = format!(
        r#"{{"base_model": "all-MiniLM-L6-v2", "training_file": "{fid}", "seed": 5,
             "hyperparameters": {{"epochs": 1, "max_seq_len": 16}}}}"#
    );
    // The same request sent twice at once, and once more with other formatting and
    // key order: one job.
    let ((s1, j1), (s2, j2)) = tokio::join!(create("job-1", body.clone()), create("job-1", body));
    assert_eq!((s1, s2), (200, 200), "{j1} {j2}");
    assert_eq!(j1["id"], j2["id"]);
    let reordered = format!(
        r#"{{"hyperparameters":{{"max_seq_len":16,"epochs":1}},"seed":5,"training_file":"{fid}","base_model":"all-MiniLM-L6-v2"}}"#
    );
    let (status, j3) = create("job-1", reordered).await;
    assert_eq!((status, &j3["id"]), (200, &j1["id"]));
    let (status, err) = create(
        "job-1",
        format!(r#"{{"base_model": "all-MiniLM-L6-v2", "training_file": "{fid}", "seed": 6}}"#),
    )
    .await;
    assert_eq!(status, 409, "{err}");
    let (_, jobs) = s.get("/v1/fine_tuning/jobs").await;
    assert_eq!(jobs["data"].as_array().map(Vec::len), Some(1), "{jobs}");
    // The same key on another route is another key.
    let (status, _) = upload("job-1", jsonl(&toy_rows())).await;
    assert_eq!(status, 200);
    let id = j1["id"].as_str().expect("id");
    let (status, _) = s
        .post_json(&format!("/v1/fine_tuning/jobs/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, 200);
}
