//! The artifact store on a real S3-compatible server (moto's, on loopback): multipart
//! uploads with flat memory, interrupted uploads leaving nothing, directories visible
//! only whole, a file removed from one, prefixes deleted whole, and clear errors when the store is not there.

#[path = "../../../tests/s3_server.rs"]
mod s3_server;

use std::io::Read;
use std::time::{Duration, Instant};

use hone_store::{ArtifactStore, ObjectArtifactStore, S3Settings};
use s3_server::S3Server;
use tokio::io::AsyncReadExt;

fn settings(server: &S3Server, prefix: &str, cache: &std::path::Path) -> S3Settings {
    S3Settings {
        bucket: server.bucket.clone(),
        prefix: prefix.into(),
        endpoint: Some(server.endpoint.clone()),
        region: "us-east-1".into(),
        allow_http: true,
        cache_dir: cache.to_owned(),
        cache_max_bytes: 1 << 30,
        static_credentials: Some((s3_server::ACCESS_KEY.into(), s3_server::SECRET_KEY.into())),
    }
}

/// 20 MiB that are not all alike: three parts of the store's 8 MiB.
fn payload() -> Vec<u8> {
    (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[tokio::test]
async fn objects_stream_up_in_parts_under_the_prefix_and_read_back() {
    let server = S3Server::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let store =
        ObjectArtifactStore::s3(&settings(&server, "tenant/a", cache.path())).expect("store");
    store.check().await.expect("the store answers");
    let data = payload();
    let mut object = store.create("files/f1").await.expect("create");
    for chunk in data.chunks(1024 * 1024) {
        object.write(chunk).await.expect("write");
    }
    let mut back = Vec::new();
    object
        .read_back()
        .await
        .expect("read back")
        .read_to_end(&mut back)
        .expect("read");
    assert!(back == data, "read_back gives the bytes so far");
    assert!(
        server.keys("tenant/a/").await.is_empty(),
        "nothing is visible before commit"
    );
    object.commit().await.expect("commit");
    assert_eq!(server.keys("").await, ["tenant/a/files/f1"]);
    assert_eq!(server.incomplete_uploads().await, 0);

    let mut streamed = Vec::new();
    store
        .open("files/f1")
        .await
        .expect("open")
        .read_to_end(&mut streamed)
        .await
        .expect("stream");
    assert!(streamed == data);
    assert!(store.read("files/f1").await.expect("read") == data);
    store.delete("files/f1").await.expect("delete");
    store
        .delete("files/f1")
        .await
        .expect("deleting twice is fine");
    let missing = store.read("files/f1").await.expect_err("gone");
    assert_eq!(missing.kind(), std::io::ErrorKind::NotFound);
    assert!(
        std::fs::read_dir(cache.path().join("slot-0/tmp"))
            .expect("scratch")
            .next()
            .is_none(),
        "the local copy for read_back is gone after commit"
    );
}

#[tokio::test]
async fn an_interrupted_upload_leaves_nothing_behind() {
    let server = S3Server::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let store = ObjectArtifactStore::s3(&settings(&server, "", cache.path())).expect("store");
    let data = payload();
    let mut object = store.create("files/big").await.expect("create");
    for chunk in data.chunks(1024 * 1024) {
        object.write(chunk).await.expect("write");
    }
    assert_eq!(
        server.incomplete_uploads().await,
        1,
        "20 MiB went up as a multipart upload"
    );
    drop(object);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.incomplete_uploads().await > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        server.incomplete_uploads().await,
        0,
        "the upload was aborted"
    );
    assert!(server.keys("").await.is_empty());
    assert!(std::fs::read_dir(cache.path().join("slot-0/tmp"))
        .expect("scratch")
        .next()
        .is_none());
}

#[tokio::test]
async fn directories_are_seen_whole_or_not_at_all_and_deleted_whole() {
    let server = S3Server::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let store = ObjectArtifactStore::s3(&settings(&server, "p", cache.path())).expect("store");
    let src = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(src.path().join("sub")).expect("mkdir");
    std::fs::write(src.path().join("config.json"), b"{}").expect("write");
    std::fs::write(src.path().join("sub/w"), vec![1u8; 9 * 1024 * 1024]).expect("write");
    store.put_dir("models/m1", src.path()).await.expect("put");
    let keys = server.keys("p/models/m1/").await;
    assert_eq!(
        keys,
        [
            "p/models/m1/.hone-dir.json",
            "p/models/m1/config.json",
            "p/models/m1/sub/w"
        ]
    );
    let local = store.local_dir("models/m1").await.expect("local copy");
    assert_eq!(
        std::fs::read(local.join("config.json")).expect("read"),
        b"{}"
    );
    assert_eq!(
        std::fs::metadata(local.join("sub/w")).expect("w").len(),
        9 * 1024 * 1024
    );
    assert_eq!(store.cached_bytes(), 9 * 1024 * 1024 + 2);

    // Files without their manifest (a publisher that died half way) are not a directory.
    server.put_raw("p/models/half/config.json", b"{}").await;
    let half = store.local_dir("models/half").await.expect_err("not whole");
    assert_eq!(half.kind(), std::io::ErrorKind::NotFound);

    // One file leaves the directory: its manifest stops naming it, the object goes,
    // and a fresh copy holds the rest.
    drop(local);
    assert_eq!(
        store
            .remove_from_dir("models/m1", "sub/w")
            .await
            .expect("remove"),
        9 * 1024 * 1024
    );
    assert_eq!(
        server.keys("p/models/m1/").await,
        ["p/models/m1/.hone-dir.json", "p/models/m1/config.json"]
    );
    let local = store.local_dir("models/m1").await.expect("local copy");
    assert!(local.join("config.json").is_file());
    assert!(!local.join("sub/w").exists());
    assert_eq!(
        store
            .remove_from_dir("models/m1", "sub/w")
            .await
            .expect("again"),
        0,
        "removing it again is no error"
    );
    assert_eq!(
        store
            .remove_from_dir("models/none", "x")
            .await
            .expect("none"),
        0
    );

    let local_path = local.path().to_owned();
    store.delete("models/m1/").await.expect("delete");
    assert!(server.keys("p/models/m1").await.is_empty());
    assert!(
        local_path.join("config.json").is_file(),
        "held copies stay readable"
    );
    drop(local);
    assert!(!local_path.exists(), "and go once let go");
    let gone = store.local_dir("models/m1").await.expect_err("deleted");
    assert_eq!(gone.kind(), std::io::ErrorKind::NotFound);
    assert_eq!(
        server.keys("p/models/half").await.len(),
        1,
        "other prefixes stay"
    );
}

#[tokio::test]
async fn a_store_that_is_not_there_is_said_so_within_seconds() {
    let server = S3Server::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let mut missing = settings(&server, "", cache.path());
    missing.bucket = "no-such-bucket".into();
    let store = ObjectArtifactStore::s3(&missing).expect("store");
    let e = store.check().await.expect_err("no bucket");
    assert!(
        e.to_string().contains("NoSuchBucket") || e.to_string().contains("not found"),
        "{e}"
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let mut down = settings(&server, "", cache.path());
    down.endpoint = Some(format!("http://127.0.0.1:{port}"));
    let store = ObjectArtifactStore::s3(&down).expect("store");
    let started = Instant::now();
    let e = store.check().await.expect_err("nothing listens");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(store.describe().contains(&format!("127.0.0.1:{port}")));
    assert!(!e.to_string().is_empty());
}

#[tokio::test]
async fn keys_are_listed_at_their_depth_with_their_newest_write() {
    let server = S3Server::start().await;
    let cache = tempfile::tempdir().expect("tempdir");
    let store = ObjectArtifactStore::s3(&settings(&server, "p", cache.path())).expect("store");
    let before = std::time::SystemTime::now() - Duration::from_secs(60);
    let mut object = store.create("files/f1").await.expect("create");
    object.write(b"x").await.expect("write");
    object.commit().await.expect("commit");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
    std::fs::write(dir.path().join("sub/a.bin"), b"a").expect("write");
    std::fs::write(dir.path().join("b.bin"), b"b").expect("write");
    store
        .put_dir("models/m1", dir.path())
        .await
        .expect("put_dir");
    store
        .put_dir("checkpoints/j/attempt-1/epoch-2", dir.path())
        .await
        .expect("put_dir");

    let keys = |listed: Vec<hone_store::Listed>| {
        assert!(listed.iter().all(|l| l.modified >= before), "{listed:?}");
        listed.into_iter().map(|l| l.key).collect::<Vec<_>>()
    };
    assert_eq!(
        keys(store.list_keys("files", 2).await.expect("files")),
        ["files/f1"]
    );
    let models = store.list_keys("models", 2).await.expect("models");
    // The directory's two files and the listing written beside them.
    let listing = store
        .read("models/m1/.hone-dir.json")
        .await
        .expect("listing");
    assert_eq!(models[0].bytes, 2 + listing.len() as u64, "{models:?}");
    assert_eq!(keys(models), ["models/m1"]);
    assert_eq!(
        keys(
            store
                .list_keys("checkpoints", 4)
                .await
                .expect("checkpoints")
        ),
        ["checkpoints/j/attempt-1/epoch-2"]
    );
    assert!(store
        .list_keys("features", 3)
        .await
        .expect("none")
        .is_empty());
}
