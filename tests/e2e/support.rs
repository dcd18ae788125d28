//! Starting servers and databases for the tests.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, Executor, PgConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `hone` binary under test: this build's, or the one `E2E_HONE_BIN` names (a
/// copy kept apart when several checkouts share one target directory, whose
/// `target/debug/hone` is whichever was built last; or another build to compare with).
pub fn hone_bin() -> PathBuf {
    std::env::var_os("E2E_HONE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_hone")))
}

pub fn models_dir() -> PathBuf {
    repo_dir().join(".deps/models")
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("hone_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(ADMIN_URL)
            .await
            .expect("Postgres must run on 127.0.0.1:5432 (trust auth, user postgres)");
        conn.execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create test database");
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }

    /// A database name that does not exist yet (for testing that hone creates it).
    pub fn unborn() -> Self {
        let name = format!("hone_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
        Self { name, url }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(ADMIN_URL).await {
                    let _ = conn
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// `hone <command>` on the database at `db_url` with `data_dir`, killed when dropped;
/// its logs on stderr when TEST_LOG is set.
pub fn hone_command(
    command: &str,
    db_url: &str,
    data_dir: &std::path::Path,
    env: &[(&str, &str)],
) -> Command {
    let verbose = std::env::var_os("TEST_LOG").is_some();
    let mut cmd = Command::new(hone_bin());
    cmd.arg(command)
        .env("HONE_DATABASE_URL", db_url)
        .env("HONE_LISTEN", "127.0.0.1:0")
        .env("HONE_DATA_DIR", data_dir)
        .env("HONE_MODELS_DIR", models_dir())
        .env("HONE_POLL_INTERVAL_MS", "200")
        .env("RUST_LOG", if verbose { "info" } else { "warn" })
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if verbose {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Reads a starting `hone`'s stdout until it listens: its address, and the first API
/// key it printed (or `known_key`, the key of an earlier start). Then keeps draining
/// stdout, so the server never blocks on a full pipe.
pub async fn until_listening(
    stdout: tokio::process::ChildStdout,
    known_key: Option<String>,
) -> (String, String) {
    let mut lines = BufReader::new(stdout).lines();
    let found = tokio::time::timeout(Duration::from_secs(120), async {
        let mut key = known_key;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(k) = line.trim().strip_prefix("export HONE_API_KEY=") {
                key = Some(k.to_owned());
            }
            if let Some(addr) = line.strip_prefix("hone listening on ") {
                let key = key.expect("a fresh install prints its first API key before listening");
                return (addr.trim().to_owned(), key);
            }
        }
        panic!("hone exited before listening (rerun with TEST_LOG=1)");
    })
    .await
    .expect("hone did not start listening within 120 s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    found
}

/// A running `hone all` (or `hone serve`) with its own database and data directory.
pub struct TestServer {
    pub base: String,
    /// Sends the server's first API key (project `default`) on every request.
    pub client: reqwest::Client,
    /// The key the server printed on its first start, as a user of the quick start gets
    /// it.
    pub key: String,
    pub data_dir: tempfile::TempDir,
    /// Dropped with the server: the process is killed, then its database dropped.
    child: Child,
    db: TestDb,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    pub async fn start_with(env: &[(&str, &str)]) -> Self {
        Self::start_on(TestDb::create().await, env).await
    }

    pub async fn start_on(db: TestDb, env: &[(&str, &str)]) -> Self {
        let data_dir = tempfile::tempdir().expect("tempdir");
        Self::start_command("all", db, data_dir, env).await
    }

    /// `hone <command>` (`all` or `serve`) on `db` with `data_dir`, once it listens.
    pub async fn start_command(
        command: &str,
        db: TestDb,
        data_dir: tempfile::TempDir,
        env: &[(&str, &str)],
    ) -> Self {
        Self::spawn(command, db, data_dir, env, None).await
    }

    /// Kills the process with SIGKILL (no shutdown of any kind), then starts `hone
    /// <command>` again on the same database and data directory with `env`.
    pub async fn kill_and_restart(mut self, command: &str, env: &[(&str, &str)]) -> Self {
        self.child.start_kill().expect("SIGKILL");
        let status = self.child.wait().await.expect("wait for hone");
        assert!(!status.success(), "hone was killed: {status}");
        let key = self.key.clone();
        Self::spawn(command, self.db, self.data_dir, env, Some(key)).await
    }

    /// `known_key`: the key of an earlier start on `db` (a restart prints none).
    async fn spawn(
        command: &str,
        db: TestDb,
        data_dir: tempfile::TempDir,
        env: &[(&str, &str)],
        known_key: Option<String>,
    ) -> Self {
        let mut child = hone_command(command, &db.url, data_dir.path(), env)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start hone");
        let stdout = child.stdout.take().expect("stdout");
        let (base, key) = until_listening(stdout, known_key).await;
        Self {
            base,
            client: reqwest::Client::builder()
                .default_headers(auth_headers(&key))
                .build()
                .expect("client"),
            key,
            data_dir,
            child,
            db,
        }
    }

    /// Sends SIGTERM and waits (at most `limit`) for the process to exit; its status.
    pub async fn terminate(&mut self, limit: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("hone is running");
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(sent.success(), "could not signal hone");
        tokio::time::timeout(limit, self.child.wait())
            .await
            .expect("hone did not exit after SIGTERM")
            .expect("wait for hone")
    }

    /// The server process's id (for reading its memory use from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id().expect("hone is running")
    }

    /// A client builder that sends the server's key on every request.
    pub fn client_builder(&self) -> reqwest::ClientBuilder {
        reqwest::Client::builder().default_headers(auth_headers(&self.key))
    }

    /// A new key for `project` (created when missing), made by `hone keys create` as an
    /// operator makes one.
    pub async fn create_key(&self, project: &str) -> String {
        let out = self.keys(&["create", "--project", project]).await;
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    /// Runs `hone keys <args>` against the server's database; fails the test if it fails.
    pub async fn keys(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(hone_bin())
            .arg("keys")
            .args(args)
            .env("HONE_DATABASE_URL", &self.db.url)
            .env("RUST_LOG", "warn")
            .output()
            .await
            .expect("run hone keys");
        assert!(
            out.status.success(),
            "hone keys {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The server's database, for looking at what a stopped server left.
    pub fn database_url(&self) -> &str {
        &self.db.url
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.expect("GET");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .client
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// POSTs a multipart form.
    pub async fn post_form(&self, path: &str, form: reqwest::multipart::Form) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .multipart(form)
            .send()
            .await
            .expect("POST a form");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn upload(&self, filename: &str, bytes: Vec<u8>) -> (u16, Value) {
        self.upload_as(&self.key, filename, bytes).await
    }

    /// An upload with another project's `key`.
    pub async fn upload_as(&self, key: &str, filename: &str, bytes: Vec<u8>) -> (u16, Value) {
        let form = reqwest::multipart::Form::new()
            .text("purpose", "fine-tune")
            .part(
                "file",
                reqwest::multipart::Part::bytes(bytes).file_name(filename.to_owned()),
            );
        let r = self
            .client
            .post(self.url("/v1/files"))
            .bearer_auth(key)
            .multipart(form)
            .send()
            .await
            .expect("upload");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Creates a fine-tuning job from `request` and waits up to `limit` for it to
    /// succeed; returns the finished job.
    pub async fn train(&self, request: &Value, limit: Duration) -> Value {
        let (status, job) = self.post_json("/v1/fine_tuning/jobs", request).await;
        assert_eq!(status, 200, "{job}");
        let job = self
            .wait_for_job(job["id"].as_str().expect("id"), limit)
            .await;
        assert_eq!(job["status"], "succeeded", "{job}");
        job
    }

    /// Polls a job until it reaches a terminal status; returns the job.
    pub async fn wait_for_job(&self, id: &str, limit: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let (status, job) = self.get(&format!("/v1/fine_tuning/jobs/{id}")).await;
            assert_eq!(status, 200, "{job}");
            if matches!(
                job["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            ) {
                return job;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "job did not finish in time: {job}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The job's checkpoint list once it holds at most `at_most` (the worker prunes an
    /// ended job's checkpoints just after the job reads its terminal status), or after
    /// 10 s, whatever it holds then.
    pub async fn checkpoints_pruned(&self, id: &str, at_most: usize) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let (status, list) = self
                .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
                .await;
            assert_eq!(status, 200, "{list}");
            let count = list["data"].as_array().map_or(0, Vec::len);
            if count <= at_most || tokio::time::Instant::now() >= deadline {
                return list;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Files under the data directory that are not folders (what an upload left behind).
    pub fn stored_files(&self) -> Vec<PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            let Ok(entries) = std::fs::read_dir(dir) else {
                return;
            };
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else {
                    out.push(p);
                }
            }
        }
        let mut out = Vec::new();
        walk(self.data_dir.path(), &mut out);
        out
    }
}

/// `Authorization: Bearer <key>`.
/// `VmRSS` and `VmHWM` (peak resident set since the last reset) of a process, in bytes.
pub fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().strip_suffix("kB"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub fn auth_headers(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header value"),
    );
    headers
}

/// The messages of a job's events, newest first.
pub async fn messages(s: &TestServer, job: &Value) -> Vec<String> {
    let (status, events) = s
        .get(&format!(
            "/v1/fine_tuning/jobs/{}/events?limit=100",
            job["id"].as_str().expect("id")
        ))
        .await;
    assert_eq!(status, 200, "{events}");
    events["data"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// `n` rows alternating `positive` (from `good`, in turn) and `negative` (from `bad`).
pub fn two_class_rows(
    n: usize,
    good: &[&'static str],
    bad: &[&'static str],
) -> Vec<(&'static str, &'static str)> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                (good[i / 2 % good.len()], "positive")
            } else {
                (bad[i / 2 % bad.len()], "negative")
            }
        })
        .collect()
}

/// `n` JSONL lines `{"text": ..., "label": ...}`.
pub fn jsonl(rows: &[(&str, &str)]) -> Vec<u8> {
    let mut out = String::new();
    for (text, label) in rows {
        out.push_str(&serde_json::json!({"text": text, "label": label}).to_string());
        out.push('\n');
    }
    out.into_bytes()
}
