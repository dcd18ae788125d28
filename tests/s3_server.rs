//! A real S3-compatible server on loopback for tests: moto's (PyPI, installed by
//! `scripts/setup` into `.deps/moto`), in memory, one per test, with one bucket.
//! Included by the store's tests and the end-to-end tests (`#[path]`), which are in
//! crates of their own.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Credentials moto accepts (it checks none); what every client here is given.
pub const ACCESS_KEY: &str = "hone-test";
pub const SECRET_KEY: &str = "hone-test-secret";

pub struct S3Server {
    child: Child,
    pub endpoint: String,
    pub bucket: String,
    http: reqwest::Client,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl S3Server {
    /// Starts a server on a free loopback port and creates the bucket `hone`.
    pub async fn start() -> S3Server {
        let python = repo().join(".deps/moto/bin/python");
        assert!(
            python.is_file(),
            "{} is missing; run scripts/setup",
            python.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto's server");
        let server = S3Server {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: "hone".into(),
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let created = server
                .http
                .put(format!("{}/{}", server.endpoint, server.bucket))
                .send()
                .await;
            match created {
                Ok(r) if r.status().is_success() => return server,
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await
                }
                other => panic!("moto's server did not come up: {other:?}"),
            }
        }
    }

    /// The environment a hone process needs to use this server.
    pub fn env(&self, prefix: &str) -> Vec<(String, String)> {
        vec![
            (
                "HONE_ARTIFACT_STORE".into(),
                format!("s3://{}/{prefix}", self.bucket),
            ),
            ("HONE_S3_ENDPOINT".into(), self.endpoint.clone()),
            ("HONE_S3_ALLOW_HTTP".into(), "true".into()),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
        ]
    }

    /// Every key in the bucket under `prefix`, read with the S3 API itself.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        let body = self
            .http
            .get(format!("{}/{}", self.endpoint, self.bucket))
            .query(&[("list-type", "2"), ("prefix", prefix), ("max-keys", "1000")])
            .send()
            .await
            .expect("list")
            .text()
            .await
            .expect("list body");
        elements(&body, "Key")
    }

    /// Multipart uploads begun and neither completed nor aborted.
    pub async fn incomplete_uploads(&self) -> usize {
        let body = self
            .http
            .get(format!("{}/{}?uploads", self.endpoint, self.bucket))
            .send()
            .await
            .expect("list uploads")
            .text()
            .await
            .expect("uploads body");
        elements(&body, "UploadId").len()
    }

    /// Writes an object directly, as another writer would.
    pub async fn put_raw(&self, key: &str, body: &'static [u8]) {
        let status = self
            .http
            .put(format!("{}/{}/{key}", self.endpoint, self.bucket))
            .body(body)
            .send()
            .await
            .expect("put")
            .status();
        assert!(status.is_success(), "{status}");
    }
}

fn elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}
