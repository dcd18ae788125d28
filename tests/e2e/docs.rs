//! The docs at /docs, in a real browser: headless Chromium runs Swagger UI's JavaScript,
//! which must fetch /openapi.json and render every operation using nothing but the assets
//! inside the binary, as on a machine with no network.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::TestServer;

/// The host name Chromium loads the page from (mapped to 127.0.0.1). Not `localhost`
/// nor `127.0.0.1`: Swagger UI behaves differently on those (it skips its online
/// validator), and the test must see the page as a deployment serves it.
const HOST: &str = "hone.test";

/// Operations named here must be rendered with these summaries; together with the
/// check that every operation in /openapi.json has a block, this shows that Swagger UI
/// rendered our document and not an empty or default one.
const EXPECTED: &[(&str, &str, &str)] = &[
    ("post", "/v1/files", "Upload a dataset."),
    ("get", "/v1/files", "List files, newest first."),
    ("post", "/v1/fine_tuning/jobs", "Create a fine-tuning job."),
    ("get", "/v1/fine_tuning/jobs/{job_id}", "Get a job: status"),
    (
        "post",
        "/v1/models/{model}/predict",
        "Classify texts or images with a fine-tuned model.",
    ),
    ("get", "/healthz", "Liveness"),
];

/// What Chromium left behind after one headless run.
struct Render {
    dom: String,
    stderr: String,
    screenshot: Vec<u8>,
    /// URLs the page requested (from Chromium's NetLog), Chromium's own traffic left out.
    page_requests: Vec<String>,
    elapsed: Duration,
}

#[tokio::test]
async fn swagger_ui_renders_the_api_offline_in_headless_chromium() {
    let s = TestServer::start().await;
    let port = s.base.rsplit(':').next().expect("port in base URL");
    let (status, spec) = s.get("/openapi.json").await;
    assert_eq!(status, 200, "{spec}");

    // /docs sends the browser to /docs/, where the page's relative asset URLs resolve.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let r = no_redirects
        .get(s.url("/docs"))
        .send()
        .await
        .expect("GET /docs");
    assert!(r.status().is_redirection(), "/docs: {}", r.status());
    assert_eq!(r.headers()["location"], "/docs/");

    let out = tempfile::tempdir().expect("tempdir");
    let origin = format!("http://{HOST}:{port}");
    let run = render(&format!("{origin}/docs/"), out.path()).await;
    // Every check adds to `missing`, so one failed run reports everything it lacked.
    let mut missing: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            missing.push(what);
        }
    };

    // Offline: the page asked for nothing but the server's own URLs.
    let foreign: Vec<&String> = run
        .page_requests
        .iter()
        .filter(|u| !u.starts_with(&format!("{origin}/")))
        .collect();
    let hint = if foreign.iter().any(|u| u.contains("validator.swagger.io")) {
        " (Swagger UI's online validator badge: configure SwaggerUi with \
         `Config::default().validator_url(\"none\")`)"
    } else {
        ""
    };
    check(
        foreign.is_empty(),
        format!(
            "the docs page requested URLs outside the server (a CDN or other host): \
             {foreign:?}{hint}"
        ),
    );
    for asset in [
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
        "/openapi.json",
    ] {
        check(
            run.page_requests.contains(&format!("{origin}{asset}")),
            format!(
                "the page never requested {asset}; it requested {:?}",
                run.page_requests
            ),
        );
    }

    // Swagger UI ran and rendered our document, not an error.
    check(
        !run.dom.contains("Failed to load API definition"),
        "Swagger UI says: Failed to load API definition".to_owned(),
    );
    let title = spec["info"]["title"].as_str().expect("info.title");
    let version = spec["info"]["version"].as_str().expect("info.version");
    // `<h2 class="title">hone<span><small><pre class="version"> 0.1.0 </pre>...`
    let heading = run
        .dom
        .split_once("<h2 class=\"title\">")
        .and_then(|(_, rest)| rest.split_once("</h2>"))
        .map(|(h, _)| visible_text(h))
        .unwrap_or_default();
    check(
        heading.starts_with(&format!("{title} {version} ")),
        format!(
            "the page heading is {heading:?}, not the API's title {title:?} and version \
             {version:?} from /openapi.json"
        ),
    );
    check(
        run.dom.contains("href=\"/openapi.json\""),
        "the page does not link the document it loaded, /openapi.json".to_owned(),
    );

    let blocks = opblocks(&run.dom);
    let mut documented = Vec::new();
    for (path, item) in spec["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            documented.push((method.clone(), path.clone()));
        }
    }
    check(
        documented.len() >= EXPECTED.len(),
        format!("/openapi.json documents only {documented:?}"),
    );
    let unrendered: Vec<String> = documented
        .iter()
        .filter(|(m, p)| !blocks.iter().any(|b| &b.method == m && &b.path == p))
        .map(|(m, p)| format!("{} {p}", m.to_uppercase()))
        .collect();
    check(
        unrendered.is_empty(),
        format!(
            "{} of {} documented operations have no rendered block: {unrendered:?} \
             (rendered: {:?})",
            unrendered.len(),
            documented.len(),
            blocks
                .iter()
                .map(|b| format!("{} {}", b.method.to_uppercase(), b.path))
                .collect::<Vec<_>>()
        ),
    );
    for (method, path, summary) in EXPECTED {
        let block = blocks
            .iter()
            .find(|b| b.method == *method && b.path == *path);
        let op = format!("{} {path}", method.to_uppercase());
        match block {
            None => check(false, format!("{op} is not rendered")),
            Some(b) => check(
                b.summary.contains(summary),
                format!(
                    "{op} is rendered with the summary {:?}, not {summary:?}",
                    b.summary
                ),
            ),
        }
    }

    // A real picture of the rendered page: a page of plain text (a 404's JSON) makes a
    // PNG of about 20 kB, the rendered UI (text, coloured method badges) over 200 kB.
    check(
        run.screenshot.starts_with(b"\x89PNG\r\n\x1a\n") && run.screenshot.len() > 50_000,
        format!(
            "the screenshot is missing or near-empty ({} bytes)",
            run.screenshot.len()
        ),
    );
    let (blocks, requests) = (blocks.len(), run.page_requests.len());
    if !missing.is_empty() {
        std::fs::write(out.path().join("dom.html"), &run.dom).expect("write dom.html");
        let kept = out.keep();
        panic!(
            "Swagger UI in headless Chromium:\n- {}\n\
             --- chromium stderr (last lines, D-Bus noise left out) ---\n{}\n\
             --- rendered text ---\n{}\n(the DOM, screenshot and NetLog are kept in {})",
            missing.join("\n- "),
            tail(&run.stderr, 40),
            excerpt(&visible_text(&run.dom), 1500),
            kept.display()
        );
    }
    eprintln!(
        "docs rendered in headless Chromium in {:.1} s: {blocks} operation blocks, \
         {requests} page requests",
        run.elapsed.as_secs_f64()
    );
}

/// Runs headless Chromium once on `url`: the DOM after Swagger UI's scripts ran, a
/// screenshot and a NetLog of every request, all into `dir`. Every host but `HOST`
/// resolves to nothing, so a page that needed a CDN could not render.
async fn render(url: &str, dir: &Path) -> Render {
    let chromium = std::env::var("HONE_CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let screenshot = dir.join("docs.png");
    let netlog = dir.join("netlog.json");
    let started = Instant::now();
    let child = tokio::process::Command::new(&chromium)
        .args([
            "--headless",
            "--no-sandbox", // the tests run as root
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--hide-scrollbars",
            "--window-size=1280,2000",
            // Virtual time runs while the page is idle and waits for pending fetches.
            "--virtual-time-budget=15000",
        ])
        .arg(format!(
            "--host-resolver-rules=MAP {HOST} 127.0.0.1, MAP * ~NOTFOUND"
        ))
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(format!("--log-net-log={}", netlog.display()))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {chromium:?} ({e}): scripts/setup installs Debian's chromium")
        });
    let output = tokio::time::timeout(Duration::from_secs(180), child.wait_with_output())
        .await
        .expect("chromium did not finish within 180 s")
        .expect("chromium's output");
    let elapsed = started.elapsed();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "chromium failed ({}):\n{}",
        output.status,
        tail(&stderr, 40)
    );
    let log = std::fs::read(&netlog).unwrap_or_default();
    let log: Value = serde_json::from_slice(&log).unwrap_or_else(|e| {
        panic!(
            "chromium's NetLog is not JSON ({e}):\n{}",
            tail(&stderr, 40)
        )
    });
    Render {
        dom: String::from_utf8_lossy(&output.stdout).into_owned(),
        screenshot: std::fs::read(&screenshot).unwrap_or_default(),
        page_requests: page_requests(&log),
        stderr,
        elapsed,
    }
}

/// The URLs of the requests the page made: the page itself and what it asked for.
/// Chromium's own traffic (updates, accounts, autofill) has no page origin as initiator.
fn page_requests(log: &Value) -> Vec<String> {
    let start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"].as_u64();
    let mut urls: Vec<String> = Vec::new();
    for e in log["events"].as_array().into_iter().flatten() {
        let p = &e["params"];
        let from_page = p["request_type"] == "main frame"
            || p["initiator"]
                .as_str()
                .is_some_and(|i| i.starts_with(&format!("http://{HOST}:")));
        if e["type"].as_u64() == start_job && from_page {
            if let Some(url) = p["url"].as_str() {
                if !urls.iter().any(|u| u == url) {
                    urls.push(url.to_owned());
                }
            }
        }
    }
    urls
}

/// One rendered operation: `<div class="opblock opblock-post" ...>` with its path and
/// summary.
struct OpBlock {
    method: String,
    path: String,
    summary: String,
}

fn opblocks(dom: &str) -> Vec<OpBlock> {
    const START: &str = "class=\"opblock opblock-";
    dom.split(START)
        .skip(1)
        .map(|block| {
            let method = block
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or_default()
                .to_owned();
            let path = attr(block, "data-path").unwrap_or_default();
            let summary = block
                .split_once("class=\"opblock-summary-description\"")
                .map(|(_, rest)| visible_text(rest.split("</div>").next().unwrap_or_default()))
                .unwrap_or_default();
            OpBlock {
                method,
                path: unescape(&path),
                summary,
            }
        })
        .collect()
}

fn attr(html: &str, name: &str) -> Option<String> {
    let (_, rest) = html.split_once(&format!("{name}=\""))?;
    rest.split_once('"').map(|(v, _)| v.to_owned())
}

/// The text of an HTML fragment, tags dropped and whitespace squeezed.
fn visible_text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    unescape(&out.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// The last lines of Chromium's stderr, without its complaints about the missing D-Bus.
fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().filter(|l| !l.contains(":ERROR:dbus/")).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn excerpt(s: &str, chars: usize) -> String {
    let mut out: String = s.chars().take(chars).collect();
    if out.len() < s.len() {
        out.push_str(" …");
    }
    out
}
