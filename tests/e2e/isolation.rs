//! Tenants: every request acts for its key's project. Another project's file, job or
//! model answers 404 exactly like a missing one on every endpoint, and lists leave it
//! out; requests without a valid key get 401; the health probes and the docs stay
//! public; and each project's limits answer 429 (active jobs) and 413 (storage).

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::{auth_headers, jsonl, two_class_rows, TestServer};

const GOOD: &[&str] = &[
    "great film, loved it",
    "wonderful and moving",
    "a joy to watch",
];
const BAD: &[&str] = &["dull and far too long", "a waste of time", "awful acting"];

/// One request with `key` (or none), without the server's default key.
async fn call(
    s: &TestServer,
    key: Option<&str>,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = reqwest::Client::new().request(method, s.url(path));
    if let Some(key) = key {
        req = req.headers(auth_headers(key));
    }
    if let Some(body) = body {
        req = req.json(body);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap_or(Value::Null), headers)
}

fn ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a list")
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test]
async fn another_projects_resources_are_not_found_on_every_endpoint() {
    let s = TestServer::start().await;
    let a = s.key.clone();
    let b = s.create_key("team-b").await;
    assert_ne!(a, b);

    // Project A (the first key's, `default`): a file, and a job that published a model.
    let (status, file) = s
        .upload("a.jsonl", jsonl(&two_class_rows(8, GOOD, BAD)))
        .await;
    assert_eq!(status, 200, "{file}");
    let file_id = file["id"].as_str().expect("id").to_owned();
    let job = s
        .train(
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file_id,
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 1, "batch_size": 4, "max_seq_len": 16}}),
            Duration::from_secs(300),
        )
        .await;
    let job_id = job["id"].as_str().expect("id").to_owned();
    let model = job["fine_tuned_model"].as_str().expect("model").to_owned();

    // B's own file, to check that B's lists work and hold only B's rows.
    let (status, b_file) = s
        .upload_as(&b, "b.jsonl", jsonl(&two_class_rows(4, GOOD, BAD)))
        .await;
    assert_eq!(status, 200, "{b_file}");
    let b_file_id = b_file["id"].as_str().expect("id").to_owned();

    // Lists: B sees only its own rows.
    let (_, files, _) = call(&s, Some(&b), Method::GET, "/v1/files", None).await;
    assert_eq!(ids(&files), vec![b_file_id.clone()]);
    let (_, jobs, _) = call(&s, Some(&b), Method::GET, "/v1/fine_tuning/jobs", None).await;
    assert!(ids(&jobs).is_empty(), "{jobs}");
    let (_, models, _) = call(&s, Some(&b), Method::GET, "/v1/models", None).await;
    assert!(
        models["data"]
            .as_array()
            .expect("a list")
            .iter()
            .all(|m| m["owned_by"] == "system"),
        "B sees no fine-tuned model, only the server's base models: {models}"
    );
    // A's uploads (its job's results file, purpose `fine-tune-results`, is A's too).
    let (_, files, _) = call(
        &s,
        Some(&a),
        Method::GET,
        "/v1/files?purpose=fine-tune",
        None,
    )
    .await;
    assert_eq!(
        ids(&files),
        vec![file_id.clone()],
        "A does not see B's file"
    );
    // A cursor naming A's row does not page B into A's list.
    let (status, files, _) = call(
        &s,
        Some(&b),
        Method::GET,
        &format!("/v1/files?after={file_id}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{files}");
    assert!(!ids(&files).contains(&file_id));

    // Every endpoint on A's resources, as B: 404, exactly as for a missing resource.
    let predict = json!({"inputs": ["great"]});
    let cross: Vec<(Method, String, Option<&Value>)> = vec![
        (Method::GET, format!("/v1/files/{file_id}"), None),
        (Method::GET, format!("/v1/files/{file_id}/content"), None),
        (Method::DELETE, format!("/v1/files/{file_id}"), None),
        (Method::GET, format!("/v1/fine_tuning/jobs/{job_id}"), None),
        (
            Method::POST,
            format!("/v1/fine_tuning/jobs/{job_id}/cancel"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/fine_tuning/jobs/{job_id}/events"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/fine_tuning/jobs/{job_id}/metrics"),
            None,
        ),
        (
            Method::GET,
            format!("/v1/fine_tuning/jobs/{job_id}/checkpoints"),
            None,
        ),
        (
            Method::POST,
            format!("/v1/fine_tuning/jobs/{job_id}/checkpoints/1/publish"),
            None,
        ),
        (Method::GET, format!("/v1/models/{model}"), None),
        (
            Method::POST,
            format!("/v1/models/{model}/predict"),
            Some(&predict),
        ),
        (Method::DELETE, format!("/v1/models/{model}"), None),
    ];
    for (method, path, body) in &cross {
        let (status, err, _) = call(&s, Some(&b), method.clone(), path, *body).await;
        assert_eq!(status, 404, "{method} {path} as B: {err}");
        assert_eq!(
            err["error"]["type"], "not_found_error",
            "{method} {path}: {err}"
        );
        // The same answer as for an id that does not exist at all.
        let missing = path
            .replace(&file_id, "file-0123456789abcdef0123456789abcdef")
            .replace(&job_id, "ftjob-0123456789abcdef0123456789abcdef")
            .replace(&model, "ft:all-MiniLM-L6-v2:00000000");
        let (status, _, _) = call(&s, Some(&b), method.clone(), &missing, *body).await;
        assert_eq!(status, 404, "{method} {missing}");
    }
    // Creating with A's file: "no such file", naming the field.
    for (path, body) in [
        (
            "/v1/fine_tuning/jobs",
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": file_id}),
        ),
        (
            "/v1/fine_tuning/jobs",
            json!({"base_model": "all-MiniLM-L6-v2", "training_file": b_file_id,
                   "validation_file": file_id}),
        ),
        ("/v1/transferability", json!({"training_file": file_id})),
    ] {
        let (status, err, _) = call(&s, Some(&b), Method::POST, path, Some(&body)).await;
        assert_eq!(status, 400, "{path} {body}: {err}");
        assert_eq!(err["error"]["code"], "file_not_found", "{err}");
        let param = err["error"]["param"].as_str().expect("param");
        assert!(param.ends_with("_file"), "{err}");
    }

    // Nothing of A's changed: B's deletes, cancel and publish touched nothing.
    let (_, job_now) = s.get(&format!("/v1/fine_tuning/jobs/{job_id}")).await;
    assert_eq!(job_now["status"], "succeeded");
    for path in [
        format!("/v1/files/{file_id}"),
        format!("/v1/files/{file_id}/content"),
        format!("/v1/models/{model}"),
        format!("/v1/fine_tuning/jobs/{job_id}/checkpoints"),
    ] {
        let r = s.client.get(s.url(&path)).send().await.expect("GET");
        assert_eq!(r.status().as_u16(), 200, "A lost {path}");
    }
    let (status, p) = s
        .post_json(&format!("/v1/models/{model}/predict"), &predict)
        .await;
    assert_eq!(status, 200, "{p}");
    let (_, models) = s.get("/v1/models").await;
    assert!(ids(&models).contains(&model));
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_and_probes_and_docs_stay_public() {
    let s = TestServer::start().await;
    let (status, spec, _) = call(&s, None, Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{}",
        spec["components"]["securitySchemes"]
    );

    // Every documented operation but the probes needs a key, and says so.
    let mut checked = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("operations") {
            let public = ["/healthz", "/readyz"].contains(&path.as_str());
            let url = path
                .replace("{epoch}", "1")
                .split('{')
                .enumerate()
                .map(|(i, part)| {
                    if i == 0 {
                        part.to_owned()
                    } else {
                        format!("x{}", part.split_once('}').map_or("", |(_, rest)| rest))
                    }
                })
                .collect::<String>();
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let (status, err, headers) =
                call(&s, None, method.clone(), &url, Some(&json!({}))).await;
            if public {
                assert_eq!(status, 200, "{method} {url} is public: {err}");
                assert!(op.get("security").is_none(), "{method} {path}");
                continue;
            }
            assert_eq!(status, 401, "{method} {url} without a key: {err}");
            assert_eq!(err["error"]["code"], "missing_api_key", "{err}");
            assert_eq!(err["error"]["type"], "authentication_error", "{err}");
            assert_eq!(headers["www-authenticate"], "Bearer");
            assert_eq!(op["security"], json!([{"bearer": []}]), "{method} {path}");
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
            checked += 1;
        }
    }
    assert!(checked >= 17, "only {checked} protected operations");
    let r = reqwest::Client::new()
        .get(s.url("/docs/"))
        .send()
        .await
        .expect("docs");
    assert_eq!(r.status().as_u16(), 200);

    // Malformed, unknown and revoked keys.
    let unknown = format!("hone_sk_{}", "A".repeat(43));
    for (header, code) in [
        ("Bearer".to_owned(), "invalid_api_key"),
        ("Basic dXNlcjpwYXNz".to_owned(), "invalid_api_key"),
        ("Bearer sk-not-ours".to_owned(), "invalid_api_key"),
        (format!("Bearer {unknown}"), "invalid_api_key"),
    ] {
        let r = reqwest::Client::new()
            .get(s.url("/v1/files"))
            .header("Authorization", &header)
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 401, "{header}");
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        let err: Value = r.json().await.expect("json");
        assert_eq!(err["error"]["code"], code, "{header}: {err}");
    }
    let gone = s.create_key("gone").await;
    let (status, _, _) = call(&s, Some(&gone), Method::GET, "/v1/files", None).await;
    assert_eq!(status, 200, "a new key works at once");
    let list = String::from_utf8(s.keys(&["list"]).await.stdout).expect("utf-8");
    assert!(!list.contains(&gone), "the list never shows a secret");
    let id = list
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("gone"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the key is listed")
        .to_owned();
    s.keys(&["revoke", &id]).await;
    // Key look-ups are remembered for api_key_cache_ms (5 s): revocation takes effect
    // within that time.
    let revoked = tokio::time::Instant::now();
    let (status, err, headers) = loop {
        let answer = call(&s, Some(&gone), Method::GET, "/v1/files", None).await;
        if answer.0 != 200 || revoked.elapsed() > std::time::Duration::from_secs(6) {
            break answer;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 401, "{err}");
    assert_eq!(err["error"]["code"], "revoked_api_key", "{err}");
    assert_eq!(headers["www-authenticate"], "Bearer");
    // The first key is untouched, and its use was recorded.
    let (status, _) = s.get("/v1/files").await;
    assert_eq!(status, 200);
    let list = String::from_utf8(s.keys(&["list"]).await.stdout).expect("utf-8");
    let default_line = list
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("default"))
        .expect("the first key is listed");
    assert_ne!(
        default_line.split_whitespace().nth(4),
        Some("-"),
        "last used is recorded: {default_line}"
    );
}

#[tokio::test]
async fn project_limits_answer_429_with_retry_after_and_413_naming_the_limit() {
    let rows = jsonl(&two_class_rows(160, GOOD, BAD));
    let size = rows.len();
    let limit = (size * 5 / 2).to_string();
    let s = TestServer::start_with(&[
        ("HONE_MAX_ACTIVE_JOBS_PER_PROJECT", "1"),
        ("HONE_MAX_STORED_BYTES_PER_PROJECT", &limit),
    ])
    .await;

    // Storage: two files fit, the third does not; it is refused whole.
    let (status, file) = s.upload("t.jsonl", rows.clone()).await;
    assert_eq!(status, 200, "{file}");
    let (status, second) = s.upload("t2.jsonl", rows.clone()).await;
    assert_eq!(status, 200, "{second}");
    let stored = s.stored_files().len();
    let (status, err) = s.upload("t3.jsonl", rows.clone()).await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "storage_limit_exceeded", "{err}");
    let message = err["error"]["message"].as_str().expect("message");
    assert!(
        message.contains(&format!("max_stored_bytes = {limit}")),
        "{message}"
    );
    assert_eq!(s.stored_files().len(), stored, "nothing of it is kept");
    // A declared size that cannot fit is refused before it is read.
    let (status, err) = s
        .upload("big.jsonl", jsonl(&two_class_rows(4000, GOOD, BAD)))
        .await;
    assert_eq!(status, 413, "{err}");
    assert_eq!(err["error"]["code"], "storage_limit_exceeded", "{err}");
    let (_, files) = s.get("/v1/files").await;
    assert_eq!(ids(&files).len(), 2);

    // Active jobs: one queued or running at a time.
    let body = json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
        "hyperparameters": {"epochs": 20, "batch_size": 8, "max_seq_len": 16}});
    let (status, first) = s.post_json("/v1/fine_tuning/jobs", &body).await;
    assert_eq!(status, 200, "{first}");
    let r = s
        .client
        .post(s.url("/v1/fine_tuning/jobs"))
        .json(&body)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 429);
    assert_eq!(r.headers()["retry-after"], "30");
    let err: Value = r.json().await.expect("json");
    assert_eq!(err["error"]["code"], "too_many_active_jobs", "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("max_active_jobs = 1")),
        "{err}"
    );
    // Another project is not held back by this one's jobs.
    let other = s.create_key("other").await;
    let (status, other_file) = s.upload_as(&other, "o.jsonl", rows.clone()).await;
    assert_eq!(status, 200, "{other_file}");
    let other_body = json!({"base_model": "all-MiniLM-L6-v2", "training_file": other_file["id"],
        "hyperparameters": {"epochs": 20, "batch_size": 8, "max_seq_len": 16}});
    let (status, other_job, _) = call(
        &s,
        Some(&other),
        Method::POST,
        "/v1/fine_tuning/jobs",
        Some(&other_body),
    )
    .await;
    assert_eq!(status, 200, "{other_job}");
    // A finished job frees its slot.
    for (key, job) in [(&s.key, &first), (&other, &other_job)] {
        let (status, j, _) = call(
            &s,
            Some(key),
            Method::POST,
            &format!(
                "/v1/fine_tuning/jobs/{}/cancel",
                job["id"].as_str().expect("id")
            ),
            None,
        )
        .await;
        assert_eq!(status, 200, "{j}");
    }
    let id = first["id"].as_str().expect("id");
    let done = s.wait_for_job(id, Duration::from_secs(60)).await;
    assert_eq!(done["status"], "cancelled");
    let (status, again) = s.post_json("/v1/fine_tuning/jobs", &body).await;
    assert_eq!(status, 200, "{again}");
    let (status, _) = s
        .post_json(
            &format!(
                "/v1/fine_tuning/jobs/{}/cancel",
                again["id"].as_str().expect("id")
            ),
            &json!({}),
        )
        .await;
    assert_eq!(status, 200);
}
