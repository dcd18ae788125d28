//! BatchNorm statistics estimated anew after the weights moved (`hone_train::recalibrate`):
//! on a tiny random EfficientNet whose weights are scaled as a fine-tuning run would
//! move them, inference with the estimated statistics matches the network run on the
//! statistics of the data, where the old ones were far off; frozen layers keep theirs;
//! and an image run ends with the statistics of its own weights on its training images.

use std::collections::BTreeMap;

use hone_train::efficientnet::{layer_depth, EfficientNet, EfficientNetConfig, Init};
use hone_train::recalibrate::estimate_batch_norm;
use hone_train::train::{fine_tune, Strategy, TrainConfig, TrainData};
use hone_train::vision_data::{ImageSet, LoaderOptions, Mode as ImageMode, Preprocess};
use hone_train::{ImageClassifier, Objective, Targets, TrainError};
use tch::{nn, Device, Kind, Tensor};

use crate::common::{cpu_job, torch_lock};
use crate::efficientnet::{max_abs, tiny_config, tiny_image_base, var};
use crate::resume::Run;
use crate::test_images::read_digits;

/// The tiny network without stochastic depth (so a train-mode pass is the reference
/// of "normalised with the data's statistics"), its convolutions scaled by 3 as if a
/// run had trained them: the running statistics (mean 0, variance 1) describe nothing
/// it computes.
fn moved_model(seed: i64) -> (nn::VarStore, EfficientNet) {
    tch::manual_seed(seed);
    let config = EfficientNetConfig {
        drop_connect_rate: 0.0,
        ..tiny_config()
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let model = EfficientNet::backbone(&vs.root(), &config, Init::Random).expect("model");
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with("conv.weight") || name.ends_with("_conv_stem.weight") {
                let _ = t.f_mul_scalar_(3.0).expect("scale");
            }
        }
    });
    (vs, model)
}

fn images(seed: i64, n: i64) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn([n, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.7 + 0.4
}

/// Batches of 16 (the last one shorter) of `images`.
fn batches(images: &Tensor) -> Vec<Result<Tensor, TrainError>> {
    images.split(16, 0).into_iter().map(Ok).collect()
}

fn running_stats(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables()
        .into_keys()
        .filter(|n| n.ends_with(".running_mean") || n.ends_with(".running_var"))
        .map(|n| {
            let t = var(vs, &n);
            (n, t)
        })
        .collect()
}

#[test]
fn estimated_statistics_make_inference_match_the_data_statistics_of_moved_weights() {
    let _lock = torch_lock();
    let (vs, model) = moved_model(11);
    let x = images(12, 56);
    let eval = |m: &EfficientNet| tch::no_grad(|| m.forward_features(&x, false)).expect("eval");
    let before = eval(&model);

    let seen = estimate_batch_norm(&model, batches(&x)).expect("estimate");
    assert_eq!(seen, 56);
    let estimated = running_stats(&vs);
    let after = eval(&model);
    // The stem's BatchNorm sees the images through the stem convolution alone: its
    // estimate is the exact mean over all 56 images (batches of 16, 16, 16 and 8,
    // weighted by size), not the mean of the batches' means.
    let stem = tch::no_grad(|| {
        x.constant_pad_nd([0, 1, 0, 1]).conv2d(
            &var(&vs, "_conv_stem.weight"),
            None::<Tensor>,
            [2, 2],
            [0, 0],
            [1, 1],
            1,
        )
    });
    let exact_mean = stem.mean_dim([0i64, 2, 3].as_slice(), false, Kind::Float);
    let stem_mean = var(&vs, "_bn0.running_mean");
    assert!(
        max_abs(&stem_mean, &exact_mean) < 1e-4,
        "{stem_mean} vs {exact_mean}"
    );

    // The reference: every layer normalised with the statistics of all 56 images at
    // once (train mode; it also moves the running statistics, so it comes last).
    let reference = tch::no_grad(|| model.forward_features(&x, true)).expect("train mode");
    let scale = reference.abs().mean(Kind::Float).double_value(&[]);
    let error = |t: &Tensor| (t - &reference).abs().mean(Kind::Float).double_value(&[]) / scale;
    let (old, new) = (error(&before), error(&after));
    println!("mean relative error of inference: stale statistics {old:.4}, estimated {new:.4}");
    assert!(old > 0.3, "the moved weights shift the activations: {old}");
    assert!(new < 0.05, "estimated statistics match the data's: {new}");
    assert!(new * 10.0 < old, "{old} → {new}");

    // Deterministic: the same weights and images give the same statistics.
    let (vs_again, model_again) = moved_model(11);
    estimate_batch_norm(&model_again, batches(&images(12, 56))).expect("estimate");
    for (name, t) in running_stats(&vs_again) {
        assert_eq!(max_abs(&t, &estimated[&name]), 0.0, "{name}");
    }
}

#[test]
fn frozen_layers_keep_their_statistics_and_an_all_frozen_backbone_is_left_alone() {
    let _lock = torch_lock();
    let x = images(14, 32);
    let blocks = tiny_config().blocks().len();
    // `partial` freezing the stem and the first two blocks.
    let (vs, mut model) = moved_model(13);
    model.set_frozen_depth(Some(2));
    let old = running_stats(&vs);
    assert_eq!(
        estimate_batch_norm(&model, batches(&x)).expect("estimate"),
        32
    );
    let mut moved = 0;
    for (name, t) in running_stats(&vs) {
        let change = max_abs(&t, &old[&name]);
        if layer_depth(&name, blocks) <= 2 {
            assert_eq!(change, 0.0, "{name} is frozen");
        } else if name.ends_with("running_var") {
            // (A mean may stay 0: after a BatchNorm on batch statistics and a
            // convolution without bias, the activations have mean 0 in every batch.)
            assert!(change > 1e-2, "{name} trains: {change}");
            moved += 1;
        }
    }
    assert!(moved > 5, "{moved}");

    // `feature_extraction` freezes everything up to the head convolution: there is no
    // BatchNorm to estimate, and none changes.
    let (vs, mut model) = moved_model(13);
    model.set_frozen_depth(Some(blocks + 1));
    assert!(!model.trains_batch_norm());
    let old = running_stats(&vs);
    assert_eq!(
        estimate_batch_norm(&model, batches(&x)).expect("estimate"),
        0
    );
    for (name, t) in running_stats(&vs) {
        assert_eq!(max_abs(&t, &old[&name]), 0.0, "{name}");
    }
}

/// An image run ends with the statistics of its kept weights on its own training
/// images: estimating them again on those images changes nothing, while the running
/// statistics that training alone leaves (momentum 0.01 over a dozen steps) would be
/// far from them.
#[test]
fn an_image_run_publishes_the_statistics_of_its_weights() {
    let _lock = torch_lock();
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/data/digits.csv.gz");
    let digits = read_digits(&path).expect("digits; run scripts/setup");
    let chosen: Vec<_> = digits.iter().filter(|d| d.label < 3).take(30).collect();
    let pngs: Vec<Vec<u8>> = chosen.iter().map(|d| d.png().expect("png")).collect();
    let labels: Vec<usize> = chosen.iter().map(|d| usize::from(d.label)).collect();
    let base = tiny_image_base(17);
    for strategy in [Strategy::Full, Strategy::Partial { frozen_layers: 2 }] {
        let config = TrainConfig {
            epochs: 2,
            batch_size: 8,
            learning_rate: 3e-3,
            seed: 3,
            strategy,
            ..TrainConfig::default()
        };
        let objective = Objective::classification(vec!["0".into(), "1".into(), "2".into()]);
        let train = TrainData::images(pngs.clone(), Targets::Single(labels.clone()));
        let job = cpu_job(base.path(), objective, train, None, config);
        let model = fine_tune(job, &mut Run::default()).expect("train");
        let dir = tempfile::tempdir().expect("tempdir");
        model.save(dir.path()).expect("save");

        let vs = nn::VarStore::new(Device::Cpu);
        let mut classifier =
            ImageClassifier::from_base_model(&vs, dir.path(), &[3], false).expect("load");
        classifier.freeze(&vs, strategy).expect("freeze");
        let published = running_stats(&vs);
        let set = ImageSet::new(
            pngs.clone(),
            Preprocess::from_config(classifier.config()),
            LoaderOptions::default(),
        )
        .expect("images");
        let batches = set
            .batches((0..pngs.len()).collect(), 32, ImageMode::Eval)
            .expect("batches")
            .map(|b| b.map(|b| b.images));
        estimate_batch_norm(classifier.backbone(), batches).expect("estimate");
        let mut largest: f64 = 0.0;
        for (name, t) in running_stats(&vs) {
            largest = largest.max(max_abs(&t, &published[&name]));
        }
        assert!(
            largest < 1e-4,
            "{strategy:?}: published statistics moved by {largest}"
        );
        // The estimate is not the statistics of the base model: training moved them.
        let head_var = "_bn1.running_var";
        let base_var = Tensor::read_safetensors(base.path().join("model.safetensors"))
            .expect("base weights")
            .into_iter()
            .find(|(n, _)| n == head_var)
            .expect("head statistics")
            .1;
        assert!(
            max_abs(&published[head_var], &base_var) > 1e-2,
            "{strategy:?}"
        );
    }
}
