//! hone as a drop-in for OpenAI's fine-tuning API: `openai_sdk.py` drives a live server
//! with the official `openai` Python SDK (PyPI, pinned by scripts/setup in
//! `.deps/openai`) through every call of the OpenAI section of the README, asserting
//! that each typed field it reads is filled. What the SDK cannot see (the stored
//! results file's bytes against the job's curves) is checked here over plain HTTP.

use std::time::Duration;

use crate::support::{repo_dir, TestServer};

#[tokio::test]
async fn the_official_openai_sdk_drives_hone_unchanged() {
    // Every epoch's checkpoint stays (the default keeps the last and the best: one
    // here), so that the checkpoints list has pages to walk.
    let s = TestServer::start_with(&[("HONE_CHECKPOINT_RETENTION", "all")]).await;
    let python = repo_dir().join(".deps/openai/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run scripts/setup",
        python.display()
    );
    let run = tokio::process::Command::new(&python)
        .arg(repo_dir().join("tests/e2e/openai_sdk.py"))
        .arg(&s.base)
        .arg(&s.key)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the SDK script took over 10 minutes")
        .expect("the SDK script runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the SDK script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.lines().last() == Some("ok"), "{stdout}");
    eprintln!("{stdout}");

    // The results file holds the job's curve: one row per step point, as the metrics
    // endpoint has it.
    let (status, jobs) = s.get("/v1/fine_tuning/jobs?metadata[case]=top-level").await;
    assert_eq!(status, 200, "{jobs}");
    let job = &jobs["data"][0];
    let (_, metrics) = s
        .get(&format!(
            "/v1/fine_tuning/jobs/{}/metrics",
            job["id"].as_str().expect("id")
        ))
        .await;
    let file = job["result_files"][0].as_str().expect("a results file");
    let csv = s
        .client
        .get(s.url(&format!("/v1/files/{file}/content")))
        .send()
        .await
        .expect("download");
    assert_eq!(
        csv.headers()["content-type"].to_str().expect("type"),
        "text/csv"
    );
    let text = csv.text().await.expect("text");
    let steps = metrics["steps"].as_array().expect("steps");
    assert_eq!(text.lines().count(), steps.len() + 1, "{text}");
    let last = text.lines().last().expect("a row");
    let loss = steps[steps.len() - 1]["train_loss"].as_f64().expect("loss");
    assert!(last.contains(&format!(",{loss},")), "{last} vs {loss}");

    // An unknown list parameter is refused by name, never ignored.
    let (status, body) = s.get("/v1/fine_tuning/jobs?metadta[case]=x").await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "metadta[case]");
    let (status, body) = s.get("/v1/files?purpsoe=fine-tune").await;
    assert_eq!(status, 400, "{body}");
}
