//! What a process killed mid-write leaves is cleaned up when a process starts: stored
//! objects that no row names, once older than the hour a write may take between its
//! object and its row, and the scratch folders of attempts that are no longer running.

use std::time::{Duration, SystemTime};

use crate::support::{TestDb, TestServer};

fn aged(path: &std::path::Path, age: Duration) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open")
        .set_modified(SystemTime::now() - age)
        .expect("set mtime");
}

#[tokio::test]
async fn a_start_removes_orphaned_objects_and_dead_attempts_scratch() {
    let data_dir = tempfile::tempdir().expect("tmp");
    let files = data_dir.path().join("artifacts/files");
    std::fs::create_dir_all(&files).expect("mkdir");
    let old_orphan = files.join("file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f");
    let young_orphan = files.join("file-0192f3c4a1b27c3e8d5f6a7b8c9d0e20");
    std::fs::write(&old_orphan, b"{}\n").expect("write");
    std::fs::write(&young_orphan, b"{}\n").expect("write");
    aged(&old_orphan, Duration::from_secs(2 * 3600));
    let dead_scratch = data_dir
        .path()
        .join("scratch/ftjob-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f-1");
    std::fs::create_dir_all(&dead_scratch).expect("mkdir");
    std::fs::write(dead_scratch.join("model.safetensors"), b"half").expect("write");

    let s = TestServer::start_command("all", TestDb::create().await, data_dir, &[]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while (old_orphan.exists() || dead_scratch.exists()) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        !old_orphan.exists(),
        "an hour-old object no row names is removed"
    );
    assert!(
        !dead_scratch.exists(),
        "a dead attempt's scratch is removed"
    );
    assert!(young_orphan.exists(), "a young one may still get its row");
    // And what has a row stays.
    let (status, file) = s
        .upload(
            "t.jsonl",
            crate::support::jsonl(&[("good", "a"), ("bad", "b")]),
        )
        .await;
    assert_eq!(status, 200, "{file}");
    assert!(files.join(file["id"].as_str().expect("id")).exists());
}
