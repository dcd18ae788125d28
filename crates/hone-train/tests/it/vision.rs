//! The image classifier on a tiny random EfficientNet (shapes, heads, freezing) and on
//! the real EfficientNet-Lite0 (loading; pooled features of real digits separate the
//! classes far better than a randomly initialised network's).

use std::path::Path;
use std::time::Instant;

use hone_train::efficientnet::EfficientNet;
use hone_train::train::Strategy;
use hone_train::vision::{ImageClassifier, SCRATCH_BN_MOMENTUM};
use hone_train::vision_data::{decode_rgb8, ImageSet, LoaderOptions, Mode, Preprocess};
use hone_train::EfficientNetConfig;
use tch::nn::OptimizerConfig;
use tch::{nn, Device, Kind, Tensor};

use crate::common::torch_lock;
use crate::efficientnet::{lite0_dir, max_abs, tiny_config, var};
use crate::test_images::{read_digits, read_fashion_mnist_test};

fn tiny_classifier(
    seed: i64,
    outputs: &[usize],
    per_task: bool,
) -> (nn::VarStore, ImageClassifier) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model =
        ImageClassifier::from_scratch(&vs, &tiny_config(), outputs, per_task).expect("model");
    (vs, model)
}

#[test]
fn heads_are_named_as_the_text_classifier_names_them() {
    let _lock = torch_lock();
    let images = Tensor::randn([3, 3, 32, 32], (Kind::Float, Device::Cpu));

    let (vs, model) = tiny_classifier(1, &[5], false);
    assert!(vs.variables().contains_key("head.weight"));
    assert!(!vs.variables().keys().any(|n| n.starts_with("_fc.")));
    let logits = tch::no_grad(|| model.forward(&images, false)).expect("forward");
    assert_eq!(logits.size(), [3, 5]);
    assert_eq!(model.layer_depth("head.weight"), model.num_blocks() + 2);

    let (vs, model) = tiny_classifier(1, &[3, 2], true);
    assert_eq!(vs.variables()["head.0.weight"].size(), [3, 320]);
    assert_eq!(vs.variables()["head.1.bias"].size(), [2]);
    let logits = tch::no_grad(|| model.forward(&images, false)).expect("forward");
    assert_eq!(logits.size(), [3, 5]);
    assert_eq!(model.num_labels(), 5);

    let none = nn::VarStore::new(Device::Cpu);
    assert!(ImageClassifier::from_scratch(&none, &tiny_config(), &[2, 2], false).is_err());
    assert!(ImageClassifier::from_scratch(&none, &tiny_config(), &[0], false).is_err());
}

#[test]
fn from_scratch_batch_norm_statistics_follow_the_data_faster() {
    let _lock = torch_lock();
    let config = tiny_config();
    assert_eq!(config.batch_norm_momentum, 0.01);
    let (_vs, model) = tiny_classifier(3, &[2], false);
    assert_eq!(model.config().batch_norm_momentum, SCRATCH_BN_MOMENTUM);
    let faster = EfficientNetConfig {
        batch_norm_momentum: 0.5,
        ..config
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::from_scratch(&vs, &faster, &[2], false).expect("model");
    assert_eq!(model.config().batch_norm_momentum, 0.5);
}

#[test]
fn random_initialisation_is_he_normal_not_zeros() {
    let _lock = torch_lock();
    let (vs, _model) = tiny_classifier(2, &[5], false);
    // He-normal over the fan-out: a 1×1 convolution to c channels has std √(2/c).
    let weight = var(&vs, "_blocks.2._expand_conv.weight");
    let fan_out = weight.size()[0] as f64;
    let std = weight.std(true).double_value(&[]);
    assert!(
        (std - (2.0 / fan_out).sqrt()).abs() < 0.03,
        "std {std}, fan-out {fan_out}"
    );
    assert_eq!(
        var(&vs, "_bn0.weight").mean(Kind::Float).double_value(&[]),
        1.0
    );
    let head = var(&vs, "head.weight").std(true).double_value(&[]);
    assert!((head - 0.01).abs() < 0.002, "head std {head}");
}

#[test]
fn partial_freezes_the_stem_and_the_first_blocks_and_their_batch_norm() {
    let _lock = torch_lock();
    let (vs, mut model) = tiny_classifier(3, &[5], false);
    assert!(model
        .freeze(&vs, Strategy::Partial { frozen_layers: 9 })
        .is_err());
    let frozen = model
        .freeze(&vs, Strategy::Partial { frozen_layers: 2 })
        .expect("freeze");
    assert!(frozen > 0);
    for (name, tensor) in vs.variables() {
        let trains = tensor.requires_grad();
        let depth = model.layer_depth(&name);
        let statistic = name.ends_with("running_mean") || name.ends_with("running_var");
        assert_eq!(trains, depth > 2 && !statistic, "{name} at depth {depth}");
    }
    let stem = var(&vs, "_bn0.running_mean");
    let frozen_block = var(&vs, "_blocks.1._bn1.running_mean");
    let trained_block = var(&vs, "_blocks.2._bn1.running_mean");
    let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
    let logits = model.forward(&images, true).expect("train forward");
    logits.sum(Kind::Float).backward();
    assert_eq!(max_abs(&stem, &var(&vs, "_bn0.running_mean")), 0.0);
    assert_eq!(
        max_abs(&frozen_block, &var(&vs, "_blocks.1._bn1.running_mean")),
        0.0,
        "a frozen block's running mean is unchanged by a train-mode forward"
    );
    assert!(max_abs(&trained_block, &var(&vs, "_blocks.2._bn1.running_mean")) > 0.0);
    assert!(!vs.variables()["_blocks.1._depthwise_conv.weight"]
        .grad()
        .defined());
    assert!(vs.variables()["_blocks.2._depthwise_conv.weight"]
        .grad()
        .defined());
}

#[test]
fn feature_extraction_makes_the_backbone_a_fixed_function() {
    let _lock = torch_lock();
    let (vs, mut model) = tiny_classifier(4, &[5], false);
    model
        .freeze(&vs, Strategy::FeatureExtraction)
        .expect("freeze");
    let trainable: Vec<String> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .map(|(n, _)| n)
        .collect();
    let mut trainable = trainable;
    trainable.sort();
    assert_eq!(trainable, ["head.bias", "head.weight"]);
    let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let eval = tch::no_grad(|| model.forward_features(&images, false)).expect("eval");
    let train = tch::no_grad(|| model.forward_features(&images, true)).expect("train");
    assert_eq!(max_abs(&eval, &train), 0.0);
    assert_eq!(model.freeze(&vs, Strategy::Full).expect("full"), 0);
}

#[test]
fn lite0_backbone_loads_without_its_imagenet_classifier() {
    let _lock = torch_lock();
    tch::manual_seed(5);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = ImageClassifier::from_base_model(&vs, &lite0_dir(), &[10], false).expect("load");
    assert!(!vs.variables().keys().any(|n| n.starts_with("_fc.")));
    let reference = EfficientNet::load(&lite0_dir(), Device::Cpu).expect("reference");
    let images = Tensor::randn([1, 3, 64, 64], (Kind::Float, Device::Cpu));
    let ours = tch::no_grad(|| model.forward_features(&images, false)).expect("ours");
    let theirs = tch::no_grad(|| reference.forward_features(&images, false)).expect("theirs");
    assert_eq!(max_abs(&ours, &theirs), 0.0);
    assert_eq!(model.num_blocks(), 16);
    assert_eq!(
        model
            .frozen_depth(Strategy::FeatureExtraction)
            .expect("depth"),
        Some(17)
    );
}

/// Accuracy on `test` of a logistic regression fitted on `train` (features standardised
/// with the training rows' statistics, zero start, full-batch Adam, a little L2).
fn linear_probe(features: &Tensor, labels: &[usize], train: &[usize], test: &[usize]) -> f64 {
    let rows = |r: &[usize]| Tensor::from_slice(&r.iter().map(|&i| i as i64).collect::<Vec<_>>());
    let targets =
        |r: &[usize]| Tensor::from_slice(&r.iter().map(|&i| labels[i] as i64).collect::<Vec<_>>());
    let x_train = features.index_select(0, &rows(train));
    let mean = x_train.mean_dim(0, true, Kind::Float);
    let std = x_train.std_dim(0, true, true) + 1e-6;
    let x_train = (x_train - &mean) / &std;
    let x_test = (features.index_select(0, &rows(test)) - &mean) / &std;
    let classes = labels.iter().max().map_or(1, |m| m + 1) as i64;
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[features.size()[1], classes]);
    let b = vs.root().zeros("b", &[classes]);
    let mut optimizer = nn::Adam::default().build(&vs, 0.01).expect("adam");
    let y = targets(train);
    for _ in 0..300 {
        let loss = (x_train.matmul(&w) + &b).cross_entropy_for_logits(&y)
            + w.square().sum(Kind::Float) * 1e-3;
        optimizer.backward_step(&loss);
    }
    let predicted = tch::no_grad(|| (x_test.matmul(&w) + &b).argmax(1, false));
    let correct = predicted
        .eq_tensor(&targets(test))
        .sum(Kind::Int64)
        .int64_value(&[]);
    correct as f64 / test.len() as f64
}

/// Heavy (150 images at 224×224 through Lite0 twice): the pretrained backbone's
/// pooled features of handwritten digits, which ImageNet never showed it, separate the
/// ten classes; the same network from random initialisation does much worse.
#[test]
fn lite0_features_of_real_digits_separate_the_classes() {
    let _lock = torch_lock();
    tch::set_num_threads(2);
    let digits_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/data/digits.csv.gz");
    let digits = read_digits(&digits_path).expect("digits; run scripts/setup");
    assert_eq!(digits.len(), 1797);
    let sample = &digits[..150];
    let labels: Vec<usize> = sample.iter().map(|d| d.label as usize).collect();
    let encoded: Vec<Vec<u8>> = sample.iter().map(|d| d.png().expect("png")).collect();

    let vs = nn::VarStore::new(Device::Cpu);
    tch::manual_seed(6);
    let pretrained =
        ImageClassifier::from_base_model(&vs, &lite0_dir(), &[10], false).expect("pretrained");
    let random_vs = nn::VarStore::new(Device::Cpu);
    let random = ImageClassifier::from_scratch(&random_vs, pretrained.config(), &[10], false)
        .expect("random");
    let preprocess = Preprocess::from_config(pretrained.config());
    assert_eq!((preprocess.image_size, preprocess.resize_size), (224, 256));
    let set = ImageSet::new(encoded, preprocess, LoaderOptions::default()).expect("set");

    let started = Instant::now();
    let batches: Vec<_> = set
        .batches((0..sample.len()).collect(), 50, Mode::Eval)
        .expect("batches")
        .collect::<Result<_, _>>()
        .expect("preprocess");
    let loader_rate = sample.len() as f64 / started.elapsed().as_secs_f64();

    let features = |model: &ImageClassifier| -> Tensor {
        let parts: Vec<Tensor> = batches
            .iter()
            .map(|b| tch::no_grad(|| model.forward_features(&b.images, false)).expect("features"))
            .collect();
        Tensor::cat(&parts, 0)
    };
    let started = Instant::now();
    let pretrained_features = features(&pretrained);
    let forward_rate = sample.len() as f64 / started.elapsed().as_secs_f64();
    let random_features = features(&random);
    assert_eq!(pretrained_features.size(), [150, 1280]);

    let train: Vec<usize> = (0..150).filter(|i| i % 2 == 0).collect();
    let test: Vec<usize> = (0..150).filter(|i| i % 2 == 1).collect();
    let pretrained_accuracy = linear_probe(&pretrained_features, &labels, &train, &test);
    let random_accuracy = linear_probe(&random_features, &labels, &train, &test);
    println!(
        "digits, logistic-regression probe on pooled features (75 train / 75 held out, \
         chance 0.10): pretrained Lite0 {pretrained_accuracy:.2}, random init \
         {random_accuracy:.2}; loader {loader_rate:.0} images/s (decode + resize + crop, \
         8×8 PNG → 224²), Lite0 forward {forward_rate:.1} images/s"
    );
    assert!(
        pretrained_accuracy >= 0.6,
        "pretrained {pretrained_accuracy}"
    );
    assert!(
        pretrained_accuracy >= random_accuracy + 0.1,
        "pretrained {pretrained_accuracy} vs random {random_accuracy}"
    );
}

#[test]
fn fashion_mnist_and_digits_read_into_labelled_pngs() {
    let images = read_fashion_mnist_test(300).expect("Fashion-MNIST; run scripts/setup");
    assert_eq!(images.len(), 300);
    let classes: std::collections::BTreeSet<u8> = images.iter().map(|i| i.label).collect();
    assert_eq!(classes, (0..10).collect());
    let first = &images[0];
    assert_eq!(
        (first.width, first.height, first.pixels.len()),
        (28, 28, 784)
    );
    // The PNG decodes back to the same pixels, gray repeated over RGB.
    let decoded = decode_rgb8(&first.png().expect("png")).expect("decode");
    let gray: Vec<u8> = decoded.pixels.chunks(3).map(|p| p[0]).collect();
    assert_eq!(gray, first.pixels);

    let digits_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/data/digits.csv.gz");
    let digits = read_digits(&digits_path).expect("digits");
    assert_eq!((digits[0].label, digits[1].label), (0, 1));
    assert!(digits.iter().all(|d| d.pixels.len() == 64));
    assert_eq!(
        digits
            .iter()
            .map(|d| d.pixels.iter().copied().max().unwrap_or(0))
            .max(),
        Some(255)
    );
}
