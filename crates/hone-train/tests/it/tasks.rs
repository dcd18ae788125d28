//! Multi-label and multi-task training, and per-epoch checkpoints, on tiny random BERTs.

use std::collections::HashMap;

use hone_domain::dataset::TaskType;
use hone_train::train::{fine_tune, Checkpoint, Strategy, TrainData, TrainJob, TrainObserver};
use hone_train::{
    apply_checkpoint, Classifier, EpochMetrics, Objective, Prediction, Report, StepProgress,
    Targets, TaskSpec,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{Device, Tensor};

use crate::common::{
    cpu_job, fast_config, tiny_base_model, torch_lock, Naming, FILLER, NEGATIVE, POSITIVE,
};

/// Sentences with any subset of {a positive word, a negative word}: label `neg`
/// when a negative word is in, `pos` when a positive one is — both, one or none.
fn multi_label_data(n: usize, seed: u64) -> TrainData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = TrainData::default();
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let (neg, pos) = (i % 4 == 1 || i % 4 == 3, i % 4 >= 2);
        let mut words: Vec<&str> = (0..rng.gen_range(2..6))
            .map(|_| *FILLER.choose(&mut rng).expect("filler"))
            .collect();
        let mut labels = Vec::new();
        if neg {
            words.insert(
                rng.gen_range(0..=words.len()),
                NEGATIVE.choose(&mut rng).expect("w"),
            );
            labels.push(0);
        }
        if pos {
            words.insert(
                rng.gen_range(0..=words.len()),
                POSITIVE.choose(&mut rng).expect("w"),
            );
            labels.push(1);
        }
        data.texts.push(words.join(" "));
        targets.push(labels);
    }
    data.labels = Targets::Multi(targets);
    data
}

/// Two tasks on the same sentences: `sentiment` (a positive or a negative word) and
/// `length` (short: at most 4 words; long: 7 or more), every fifth row leaving
/// sentiment out and every seventh leaving length out.
fn multi_task_data(n: usize, seed: u64) -> TrainData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = TrainData::default();
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let positive = i % 2 == 0;
        let long = (i / 2) % 2 == 0;
        let filler = if long {
            rng.gen_range(6..9)
        } else {
            rng.gen_range(1..4)
        };
        let mut words: Vec<&str> = (0..filler)
            .map(|_| *FILLER.choose(&mut rng).expect("filler"))
            .collect();
        let list = if positive { POSITIVE } else { NEGATIVE };
        words.insert(
            rng.gen_range(0..=words.len()),
            list.choose(&mut rng).expect("w"),
        );
        data.texts.push(words.join(" "));
        let sentiment = (i % 5 != 4).then_some(usize::from(positive));
        let length = (i % 7 != 6 || sentiment.is_none()).then_some(usize::from(!long));
        targets.push(vec![length, sentiment]);
    }
    data.labels = Targets::Tasks(targets);
    data
}

fn tasks(length_weight: f64) -> Objective {
    Objective::multi_task(vec![
        TaskSpec {
            name: "length".into(),
            labels: vec!["long".into(), "short".into()],
            weight: length_weight,
        },
        TaskSpec {
            name: "sentiment".into(),
            labels: vec!["negative".into(), "positive".into()],
            weight: 1.0,
        },
    ])
}

fn job<'a>(
    base: &'a std::path::Path,
    objective: Objective,
    train: TrainData,
    validation: Option<TrainData>,
) -> TrainJob<'a> {
    let mut config = fast_config(4);
    config.epochs = 8;
    config.batch_size = 16;
    config.learning_rate = 3e-3;
    cpu_job(base, objective, train, validation, config)
}

#[test]
fn multi_label_learns_tunes_a_threshold_and_round_trips() {
    let _lock = torch_lock();
    let base = tiny_base_model(6, Naming::Plain);
    let objective = Objective::multi_label(vec!["neg".into(), "pos".into()]);
    let model = fine_tune(
        job(
            base.path(),
            objective,
            multi_label_data(240, 1),
            Some(multi_label_data(80, 2)),
        ),
        &mut crate::common::Recorder::default(),
    )
    .expect("train");

    let evaluation = model.evaluation().expect("evaluation");
    let Report::MultiLabel(report) = &evaluation.validation else {
        panic!("not a multi-label report: {:?}", evaluation.validation);
    };
    assert_eq!(report.examples, 80);
    assert!(report.micro_f1 >= 0.9, "{report:?}");
    assert!(report.macro_f1 >= 0.9, "{report:?}");
    assert!((0.05..=0.95).contains(&report.threshold));
    let meta = model.meta();
    assert_eq!(meta.task_type, TaskType::MultiLabel);
    assert_eq!(meta.threshold, Some(report.threshold as f32));

    let dir = tempfile::tempdir().expect("tempdir");
    model.save(dir.path()).expect("save");
    let loaded = Classifier::load(dir.path(), Device::Cpu).expect("load");
    let texts: Vec<String> = [
        "the great film",
        "the awful film",
        "bad but good",
        "the film",
    ]
    .map(String::from)
    .to_vec();
    let before = model.classifier().predict(&texts, 2).expect("predict");
    let after = loaded.predict(&texts, 2).expect("predict");
    assert_eq!(before, after);
    let sets: Vec<Vec<String>> = after
        .iter()
        .map(|p| match p {
            Prediction::MultiLabel {
                labels,
                scores,
                threshold,
            } => {
                assert_eq!(*threshold, meta.threshold.expect("threshold"));
                assert_eq!(scores.len(), 2);
                // Each label is chosen on its own probability.
                for (label, p) in scores {
                    assert_eq!(labels.contains(label), *p >= *threshold, "{scores:?}");
                }
                labels.clone()
            }
            other => panic!("not multi-label: {other:?}"),
        })
        .collect();
    assert_eq!(sets[0], ["pos"]);
    assert_eq!(sets[1], ["neg"]);
    assert_eq!(sets[2], ["neg", "pos"]);
    assert!(sets[3].is_empty(), "{sets:?}");
}

#[test]
fn multi_task_learns_every_task_with_rows_that_leave_tasks_out() {
    let _lock = torch_lock();
    let base = tiny_base_model(7, Naming::Plain);
    let mut job = job(
        base.path(),
        tasks(1.0),
        multi_task_data(240, 3),
        Some(multi_task_data(80, 4)),
    );
    // Sentiment, left out of every fifth row, needs more passes than length does.
    job.config.epochs = 16;
    let model = fine_tune(job, &mut crate::common::Recorder::default()).expect("train");

    let evaluation = model.evaluation().expect("evaluation");
    let Report::MultiTask(reports) = &evaluation.validation else {
        panic!("not a multi-task report: {:?}", evaluation.validation);
    };
    let names: Vec<&str> = reports.iter().map(|r| r.task.as_str()).collect();
    assert_eq!(names, ["length", "sentiment"]);
    // Every row of 80 labels length except rows 6, 13, … that also label sentiment;
    // sentiment is left out of every fifth row.
    let expected = |task: usize| {
        let Targets::Tasks(rows) = multi_task_data(80, 4).labels else {
            unreachable!()
        };
        rows.iter().filter(|r| r[task].is_some()).count() as u64
    };
    assert_eq!(reports[0].report.examples, expected(0));
    assert_eq!(reports[1].report.examples, expected(1));
    assert!(reports[1].report.examples < 80);
    for r in reports {
        assert!(r.report.accuracy >= 0.9, "{r:?}");
    }
    let mean = (reports[0].report.accuracy + reports[1].report.accuracy) / 2.0;
    assert!((evaluation.validation.accuracy() - mean).abs() < 1e-12);

    let dir = tempfile::tempdir().expect("tempdir");
    model.save(dir.path()).expect("save");
    let loaded = Classifier::load(dir.path(), Device::Cpu).expect("load");
    assert_eq!(loaded.meta().task_type, TaskType::MultiTask);
    assert!(loaded.labels().is_empty());
    let texts: Vec<String> = ["great", "the movie was really very boring it is the plot"]
        .map(String::from)
        .to_vec();
    let predictions = loaded.predict(&texts, 2).expect("predict");
    // The same batches give the same numbers, in memory or loaded.
    assert_eq!(
        predictions,
        model.classifier().predict(&texts, 2).expect("p")
    );
    let answers: Vec<Vec<(String, String)>> = predictions
        .iter()
        .map(|p| match p {
            Prediction::MultiTask(tasks) => tasks
                .iter()
                .map(|(task, c)| {
                    let sum: f32 = c.scores.iter().map(|(_, p)| p).sum();
                    assert!((sum - 1.0).abs() < 1e-5);
                    (task.clone(), c.label.clone())
                })
                .collect(),
            other => panic!("not multi-task: {other:?}"),
        })
        .collect();
    let pair = |t: &str, l: &str| (t.to_owned(), l.to_owned());
    assert_eq!(
        answers[0],
        [pair("length", "short"), pair("sentiment", "positive")]
    );
    assert_eq!(
        answers[1],
        [pair("length", "long"), pair("sentiment", "negative")]
    );
}

#[test]
fn task_weights_change_training_and_must_be_positive() {
    let _lock = torch_lock();
    let base = tiny_base_model(8, Naming::Plain);
    let losses = |weight: f64| {
        let mut job = job(base.path(), tasks(weight), multi_task_data(32, 5), None);
        job.config.epochs = 1;
        let mut recorder = crate::common::Recorder::default();
        fine_tune(job, &mut recorder).expect("train");
        recorder.steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    };
    let equal = losses(1.0);
    assert_eq!(equal, losses(1.0));
    assert_ne!(equal, losses(3.0));
    let err = fine_tune(
        job(base.path(), tasks(0.0), multi_task_data(8, 5), None),
        &mut crate::common::Recorder::default(),
    )
    .expect_err("zero weight");
    assert!(err.to_string().contains("weight"), "{err}");
    // Targets of another task type are refused, not misread.
    let mut mismatched = job(base.path(), tasks(1.0), multi_task_data(8, 5), None);
    mismatched.train.labels = Targets::Single(vec![0; 8]);
    assert!(fine_tune(mismatched, &mut crate::common::Recorder::default()).is_err());
}

/// Records checkpoints besides what [`crate::common::Recorder`] does.
#[derive(Default)]
struct CheckpointRecorder {
    epochs: Vec<EpochMetrics>,
    checkpoints: Vec<Checkpoint>,
}

impl TrainObserver for CheckpointRecorder {
    fn on_step(&mut self, _: &StepProgress) {}
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.epochs.push(m.clone());
    }
    fn cancelled(&self) -> bool {
        false
    }
    fn on_checkpoint(&mut self, c: &Checkpoint) {
        self.checkpoints.push(c.clone());
    }
}

fn read(path: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .expect("read")
        .into_iter()
        .collect()
}

#[test]
fn checkpoints_hold_the_trained_weights_of_each_epoch_and_publish_exactly() {
    let _lock = torch_lock();
    let base = tiny_base_model(9, Naming::Plain);
    let scratch = tempfile::tempdir().expect("tempdir");
    let checkpoints = scratch.path().join("checkpoints");
    let mut job = job(
        base.path(),
        Objective::multi_label(vec!["neg".into(), "pos".into()]),
        multi_label_data(48, 6),
        Some(multi_label_data(16, 7)),
    );
    job.config.epochs = 3;
    job.config.strategy = Strategy::Partial { frozen_layers: 1 };
    job.checkpoint_dir = Some(&checkpoints);
    let mut recorder = CheckpointRecorder::default();
    let model = fine_tune(job, &mut recorder).expect("train");
    let published = scratch.path().join("model");
    model.save(&published).expect("save");

    assert_eq!(recorder.checkpoints.len(), 3);
    for (i, c) in recorder.checkpoints.iter().enumerate() {
        assert_eq!(c.epoch, i as u32 + 1);
        assert_eq!(c.step, 3 * (i as u64 + 1)); // ceil(48 / 16) steps per epoch
        assert_eq!(c.metrics, recorder.epochs[i]);
        assert!(c
            .metrics
            .validation
            .as_ref()
            .and_then(|v| v.threshold)
            .is_some());
    }
    // Only what partial training changes: the top layer and the head.
    let first = read(&recorder.checkpoints[0].path);
    let mut names: Vec<&String> = first.keys().collect();
    names.sort();
    assert!(names
        .iter()
        .all(|n| n.starts_with("encoder.layer.1.") || n.starts_with("head.")));
    assert!(names.iter().any(|n| n.starts_with("head.")));

    // The published model holds the best epoch's weights, bit for bit.
    let best = model.evaluation().expect("evaluation").best_epoch;
    let final_weights = read(&published.join("model.safetensors"));
    for (name, t) in read(&recorder.checkpoints[best as usize - 1].path) {
        assert!(final_weights[&name].equal(&t), "{name}");
    }

    // Any epoch made into a model: its weights where it trained, the base elsewhere.
    let other = if best == 1 { 2 } else { 1 };
    let out = scratch.path().join("epoch");
    apply_checkpoint(
        &published,
        &recorder.checkpoints[other - 1].path,
        &out,
        Some(0.25),
    )
    .expect("apply");
    let rebuilt = read(&out.join("model.safetensors"));
    let ckpt = read(&recorder.checkpoints[other - 1].path);
    assert_eq!(rebuilt.len(), final_weights.len());
    for (name, t) in &rebuilt {
        let expected = ckpt.get(name).unwrap_or(&final_weights[name]);
        assert!(t.equal(expected), "{name}");
    }
    assert!(ckpt.iter().any(|(name, t)| !final_weights[name].equal(t)));
    let loaded = Classifier::load(&out, Device::Cpu).expect("load the epoch's model");
    assert_eq!(loaded.meta().threshold, Some(0.25));
    assert_eq!(
        loaded.predict(&["good".into()], 1).expect("predict").len(),
        1
    );

    // A checkpoint of another model is refused.
    let stranger = scratch.path().join("stranger.safetensors");
    Tensor::write_safetensors(
        &[(
            "head.weight",
            Tensor::zeros([5, 3], (tch::Kind::Float, Device::Cpu)),
        )],
        &stranger,
    )
    .expect("write");
    let err = apply_checkpoint(&published, &stranger, &scratch.path().join("x"), None)
        .expect_err("mismatched shapes");
    assert!(err.to_string().contains("head.weight"), "{err}");
}
