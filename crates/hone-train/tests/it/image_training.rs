//! Image jobs through the trainer: every strategy and task type on a tiny random
//! EfficientNet (scikit-learn's digits, 8×8 upscaled to its 32-pixel input), the
//! published directory predicting as the trained model did, resuming an augmented run
//! exactly, and the real EfficientNet-Lite0 against the same network from scratch.

use std::path::{Path, PathBuf};

use hone_domain::job::MonitorMetric;
use hone_train::base_model::Modality;
use hone_train::train::{fine_tune, fine_tune_with, EncoderInit, Strategy, TrainConfig, TrainData};
use hone_train::{Classifier, Objective, Prediction, Targets, TaskSpec, TrainError};
use tch::Device;

use crate::common::{cpu_job, torch_lock, weights};
use crate::efficientnet::{lite0_dir, tiny_image_base};
use crate::resume::Run;
use crate::test_images::{read_digits, LabelledImage};

fn digits() -> Vec<LabelledImage> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/data/digits.csv.gz");
    read_digits(&path).expect("digits; run scripts/setup")
}

/// Digits of the given classes, `per_class` of each, skipping the first `skip` of each.
fn sample(
    all: &[LabelledImage],
    classes: &[u8],
    per_class: usize,
    skip: usize,
) -> Vec<LabelledImage> {
    let mut out = Vec::new();
    for &c in classes {
        out.extend(
            all.iter()
                .filter(|d| d.label == c)
                .skip(skip)
                .take(per_class)
                .cloned(),
        );
    }
    out
}

fn pngs(images: &[LabelledImage]) -> Vec<Vec<u8>> {
    images.iter().map(|d| d.png().expect("png")).collect()
}

fn class_data(images: &[LabelledImage], classes: &[u8]) -> TrainData {
    let labels = images
        .iter()
        .map(|d| classes.iter().position(|&c| c == d.label).expect("class"))
        .collect();
    TrainData::images(pngs(images), Targets::Single(labels))
}

fn class_names(classes: &[u8]) -> Vec<String> {
    classes.iter().map(|c| format!("digit-{c}")).collect()
}

fn image_config(strategy: Strategy, epochs: u32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 8,
        learning_rate: match strategy {
            Strategy::FeatureExtraction => 3e-2,
            _ => 3e-3,
        },
        weight_decay: 0.0,
        seed: 5,
        strategy,
        ..TrainConfig::default()
    }
}

const CLASSES: &[u8] = &[0, 1, 7];

#[test]
fn every_strategy_trains_an_image_model_and_lowers_the_loss() {
    let _lock = torch_lock();
    let all = digits();
    let base = tiny_image_base(31);
    let train = class_data(&sample(&all, CLASSES, 12, 0), CLASSES);
    let validation = class_data(&sample(&all, CLASSES, 5, 12), CLASSES);
    for strategy in [
        Strategy::Full,
        Strategy::Partial { frozen_layers: 3 },
        Strategy::FeatureExtraction,
    ] {
        let mut run = Run::default();
        let model = fine_tune(
            cpu_job(
                base.path(),
                Objective::classification(class_names(CLASSES)),
                train.clone(),
                Some(validation.clone()),
                image_config(strategy, 6),
            ),
            &mut run,
        )
        .unwrap_or_else(|e| panic!("{strategy:?}: {e}"));
        let (first, last) = (run.epochs[0].train_loss, run.epochs[5].train_loss);
        println!("{strategy:?}: train loss {first:.3} → {last:.3}");
        assert!(last < first, "{strategy:?}: {first} → {last}");
        assert_eq!(run.losses.len(), 6 * 5); // ceil(36 / 8) = 5 steps an epoch
        let evaluation = model.evaluation().expect("evaluation");
        assert!(evaluation.validation.accuracy().is_finite());
        assert_eq!(model.meta().modality, Modality::Image);
        assert_eq!(model.meta().architecture, "efficientnet_lite");
    }
    // Augmentation is on by default for full training; off, the same run sees other
    // pixels and so other losses.
    let losses = |augment: bool| {
        let mut config = image_config(Strategy::Full, 1);
        config.augment = augment;
        let mut run = Run::default();
        fine_tune(
            cpu_job(
                base.path(),
                Objective::classification(class_names(CLASSES)),
                train.clone(),
                None,
                config,
            ),
            &mut run,
        )
        .expect("train");
        run.losses
    };
    let (on, off) = (losses(true), losses(false));
    assert_eq!(on[0], losses(true)[0], "augmentation is seeded");
    assert_ne!(on, off);

    // More frozen layers than the backbone has is refused by name.
    let err = fine_tune(
        cpu_job(
            base.path(),
            Objective::classification(class_names(CLASSES)),
            train.clone(),
            None,
            image_config(Strategy::Partial { frozen_layers: 99 }, 1),
        ),
        &mut Run::default(),
    )
    .expect_err("too many frozen layers");
    assert!(err.to_string().contains("frozen_layers 99"), "{err}");
    // Texts for an image base model are refused.
    let texts = TrainData {
        texts: vec!["a".into(); 3],
        labels: Targets::Single(vec![0, 1, 2]),
        ..TrainData::default()
    };
    let err = fine_tune(
        cpu_job(
            base.path(),
            Objective::classification(class_names(CLASSES)),
            texts,
            None,
            image_config(Strategy::Full, 1),
        ),
        &mut Run::default(),
    )
    .expect_err("texts");
    assert!(err.to_string().contains("not made of images"), "{err}");
}

#[test]
fn image_models_take_multi_label_and_multi_task_heads() {
    let _lock = torch_lock();
    let all = digits();
    let base = tiny_image_base(32);
    let classes: &[u8] = &[0, 3, 6, 8];
    let images = sample(&all, classes, 8, 0);
    // Multi-label: "round" (0, 6, 8) and "has-loop-top" (0, 8) — overlapping labels.
    let tags = |d: &LabelledImage| -> Vec<usize> {
        let mut t = Vec::new();
        if matches!(d.label, 0 | 6 | 8) {
            t.push(0);
        }
        if matches!(d.label, 0 | 8) {
            t.push(1);
        }
        t
    };
    let multi = TrainData::images(
        pngs(&images),
        Targets::Multi(images.iter().map(tags).collect()),
    );
    let mut run = Run::default();
    let model = fine_tune(
        cpu_job(
            base.path(),
            Objective::multi_label(vec!["round".into(), "loop-top".into()]),
            multi.clone(),
            Some(multi),
            image_config(Strategy::FeatureExtraction, 5),
        ),
        &mut run,
    )
    .expect("multi-label");
    assert!(
        run.epochs[4].train_loss < run.epochs[0].train_loss,
        "{:?}",
        run.epochs
    );
    assert!(model.meta().threshold.is_some());
    let predictions = model
        .classifier()
        .predict_images(&pngs(&images[..3]), 2)
        .expect("predict");
    assert!(matches!(predictions[0], Prediction::MultiLabel { .. }));

    // Multi-task: the digit and its parity, one head each.
    let tasks = vec![
        TaskSpec {
            name: "digit".into(),
            labels: class_names(classes),
            weight: 1.0,
        },
        TaskSpec {
            name: "parity".into(),
            labels: vec!["even".into(), "odd".into()],
            weight: 1.0,
        },
    ];
    let targets = images
        .iter()
        .map(|d| {
            vec![
                classes.iter().position(|&c| c == d.label),
                Some(usize::from(d.label % 2 == 1)),
            ]
        })
        .collect();
    let data = TrainData::images(pngs(&images), Targets::Tasks(targets));
    let mut run = Run::default();
    let model = fine_tune(
        cpu_job(
            base.path(),
            Objective::multi_task(tasks),
            data.clone(),
            Some(data),
            image_config(Strategy::Full, 5),
        ),
        &mut run,
    )
    .expect("multi-task");
    assert!(
        run.epochs[4].train_loss < run.epochs[0].train_loss,
        "{:?}",
        run.epochs
    );
    let predictions = model
        .classifier()
        .predict_images(&pngs(&images[..2]), 8)
        .expect("predict");
    match &predictions[0] {
        Prediction::MultiTask(heads) => {
            assert_eq!(heads.len(), 2);
            assert_eq!(heads[1].0, "parity");
        }
        other => panic!("{other:?}"),
    }
}

fn probabilities(predictions: &[Prediction]) -> Vec<f32> {
    predictions
        .iter()
        .flat_map(|p| match p {
            Prediction::Class(c) => c.scores.iter().map(|s| s.1).collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn a_saved_image_model_loads_and_predicts_as_the_trained_one() {
    let _lock = torch_lock();
    let all = digits();
    let base = tiny_image_base(33);
    let train = class_data(&sample(&all, CLASSES, 8, 0), CLASSES);
    let model = fine_tune(
        cpu_job(
            base.path(),
            Objective::classification(class_names(CLASSES)),
            train,
            None,
            image_config(Strategy::Partial { frozen_layers: 2 }, 2),
        ),
        &mut Run::default(),
    )
    .expect("train");
    let out = tempfile::tempdir().expect("tempdir");
    model.save(out.path()).expect("save");
    assert!(out.path().join("config.json").is_file());
    assert!(!out.path().join("tokenizer.json").exists());
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("hone_model.json")).expect("meta"))
            .expect("json");
    assert_eq!(meta["modality"], "image");
    assert_eq!(meta["format_version"], 4);

    let loaded = Classifier::load(out.path(), Device::Cpu).expect("load");
    assert_eq!(loaded.modality(), Modality::Image);
    // int8 is for text models: refused, and the model left as it was.
    let refused = hone_train::quantize::quantize_published(out.path(), None, 4);
    assert!(
        matches!(&refused, Err(TrainError::InvalidInput(m)) if m.contains("text models")),
        "{refused:?}"
    );
    assert!(hone_train::model_dir::ModelMeta::read(out.path())
        .expect("meta")
        .quantization
        .is_none());
    let inputs = pngs(&sample(&all, CLASSES, 3, 20));
    let ours = probabilities(
        &model
            .classifier()
            .predict_images(&inputs, 4)
            .expect("trained"),
    );
    let theirs = probabilities(&loaded.predict_images(&inputs, 3).expect("loaded"));
    assert_eq!(ours.len(), 9 * 3);
    for (a, b) in ours.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-6, "{ours:?} vs {theirs:?}");
    }
    // One at a time gives the same answers: batching does not change them.
    let single = probabilities(&loaded.predict_images(&inputs[..1], 1).expect("one"));
    for (a, b) in single.iter().zip(&theirs) {
        assert!((a - b).abs() <= 1e-5);
    }

    // Evaluation on labelled images scores what predict_images answers.
    let labelled = class_data(&sample(&all, CLASSES, 3, 20), CLASSES);
    let metrics = loaded.evaluate(&labelled, 4).expect("evaluate");
    assert_eq!(metrics.examples, 9);
    let predicted = loaded.predict_images(&labelled.images, 4).expect("predict");
    let truth = match &labelled.labels {
        Targets::Single(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    let right = predicted
        .iter()
        .zip(&truth)
        .filter(|(p, &t)| p.label() == Some(class_names(CLASSES)[t].as_str()))
        .count();
    assert!(
        (metrics.accuracy - right as f64 / 9.0).abs() < 1e-9,
        "{metrics:?}"
    );

    let mut bad = inputs[..3].to_vec();
    bad[1] = b"not an image".to_vec();
    let err = loaded.predict_images(&bad, 2).expect_err("undecodable");
    assert!(
        matches!(err, TrainError::BadImage { index: 1, .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("input 1: cannot decode image"),
        "{err}"
    );
    let err = loaded.predict(&["a text".into()], 1).expect_err("texts");
    assert!(err.to_string().contains("images"), "{err}");
}

#[test]
fn an_augmented_image_job_resumes_from_a_checkpoint_as_if_never_stopped() {
    let _lock = torch_lock();
    let all = digits();
    let base = tiny_image_base(34);
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| -> PathBuf { scratch.path().join(name) };
    let (straight_dir, stopped_dir, resumed_dir) = (dir("a"), dir("b"), dir("c"));
    let train = class_data(&sample(&all, CLASSES, 8, 0), CLASSES);
    let validation = class_data(&sample(&all, CLASSES, 4, 8), CLASSES);
    let make = |checkpoints: &Path| {
        let mut config = image_config(Strategy::Full, 3);
        assert!(config.augment, "augmentation is on by default");
        config.monitor = MonitorMetric::Accuracy;
        let mut j = cpu_job(
            base.path(),
            Objective::classification(class_names(CLASSES)),
            train.clone(),
            Some(validation.clone()),
            config,
        );
        j.checkpoint_dir = Some(checkpoints.to_path_buf().leak());
        j
    };
    let mut straight = Run::default();
    let expected = fine_tune(make(&straight_dir), &mut straight).expect("straight");
    assert_eq!(straight.losses.len(), 9); // 3 epochs × ceil(24 / 8)

    let mut stopped = Run {
        stop_after_checkpoints: Some(1),
        ..Run::default()
    };
    let err = fine_tune(make(&stopped_dir), &mut stopped).expect_err("stopped");
    assert!(matches!(err, TrainError::Cancelled), "{err}");
    let checkpoint = stopped.checkpoints[0].dir.clone();

    let mut resumed = Run::default();
    let mut again = make(&resumed_dir);
    again.resume_from = Some(checkpoint.as_path());
    let model = fine_tune(again, &mut resumed).expect("resumed");
    assert_eq!(resumed.losses.len(), 6);
    for (a, b) in straight.losses[3..].iter().zip(&resumed.losses) {
        assert!(
            (a - b).abs() <= 1e-5,
            "{:?} vs {:?}",
            straight.losses,
            resumed.losses
        );
    }
    let (wa, wb) = (weights(&expected), weights(&model));
    assert_eq!(wa.len(), wb.len());
    for (name, a) in &wa {
        let diff = (a - &wb[name]).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
}

/// Heavy (Lite0 at 224 px over 250 digits, twice): feature extraction from the
/// ImageNet-pretrained backbone against the same network from random weights.
#[test]
fn lite0_pretrained_features_beat_from_scratch_on_digits() {
    let _lock = torch_lock();
    tch::set_num_threads(2);
    let all = digits();
    let classes: Vec<u8> = (0..10).collect();
    let train = class_data(&sample(&all, &classes, 15, 0), &classes);
    let held_out = class_data(&sample(&all, &classes, 10, 15), &classes);
    let base = lite0_dir();
    let accuracy = |init: EncoderInit| -> f64 {
        let mut config = image_config(Strategy::FeatureExtraction, 30);
        config.learning_rate = 1e-2;
        config.batch_size = 16;
        let model = fine_tune_with(
            cpu_job(
                &base,
                Objective::classification(class_names(&classes)),
                train.clone(),
                Some(held_out.clone()),
                config,
            ),
            init,
            &mut Run::default(),
        )
        .expect("train");
        model
            .evaluation()
            .expect("evaluation")
            .validation
            .accuracy()
    };
    let pretrained = accuracy(EncoderInit::Pretrained);
    let scratch = accuracy(EncoderInit::Random);
    println!(
        "digits, 10 classes × 15 train, 100 held out, feature extraction at 224 px (chance \
         0.10): pretrained Lite0 {pretrained:.2}, from scratch {scratch:.2}"
    );
    assert!(pretrained >= 0.5, "pretrained {pretrained}");
    assert!(
        pretrained >= scratch + 0.15,
        "pretrained {pretrained}, scratch {scratch}"
    );
}
