//! The live API fuzzed against its own OpenAPI document with schemathesis (PyPI; set up
//! by scripts/setup in `.deps/fuzz`): thousands of generated requests, valid and not,
//! to every operation. No answer may be a 5xx, and every answer must be one the
//! document declares, with the declared content type, headers and schema.
//!
//! `positive_data_acceptance` is left out: it expects every schema-valid request to
//! succeed, but a valid-looking request can name a file or model that does not exist,
//! which is a 4xx by design. The run is deterministic, so a failure reproduces.

use std::time::Duration;

use crate::support::{jsonl, repo_dir, TestServer};

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
        .args(["-m", "schemathesis.cli", "run"])
        .arg(s.url("/openapi.json"))
        // The key goes on every request; `ignored_auth` (in `all`) also sends requests
        // without it and checks they are refused.
        .args(["--header", &format!("Authorization: Bearer {}", s.key)])
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
            "--max-examples",
            "25",
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
