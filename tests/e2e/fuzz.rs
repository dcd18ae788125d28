//! The live API fuzzed against its own OpenAPI document with schemathesis (PyPI; set up
//! by scripts/setup in `.deps/fuzz`), in two runs:
//! - thousands of generated requests, valid and not, to every operation: no answer may
//!   be a 5xx, and every answer must be one the document declares, with the declared
//!   content type, headers and schema. `positive_data_acceptance` is left out of this
//!   run: a generated request that the schema allows can name a file that does not
//!   exist or pair a PNG with `format=csv`, which is a 4xx by design;
//! - the document's own examples, with every check, `positive_data_acceptance`
//!   included: what the documentation shows is a request the server accepts. Its
//!   placeholders (a file id, a model id, a webhook URL) are replaced with resources
//!   the test created, as a user would put in their own (`fuzz_hooks.py`).
//!
//! Both runs are deterministic, so a failure reproduces.

use std::time::Duration;

use serde_json::json;

use crate::support::{jsonl, repo_dir, two_class_rows, TestServer};

/// Runs schemathesis against `s`'s document with `args` (and `env`), asserting that
/// it passes.
async fn schemathesis(s: &TestServer, args: &[&str], env: &[(&str, String)]) {
    let python = repo_dir().join(".deps/fuzz/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run scripts/setup",
        python.display()
    );
    // schemathesis keeps a cache in its working directory: not in the repository.
    let workdir = tempfile::tempdir().expect("tempdir");
    let run = tokio::process::Command::new(&python)
        .current_dir(workdir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .args(["-m", "schemathesis.cli", "run"])
        .arg(s.url("/openapi.json"))
        // The key goes on every request; `ignored_auth` (in `all`) also sends requests
        // without it and checks they are refused.
        .args(["--header", &format!("Authorization: Bearer {}", s.key)])
        .args(args)
        .args([
            "--generation-deterministic",
            "--request-timeout",
            "30",
            "--no-color",
        ])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("schemathesis took over 10 minutes")
        .expect("schemathesis runs");
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!(
        "{}",
        report
            .lines()
            .filter(|l| l.contains("generated") || l.contains("passed"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[tokio::test]
async fn generated_requests_never_get_a_5xx_and_every_answer_matches_the_spec() {
    let s = TestServer::start().await;
    // Something for the list endpoints to list.
    let (status, file) = s
        .upload(
            "seed.jsonl",
            jsonl(&[("good", "positive"), ("bad", "negative")]),
        )
        .await;
    assert_eq!(status, 200, "{file}");
    let args = [
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--max-examples",
        "25",
    ];
    schemathesis(&s, &args, &[]).await;
}

#[tokio::test]
async fn the_spec_s_examples_are_requests_the_server_accepts() {
    let s = TestServer::start_with(&[
        ("HONE_WEBHOOK_ALLOW_HTTP", "true"),
        ("HONE_WEBHOOK_ALLOW_PRIVATE_TARGETS", "true"),
    ])
    .await;
    // The resources the examples name: a training file and a model trained on it.
    let rows = two_class_rows(20, &["a great film"], &["an awful film"]);
    let (status, file) = s.upload("train.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let file_id = file["id"].as_str().expect("id").to_owned();
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({"base_model": "all-MiniLM-L6-v2", "training_file": file_id,
                    "method": {"type": "feature_extraction"},
                    "hyperparameters": {"epochs": 1, "max_seq_len": 16}}),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let job_id = job["id"].as_str().expect("id").to_owned();
    let job = s.wait_for_job(&job_id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let model = job["fine_tuned_model"].as_str().expect("model").to_owned();
    // Nothing listens there: webhook endpoints are only created, never delivered to.
    let webhook_url = "http://127.0.0.1:9/hooks/hone".to_owned();

    let hooks = repo_dir().join("tests/e2e");
    let env = [
        ("PYTHONPATH", hooks.display().to_string()),
        ("SCHEMATHESIS_HOOKS", "fuzz_hooks".to_owned()),
        ("HONE_FUZZ_FILE_ID", file_id),
        ("HONE_FUZZ_JOB_ID", job_id),
        ("HONE_FUZZ_MODEL_ID", model),
        ("HONE_FUZZ_WEBHOOK_URL", webhook_url),
    ];
    schemathesis(&s, &["--phases", "examples", "--checks", "all"], &env).await;
}
