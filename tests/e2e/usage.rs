//! What a project stores is what it is shown and what its limit counts: after many
//! jobs the store holds only the checkpoints each ended job keeps, without their
//! optimizer state, and `/v1/usage` equals the bytes on disk, by kind (files,
//! checkpoints, models, cached features).

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use crate::support::{jsonl, two_class_rows, TestServer};

/// Bytes of the files under `dir`.
fn du(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .map(|e| e.expect("entry"))
        .map(|e| {
            let meta = e.metadata().expect("metadata");
            if meta.is_dir() {
                du(&e.path())
            } else {
                meta.len()
            }
        })
        .sum()
}

#[tokio::test]
async fn after_many_jobs_the_store_holds_the_kept_checkpoints_and_usage_is_what_is_on_disk() {
    let s = TestServer::start_with(&[("HONE_DEVICE", "cpu")]).await;
    let rows = two_class_rows(
        24,
        &["a wonderful film", "great acting", "loved it"],
        &["a dull mess", "boring plot", "hated it"],
    );
    let (status, file) = s.upload("t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let mut jobs = Vec::new();
    // Two rounds of ten: the project may have 16 active jobs at once.
    for round in 0..2 {
        let mut ids = Vec::new();
        for i in 0..10 {
            let (status, job) = s
                .post_json(
                    "/v1/fine_tuning/jobs",
                    &json!({
                        "base_model": "all-MiniLM-L6-v2", "training_file": file["id"],
                        "method": {"type": "feature_extraction"}, "seed": round * 10 + i,
                        "hyperparameters": {"epochs": 4}
                    }),
                )
                .await;
            assert_eq!(status, 200, "{job}");
            ids.push(job["id"].as_str().expect("id").to_owned());
        }
        for id in &ids {
            let done = s.wait_for_job(id, Duration::from_secs(300)).await;
            assert_eq!(done["status"], "succeeded", "{done}");
        }
        jobs.extend(ids);
    }

    let artifacts = s.data_dir.path().join("artifacts");
    for id in &jobs {
        let list = s.checkpoints_pruned(id, 2).await;
        let kept = list["data"].as_array().expect("data").len();
        assert!((1..=2).contains(&kept), "{id} kept {kept}: {list}");
        let folder = artifacts.join(format!("checkpoints/{id}/attempt-1"));
        let count = || {
            std::fs::read_dir(&folder)
                .expect("checkpoint folder")
                .count()
        };
        // What a kept checkpoint still holds once the job has ended: its weights, to
        // publish, and no optimizer state (nothing resumes an ended job).
        let states = || {
            std::fs::read_dir(&folder)
                .expect("checkpoint folder")
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().join("state.safetensors").exists())
                })
                .count()
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (count() > kept || states() > 0) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(count(), kept, "{id}");
        assert_eq!(
            states(),
            0,
            "{id}: optimizer state left in a kept checkpoint"
        );
        for entry in std::fs::read_dir(&folder).expect("checkpoint folder") {
            let epoch = entry.expect("entry").path();
            assert!(
                epoch.join("weights.safetensors").is_file(),
                "{}",
                epoch.display()
            );
        }
    }

    // An ended job's pruned checkpoints lose their rows first, then their folders: the
    // last job may read `succeeded` while its folders are being removed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let (status, usage) = s.get("/v1/usage").await;
        assert_eq!(status, 200, "{usage}");
        let on_disk = du(&artifacts.join("checkpoints"));
        if usage["stored_bytes"]["checkpoints"].as_u64() == Some(on_disk)
            || tokio::time::Instant::now() >= deadline
        {
            break usage;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(usage["object"], "usage");
    assert_eq!(usage["active_jobs"], 0, "{usage}");
    let bytes = &usage["stored_bytes"];
    for kind in ["files", "checkpoints", "models", "features"] {
        assert_eq!(
            bytes[kind].as_u64(),
            Some(du(&artifacts.join(kind))),
            "{kind}: {usage}"
        );
    }
    let total: u64 = ["files", "checkpoints", "models", "features"]
        .iter()
        .map(|k| bytes[*k].as_u64().expect("bytes"))
        .sum();
    assert_eq!(bytes["total"].as_u64(), Some(total), "{usage}");
    assert!(bytes["models"].as_u64().expect("models") > 0, "{usage}");
    assert!(
        bytes["features"].as_u64().expect("features") > 0,
        "feature extraction cached its features: {usage}"
    );
    assert!(usage["max_stored_bytes"].as_i64().is_some_and(|m| m > 0));
}
