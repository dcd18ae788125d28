//! The dashboard at /ui, in a real browser against a real server: `ui/drive.mjs`
//! (puppeteer-core driving the system's headless Chromium) signs in with the key,
//! uploads a bad file and sees its line, uploads a good one, starts a job on the real
//! base model, sees the loss curve and the job succeed, publishes a checkpoint,
//! predicts, and cancels a second job. Every page works offline: only the server's host resolves.
//!
//! `E2E_UI_SCREENSHOTS=docs` keeps the screenshots of each page in that folder (how
//! the README's pictures are made); otherwise they go to a temporary folder.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{jsonl, repo_dir, two_class_rows, TestServer};

/// Loaded from a name that is neither `localhost` nor `127.0.0.1`, as a deployment
/// serves it (mapped to 127.0.0.1 by Chromium's resolver rules).
const HOST: &str = "hone.test";

#[tokio::test]
async fn dashboard_signs_in_uploads_trains_and_predicts_in_headless_chromium() {
    let deps = repo_dir().join(".deps/ui-test");
    assert!(
        deps.join("node_modules/puppeteer-core").is_dir(),
        "{} is missing: scripts/setup installs puppeteer-core there",
        deps.display()
    );
    // Every epoch's checkpoint stays (the default keeps the last and the best), so the
    // job page shows one Publish button per epoch.
    let s = TestServer::start_with(&[("HONE_CHECKPOINT_RETENTION", "all")]).await;
    check_headers(&s).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let rows = two_class_rows(
        40,
        &["a great film", "loved it", "wonderful acting"],
        &["an awful film", "hated it", "dreadful acting"],
    );
    let good = dir.path().join("reviews.jsonl");
    std::fs::write(&good, jsonl(&rows)).expect("write good file");
    let bad = dir.path().join("broken.jsonl");
    let mut bytes = jsonl(&rows[..2]);
    bytes.extend_from_slice(b"{\"text\": \"no label on line 3\"}\n");
    bytes.extend_from_slice(&jsonl(&rows[2..4]));
    std::fs::write(&bad, bytes).expect("write bad file");
    let out = match std::env::var_os("E2E_UI_SCREENSHOTS") {
        Some(d) => repo_dir().join(d),
        None => dir.path().join("shots"),
    };
    std::fs::create_dir_all(&out).expect("screenshot folder");

    let port = s.base.rsplit(':').next().expect("port in base URL");
    let chromium = std::env::var("HONE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let child = tokio::process::Command::new("node")
        .arg(repo_dir().join("tests/e2e/ui/drive.mjs"))
        .env("HONE_URL", format!("http://{HOST}:{port}"))
        .env("HONE_API_KEY", &s.key)
        .env("UI_GOOD", &good)
        .env("UI_BAD", &bad)
        .env("UI_OUT", &out)
        .env("UI_TEST_DEPS", &deps)
        .env("HONE_CHROMIUM", chromium)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node (Node.js) runs the browser driver");
    let output = tokio::time::timeout(Duration::from_secs(400), child.wait_with_output())
        .await
        .expect("the browser run did not finish within 400 s")
        .expect("the driver's output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("the driver printed no report ({e}); its stderr:\n{stderr}"));
    let shown = serde_json::to_string_pretty(&report).unwrap_or_default();
    assert!(
        output.status.success() && report["failure"].is_null(),
        "the dashboard run failed (screenshots in {}):\n{shown}\n--- stderr ---\n{stderr}",
        out.display()
    );
    check_report(&report, &shown);
    eprintln!(
        "dashboard driven in headless Chromium: {}",
        report["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| format!("{} at {} ms", s["name"].as_str().unwrap_or("?"), s["at_ms"]))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// `/` redirects to `/ui`, and every asset comes with its type and a CSP that allows
/// no inline script and no other origin.
async fn check_headers(s: &TestServer) {
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = plain.get(s.url("/")).send().await.expect("GET /");
    assert!(r.status().is_redirection(), "/: {}", r.status());
    assert_eq!(r.headers()["location"], "/ui");
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
        ("/ui/vendor/uPlot.iife.min.js", "text/javascript"),
        ("/ui/vendor/uPlot.min.css", "text/css"),
    ] {
        let r = plain.get(s.url(path)).send().await.expect("GET asset");
        assert_eq!(r.status(), 200, "{path}");
        let header = |name: &str| {
            r.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned()
        };
        assert!(
            header("content-type").starts_with(kind),
            "{path}: {}",
            header("content-type")
        );
        let csp = header("content-security-policy");
        for rule in [
            "script-src 'self'",
            "connect-src 'self'",
            "default-src 'none'",
        ] {
            assert!(csp.contains(rule), "{path}: CSP {csp:?} lacks {rule:?}");
        }
        assert!(!csp.contains("unsafe-inline"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options"), "nosniff", "{path}");
    }
    let page = plain
        .get(s.url("/ui"))
        .send()
        .await
        .expect("GET /ui")
        .text()
        .await
        .expect("page");
    for tag in page.split("<script").skip(1) {
        assert!(
            tag.split('>').next().unwrap_or_default().contains("src="),
            "an inline script in /ui: <script{tag}"
        );
    }
}

fn check_report(r: &Value, shown: &str) {
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    assert!(s("landed_on").ends_with("/ui"), "{shown}");
    assert_eq!(r["foreign_requests"], serde_json::json!([]), "{shown}");
    // The rejected key (401) and file (400) are logged by Chromium; nothing else may be:
    // no uncaught exception, no CSP refusal.
    let errors: Vec<&str> = r["console_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|e| !(e.contains("status of 401") || e.contains("status of 400")))
        .collect();
    assert!(errors.is_empty(), "console errors: {errors:?}\n{shown}");
    assert_eq!(s("wrong_key_message"), "That key is not valid.", "{shown}");
    assert_eq!(r["key_in_session_storage"], true, "{shown}");
    assert_eq!(r["key_in_url"], false, "{shown}");
    assert!(s("upload_error").contains("line 3"), "{shown}");
    assert_eq!(r["error_line"]["line"], "3", "{shown}");
    assert!(
        r["error_line"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("no label on line 3")),
        "{shown}"
    );
    assert!(s("upload_ok").contains("40 examples"), "{shown}");
    assert!(s("job_id").starts_with("ftjob-"), "{shown}");
    let cells: Vec<u64> = r["confusion_cells"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c.as_str()?.parse().ok())
        .collect();
    assert_eq!(cells.len(), 4, "a 2×2 confusion matrix: {shown}");
    assert_eq!(cells.iter().sum::<u64>(), 8, "8 held-out examples: {shown}");
    assert!(s("data_report").contains("Label balance"), "{shown}");
    assert_eq!(r["checkpoint_buttons"], 4, "one per epoch: {shown}");
    assert!(
        s("cancelled").starts_with("ftjob-") && s("cancelled") != s("job_id"),
        "{shown}"
    );
    let predictions = r["predictions"].as_array().expect("predictions");
    assert_eq!(predictions.len(), 2, "{shown}");
    for p in predictions {
        assert_eq!(p["bars"], 2, "a score bar per label: {shown}");
        assert!(
            matches!(p["top"].as_str(), Some("positive" | "negative")),
            "{shown}"
        );
    }
    let shots: Vec<PathBuf> = r["screenshots"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(PathBuf::from))
        .collect();
    assert_eq!(shots.len(), 4, "{shown}");
    for shot in shots {
        let png = std::fs::read(&shot).unwrap_or_default();
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 20_000,
            "{} is not a picture of a page ({} bytes)",
            shot.display(),
            png.len()
        );
    }
}
