//! Taking a model away: `GET /v1/models/{model}/content` streams a `.tar.gz` of the
//! model's directory with a README, and the README's Python snippet, run by
//! `load_export.py` with nothing of hone's (torch, transformers, safetensors, numpy,
//! Pillow from `.deps/export`, pinned by scripts/setup), gives the probabilities that
//! hone's predict gives, within 1e-4: for a text model (fine-tuned all-MiniLM-L6-v2,
//! loaded with `AutoModel`) and an image model (fine-tuned EfficientNet-Lite0, in plain
//! PyTorch with the documented preprocessing).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::images::{class_zip, subset};
use crate::sentiment::split;
use crate::support::{jsonl, repo_dir, TestServer};

/// The most a probability of the snippet may differ from predict's.
const TOLERANCE: f64 = 1e-4;

/// Downloads `model`'s archive and unpacks it with the system's `tar` into `into`;
/// returns the folder it made.
async fn download(s: &TestServer, model: &str, into: &Path) -> PathBuf {
    let r = s
        .client
        .get(s.url(&format!("/v1/models/{model}/content")))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/gzip");
    assert_eq!(
        r.headers()["content-disposition"].to_str().expect("ascii"),
        format!("attachment; filename=\"{model}.tar.gz\"")
    );
    // Streamed as it is written: no length known in advance.
    assert!(
        r.headers().get("content-length").is_none(),
        "{:?}",
        r.headers()
    );
    let bytes = r.bytes().await.expect("body");
    let archive = into.join("model.tar.gz");
    std::fs::write(&archive, &bytes).expect("write archive");
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(into)
        .output()
        .expect("tar runs");
    assert!(out.status.success(), "{out:?}");
    std::fs::remove_file(&archive).expect("remove archive");
    let folders: Vec<PathBuf> = std::fs::read_dir(into)
        .expect("read")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(folders.len(), 1, "one folder: {folders:?}");
    let folder = folders.into_iter().next().expect("folder");
    assert_eq!(
        folder.file_name().and_then(|n| n.to_str()),
        Some(model.replace(':', "-").as_str())
    );
    folder
}

fn names(folder: &Path) -> BTreeSet<String> {
    std::fs::read_dir(folder)
        .expect("read")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// What `load_export.py` prints for `predict(*args)` on the model in `folder`.
async fn python_scores(folder: &Path, args: Value) -> Vec<Value> {
    let python = repo_dir().join(".deps/export/bin/python");
    assert!(
        python.is_file(),
        "{} is missing; run scripts/setup",
        python.display()
    );
    let inputs = folder.with_extension("inputs.json");
    std::fs::write(&inputs, args.to_string()).expect("write inputs");
    let run = tokio::process::Command::new(&python)
        .arg(repo_dir().join("tests/e2e/load_export.py"))
        .arg(folder)
        .arg(&inputs)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the Python loader took over 5 minutes")
        .expect("the Python loader runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the Python loader failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let last = stdout.lines().last().expect("output");
    serde_json::from_str::<Value>(last)
        .unwrap_or_else(|e| panic!("{e}: {stdout}"))
        .as_array()
        .expect("a list")
        .clone()
}

/// Every probability of the snippet within [`TOLERANCE`] of predict's `scores`, label by
/// label; returns the largest difference.
fn compare(predictions: &[Value], snippet: &[Value]) -> f64 {
    assert_eq!(predictions.len(), snippet.len());
    let mut worst: f64 = 0.0;
    for (i, (ours, theirs)) in predictions.iter().zip(snippet).enumerate() {
        let ours = ours["scores"].as_object().expect("scores");
        let theirs = theirs.as_object().expect("a dict");
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "input {i}"
        );
        for (label, p) in ours {
            let (p, q) = (p.as_f64().expect("p"), theirs[label].as_f64().expect("q"));
            worst = worst.max((p - q).abs());
            assert!(
                (p - q).abs() <= TOLERANCE,
                "input {i}, {label}: predict {p}, snippet {q}"
            );
        }
    }
    worst
}

#[tokio::test]
async fn a_downloaded_model_gives_predicts_probabilities_in_python_without_hone() {
    let s = TestServer::start().await;
    let work = tempfile::tempdir().expect("tempdir");

    // Text: all-MiniLM-L6-v2 fine-tuned whole for an epoch (so the encoder's weights
    // are the job's, not the base model's), with the MLP head and a short token limit
    // that the long input below runs past.
    let (train, test) = split(17);
    let rows: Vec<(&str, &str)> = train
        .iter()
        .take(24)
        .map(|(t, l)| (t.as_str(), l.as_str()))
        .collect();
    let (status, file) = s.upload("reviews.jsonl", jsonl(&rows)).await;
    assert_eq!(status, 200, "{file}");
    let job = s
        .train(
            &json!({
                "base_model": "all-MiniLM-L6-v2",
                "training_file": file["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-4,
                                    "max_seq_len": 32, "head": "mlp"},
                "seed": 5,
            }),
            Duration::from_secs(600),
        )
        .await;
    let text_model = job["fine_tuned_model"].as_str().expect("model").to_owned();
    let mut texts: Vec<String> = test.iter().take(4).map(|(t, _)| t.clone()).collect();
    texts.push(
        test.iter()
            .take(12)
            .map(|(t, _)| t.as_str())
            .collect::<Vec<_>>()
            .join(" "),
    );

    // Images: EfficientNet-Lite0 fine-tuned whole for an epoch (BatchNorm statistics
    // included), asked about Fashion-MNIST's 28×28 gray images (enlarged nine times)
    // and RGB ones that are not square, one enlarged a little and one reduced.
    let (images, held_out) = subset(3, 1, 2032);
    let refs: Vec<_> = images.iter().collect();
    let (status, file) = s.upload("fashion.zip", class_zip(&refs)).await;
    assert_eq!(status, 200, "{file}");
    let job = s
        .train(
            &json!({
                "base_model": "efficientnet-lite0",
                "training_file": file["id"],
                "method": {"type": "full"},
                "hyperparameters": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3,
                                    "augment": false},
                "seed": 5,
            }),
            Duration::from_secs(600),
        )
        .await;
    let image_model = job["fine_tuned_model"].as_str().expect("model").to_owned();
    let image_dir = work.path().join("images");
    std::fs::create_dir(&image_dir).expect("mkdir");
    let mut pngs: Vec<Vec<u8>> = held_out
        .iter()
        .take(3)
        .map(|i| i.png().expect("png"))
        .collect();
    pngs.push(photo(341, 250));
    pngs.push(photo(640, 427));
    let paths: Vec<PathBuf> = pngs
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = image_dir.join(format!("{i}.png"));
            std::fs::write(&path, bytes).expect("write image");
            path
        })
        .collect();

    // hone's answers.
    let (status, text_predictions) = s
        .post_json(
            &format!("/v1/models/{text_model}/predict"),
            &json!({"inputs": texts}),
        )
        .await;
    assert_eq!(status, 200, "{text_predictions}");
    let form = pngs
        .iter()
        .fold(reqwest::multipart::Form::new(), |form, bytes| {
            form.part(
                "image",
                reqwest::multipart::Part::bytes(bytes.clone()).file_name("x.png"),
            )
        });
    let (status, image_predictions) = s
        .post_form(&format!("/v1/models/{image_model}/predict"), form)
        .await;
    assert_eq!(status, 200, "{image_predictions}");

    // The archives, and the README's Python on them.
    let text_dir = work.path().join("text");
    std::fs::create_dir(&text_dir).expect("mkdir");
    let folder = download(&s, &text_model, &text_dir).await;
    let files = names(&folder);
    for name in [
        "README.md",
        "preprocessing.json",
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "hone_model.json",
        "manifest.json",
    ] {
        assert!(files.contains(name), "{name} missing from {files:?}");
    }
    let scores = python_scores(&folder, json!([texts])).await;
    let worst = compare(
        text_predictions["predictions"]
            .as_array()
            .expect("predictions"),
        &scores,
    );
    eprintln!("text model: largest difference from predict {worst:.2e}");

    let image_out = work.path().join("image");
    std::fs::create_dir(&image_out).expect("mkdir");
    let folder = download(&s, &image_model, &image_out).await;
    let files = names(&folder);
    assert!(!files.contains("tokenizer.json"), "{files:?}");
    let readme = std::fs::read_to_string(folder.join("README.md")).expect("README");
    assert!(readme.contains("plain PyTorch"), "{readme}");
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    let scores = python_scores(&folder, json!([paths])).await;
    let worst = compare(
        image_predictions["predictions"]
            .as_array()
            .expect("predictions"),
        &scores,
    );
    eprintln!("image model: largest difference from predict {worst:.2e}");

    // A client that goes away mid-download stops the writer; the server goes on.
    let mut r = s
        .client
        .get(s.url(&format!("/v1/models/{text_model}/content")))
        .send()
        .await
        .expect("download");
    assert!(r.chunk().await.expect("a chunk").is_some());
    drop(r);
    let (status, again) = s
        .post_json(
            &format!("/v1/models/{text_model}/predict"),
            &json!({"inputs": ["still here"]}),
        )
        .await;
    assert_eq!(status, 200, "{again}");

    // Another project's model, an unknown one, and no key at all.
    let other = s.create_key("other-project").await;
    let r = reqwest::Client::new()
        .get(s.url(&format!("/v1/models/{text_model}/content")))
        .bearer_auth(&other)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 404);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let (status, body) = s.get("/v1/models/ft:all-MiniLM-L6-v2:none:0/content").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["type"], "not_found_error", "{body}");
    let r = reqwest::Client::new()
        .get(s.url(&format!("/v1/models/{text_model}/content")))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 401);
}

/// A 24-bit RGB PNG of `width` × `height` with detail at every scale (so resizing it
/// is a real test of the documented filter).
fn photo(width: u32, height: u32) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([
            (x * 255 / width) as u8,
            ((x * 7 + y * 13) % 256) as u8,
            if (x / 16 + y / 16) % 2 == 0 { 230 } else { 20 },
        ])
    });
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        &pixels,
        width,
        height,
        image::ExtendedColorType::Rgb8,
    )
    .expect("encode png");
    out
}
