//! Every answer that is an error is the JSON envelope, whoever made it (a handler,
//! the router, a rejected path or form, a limit), and a NUL character anywhere a text
//! is taken is refused with 400 naming the parameter, before it can reach Postgres.

use serde_json::{json, Value};

use crate::support::TestServer;

async fn send(
    s: &TestServer,
    req: reqwest::RequestBuilder,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {text:?} ({:?})", s.base));
    (status, headers, body)
}

fn assert_envelope(status: u16, headers: &reqwest::header::HeaderMap, body: &Value, what: &str) {
    let e = &body["error"];
    assert!(
        e["message"].is_string() && e["type"].is_string() && e["code"].is_string(),
        "{what}: {status} is not the envelope: {body}"
    );
    assert!(
        headers[reqwest::header::CONTENT_TYPE]
            .to_str()
            .is_ok_and(|v| v.starts_with("application/json")),
        "{what}: {headers:?}"
    );
}

#[tokio::test]
async fn every_error_is_the_json_envelope() {
    let s = TestServer::start().await;
    let c = &s.client;
    // 405, with `Allow`.
    let (status, headers, body) = send(&s, c.delete(s.url("/v1/base-models"))).await;
    assert_eq!(status, 405);
    assert_envelope(status, &headers, &body, "405");
    assert_eq!(body["error"]["code"], "method_not_allowed");
    assert!(headers.contains_key(reqwest::header::ALLOW), "{headers:?}");
    // A path parameter that is not UTF-8.
    let (status, headers, body) = send(&s, c.get(s.url("/v1/files/%FF"))).await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(status, &headers, &body, "%FF");
    assert_eq!(body["error"]["param"], "file_id", "{body}");
    // A multipart body without a boundary, and one with a broken boundary.
    for content_type in ["multipart/form-data", "multipart/form-data; boundary="] {
        let (status, headers, body) = send(
            &s,
            c.post(s.url("/v1/files"))
                .header("content-type", content_type)
                .body("--x\r\nnot a form"),
        )
        .await;
        assert_eq!(status, 400, "{content_type}: {body}");
        assert_envelope(status, &headers, &body, content_type);
        assert_eq!(body["error"]["code"], "invalid_multipart", "{body}");
    }
    // Unknown routes, and a body over a JSON route's limit (1 MiB).
    let (status, headers, body) = send(&s, c.get(s.url("/v1/nope"))).await;
    assert_eq!(status, 404);
    assert_envelope(status, &headers, &body, "404");
    let big = json!({"training_file": "x".repeat(2 << 20)});
    let (status, headers, body) = send(&s, c.post(s.url("/v1/fine_tuning/jobs")).json(&big)).await;
    assert_eq!(status, 413, "{body}");
    assert_envelope(status, &headers, &body, "413");
    assert_eq!(body["error"]["code"], "body_too_large");
    // A predict body that is not JSON.
    let (status, headers, body) = send(
        &s,
        c.post(s.url("/v1/models/ft:x/predict"))
            .header("content-type", "text/plain")
            .body("hi"),
    )
    .await;
    assert_eq!(status, 415);
    assert_envelope(status, &headers, &body, "415");
}

/// The `after` cursor, path ids, every string field of the JSON bodies (from the
/// document's own examples), the upload form's fields and an uploaded label: each
/// with a NUL is refused 400, naming it.
#[tokio::test]
async fn a_nul_in_any_string_parameter_is_refused_naming_it() {
    let s = TestServer::start().await;
    let (status, spec) = s.get("/openapi.json").await;
    assert_eq!(status, 200);
    let mut tried = 0;
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let method =
                reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let params: Vec<&Value> = op["parameters"]
                .as_array()
                .map(|p| p.iter().collect())
                .unwrap_or_default();
            // Every path parameter gets a harmless value but the one under test.
            let url_with = |nul_in: Option<&str>| {
                let mut url = path.clone();
                for p in &params {
                    if p["in"] == "path" {
                        let name = p["name"].as_str().expect("name");
                        let value = if Some(name) == nul_in { "a%00b" } else { "1" };
                        url = url.replace(&format!("{{{name}}}"), value);
                    }
                }
                url
            };
            for p in &params {
                let name = p["name"].as_str().expect("name");
                if p["schema"]["type"] != "string" || p["in"] == "header" {
                    // Headers cannot carry a NUL at all; numbers are not text.
                    continue;
                }
                let url = match p["in"].as_str() {
                    Some("path") => url_with(Some(name)),
                    _ => format!("{}?{name}=a%00b", url_with(None)),
                };
                let mut req = s.client.request(method.clone(), s.url(&url));
                if method == reqwest::Method::POST {
                    req = req.json(&json!({}));
                }
                let (status, headers, body) = send(&s, req).await;
                assert_eq!(status, 400, "{method} {url}: {body}");
                assert_envelope(status, &headers, &body, &url);
                assert_eq!(body["error"]["param"], name, "{method} {url}: {body}");
                tried += 1;
            }
            let Some(example) = json_example(&spec, op) else {
                continue;
            };
            for (field, bad) in with_a_nul_in_each_string(&example) {
                let url = url_with(None);
                let req = s.client.request(method.clone(), s.url(&url)).json(&bad);
                let (status, headers, body) = send(&s, req).await;
                assert_eq!(status, 400, "{method} {url} {field}: {body}");
                assert_envelope(status, &headers, &body, &field);
                assert_eq!(body["error"]["param"], field, "{method} {url}: {body}");
                tried += 1;
            }
        }
    }
    assert!(tried >= 20, "only {tried} parameters tried");

    // Job metadata, as the issue found it.
    let (status, body) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": "file-x", "metadata": {"k": "a\u{0}b"}}),
        )
        .await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("metadata.k")),
        "{body}"
    );
    // The upload form's text fields.
    for field in ["purpose", "format", "task_type"] {
        let mut form = reqwest::multipart::Form::new();
        if field != "purpose" {
            form = form.text("purpose", "fine-tune");
        }
        let form = form.text(field, "a\u{0}b").part(
            "file",
            reqwest::multipart::Part::bytes(b"{\"text\":\"a\",\"label\":\"x\"}\n".to_vec())
                .file_name("a.jsonl"),
        );
        let (status, body) = s.post_form("/v1/files", form).await;
        assert_eq!(
            (status, &body["error"]["param"]),
            (400, &json!(field)),
            "{body}"
        );
    }
    // A label, and a text, in an uploaded file.
    for (line, field) in [
        ("{\"text\":\"fine\",\"label\":\"neg\\u0000ative\"}", "label"),
        ("{\"text\":\"fi\\u0000ne\",\"label\":\"negative\"}", "text"),
    ] {
        let file = format!("{{\"text\":\"good\",\"label\":\"positive\"}}\n{line}\n");
        let (status, body) = s.upload("nul.jsonl", file.into_bytes()).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], "nul_character", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("line 2") && message.contains(field),
            "{body}"
        );
    }
    let (_, list) = s.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
    // The server is still well.
    let (status, _) = s
        .get("/v1/files?after=file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")
        .await;
    assert_eq!(status, 200);
}

/// The JSON request body an operation documents: its example, or its schema's
/// properties' examples.
fn json_example(spec: &Value, op: &Value) -> Option<Value> {
    let content = &op["requestBody"]["content"]["application/json"];
    if content.is_null() {
        return None;
    }
    if !content["example"].is_null() {
        return Some(content["example"].clone());
    }
    let reference = content["schema"]["$ref"].as_str()?;
    let name = reference.rsplit('/').next()?;
    let schema = &spec["components"]["schemas"][name];
    let mut example = serde_json::Map::new();
    for (field, property) in schema["properties"].as_object()? {
        if !property["example"].is_null() {
            example.insert(field.clone(), property["example"].clone());
        }
    }
    Some(Value::Object(example))
}

/// For each string in `value` (at any depth), the path of it and a copy of `value`
/// with a NUL in it.
fn with_a_nul_in_each_string(value: &Value) -> Vec<(String, Value)> {
    fn walk(at: &str, value: &Value, out: &mut Vec<(String, Value)>) {
        match value {
            Value::String(s) => out.push((at.to_owned(), Value::String(format!("{s}\u{0}")))),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let mut inner = Vec::new();
                    walk(&format!("{at}[{i}]"), item, &mut inner);
                    for (path, bad) in inner {
                        let mut copy = items.clone();
                        copy[i] = bad;
                        out.push((path, Value::Array(copy)));
                    }
                }
            }
            Value::Object(map) => {
                for (k, v) in map {
                    let here = if at.is_empty() {
                        k.clone()
                    } else {
                        format!("{at}.{k}")
                    };
                    let mut inner = Vec::new();
                    walk(&here, v, &mut inner);
                    for (path, bad) in inner {
                        let mut copy = map.clone();
                        copy.insert(k.clone(), bad);
                        out.push((path, Value::Object(copy)));
                    }
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", value, &mut out);
    out
}

/// Messages a user can act on: no type name of the server's, the field at fault named
/// where there is one, the place in the text where the body is not JSON.
#[tokio::test]
async fn error_messages_name_the_field_in_the_user_s_words() {
    let s = TestServer::start().await;
    let c = &s.client;
    let jobs = s.url("/v1/fine_tuning/jobs");
    let no_type_names = |body: &Value| {
        let message = body["error"]["message"].as_str().expect("message");
        for internal in [
            "struct",
            "Request",
            "Hyperparameters",
            "untagged",
            "PredictInput",
        ] {
            assert!(!message.contains(internal), "{internal} in {body}");
        }
    };
    // An array where an object belongs.
    let (status, headers, body) = send(&s, c.post(&jobs).json(&json!([]))).await;
    assert_eq!(status, 400, "{body}");
    assert_envelope(status, &headers, &body, "[]");
    no_type_names(&body);
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("must be a JSON object, not an array")),
        "{body}"
    );
    // A body cut off: where, not a made-up field.
    let (status, _, body) = send(
        &s,
        c.post(&jobs)
            .header("content-type", "application/json")
            .body(r#"{"base_model": "all-Mini"#),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["param"].is_null(), "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("line 1 column")),
        "{body}"
    );
    // A nested object of the wrong type names its field.
    let (status, _, body) = send(
        &s,
        c.post(&jobs).json(&json!({
            "base_model": "all-MiniLM-L6-v2", "training_file": "file-x", "hyperparameters": 3
        })),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "hyperparameters", "{body}");
    no_type_names(&body);
    // Query parameters of the wrong type, on every list.
    for list in [
        "/v1/files",
        "/v1/models",
        "/v1/fine_tuning/jobs",
        "/v1/webhooks",
    ] {
        let (status, headers, body) = send(&s, c.get(s.url(&format!("{list}?limit=abc")))).await;
        assert_eq!(status, 400, "{list}: {body}");
        assert_envelope(status, &headers, &body, list);
        assert_eq!(body["error"]["param"], "limit", "{list}: {body}");
        assert_eq!(
            body["error"]["message"], "limit must be a whole number",
            "{list}: {body}"
        );
    }
    // The document says which statuses a job list takes.
    let (_, doc) = s.get("/openapi.json").await;
    let status_param = doc["paths"]["/v1/fine_tuning/jobs"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "status")
        .expect("a status parameter")
        .clone();
    let schema = status_param["schema"].to_string();
    let resolved = if schema.contains("$ref") {
        doc["components"]["schemas"]["JobStatus"].to_string()
    } else {
        schema
    };
    for status in ["queued", "running", "succeeded", "paused"] {
        assert!(
            resolved.contains(status),
            "{status} in {status_param}: {resolved}"
        );
    }
}

/// A job that fails on the server's side tells its tenant what kind of failure it was
/// and a reference for the operator, never the server's paths or storage errors.
#[tokio::test]
async fn a_job_s_internal_failure_shows_no_server_internals() {
    let s = TestServer::start_with(&[("HONE_JOB_MAX_ATTEMPTS", "1")]).await;
    let rows = crate::support::two_class_rows(8, &["good film"], &["bad film"]);
    let (status, file) = s.upload("t.jsonl", crate::support::jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    // The stored object vanishes (an operator's mistake, a storage fault).
    let stored = s
        .data_dir
        .path()
        .join("artifacts/files")
        .join(file["id"].as_str().expect("id"));
    std::fs::remove_file(&stored).expect("remove the stored file");
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"]}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let done = s
        .wait_for_job(
            job["id"].as_str().expect("id"),
            std::time::Duration::from_secs(120),
        )
        .await;
    assert_eq!(done["status"], "failed", "{done}");
    let error = &done["error"];
    assert_eq!(error["code"], "storage_error", "{done}");
    let message = error["message"].as_str().expect("message");
    assert!(message.contains("(reference "), "{message}");
    for internal in [
        "/",
        "os error",
        "No such file",
        s.data_dir.path().to_str().expect("utf-8"),
    ] {
        assert!(!message.contains(internal), "{internal:?} in {message}");
    }
}
