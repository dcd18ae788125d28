//! Uploads stream to storage: memory stays flat however large the file, an upload the
//! client abandons halfway leaves neither a row nor bytes behind, and uploads in
//! progress are capped per project and in all.

use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::support::{jsonl, memory, two_class_rows, TestDb, TestServer};

const MIB: u64 = 1 << 20;

/// One JSONL line of exactly `width` bytes (newline included); `i` makes each unique.
fn line(i: u64, width: usize) -> Vec<u8> {
    let label = if i.is_multiple_of(2) {
        "positive"
    } else {
        "negative"
    };
    let head = format!("{{\"label\":\"{label}\",\"text\":\"review {i:012} ");
    let tail = "\"}\n";
    let filler = width - head.len() - tail.len();
    let mut out = head.into_bytes();
    out.extend(std::iter::repeat_n(b'x', filler));
    out.extend_from_slice(tail.as_bytes());
    out
}

/// The server's peak resident memory grows by far less than the file while a large
/// dataset (2 GiB by default; `LARGE_UPLOAD_MIB` sets it) streams through validation,
/// hashing and storage. Its numbers are printed (`--nocapture`).
#[tokio::test]
async fn a_large_upload_keeps_the_servers_memory_flat() {
    let mib: u64 = std::env::var("LARGE_UPLOAD_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2048);
    const WIDTH: usize = 4096;
    let lines = mib * MIB / WIDTH as u64;
    let total = lines * WIDTH as u64;
    let s = TestServer::start_with(&[
        ("HONE_MAX_UPLOAD_BYTES", &(total + MIB).to_string()),
        ("HONE_MAX_EXAMPLES", &(lines + 1).to_string()),
    ])
    .await;
    // A small upload first, so the baseline includes everything an upload touches once.
    let small = jsonl(&two_class_rows(4, &["good"], &["bad"]));
    let (status, body) = s.upload("small.jsonl", small).await;
    assert_eq!(status, 200, "{body}");
    let (rss_before, _) = memory(s.pid());

    // Chunks of 256 lines, generated as the client sends them.
    let chunks = (0..lines.div_ceil(256)).map(move |c| {
        let mut chunk = Vec::with_capacity(256 * WIDTH);
        for i in c * 256..((c + 1) * 256).min(lines) {
            chunk.extend(line(i, WIDTH));
        }
        Ok::<_, std::io::Error>(chunk)
    });
    let body = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::stream_with_length(body, total).file_name("big.jsonl"),
        );
    let started = std::time::Instant::now();
    let (status, file) = s.post_form("/v1/files", form).await;
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["bytes"], total, "{file}");
    assert_eq!(file["examples"], lines, "{file}");
    let (_, peak) = memory(s.pid());
    let growth = peak.saturating_sub(rss_before);
    println!(
        "upload of {} MiB in {seconds:.1} s ({:.0} MiB/s): server RSS before {} MiB, peak {} MiB, growth {} MiB",
        total / MIB,
        (total / MIB) as f64 / seconds,
        rss_before / MIB,
        peak / MIB,
        growth / MIB
    );
    assert!(
        growth < 128 * MIB,
        "the server's peak memory grew by {} MiB for a {} MiB upload",
        growth / MIB,
        total / MIB
    );
    let stored: u64 = s
        .stored_files()
        .iter()
        .map(|p| std::fs::metadata(p).expect("stat").len())
        .max()
        .unwrap_or(0);
    assert_eq!(stored, total, "the stored file has the upload's size");
    let id = file["id"].as_str().expect("id");
    let (status, _) = s.delete(&format!("/v1/files/{id}")).await;
    assert_eq!(status, 200);
}

/// A client that disconnects in the middle of its upload leaves nothing behind: no
/// row, no stored bytes, no scratch file.
#[tokio::test]
async fn an_abandoned_upload_leaves_nothing_behind() {
    let s = TestServer::start().await;
    let mut stream = start_upload(&s, &s.key, "cut.jsonl").await;
    // 8 MiB of valid lines: far enough for the server to have stored some of them.
    let mut sent = 0;
    let mut i = 0;
    while sent < 8 * MIB {
        let l = line(i, 1024);
        stream.write_all(&l).await.expect("send");
        sent += l.len() as u64;
        i += 1;
    }
    stream.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(stream);

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = s.stored_files();
        let (status, list) = s.get("/v1/files").await;
        assert_eq!(status, 200, "{list}");
        assert_eq!(
            list["data"],
            serde_json::json!([]),
            "no row for a cut upload"
        );
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a cut upload left {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Opens a raw connection and sends an upload's request header (declaring 64 MiB) and
/// its form up to the start of the file's bytes, as `key`.
async fn start_upload(s: &TestServer, key: &str, filename: &str) -> tokio::net::TcpStream {
    let addr = s.base.trim_start_matches("http://").to_owned();
    let boundary = "hone-test-boundary";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let request = format!(
        "POST /v1/files HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n{head}",
        64 * MIB
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    stream
}

/// Starts an upload as `key` on a raw connection and leaves it in progress: the form's
/// head and a few valid lines of a file of 64 MiB, and nothing more until dropped.
async fn upload_in_progress(s: &TestServer, key: &str) -> tokio::net::TcpStream {
    let mut stream = start_upload(s, key, "slow.jsonl").await;
    for i in 0..16 {
        stream.write_all(&line(i, 256)).await.expect("send");
    }
    stream.flush().await.expect("flush");
    stream
}

/// Whether the server has answered (or closed) an upload left in progress: it was
/// refused, so it holds no place.
fn answered(stream: &tokio::net::TcpStream) -> bool {
    let mut byte = [0u8; 1];
    stream.try_read(&mut byte).is_ok()
}

/// Polls until an upload as `key` is accepted (places are given back once the server
/// notices a connection is gone); fails past 60 s.
async fn upload_when_a_place_is_free(s: &TestServer, key: &str) {
    let rows = two_class_rows(4, &["good"], &["bad"]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = s.upload_as(key, "t.jsonl", jsonl(&rows)).await;
        if status == 200 {
            return;
        }
        assert_eq!(status, 429, "{body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no place was given back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn uploads_in_progress_are_capped_per_project_and_in_all() {
    let s = TestServer::start_command(
        "serve",
        TestDb::create().await,
        tempfile::tempdir().expect("tempdir"),
        &[
            ("HONE_MAX_CONCURRENT_UPLOADS", "2"),
            ("HONE_MAX_CONCURRENT_UPLOADS_PER_PROJECT", "1"),
        ],
    )
    .await;
    let other = s.create_key("other").await;
    let third = s.create_key("third").await;
    let rows = two_class_rows(4, &["good"], &["bad"]);

    let mut mine = upload_in_progress(&s, &s.key).await;
    // The server has the first upload's place once it answers the next one 429 (a
    // generous bound: the whole suite shares two cores with training tests).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let refused = loop {
        // Under load the server may reach this test's own probe first, and refuse the
        // upload meant to hold the place: then hold it again.
        if answered(&mine) {
            mine = upload_in_progress(&s, &s.key).await;
        }
        let r = s
            .client
            .post(s.url("/v1/files"))
            .multipart(
                reqwest::multipart::Form::new()
                    .text("purpose", "fine-tune")
                    .part(
                        "file",
                        reqwest::multipart::Part::bytes(jsonl(&rows)).file_name("t.jsonl"),
                    ),
            )
            .send()
            .await
            .expect("POST");
        if r.status() == 429 {
            break r;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", r.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.headers().contains_key("retry-after"));
    let body: serde_json::Value = refused.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], "too_many_uploads", "{body}");

    // Another project is not held up by this one's upload.
    let (status, body) = s.upload_as(&other, "t.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{body}");

    // Two in progress: the server's cap, for every project.
    let mut theirs = upload_in_progress(&s, &other).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if answered(&theirs) {
            theirs = upload_in_progress(&s, &other).await;
        }
        let (status, body) = s.upload_as(&third, "t.jsonl", jsonl(&rows)).await;
        if status == 429 {
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("server")),
                "{body}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Cut uploads give their places back.
    drop(mine);
    upload_when_a_place_is_free(&s, &s.key.clone()).await;
    drop(theirs);
    upload_when_a_place_is_free(&s, &third).await;
}

/// `expires_after` as OpenAI's files API takes it: the file says when it goes, and a
/// bad anchor or length is refused by its field, keeping nothing.
#[tokio::test]
async fn an_expiring_upload_says_when_and_bad_expiries_are_refused_by_field() {
    let s = TestServer::start().await;
    let body = crate::support::jsonl(&[("good", "a"), ("bad", "b")]);
    let form = |fields: &[(&'static str, &'static str)]| {
        let mut form = reqwest::multipart::Form::new().text("purpose", "fine-tune");
        for (name, value) in fields {
            form = form.text(*name, *value);
        }
        form.part(
            "file",
            reqwest::multipart::Part::bytes(body.clone()).file_name("t.jsonl"),
        )
    };
    let (status, file) = s
        .post_form(
            "/v1/files",
            form(&[
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", "7200"),
            ]),
        )
        .await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(
        file["expires_at"].as_i64(),
        file["created_at"].as_i64().map(|c| c + 7200),
        "{file}"
    );
    let (_, listed) = s
        .get(&format!("/v1/files/{}", file["id"].as_str().expect("id")))
        .await;
    assert_eq!(listed["expires_at"], file["expires_at"]);
    let before = s.stored_files().len();
    for (fields, param) in [
        (
            &[
                ("expires_after[anchor]", "last_active_at"),
                ("expires_after[seconds]", "7200"),
            ][..],
            "expires_after[anchor]",
        ),
        (
            &[
                ("expires_after[anchor]", "created_at"),
                ("expires_after[seconds]", "60"),
            ][..],
            "expires_after[seconds]",
        ),
        (
            &[("expires_after[seconds]", "7200")][..],
            "expires_after[anchor]",
        ),
    ] {
        let (status, e) = s.post_form("/v1/files", form(fields)).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param, "{e}");
    }
    assert_eq!(
        s.stored_files().len(),
        before,
        "nothing of a refused upload is kept"
    );
}
