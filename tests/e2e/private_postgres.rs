//! One machine without a Postgres: with the database URL on a loopback port where
//! nothing listens, `scripts/with-postgres` (what `scripts/run` starts hone with) starts
//! a private server there, hone comes up on it, and SIGTERM stops both.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::Command;

use crate::support::{auth_headers, hone_bin, models_dir, repo_dir, until_listening};

/// Sends SIGTERM to the wrapper when dropped, so a failing test leaves neither hone nor
/// the private server running (SIGKILL would orphan both).
struct Terminate(u32);

impl Drop for Terminate {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test]
async fn with_nothing_at_the_local_url_hone_comes_up_on_a_private_postgres() {
    let port = free_port();
    let scratch = tempfile::tempdir().expect("tempdir");
    // As root the server runs as another user, who must reach its cluster folder.
    std::fs::set_permissions(scratch.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    let cluster = scratch.path().join("postgres");
    let data = scratch.path().join("data");
    let url = format!("postgres://postgres@127.0.0.1:{port}/hone");
    let mut child = Command::new(repo_dir().join("scripts/with-postgres"))
        .arg(hone_bin())
        .arg("all")
        .env("HONE_DATABASE_URL", &url)
        .env("HONE_LISTEN", "127.0.0.1:0")
        .env("HONE_DATA_DIR", &data)
        .env("HONE_MODELS_DIR", models_dir())
        .env("PRIVATE_POSTGRES_DIR", &cluster)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start scripts/with-postgres");
    let guard = Terminate(child.id().expect("pid"));
    let mut stderr = child.stderr.take().expect("stderr");
    let stderr = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let (base, key) = until_listening(child.stdout.take().expect("stdout"), None).await;

    // The API answers from the database the private server holds.
    let client = reqwest::Client::builder()
        .default_headers(auth_headers(&key))
        .build()
        .expect("client");
    let models = client
        .get(format!("{base}/v1/base-models"))
        .send()
        .await
        .expect("base models");
    assert_eq!(models.status().as_u16(), 200);
    assert!(has_cluster(&cluster), "no cluster in {}", cluster.display());

    let sent = std::process::Command::new("kill")
        .args(["-TERM", &child.id().expect("pid").to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let exit = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .expect("scripts/with-postgres did not exit after SIGTERM")
        .expect("wait");
    drop(guard);
    let log = stderr.await.expect("stderr");
    assert!(exit.success(), "exit {exit}; log:\n{log}");
    assert!(
        log.contains(&format!(
            "nothing answers at 127.0.0.1:{port}: starting a private PostgreSQL"
        )),
        "{log}"
    );
    assert!(log.contains("stopped the private PostgreSQL"), "{log}");
    // Both are gone: the API and the private server's port refuse connections.
    assert!(client.get(format!("{base}/healthz")).send().await.is_err());
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

/// The cluster is in a folder named for the server's major version.
fn has_cluster(dir: &std::path::Path) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("PG_VERSION").exists())
}
