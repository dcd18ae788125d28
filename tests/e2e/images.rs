//! Image fine-tuning through the API: a seeded Fashion-MNIST subset uploaded as zips
//! of class folders (28×28 gray PNGs), a `feature_extraction` job on the real
//! ImageNet-pretrained EfficientNet-Lite0, and the published model.

use std::io::{Cursor, Write};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde_json::{json, Value};
use zip::write::SimpleFileOptions;
use zip::ZipWriter;

use crate::support::{messages, TestServer};
use crate::test_images::{read_fashion_mnist_test, LabelledImage};

const CLASSES: [&str; 10] = [
    "tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot",
];

/// A zip of class folders (`fashion/{class}/{i}.png`).
pub(crate) fn class_zip(images: &[&LabelledImage]) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    for (i, image) in images.iter().enumerate() {
        let name = format!("fashion/{}/{i}.png", CLASSES[image.label as usize]);
        writer
            .start_file(name, SimpleFileOptions::default())
            .expect("start");
        writer.write_all(&image.png().expect("png")).expect("write");
    }
    writer.finish().expect("finish").into_inner()
}

/// `train` and `held_out` images of every class, drawn by a seeded shuffle of the
/// first 2,000 images of Fashion-MNIST's test split.
pub(crate) fn subset(
    train: usize,
    held_out: usize,
    seed: u64,
) -> (Vec<LabelledImage>, Vec<LabelledImage>) {
    let mut all = read_fashion_mnist_test(2000).expect("Fashion-MNIST; run scripts/setup");
    all.shuffle(&mut StdRng::seed_from_u64(seed));
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for class in 0..10u8 {
        let mut of = all.iter().filter(|i| i.label == class).cloned();
        a.extend(of.by_ref().take(train));
        b.extend(of.take(held_out));
    }
    (a, b)
}

async fn upload(s: &TestServer, name: &str, images: &[LabelledImage]) -> Value {
    let refs: Vec<&LabelledImage> = images.iter().collect();
    let (status, file) = s.upload(name, class_zip(&refs)).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["modality"], "image", "{file}");
    assert_eq!(file["examples"], images.len(), "{file}");
    file
}

/// Runs a job to success; the job, its validation accuracy and how long it took.
async fn run(s: &TestServer, request: Value) -> (Value, f64, f64) {
    let started = Instant::now();
    let job = s.train(&request, Duration::from_secs(600)).await;
    let validation = &job["result"]["evaluation"]["validation"];
    assert_eq!(validation["examples"], 100, "{validation}");
    let accuracy = validation["accuracy"].as_f64().expect("accuracy");
    (job, accuracy, started.elapsed().as_secs_f64())
}

#[tokio::test]
async fn feature_extraction_on_lite0_learns_fashion_mnist_from_a_zip() {
    let (train, held_out) = subset(20, 10, 2031);
    let s = TestServer::start().await;
    let train_file = upload(&s, "fashion-train.zip", &train).await;
    let validation_file = upload(&s, "fashion-validation.zip", &held_out).await;

    // An image model takes no token limit: refused by name, nothing queued.
    let (status, refused) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "efficientnet-lite0",
                "training_file": train_file["id"],
                "hyperparameters": {"max_seq_len": 64},
            }),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "hyperparameters.max_seq_len");

    // The augmentation switch is documented where users look.
    let (_, spec) = s.get("/openapi.json").await;
    let augment = &spec["components"]["schemas"]["HyperparametersInput"]["properties"]["augment"];
    assert_eq!(augment["type"], json!(["boolean", "null"]), "{augment}");

    let job_on = |from_scratch: bool| {
        json!({
            "base_model": "efficientnet-lite0",
            "training_file": train_file["id"],
            "validation_file": validation_file["id"],
            "method": {"type": "feature_extraction", "from_scratch": from_scratch},
            "hyperparameters": {"epochs": 30, "learning_rate": 0.01, "batch_size": 16},
            "seed": 3,
        })
    };
    let (job, accuracy, seconds) = run(&s, job_on(false)).await;
    let (scratch, scratch_accuracy, scratch_seconds) = run(&s, job_on(true)).await;
    // The whole network trained from random weights on the same images: the baseline
    // that says what ImageNet pretraining is worth (BENCHMARKS.md has it for every
    // strategy).
    let (full_scratch, full_scratch_accuracy, full_scratch_seconds) = run(
        &s,
        json!({
            "base_model": "efficientnet-lite0",
            "training_file": train_file["id"],
            "validation_file": validation_file["id"],
            "method": {"type": "full", "from_scratch": true},
            "hyperparameters": {"epochs": 3, "learning_rate": 0.001, "batch_size": 16,
                                "augment": false},
            "seed": 3,
        }),
    )
    .await;
    eprintln!(
        "Fashion-MNIST, 10 classes × 20 train, 100 held out, efficientnet-lite0 (chance \
         0.10): validation accuracy of feature_extraction pretrained {accuracy:.3} \
         ({seconds:.0} s), on a random frozen backbone {scratch_accuracy:.3} \
         ({scratch_seconds:.0} s), full training from random weights \
         {full_scratch_accuracy:.3} ({full_scratch_seconds:.0} s): transfer is worth {:.3}",
        accuracy - scratch_accuracy.max(full_scratch_accuracy)
    );
    assert_eq!(
        full_scratch["method"],
        json!({"type": "full", "from_scratch": true}),
        "{full_scratch}"
    );
    assert!(
        accuracy >= full_scratch_accuracy + 0.2,
        "pretrained {accuracy}, full training from scratch {full_scratch_accuracy}"
    );
    let result = &job["result"];
    assert_eq!(result["trained_examples"], 200, "{result}");
    assert!(accuracy >= 0.5, "{result}");
    assert!(
        accuracy >= scratch_accuracy + 0.2,
        "pretrained {accuracy}, from scratch {scratch_accuracy}"
    );
    assert_eq!(scratch["method"]["from_scratch"], true, "{scratch}");
    assert_eq!(
        result["evaluation"]["validation"]["confusion_matrix"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );

    // The pretrained backbone's features of the file were cached by the first job: a
    // second one (another seed) trains its head on them without running Lite0 again,
    // and the from-scratch job, whose features are random weights', neither used nor
    // filled the cache.
    let mut again = job_on(false);
    again["seed"] = json!(4);
    let (second, second_accuracy, second_seconds) = run(&s, again).await;
    eprintln!("the same job on cached features: {second_accuracy:.3} in {second_seconds:.0} s");
    let reused = |messages: Vec<String>| {
        messages
            .iter()
            .any(|m| m.contains("Reusing the cached features"))
    };
    let second_messages = messages(&s, &second).await;
    assert!(reused(second_messages.clone()), "{second_messages:?}");
    assert!(!reused(messages(&s, &job).await) && !reused(messages(&s, &scratch).await));
    assert!(second_accuracy >= 0.5);

    let model_id = job["fine_tuned_model"].as_str().expect("model");
    let (status, model) = s.get(&format!("/v1/models/{model_id}")).await;
    assert_eq!(status, 200, "{model}");
    let mut labels: Vec<&str> = model["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    labels.sort_unstable();
    let mut expected = CLASSES.to_vec();
    expected.sort_unstable();
    assert_eq!(labels, expected, "{model}");
    // The published model classifies the held-out images as its evaluation did: as
    // base64 in JSON, and as files in a multipart form (the same answers).
    let encoded: Vec<Value> = held_out
        .iter()
        .map(|i| json!({"image": base64::engine::general_purpose::STANDARD.encode(i.png().expect("png"))}))
        .collect();
    let path = format!("/v1/models/{model_id}/predict");
    let (status, answer) = s.post_json(&path, &json!({"inputs": encoded})).await;
    assert_eq!(status, 200, "{answer}");
    let predicted: Vec<&str> = answer["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["label"].as_str().expect("label"))
        .collect();
    assert_eq!(predicted.len(), held_out.len());
    let right = predicted
        .iter()
        .zip(&held_out)
        .filter(|(p, i)| **p == CLASSES[i.label as usize])
        .count();
    let served = right as f64 / held_out.len() as f64;
    assert!(
        (served - accuracy).abs() <= 0.02,
        "served accuracy {served}, evaluation {accuracy}"
    );
    let mut form = reqwest::multipart::Form::new();
    for (i, image) in held_out.iter().take(8).enumerate() {
        form = form.part(
            "image",
            reqwest::multipart::Part::bytes(image.png().expect("png"))
                .file_name(format!("{i}.png")),
        );
    }
    let (status, files) = s.post_form(&path, form).await;
    assert_eq!(status, 200, "{files}");
    let from_files: Vec<&str> = files["predictions"]
        .as_array()
        .expect("predictions")
        .iter()
        .map(|p| p["label"].as_str().expect("label"))
        .collect();
    assert_eq!(from_files, predicted[..8], "{files}");
    crate::image_predict::image_inputs_are_checked_and_the_one_at_fault_is_named(&s, &path).await;
    // A text model's inputs on an image model name the mismatch.
    let (status, err) = s.post_json(&path, &json!({"inputs": ["a text"]})).await;
    assert_eq!(status, 400, "{err}");
}

/// `auto` on images: with few examples a class it keeps the pretrained backbone frozen
/// and says why; its probe ran on the features the job then trains on.
#[tokio::test]
async fn auto_keeps_lite0_frozen_for_a_few_images_a_class() {
    let (train, _) = subset(10, 0, 2032);
    let s = TestServer::start().await;
    let file = upload(&s, "fashion-small.zip", &train).await;
    let (status, job) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &json!({
                "base_model": "efficientnet-lite0",
                "training_file": file["id"],
                "method": {"type": "auto"},
                "seed": 5,
            }),
        )
        .await;
    assert_eq!(status, 200, "{job}");
    let id = job["id"].as_str().expect("id");
    let job = s.wait_for_job(id, Duration::from_secs(600)).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let chosen = &job["method"]["chosen"];
    assert_eq!(chosen["type"], "feature_extraction", "{chosen}");
    assert!(
        chosen["reason"]
            .as_str()
            .is_some_and(|r| r.contains("too few examples per class") && !r.contains("tokens")),
        "{chosen}"
    );
    // The default split held out 20% of the 100 images, stratified.
    let validation = &job["result"]["evaluation"]["validation"];
    assert_eq!(validation["examples"], 20, "{validation}");
    let accuracy = validation["accuracy"].as_f64().expect("accuracy");
    eprintln!(
        "auto on 80 Fashion-MNIST images: feature_extraction, validation accuracy {accuracy:.3}"
    );
    assert!(accuracy > 0.3, "{validation}");
}

/// `feature_extraction` with its default `head_solver`, `lbfgs`: the head is fitted once
/// as a tuned linear probe, then again on the training and validation images; the job
/// says which regularisation won, and it learns (0.770 validation accuracy measured on
/// these 200 training images, before the final fit; chance is 0.10).
#[tokio::test]
async fn a_fitted_head_is_one_epoch_and_names_its_regularisation() {
    let (train, held_out) = subset(20, 10, 2031);
    let s = TestServer::start().await;
    let train_file = upload(&s, "fashion-train.zip", &train).await;
    let validation_file = upload(&s, "fashion-validation.zip", &held_out).await;
    let request = |hyperparameters: Value| {
        json!({
            "base_model": "efficientnet-lite0",
            "training_file": train_file["id"],
            "validation_file": validation_file["id"],
            "method": {"type": "feature_extraction"},
            "hyperparameters": hyperparameters,
            "seed": 3,
        })
    };
    // A number of epochs means nothing to a fitted head: refused by name.
    let (status, refused) = s
        .post_json(
            "/v1/fine_tuning/jobs",
            &request(json!({"head_solver": "lbfgs", "epochs": 5})),
        )
        .await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["error"]["param"], "hyperparameters.epochs");

    // The fitted head is the default, and so is its final fit on the training and
    // validation images together (its regularisation was chosen by cross-validation).
    let (job, accuracy, seconds) = run(&s, request(json!({}))).await;
    eprintln!(
        "feature_extraction, L-BFGS head: validation accuracy {accuracy:.3} ({seconds:.0} s)"
    );
    assert_eq!(job["hyperparameters"]["head_solver"], "lbfgs", "{job}");
    assert_eq!(job["hyperparameters"]["refit_on_validation"], true, "{job}");
    assert_eq!(job["result"]["epochs_run"], 1, "{job}");
    assert_eq!(job["result"]["trained_examples"], 300, "{job}");
    let fitted = messages(&s, &job)
        .await
        .into_iter()
        .find(|m| m.contains("logistic regression"))
        .expect("an event names the fit");
    assert!(
        fitted.contains("C = ") && fitted.contains("5-fold cross-validation"),
        "{fitted}"
    );
    assert!(accuracy >= 0.7, "validation accuracy {accuracy:.3}");
}
