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
