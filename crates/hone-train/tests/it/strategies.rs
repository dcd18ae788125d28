//! Transfer strategies and training options on tiny random BERTs.

use std::collections::HashMap;

use hone_domain::job::{ClassWeights, HeadType, MonitorMetric, PoolingType};
use hone_train::train::{extract_features, fine_tune, Features, Strategy, TrainData, TrainJob};
use hone_train::Objective;
use hone_train::{Classifier, Report};
use tch::{Device, Tensor};

use crate::common::{
    class, cpu_job, fast_config, labels, single, tiny_base_model, torch_lock, toy_data, weights,
    Naming, Recorder,
};

fn job(base: &std::path::Path, strategy: Strategy, validation: Option<TrainData>) -> TrainJob<'_> {
    let mut config = fast_config(3);
    config.strategy = strategy;
    cpu_job(
        base,
        Objective::classification(labels()),
        toy_data(48, 1),
        validation,
        config,
    )
}

fn base_weights(base: &std::path::Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(base.join("model.safetensors"))
        .expect("read")
        .into_iter()
        .collect()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.size() == b.size() && a.equal(b)
}

/// Sets every dropout probability of the base model in `dir` to 0, so a run draws no
/// random numbers after initialisation.
fn without_dropout(dir: &std::path::Path) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read config")).expect("json");
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&path, config.to_string()).expect("write config");
}

#[test]
fn partial_computes_the_frozen_layers_once_and_trains_as_running_them_every_step() {
    let _lock = torch_lock();
    let base = tiny_base_model(12, Naming::Plain);
    // Without dropout, the frozen layers' outputs are the same in train and eval mode,
    // so the cached run must train the same weights as the uncached one.
    without_dropout(base.path());
    let run = |cache_bytes: u64| {
        let mut job = job(
            base.path(),
            Strategy::Partial { frozen_layers: 1 },
            Some(toy_data(16, 2)),
        );
        job.frozen_cache_bytes = cache_bytes;
        let mut recorder = Recorder::default();
        let model = fine_tune(job, &mut recorder).expect("train");
        (weights(&model), recorder)
    };
    let (cached, cached_run) = run(hone_train::DEFAULT_FROZEN_CACHE_BYTES);
    let (every_step, every_step_run) = run(0);
    assert!(
        cached_run
            .notices
            .iter()
            .any(|n| n.contains("computed once")),
        "{:?}",
        cached_run.notices
    );
    assert!(
        every_step_run
            .notices
            .iter()
            .any(|n| n.contains("run every step")),
        "{:?}",
        every_step_run.notices
    );
    for (name, tensor) in &every_step {
        let other = &cached[name];
        let gap = (tensor - other).abs().max().double_value(&[]);
        assert!(gap < 1e-4, "{name} differs by {gap}");
    }
    // Both validated on the same data with the same weights, epoch by epoch.
    for (a, b) in cached_run.epochs.iter().zip(&every_step_run.epochs) {
        let (a, b) = (
            a.validation.as_ref().expect("v"),
            b.validation.as_ref().expect("v"),
        );
        assert!((a.loss - b.loss).abs() < 1e-4, "{} vs {}", a.loss, b.loss);
    }
    // The trained layers did train: the run is not vacuous.
    let before = base_weights(base.path());
    let top = "encoder.layer.1.output.dense.weight";
    assert!(!same(&cached[top], &before[top]), "{top} did not train");
}

#[test]
fn group_by_length_changes_the_batches_not_the_steps_and_learns_as_well() {
    let _lock = torch_lock();
    let base = tiny_base_model(13, Naming::Plain);
    let run = |group_by_length: bool| {
        let mut j = job(base.path(), Strategy::Full, Some(toy_data(40, 4)));
        j.train = toy_data(200, 3);
        j.config.epochs = 6;
        j.config.group_by_length = group_by_length;
        let mut recorder = Recorder::default();
        fine_tune(j, &mut recorder).expect("train");
        recorder
    };
    let (grouped, random) = (run(true), run(false));
    // 200 examples in batches of 8: 25 steps an epoch either way.
    assert_eq!(grouped.steps.len(), 150);
    assert_eq!(random.steps.len(), 150);
    let first_losses = |r: &Recorder| r.steps.iter().take(25).map(|s| s.loss).collect::<Vec<_>>();
    assert_ne!(
        first_losses(&grouped),
        first_losses(&random),
        "same batches"
    );
    let accuracy = |r: &Recorder| {
        let last = r.epochs.last().expect("epochs");
        last.validation.as_ref().expect("validation").accuracy
    };
    assert!(accuracy(&grouped) >= 0.9, "{:?}", grouped.epochs.last());
    assert!(accuracy(&grouped) >= accuracy(&random) - 0.1);
}

#[test]
fn partial_keeps_frozen_layers_bit_identical_and_trains_the_rest() {
    let _lock = torch_lock();
    let base = tiny_base_model(11, Naming::Plain);
    let before = base_weights(base.path());
    let model = fine_tune(
        job(base.path(), Strategy::Partial { frozen_layers: 1 }, None),
        &mut Recorder::default(),
    )
    .expect("train");
    let after = weights(&model);
    let (mut frozen, mut trained) = (0, 0);
    for (name, tensor) in &after {
        let Some(original) = before.get(name) else {
            assert!(name.starts_with("head."), "{name} is new");
            continue;
        };
        if name.starts_with("embeddings.") || name.starts_with("encoder.layer.0.") {
            assert!(same(tensor, original), "{name} changed although frozen");
            frozen += 1;
        } else if name.ends_with("weight") && !name.contains("LayerNorm") {
            assert!(!same(tensor, original), "{name} did not train");
            trained += 1;
        }
    }
    assert!(
        frozen > 5 && trained > 3,
        "{frozen} frozen, {trained} trained"
    );
}

#[test]
fn feature_extraction_trains_only_the_head_and_cached_features_give_the_same_run() {
    let _lock = torch_lock();
    let base = tiny_base_model(12, Naming::Plain);
    let before = base_weights(base.path());
    let validation = toy_data(16, 2);
    let mut computed = Recorder::default();
    let model = fine_tune(
        job(
            base.path(),
            Strategy::FeatureExtraction,
            Some(validation.clone()),
        ),
        &mut computed,
    )
    .expect("train");
    for (name, tensor) in weights(&model) {
        match before.get(&name) {
            Some(original) => assert!(same(&tensor, original), "{name} changed"),
            None => assert!(name.starts_with("head."), "{name} is new"),
        }
    }

    // Features computed beforehand (as the worker's cache hands them in) give the very
    // same training run.
    let train = toy_data(48, 1);
    let extract = |texts: &[String]| {
        let run = hone_train::FeatureRun {
            base_model_dir: base.path(),
            max_seq_len: 16,
            pooling: PoolingType::Mean,
            batch_size: 7,
            device: Device::Cpu,
        };
        extract_features(&run, texts, None, &|| false).expect("features")
    };
    let features = Features {
        train: extract(&train.texts),
        validation: Some(extract(&validation.texts)),
    };
    let mut cached = Recorder::default();
    let mut with_features = job(base.path(), Strategy::FeatureExtraction, Some(validation));
    with_features.features = Some(features);
    fine_tune(with_features, &mut cached).expect("train");
    let losses = |r: &Recorder| r.steps.iter().map(|s| s.loss).collect::<Vec<_>>();
    assert_eq!(losses(&computed).len(), 12);
    for (a, b) in losses(&computed).iter().zip(losses(&cached)) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }

    // Features of the wrong shape are refused, not trained on.
    let mut wrong = job(base.path(), Strategy::FeatureExtraction, None);
    wrong.features = Some(Features {
        train: Tensor::zeros([3, 4], (tch::Kind::Float, Device::Cpu)),
        validation: None,
    });
    let err = fine_tune(wrong, &mut Recorder::default()).expect_err("shape");
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn heads_and_poolings_learn_and_serve_the_same_after_loading() {
    let _lock = torch_lock();
    let base = tiny_base_model(13, Naming::Plain);
    for (head, pooling) in [
        (HeadType::Mlp, PoolingType::Mean),
        (HeadType::Linear, PoolingType::Cls),
    ] {
        let mut j = job(
            base.path(),
            Strategy::FeatureExtraction,
            Some(toy_data(40, 4)),
        );
        j.train = toy_data(200, 3);
        j.config.head = head;
        j.config.pooling = pooling;
        j.config.epochs = 20;
        j.config.learning_rate = 1e-2;
        let mut recorder = Recorder::default();
        let model = fine_tune(j, &mut recorder).expect("train");
        if pooling == PoolingType::Mean {
            // A random encoder's mean-pooled features still carry the sentiment words.
            let first = recorder.epochs[0].train_loss;
            let last = recorder.epochs.last().expect("epochs").train_loss;
            assert!(last < first * 0.9, "{head:?}: {first} → {last}");
        }

        let dir = tempfile::tempdir().expect("tempdir");
        model.save(dir.path()).expect("save");
        let loaded = Classifier::load(dir.path(), Device::Cpu).expect("load");
        assert_eq!(loaded.meta().head, head);
        assert_eq!(loaded.meta().pooling, pooling);
        let texts = toy_data(10, 9).texts;
        let a = model.classifier().predict(&texts, 4).expect("predict");
        let b = loaded.predict(&texts, 3).expect("predict");
        for (x, y) in a.iter().zip(&b) {
            let (x, y) = (class(x), class(y));
            assert_eq!(x.label, y.label);
            assert!((x.score - y.score).abs() < 1e-5);
        }
    }
}

#[test]
fn early_stopping_keeps_the_best_epoch() {
    let _lock = torch_lock();
    let base = tiny_base_model(14, Naming::Plain);
    // Validation labels are the opposite of the training rule: the better the model
    // learns, the worse validation gets, so epoch 1 is the best one.
    let mut inverted = toy_data(32, 5);
    let flipped: Vec<usize> = single(&inverted.labels).iter().map(|l| 1 - l).collect();
    inverted.labels = flipped.into();
    let mut j = job(base.path(), Strategy::Full, Some(inverted.clone()));
    j.train = toy_data(120, 6);
    j.config.epochs = 10;
    j.config.learning_rate = 3e-3;
    j.config.early_stopping_patience = 2;
    j.config.monitor = MonitorMetric::Loss;
    let mut recorder = Recorder::default();
    let model = fine_tune(j, &mut recorder).expect("train");
    let losses: Vec<f64> = recorder
        .epochs
        .iter()
        .map(|e| e.validation.as_ref().expect("validation").loss)
        .collect();
    let best = losses
        .iter()
        .enumerate()
        .min_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i as u32 + 1)
        .expect("epochs");
    assert!(recorder.epochs.len() < 10, "never stopped: {losses:?}");
    assert_eq!(recorder.epochs.len() as u32, best + 2, "{losses:?}");
    let evaluation = model.evaluation().expect("evaluation");
    assert_eq!(evaluation.best_epoch, best);
    assert!(evaluation.stopped_early);
    assert_eq!(model.final_metrics().expect("kept").epoch, best);
    // The weights really are the best epoch's: scoring them again gives its loss.
    let rescored = model.classifier().evaluate(&inverted, 8).expect("evaluate");
    assert!(
        (rescored.loss - losses[best as usize - 1]).abs() < 1e-5,
        "{} vs {losses:?}",
        rescored.loss
    );
    let Report::Classification(report) = &evaluation.validation else {
        panic!("not a single-label report")
    };
    assert_eq!(report.examples, 32);
    assert_eq!(report.confusion_matrix.len(), 2);
}

#[test]
fn an_observer_can_end_a_run_after_an_epoch() {
    let _lock = torch_lock();
    let base = tiny_base_model(16, Naming::Plain);
    let run = |stop_after: Option<u32>| {
        let mut j = job(base.path(), Strategy::Full, Some(toy_data(24, 7)));
        j.train = toy_data(48, 8);
        j.config.epochs = 4;
        let mut recorder = Recorder {
            stop_after,
            ..Recorder::default()
        };
        let model = fine_tune(j, &mut recorder).expect("train");
        (model, recorder)
    };
    let (model, recorder) = run(Some(2));
    assert_eq!(recorder.epochs.len(), 2);
    assert_eq!(recorder.asked_to_stop, [1, 2]);
    assert!(
        recorder
            .notices
            .iter()
            .any(|n| n == "stopped after epoch 2: the test says so"),
        "{:?}",
        recorder.notices
    );
    let evaluation = model.evaluation().expect("evaluation");
    assert!(evaluation.stopped_early);
    assert!(evaluation.best_epoch <= 2);
    assert_eq!(model.history().len(), 2);
    // Never asked after the last epoch, which ends the run anyway.
    let (model, recorder) = run(Some(4));
    assert_eq!(recorder.epochs.len(), 4);
    assert_eq!(recorder.asked_to_stop, [1, 2, 3]);
    assert!(!model.evaluation().expect("evaluation").stopped_early);
}

#[test]
fn options_change_the_run_and_are_checked() {
    let _lock = torch_lock();
    let base = tiny_base_model(15, Naming::Plain);
    let run = |f: &dyn Fn(&mut TrainJob)| {
        let mut j = job(base.path(), Strategy::Full, None);
        f(&mut j);
        let mut r = Recorder::default();
        fine_tune(j, &mut r).expect("train");
        r.steps.iter().map(|s| s.loss).collect::<Vec<_>>()
    };
    let plain = run(&|_| {});
    assert_ne!(plain, run(&|j| j.config.label_smoothing = 0.2));
    assert_ne!(plain, run(&|j| j.config.layer_lr_decay = 0.5));
    // Balanced weights on balanced-ish data move the loss only a little, but move it.
    let mut imbalanced = toy_data(48, 1);
    let mut skewed = single(&imbalanced.labels).to_vec();
    skewed.iter_mut().take(20).for_each(|l| *l = 0);
    imbalanced.labels = skewed.into();
    let with = |weights| {
        let imbalanced = imbalanced.clone();
        run(&move |j: &mut TrainJob| {
            j.train = imbalanced.clone();
            j.config.class_weights = weights;
        })
    };
    assert_ne!(with(ClassWeights::None), with(ClassWeights::Balanced));

    let mut too_deep = job(base.path(), Strategy::Partial { frozen_layers: 99 }, None);
    too_deep.config.epochs = 1;
    let err = fine_tune(too_deep, &mut Recorder::default()).expect_err("too deep");
    assert!(err.to_string().contains("frozen_layers"), "{err}");
}

/// A pair task whose label only the second text tells: the first is filler.
fn pair_data(n: usize, seed: u64) -> TrainData {
    let sentiment = toy_data(n, seed);
    let filler = toy_data(n, seed + 100);
    TrainData {
        texts: filler.texts,
        text_pairs: Some(sentiment.texts),
        labels: sentiment.labels,
        ..TrainData::default()
    }
}

#[test]
fn text_pairs_are_encoded_as_pairs_and_the_second_text_is_learned() {
    let _lock = torch_lock();
    let base = tiny_base_model(16, Naming::Plain);
    let tokenizer = hone_train::TextTokenizer::from_dir(base.path(), 32).expect("tokenizer");
    let encoded = tokenizer
        .encode_pairs(&["good film"], &["bad plot"])
        .expect("encode");
    let types = &encoded[0].type_ids;
    assert_eq!(types.first(), Some(&0));
    assert_eq!(types.last(), Some(&1), "{types:?}");

    let mut j = job(base.path(), Strategy::Full, Some(pair_data(40, 8)));
    j.train = pair_data(200, 7);
    j.config.epochs = 8;
    j.config.batch_size = 16;
    j.config.learning_rate = 3e-3;
    let mut recorder = Recorder::default();
    let model = fine_tune(j, &mut recorder).expect("train");
    let validation = recorder
        .epochs
        .last()
        .and_then(|e| e.validation.clone())
        .expect("validation");
    assert!(validation.accuracy >= 0.9, "{validation:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    model.save(dir.path()).expect("save");
    let loaded = Classifier::load(dir.path(), Device::Cpu).expect("load");
    assert!(loaded.takes_pairs());
    let test = pair_data(10, 9);
    let pairs = test.text_pairs.clone().expect("pairs");
    let a = model
        .classifier()
        .predict_pairs(&test.texts, &pairs, 4)
        .expect("predict");
    let b = loaded
        .predict_pairs(&test.texts, &pairs, 3)
        .expect("predict");
    assert_eq!(
        a.iter().map(|p| p.label()).collect::<Vec<_>>(),
        b.iter().map(|p| p.label()).collect::<Vec<_>>()
    );
    let err = loaded.predict(&test.texts, 4).expect_err("needs pairs");
    assert!(err.to_string().contains("text_pair"), "{err}");

    // Training and validation data must agree on being pairs.
    let mut mixed = job(base.path(), Strategy::Full, Some(toy_data(10, 1)));
    mixed.train = pair_data(20, 2);
    let err = fine_tune(mixed, &mut Recorder::default()).expect_err("mixed");
    assert!(err.to_string().contains("pairs"), "{err}");
}
