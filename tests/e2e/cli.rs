//! The client commands (`hone files|jobs|predict|models`), run as a user runs them: the
//! real binary as a subprocess with `HONE_URL` and `HONE_API_KEY`, against a live
//! server. One job is uploaded, created, watched to its end (plain progress lines, as
//! stdout is a pipe, then the evaluation summary), listed, its events read, its model
//! used for predictions (arguments, and a JSONL file in batches), listed and downloaded;
//! errors print the server's message and exit 1 (usage errors 2); a cancelled job's
//! watch exits 1.

use std::path::Path;
use std::process::Output;

use serde_json::{json, Value};

use crate::support::{hone_bin, jsonl, two_class_rows, TestServer};

/// `hone <args>` in `dir` against `s`, to its end.
async fn hone(s: &TestServer, dir: &Path, args: &[&str]) -> Output {
    tokio::process::Command::new(hone_bin())
        .args(args)
        .current_dir(dir)
        .env("HONE_URL", &s.base)
        .env("HONE_API_KEY", &s.key)
        .env_remove("HONE_DATABASE_URL")
        .output()
        .await
        .expect("run hone")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// Runs `hone <args>` and fails the test unless it exits 0; its stdout.
async fn ok(s: &TestServer, dir: &Path, args: &[&str]) -> String {
    let out = hone(s, dir, args).await;
    assert!(
        out.status.success(),
        "hone {args:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[tokio::test]
async fn the_cli_uploads_trains_watches_predicts_and_downloads_against_a_live_server() {
    let s = TestServer::start_with(&[("HONE_DEVICE", "cpu")]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let rows = two_class_rows(
        40,
        &["a great film", "loved it", "wonderful acting"],
        &["an awful film", "hated it", "dreadful acting"],
    );
    std::fs::write(d.join("reviews.jsonl"), jsonl(&rows)).expect("write dataset");

    let file: Value = serde_json::from_str(&ok(&s, d, &["files", "upload", "reviews.jsonl"]).await)
        .expect("the file object");
    assert_eq!(file["examples"], 40, "{file}");
    let file_id = file["id"].as_str().expect("id");
    assert!(ok(&s, d, &["files", "list"]).await.contains(file_id));

    let job = ok(
        &s,
        d,
        &[
            "jobs",
            "create",
            "-m",
            "all-MiniLM-L6-v2",
            "-f",
            file_id,
            "--method",
            "feature_extraction",
            "--epochs",
            "3",
            "-H",
            "max_seq_len=16",
            "--suffix",
            "cli",
            "--metadata",
            "via=cli",
            "-q",
        ],
    )
    .await;
    let job = job.trim().to_owned();
    assert!(job.starts_with("ftjob-"), "{job}");

    // stdout is a pipe: plain progress lines, then the summary.
    let watched = ok(&s, d, &["jobs", "watch", &job]).await;
    assert!(watched.contains("Job created and queued"), "{watched}");
    let steps: Vec<&str> = watched
        .lines()
        .filter(|l| l.starts_with("epoch ") && l.contains("  step "))
        .collect();
    assert!(!steps.is_empty(), "progress lines in\n{watched}");
    assert!(
        steps.iter().all(|l| l.contains("  loss ")),
        "every step line has the loss: {steps:?}"
    );
    assert!(
        steps
            .iter()
            .any(|l| l.starts_with("epoch 3/3  step ") && l.contains("  ETA ")),
        "{steps:?}"
    );
    let summary = format!("Job {job} succeeded");
    assert!(watched.contains(&summary), "{watched}");
    for part in [
        "Fine-tuned model: ft:",
        "Validation (",
        "macro-F1",
        "  CLASS ",
        "  negative ",
        "  positive ",
    ] {
        assert!(watched.contains(part), "{part:?} in\n{watched}");
    }
    let (_, finished) = s.get(&format!("/v1/fine_tuning/jobs/{job}")).await;
    let model = finished["fine_tuned_model"]
        .as_str()
        .expect("a model")
        .to_owned();
    assert!(watched.contains(&format!("Fine-tuned model: {model}")));

    let listed = ok(&s, d, &["jobs", "list"]).await;
    assert!(listed.starts_with("ID "), "{listed}");
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&job) && l.contains("succeeded") && l.contains(&model)),
        "{listed}"
    );
    let page: Value =
        serde_json::from_str(&ok(&s, d, &["jobs", "list", "--json"]).await).expect("the page");
    assert_eq!(page["data"][0]["metadata"], json!({"via": "cli"}), "{page}");

    let events = ok(&s, d, &["jobs", "events", &job, "--limit", "100"]).await;
    let first = events.lines().next().expect("events");
    assert!(
        first.ends_with("Job created and queued"),
        "oldest first: {events}"
    );
    let events = json_lines(&ok(&s, d, &["jobs", "events", &job, "--json", "--limit", "3"]).await);
    assert_eq!(events.len(), 3);

    predictions(&s, d, &model).await;

    let models = ok(&s, d, &["models", "list"]).await;
    assert!(models.lines().any(|l| l.starts_with(&model)), "{models}");
    assert!(models
        .lines()
        .any(|l| l.starts_with("all-MiniLM-L6-v2 ") && l.contains("system")));
    let saved = ok(&s, d, &["models", "download", &model, "-o", "model.tar.gz"]).await;
    assert_eq!(saved.trim(), "model.tar.gz");
    let listing = std::process::Command::new("tar")
        .args(["-tzf", "model.tar.gz"])
        .current_dir(d)
        .output()
        .expect("tar runs");
    assert!(listing.status.success(), "a gzip tar");
    let names = String::from_utf8_lossy(&listing.stdout);
    assert!(
        names.contains("/README.md") && names.contains("/model.safetensors"),
        "{names}"
    );
    assert!(!d.join("model.tar.gz.part").exists());

    errors(&s, d, &model).await;
    cancelled(&s, d, file_id).await;
}

/// Predictions from arguments and from a JSONL file sent in batches: one JSON line per
/// input, in order. (Objects, `{"text", "text_pair"}`, are for models trained on pairs.)
async fn predictions(s: &TestServer, d: &Path, model: &str) {
    let out = json_lines(&ok(s, d, &["predict", model, "a great film", "an awful film"]).await);
    assert_eq!(out.len(), 2);
    for p in &out {
        assert!(p["label"] == "positive" || p["label"] == "negative", "{p}");
    }
    let lines = [
        json!("a great film"),
        json!("an awful film"),
        json!("loved it"),
        json!("hated it"),
        json!("an awful film"),
    ];
    let mut text = String::new();
    for (i, l) in lines.iter().enumerate() {
        text.push_str(&l.to_string());
        text.push('\n');
        if i == 2 {
            text.push('\n'); // blank lines are skipped
        }
    }
    std::fs::write(d.join("inputs.jsonl"), text).expect("write inputs");
    let from_file = json_lines(
        &ok(
            s,
            d,
            &[
                "predict",
                model,
                "--file",
                "inputs.jsonl",
                "--batch-size",
                "2",
            ],
        )
        .await,
    );
    assert_eq!(from_file.len(), 5);
    let same = |a: &Value, b: &Value| {
        a["label"] == b["label"]
            && (a["score"].as_f64().unwrap_or(-1.0) - b["score"].as_f64().unwrap_or(1.0)).abs()
                < 1e-4
    };
    assert!(same(&from_file[0], &out[0]), "{from_file:?} {out:?}");
    assert!(same(&from_file[1], &out[1]) && same(&from_file[4], &out[1]));

    std::fs::write(d.join("bad.jsonl"), "\"fine\"\nnot json\n").expect("write");
    let bad = hone(s, d, &["predict", model, "--file", "bad.jsonl"]).await;
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        stderr(&bad).starts_with("error: bad.jsonl line 2: not JSON"),
        "{}",
        stderr(&bad)
    );
}

/// The server's message on stderr with exit 1; usage errors exit 2.
async fn errors(s: &TestServer, d: &Path, model: &str) {
    let unknown = "ftjob-0123456789abcdef0123456789abcdef";
    let (status, body) = s.get(&format!("/v1/fine_tuning/jobs/{unknown}")).await;
    assert_eq!(status, 404, "{body}");
    let message = body["error"]["message"].as_str().expect("a message");
    for args in [
        ["jobs", "get", unknown],
        ["jobs", "watch", unknown],
        ["jobs", "cancel", unknown],
    ] {
        let out = hone(s, d, &args).await;
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(stderr(&out), format!("error: {message}\n"), "{args:?}");
        assert!(out.stdout.is_empty());
    }

    // An error that names the parameter at fault.
    let out = hone(
        s,
        d,
        &[
            "jobs",
            "create",
            "-m",
            "all-MiniLM-L6-v2",
            "-f",
            "file-nope",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ") && err.trim_end().ends_with("(param: training_file)"),
        "{err}"
    );

    let out = hone(s, d, &["predict", model, "--file", "missing.jsonl"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("error: missing.jsonl: "),
        "{}",
        stderr(&out)
    );

    let out = hone(s, d, &["jobs", "create", "-f", "file-x"]).await;
    assert_eq!(
        out.status.code(),
        Some(2),
        "a missing flag is a usage error"
    );
    let out = tokio::process::Command::new(hone_bin())
        .args(["jobs", "list"])
        .env("HONE_URL", &s.base)
        .env_remove("HONE_API_KEY")
        .output()
        .await
        .expect("run hone");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("HONE_API_KEY"), "{}", stderr(&out));

    let down = tokio::process::Command::new(hone_bin())
        .args(["models", "list"])
        .env("HONE_URL", "http://127.0.0.1:9")
        .env("HONE_API_KEY", &s.key)
        .output()
        .await
        .expect("run hone");
    assert_eq!(down.status.code(), Some(1));
    assert!(stderr(&down).starts_with("error: cannot reach http://127.0.0.1:9: "));
}

/// `jobs cancel`, then a watch of the cancelled job ends at once with exit 1.
async fn cancelled(s: &TestServer, d: &Path, file_id: &str) {
    let job = ok(
        s,
        d,
        &[
            "jobs",
            "create",
            "-m",
            "all-MiniLM-L6-v2",
            "-f",
            file_id,
            // Long enough that the cancel lands before it ends (feature extraction's
            // 100 epochs on cached features take about a second).
            "--method",
            "full",
            "--epochs",
            "100",
            "-q",
        ],
    )
    .await;
    let job = job.trim();
    let out = ok(s, d, &["jobs", "cancel", job]).await;
    assert!(out.starts_with(job), "{out}");
    let watched = hone(s, d, &["jobs", "watch", job]).await;
    assert_eq!(watched.status.code(), Some(1), "{}", stdout(&watched));
    assert!(
        stdout(&watched).contains(&format!("Job {job} cancelled")),
        "{}",
        stdout(&watched)
    );
}
