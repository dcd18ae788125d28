//! Fine-tuning, saving and loading a published model.

use hone_train::predict::Classifier;
use hone_train::train::{fine_tune, fine_tune_with, EncoderInit, TrainData, TrainJob};
use hone_train::Objective;
use hone_train::TrainError;
use tch::{Device, Tensor};

use crate::common::{
    class, cpu_job, fast_config, labels, tiny_base_model, torch_lock, toy_data, Naming, Recorder,
};

fn job(
    base: &std::path::Path,
    seed: u64,
    train: TrainData,
    validation: Option<TrainData>,
) -> TrainJob<'_> {
    cpu_job(
        base,
        Objective::classification(labels()),
        train,
        validation,
        fast_config(seed),
    )
}

#[test]
fn same_seed_same_losses() {
    let _lock = torch_lock();
    let base = tiny_base_model(1, Naming::Plain);
    let run = |seed| {
        let mut recorder = Recorder::default();
        fine_tune(job(base.path(), seed, toy_data(40, 1), None), &mut recorder).expect("train");
        recorder.steps.iter().map(|s| s.loss).collect::<Vec<f64>>()
    };
    let first = run(17);
    assert_eq!(first.len(), 10); // 2 epochs × ceil(40 / 8)
    assert_eq!(first, run(17));
    assert_ne!(first, run(18));
}

#[test]
fn learns_a_separable_task() {
    let _lock = torch_lock();
    let base = tiny_base_model(2, Naming::Plain);
    let mut job = job(base.path(), 5, toy_data(200, 2), Some(toy_data(60, 3)));
    job.config.epochs = 8;
    job.config.batch_size = 16;
    job.config.learning_rate = 3e-3;
    let mut recorder = Recorder::default();
    let model = fine_tune(job, &mut recorder).expect("train");

    assert_eq!(recorder.epochs.len(), 8);
    let first = &recorder.epochs[0];
    let last = recorder.epochs.last().expect("epochs");
    assert!(
        last.train_loss < first.train_loss * 0.5,
        "{first:?} → {last:?}"
    );
    let validation = last.validation.as_ref().expect("validation");
    assert_eq!(validation.examples, 60);
    assert!(validation.accuracy >= 0.95, "{validation:?}");
    assert!(validation.macro_f1 >= 0.95, "{validation:?}");
    assert_eq!(model.final_metrics(), Some(last));

    let steps = &recorder.steps;
    assert_eq!(steps.len() as u64, steps[0].total_steps);
    assert!(steps
        .iter()
        .enumerate()
        .all(|(i, s)| s.step == i as u64 + 1));
    assert_eq!(steps[0].learning_rate, 0.0); // warmup starts at zero, as transformers
    assert!(steps.windows(2).all(|w| w[0].elapsed <= w[1].elapsed));
    let peak = steps.iter().map(|s| s.learning_rate).fold(0.0, f64::max);
    assert!((peak - 3e-3).abs() < 1e-12);
}

#[test]
fn cancellation_stops_at_a_step_boundary() {
    let _lock = torch_lock();
    let base = tiny_base_model(3, Naming::Plain);
    let mut recorder = Recorder {
        cancel_after: Some(2),
        ..Recorder::default()
    };
    let result = fine_tune(job(base.path(), 1, toy_data(40, 4), None), &mut recorder);
    assert!(matches!(result, Err(TrainError::Cancelled)), "{result:?}");
    assert_eq!(recorder.steps.len(), 2);
    assert!(recorder.epochs.is_empty());
}

/// A tiny model trained with validation data (toy data, seed 9) and saved as
/// `ft-model` in the returned folder.
fn trained_and_saved() -> (hone_train::train::TrainedModel, tempfile::TempDir) {
    let base = tiny_base_model(4, Naming::Plain);
    let model = fine_tune(
        job(base.path(), 9, toy_data(48, 5), Some(toy_data(16, 6))),
        &mut Recorder::default(),
    )
    .expect("train");
    let out = tempfile::tempdir().expect("tempdir");
    model.save(&out.path().join("ft-model")).expect("save");
    (model, out)
}

#[test]
fn save_then_load_predicts_the_same() {
    let _lock = torch_lock();
    let (model, out) = trained_and_saved();
    let published = out.path().join("ft-model");

    for name in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
        "hone_model.json",
    ] {
        assert!(published.join(name).is_file(), "{name} missing");
    }
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(published.join("hone_model.json")).expect("read"))
            .expect("json");
    assert_eq!(
        meta,
        serde_json::json!({"format_version": 4, "modality": "text", "architecture": "bert",
                           "pooling": "mean", "head": "linear", "text_pairs": false,
                           "task_type": "classification", "labels": ["negative", "positive"],
                           "max_seq_len": 16})
    );
    // A version-3 file (before images) has no modality and is a text model.
    let mut v3 = meta.clone();
    v3["format_version"] = 3.into();
    v3.as_object_mut().expect("object").remove("modality");
    let v3_dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&published).expect("dir") {
        let path = entry.expect("entry").path();
        std::fs::copy(&path, v3_dir.path().join(path.file_name().expect("name"))).expect("copy");
    }
    std::fs::write(v3_dir.path().join("hone_model.json"), v3.to_string()).expect("write");
    let old = Classifier::load(v3_dir.path(), Device::Cpu).expect("a v3 model loads");
    assert_eq!(old.modality(), hone_train::Modality::Text);
    let names: Vec<String> = Tensor::read_safetensors(published.join("model.safetensors"))
        .expect("weights")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for name in [
        "head.weight",
        "head.bias",
        "embeddings.word_embeddings.weight",
        "encoder.layer.1.output.LayerNorm.bias",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} not saved");
    }
    assert!(!names.iter().any(|n| n.starts_with("pooler")));

    let texts: Vec<String> = [
        "a great film",
        "boring",
        "the acting was awful but the plot was excellent",
        "",
    ]
    .map(String::from)
    .to_vec();
    let before = model.classifier().predict(&texts, 3).expect("predict");
    let loaded = Classifier::load(&published, Device::Cpu).expect("load");
    assert_eq!(loaded.labels(), ["negative", "positive"]);
    let after = loaded.predict(&texts, 2).expect("predict");
    assert_eq!(before.len(), 4);
    for (b, a) in before.iter().zip(&after) {
        let (b, a) = (class(b), class(a));
        assert_eq!(b.label, a.label);
        assert_eq!(b.scores.len(), 2);
        assert_eq!(b.scores[0].0, "negative");
        for ((_, pb), (_, pa)) in b.scores.iter().zip(&a.scores) {
            assert!((pb - pa).abs() < 1e-6, "{b:?} vs {a:?}");
        }
        let sum: f32 = a.scores.iter().map(|(_, p)| p).sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert_eq!(
            a.score,
            a.scores.iter().map(|(_, p)| *p).fold(0.0, f32::max)
        );
    }
    assert!(loaded.predict(&[], 4).expect("empty").is_empty());
    assert!(matches!(
        loaded.predict(&texts, 0),
        Err(TrainError::InvalidInput(_))
    ));

    let metrics = loaded.evaluate(&toy_data(16, 6), 5).expect("evaluate");
    let trained = model
        .final_metrics()
        .and_then(|m| m.validation.clone())
        .expect("validation");
    assert!(
        (metrics.loss - trained.loss).abs() < 1e-5,
        "{metrics:?} vs {trained:?}"
    );
    assert_eq!(metrics.accuracy, trained.accuracy);
}

#[test]
fn an_int8_model_predicts_what_the_fp32_one_does_within_quantization_error() {
    let _lock = torch_lock();
    let (_trained, out) = trained_and_saved();
    let published = out.path().join("ft-model");
    let fp32 = Classifier::load(&published, Device::Cpu).expect("load");
    let mut int8 = Classifier::load(&published, Device::Cpu).expect("load");
    int8.quantize_int8().expect("quantize");

    let texts: Vec<String> = (0..12)
        .map(|i| format!("text number {i} with words"))
        .collect();
    let (a, b) = (
        fp32.predict(&texts, 4).expect("fp32"),
        int8.predict(&texts, 4).expect("int8"),
    );
    let mut largest = 0.0f32;
    for (a, b) in a.iter().zip(&b) {
        for ((_, pa), (_, pb)) in class(a).scores.iter().zip(&class(b).scores) {
            largest = largest.max((pa - pb).abs());
        }
    }
    assert!(largest < 0.05, "probabilities moved by {largest}");
    assert!(largest > 0.0, "the int8 path ran (it cannot be exact)");
    // Evaluation goes through the same layers: the accuracy change is measurable.
    let (ea, eb) = (
        fp32.evaluate(&toy_data(16, 6), 5).expect("fp32"),
        int8.evaluate(&toy_data(16, 6), 5).expect("int8"),
    );
    assert!((ea.loss - eb.loss).abs() < 0.05, "{ea:?} vs {eb:?}");

    // Marked for int8 with what it changes on the validation data, the model loads
    // quantized from then on.
    let recorded = hone_train::quantize::quantize_published(&published, Some(&toy_data(16, 6)), 5)
        .expect("quantize");
    let validation = recorded.validation.expect("validation");
    assert_eq!(validation.fp32, ea);
    assert_eq!(validation.quantized, eb);
    let reloaded = Classifier::load(&published, Device::Cpu).expect("load");
    assert_eq!(
        reloaded.meta().quantization.as_ref().map(|q| q.kind),
        Some(hone_train::model_dir::QuantizationType::Int8)
    );
    let again = reloaded.predict(&texts, 4).expect("int8 again");
    for (b, c) in b.iter().zip(&again) {
        assert_eq!(
            class(b).scores,
            class(c).scores,
            "loads quantized, deterministically"
        );
    }
    assert!(
        hone_train::quantize::quantize_published(&published, None, 5).is_err(),
        "once"
    );
}

#[test]
fn from_scratch_baseline_trains_without_the_checkpoint() {
    let _lock = torch_lock();
    let base = tiny_base_model(6, Naming::Plain);
    std::fs::remove_file(base.path().join("model.safetensors")).expect("rm");
    let mut recorder = Recorder::default();
    fine_tune_with(
        job(base.path(), 2, toy_data(16, 7), None),
        EncoderInit::Random,
        &mut recorder,
    )
    .expect("train");
    assert_eq!(recorder.epochs.len(), 2);
    // Starting from the (missing) checkpoint fails clearly.
    let err = fine_tune(
        job(base.path(), 2, toy_data(16, 7), None),
        &mut Recorder::default(),
    )
    .expect_err("no weights");
    assert!(matches!(err, TrainError::Io { .. }), "{err}");
}

#[test]
fn invalid_jobs_are_refused_before_training() {
    let base = tiny_base_model(8, Naming::Plain);
    let bad_label = TrainData {
        texts: vec!["good".into(), "bad".into()],
        labels: vec![0, 2].into(),
        ..TrainData::default()
    };
    let err = fine_tune(
        job(base.path(), 1, bad_label, None),
        &mut Recorder::default(),
    )
    .expect_err("label");
    assert!(
        matches!(err, TrainError::InvalidInput(ref m) if m.contains("label index 2")),
        "{err}"
    );

    let mut too_long = job(base.path(), 1, toy_data(4, 1), None);
    too_long.config.max_seq_len = 65; // max_position_embeddings is 64
    let err = fine_tune(too_long, &mut Recorder::default()).expect_err("too long");
    assert!(
        matches!(err, TrainError::InvalidInput(ref m) if m.contains("max_position_embeddings")),
        "{err}"
    );

    let mut one_label = job(base.path(), 1, toy_data(4, 1), None);
    one_label.objective = Objective::classification(vec!["only".into()]);
    one_label.train.labels = vec![0; 4].into();
    assert!(fine_tune(one_label, &mut Recorder::default()).is_err());
}
