//! Image datasets through the API: a zip of class folders and JSON Lines with base64
//! images are stored with their modality and read back byte for byte; a hostile zip
//! leaves nothing behind; an image file cannot train a text model.

use std::io::{Cursor, Write};

use base64::Engine;
use image::{ImageEncoder, RgbImage};
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

use crate::support::TestServer;

/// An 8×8 PNG (sklearn digits' size, the smallest the default bounds admit).
pub fn png(shade: u8) -> Vec<u8> {
    let pixels = RgbImage::from_fn(8, 8, |x, y| {
        image::Rgb([shade, (x * 30) as u8, (y * 30) as u8])
    });
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, 8, 8, image::ExtendedColorType::Rgb8)
        .expect("encode png");
    out
}

fn zip_of(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        writer
            .start_file(*name, SimpleFileOptions::default())
            .expect("start");
        writer.write_all(bytes).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

async fn content(s: &TestServer, id: &str) -> (String, Vec<u8>) {
    let r = s
        .client
        .get(s.url(&format!("/v1/files/{id}/content")))
        .send()
        .await
        .expect("GET content");
    assert_eq!(r.status().as_u16(), 200);
    let kind = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (kind, r.bytes().await.expect("body").to_vec())
}

fn artifacts_left(s: &TestServer) -> Vec<std::path::PathBuf> {
    s.stored_files()
        .into_iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == "artifacts"))
        .collect()
}

#[tokio::test]
async fn image_zips_and_jsonl_are_stored_with_their_modality_and_read_back() {
    let s = TestServer::start().await;
    let zip = zip_of(&[
        ("digits/zero/a.png", png(0)),
        ("digits/zero/b.png", png(10)),
        ("digits/one/a.png", png(200)),
        ("digits/.DS_Store", b"junk".to_vec()),
        ("__MACOSX/digits/one/._a.png", b"junk".to_vec()),
    ]);
    let (status, file) = s.upload("digits.zip", zip.clone()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["format"], "zip", "{file}");
    assert_eq!(file["modality"], "image", "{file}");
    assert_eq!(file["task_type"], "classification", "{file}");
    assert_eq!(file["examples"], 3, "{file}");
    assert_eq!(file["label_counts"], json!({"one": 1, "zero": 2}), "{file}");
    let id = file["id"].as_str().expect("id");
    let (kind, bytes) = content(&s, id).await;
    assert_eq!(kind, "application/zip");
    assert!(bytes == zip, "the zip does not round-trip byte for byte");
    let (_, got) = s.get(&format!("/v1/files/{id}")).await;
    assert_eq!(got["modality"], "image", "{got}");

    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let lines = [
        json!({"image": b64(&png(0)), "labels": ["dark"]}),
        json!({"image": format!("data:image/png;base64,{}", b64(&png(250))), "labels": ["light", "round"]}),
        json!({"image": b64(&png(120)), "labels": []}),
    ];
    let jsonl: Vec<u8> = lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
        .into_bytes();
    let (status, file) = s.upload("shapes.jsonl", jsonl.clone()).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["modality"], "image", "{file}");
    assert_eq!(file["task_type"], "multi_label", "{file}");
    assert_eq!(file["examples"], 3, "{file}");
    assert_eq!(
        file["label_counts"],
        json!({"dark": 1, "light": 1, "round": 1}),
        "{file}"
    );
    let (kind, bytes) = content(&s, file["id"].as_str().expect("id")).await;
    assert_eq!(kind, "application/jsonl");
    assert!(
        bytes == jsonl,
        "the JSONL does not round-trip byte for byte"
    );
}

#[tokio::test]
async fn a_hostile_zip_is_refused_naming_the_entry_and_leaves_nothing() {
    let s = TestServer::start().await;
    let cases = [
        (
            zip_of(&[("cats/1.png", png(1)), ("../evil.png", png(2))]),
            "unsafe_path",
            "../evil.png",
        ),
        (
            zip_of(&[
                ("cats/1.png", png(1)),
                ("dogs/1.png", zip_of(&[("x/1.png", png(2))])),
            ]),
            "nested_archive",
            "dogs/1.png",
        ),
        (
            zip_of(&[("cats/1.png", png(1)), ("dogs/bomb.png", vec![0; 1 << 20])]),
            "compression_ratio",
            "dogs/bomb.png",
        ),
    ];
    for (zip, code, entry) in cases {
        let (status, body) = s.upload("evil.zip", zip).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert_eq!(body["error"]["param"], "file", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(entry),
            "{message:?} does not name {entry:?}"
        );
    }
    let (_, list) = s.get("/v1/files").await;
    assert_eq!(list["data"], json!([]), "a refused zip left a row");
    let left = artifacts_left(&s);
    assert!(left.is_empty(), "a refused zip left bytes: {left:?}");
}

/// POSTs `body` to `path`, expects a 400 `modality_mismatch` on `training_file`, and
/// returns its message.
async fn modality_refusal(s: &TestServer, path: &str, body: &Value) -> String {
    let (status, body) = s.post_json(path, body).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "training_file", "{body}");
    assert_eq!(body["error"]["code"], "modality_mismatch", "{body}");
    body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn an_image_file_cannot_train_a_text_model_or_be_scored_for_transferability() {
    let s = TestServer::start().await;
    let zip = zip_of(&[("zero/a.png", png(0)), ("one/a.png", png(200))]);
    let (status, file) = s.upload("digits.zip", zip).await;
    assert_eq!(status, 200, "{file}");
    let jobs = "/v1/fine_tuning/jobs";
    let request = json!({"base_model": "all-MiniLM-L6-v2", "training_file": file["id"]});
    let message = modality_refusal(&s, jobs, &request).await;
    assert!(
        message.contains("image") && message.contains("text model"),
        "{message:?} should name both modalities"
    );
    // The other way round: a text file on the image base model is told it has the
    // wrong modality.
    let text = b"{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\",\"label\":\"y\"}\n";
    let (status, text_file) = s.upload("t.jsonl", text.to_vec()).await;
    assert_eq!(status, 200, "{text_file}");
    assert_eq!(text_file["modality"], "text", "{text_file}");
    let request = json!({"base_model": "efficientnet-lite0", "training_file": text_file["id"]});
    let message = modality_refusal(&s, jobs, &request).await;
    assert!(message.contains("an image model"), "{message:?}");
    let (_, listed) = s.get(jobs).await;
    assert_eq!(listed["data"], json!([]), "{listed}");

    let request = json!({"training_file": file["id"]});
    let message = modality_refusal(&s, "/v1/transferability", &request).await;
    assert!(message.contains("text files"), "{message:?}");
}
