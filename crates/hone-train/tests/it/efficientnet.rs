//! EfficientNet-Lite: the architecture on tiny random configs (no download), and
//! EfficientNet-Lite0 as `scripts/setup` converts it against the reference
//! implementation (`tests/fixtures/efficientnet_parity.json`; see the README next to
//! it for how it was made).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hone_train::base_model::{inspect_base_model, BaseModelInput, Modality};
use hone_train::efficientnet::{layer_depth, EfficientNet, EfficientNetConfig, Init};
use serde::Deserialize;
use tch::{nn, Device, Kind, Tensor};

use crate::common::torch_lock;

/// Installed by `scripts/setup`, which runs before the tests: a missing model is a
/// broken setup, not a reason to skip.
pub fn lite0_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/models/efficientnet-lite0");
    assert!(
        dir.join("model.safetensors").is_file(),
        "efficientnet-lite0 is not installed at {}; run scripts/setup",
        dir.display()
    );
    dir
}

/// A network small enough to train in a test: stem and head scaled down with the
/// width (`fix_head_stem` off), three stages, 32×32 inputs, 5 classes.
pub fn tiny_config() -> EfficientNetConfig {
    serde_json::from_str(
        r#"{
            "model_type": "efficientnet_lite",
            "width_coefficient": 0.25,
            "image_size": 32,
            "num_classes": 5,
            "fix_head_stem": false,
            "stages": [
                {"repeats": 1, "kernel_size": 3, "stride": 1, "expand_ratio": 1, "input_filters": 32, "output_filters": 16},
                {"repeats": 2, "kernel_size": 3, "stride": 2, "expand_ratio": 6, "input_filters": 16, "output_filters": 24},
                {"repeats": 2, "kernel_size": 5, "stride": 2, "expand_ratio": 6, "input_filters": 24, "output_filters": 40}
            ]
        }"#,
    )
    .expect("tiny config")
}

fn tiny_model(seed: i64) -> (nn::VarStore, EfficientNet) {
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = EfficientNet::new(&vs.root(), &tiny_config(), Init::Random).expect("model");
    (vs, model)
}

/// A base-model directory (config.json + model.safetensors) of the tiny config with
/// the weights of `vs`.
pub fn tiny_directory(vs: &nn::VarStore) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = serde_json::to_string_pretty(&tiny_config()).expect("json");
    std::fs::write(dir.path().join("config.json"), config).expect("config");
    let tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach()))
        .collect();
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).expect("weights");
    dir
}

/// A base-model directory of the tiny config with random weights.
pub fn tiny_image_base(seed: i64) -> tempfile::TempDir {
    let (vs, _model) = tiny_model(seed);
    tiny_directory(&vs)
}

pub fn var(vs: &nn::VarStore, name: &str) -> Tensor {
    vs.variables()
        .get(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
        .detach()
        .copy()
}

pub fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tiny_shapes_and_layers() {
    let _lock = torch_lock();
    let (vs, model) = tiny_model(1);
    let config = tiny_config();
    // width 0.25: stem 32 → 8, head 1280 → 320; 1 + 2 + 2 blocks.
    assert_eq!((config.stem_channels(), config.head_channels()), (8, 320));
    assert_eq!(model.blocks().len(), 5);
    assert_eq!(model.num_layers(), 6);
    assert!(!model.blocks()[1].spec().has_skip());
    assert!(model.blocks()[2].spec().has_skip());

    let images = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let features = tch::no_grad(|| model.forward_features(&images, false)).expect("features");
    assert_eq!(features.size(), [2, 320]);
    let logits = tch::no_grad(|| model.forward(&images, false)).expect("logits");
    assert_eq!(logits.size(), [2, 5]);
    // Same-padding makes any size work; 33 → 17 → 9 → 5 spatially.
    let odd = Tensor::randn([1, 3, 33, 30], (Kind::Float, Device::Cpu));
    assert_eq!(
        tch::no_grad(|| model.forward(&odd, false))
            .expect("odd size")
            .size(),
        [1, 5]
    );
    let gray = Tensor::randn([1, 1, 32, 32], (Kind::Float, Device::Cpu));
    assert!(model.forward(&gray, false).is_err());

    // Every variable is at a depth: stem 0, blocks 1..=5, head conv 6, classifier 7.
    let depths: BTreeSet<usize> = vs
        .variables()
        .keys()
        .map(|name| layer_depth(name, model.blocks().len()))
        .collect();
    assert_eq!(depths, (0..=7).collect());
    // Running statistics are saved with the weights but never trained.
    assert!(vs.variables().contains_key("_blocks.1._bn0.running_var"));
    let trainable = vs.trainable_variables().len();
    assert_eq!(trainable + 2 * bn_layers(&vs), vs.variables().len());
}

fn bn_layers(vs: &nn::VarStore) -> usize {
    vs.variables()
        .keys()
        .filter(|n| n.ends_with(".running_mean"))
        .count()
}

#[test]
fn train_mode_uses_batch_statistics_and_updates_the_running_ones() {
    let _lock = torch_lock();
    let (vs, model) = tiny_model(2);
    let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu)) * 2.0 + 0.5;
    let before = var(&vs, "_bn0.running_mean");

    let eval_a = tch::no_grad(|| model.forward(&images, false)).expect("eval");
    let eval_b = tch::no_grad(|| model.forward(&images, false)).expect("eval");
    assert_eq!(max_abs(&eval_a, &eval_b), 0.0, "eval mode is deterministic");
    assert_eq!(max_abs(&before, &var(&vs, "_bn0.running_mean")), 0.0);

    let train = model.forward(&images, true).expect("train");
    assert!(train.requires_grad());
    assert!(max_abs(&train, &eval_a) > 1e-3, "batch statistics differ");
    let after = var(&vs, "_bn0.running_mean");
    // momentum 0.01: running = 0.99 · running + 0.01 · batch mean.
    assert!(max_abs(&before, &after) > 0.0, "running mean moved");
    assert!(max_abs(&before, &after) < 1.0, "by a small step");
}

#[test]
fn frozen_layers_stay_in_inference_mode() {
    let _lock = torch_lock();
    let (vs, mut model) = tiny_model(3);
    let images = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
    let stem = var(&vs, "_bn0.running_mean");
    let first = var(&vs, "_blocks.0._bn1.running_var");
    let second = var(&vs, "_blocks.1._bn1.running_var");
    let head = var(&vs, "_bn1.running_mean");

    // The whole backbone frozen: a fixed feature extractor, whatever `train` says.
    model.set_frozen_depth(Some(model.num_layers()));
    let eval = tch::no_grad(|| model.forward_features(&images, false)).expect("eval");
    let train = tch::no_grad(|| model.forward_features(&images, true)).expect("train");
    assert_eq!(max_abs(&eval, &train), 0.0);
    assert_eq!(max_abs(&head, &var(&vs, "_bn1.running_mean")), 0.0);

    // Stem and first block frozen: only their statistics stay.
    model.set_frozen_depth(Some(1));
    let _ = tch::no_grad(|| model.forward_features(&images, true)).expect("train");
    assert_eq!(max_abs(&stem, &var(&vs, "_bn0.running_mean")), 0.0);
    assert_eq!(
        max_abs(&first, &var(&vs, "_blocks.0._bn1.running_var")),
        0.0
    );
    assert!(max_abs(&second, &var(&vs, "_blocks.1._bn1.running_var")) > 0.0);
    assert!(max_abs(&head, &var(&vs, "_bn1.running_mean")) > 0.0);
}

#[test]
fn tiny_directory_is_catalogued_and_loads_back() {
    let _lock = torch_lock();
    let (vs, model) = tiny_model(4);
    let dir = tiny_directory(&vs);

    let info = inspect_base_model(dir.path()).expect("inspect");
    assert_eq!(info.architecture, "efficientnet_lite");
    assert_eq!(info.modality, Modality::Image);
    assert_eq!((info.hidden_size, info.num_layers), (320, 6));
    assert_eq!(info.input, BaseModelInput::Image { image_size: 32 });
    let trainable: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    assert_eq!(
        info.parameters, trainable as u64,
        "running statistics are not parameters"
    );

    let loaded = EfficientNet::load(dir.path(), Device::Cpu).expect("load");
    let images = Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu));
    let ours = tch::no_grad(|| model.forward(&images, false)).expect("forward");
    let theirs = tch::no_grad(|| loaded.forward(&images, false)).expect("forward");
    assert_eq!(max_abs(&ours, &theirs), 0.0);
}

#[test]
fn configs_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(&path, r#"{"model_type": "resnet", "image_size": 224}"#).expect("write");
    let err = EfficientNetConfig::from_file(&path).expect_err("other architecture");
    assert!(
        matches!(err, hone_train::TrainError::UnsupportedArchitecture { .. }),
        "{err}"
    );
    std::fs::write(
        &path,
        r#"{"model_type": "efficientnet_lite", "image_size": 224, "dropout_rate": 1.5}"#,
    )
    .expect("write");
    let err = EfficientNetConfig::from_file(&path).expect_err("bad dropout");
    assert!(err.to_string().contains("dropout_rate"), "{err}");
    std::fs::write(&path, r#"{"model_type": "efficientnet_lite"}"#).expect("write");
    let err = EfficientNetConfig::from_file(&path).expect_err("no image size");
    assert!(err.to_string().contains("image_size"), "{err}");
}

#[test]
fn lite0_has_the_reference_parameter_count() {
    // The figure `sum(p.numel() for p in model.parameters())` gives for the reference's
    // efficientnet-lite0: 4,652,008, classifier included.
    let config: EfficientNetConfig = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../scripts/models/efficientnet-lite0/config.json"),
        )
        .expect("config"),
    )
    .expect("parse");
    let vs = nn::VarStore::new(Device::Cpu);
    let model = EfficientNet::new(&vs.root(), &config, Init::Zeros).expect("model");
    let params: usize = vs.trainable_variables().iter().map(Tensor::numel).sum();
    assert_eq!(params, 4_652_008);
    assert_eq!((model.blocks().len(), model.num_layers()), (16, 17));
}

// ---------------------------------------------------------------------------------
// Parity with the reference implementation on the real weights.

#[derive(Deserialize)]
struct Fixture {
    weights: Weights,
    image_size: i64,
    inputs: Vec<Case>,
}

#[derive(Deserialize)]
struct Weights {
    sha256: String,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    seed: Option<u64>,
    input_checksum: Checksum,
    top5: Vec<i64>,
    logits: Vec<f32>,
    features: Vec<f32>,
}

#[derive(Deserialize)]
struct Checksum {
    sum: f64,
    abs_sum: f64,
    first: Vec<f32>,
}

/// splitmix64, as `scripts/fixtures/efficientnet_parity.py` has it.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

const SIDE: usize = 224;

fn pixels(f: impl FnMut(usize, usize, usize) -> u8) -> Vec<u8> {
    let mut f = f;
    let mut out = Vec::with_capacity(3 * SIDE * SIDE);
    for c in 0..3 {
        for y in 0..SIDE {
            for x in 0..SIDE {
                out.push(f(c, y, x));
            }
        }
    }
    out
}

fn gradient_disc() -> Vec<u8> {
    pixels(|c, y, x| {
        let v = match c {
            0 => x * 255 / (SIDE - 1),
            1 => y * 255 / (SIDE - 1),
            _ => {
                let (dx, dy) = (x as i64 - 100, y as i64 - 130);
                if dx * dx + dy * dy < 70 * 70 {
                    230
                } else {
                    40
                }
            }
        };
        v as u8
    })
}

fn checker_noise(seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64(seed);
    pixels(|c, y, x| {
        let square = ((x / 28 + y / 28) % 2) * 150;
        (square + c * 25 + (rng.next() % 48) as usize) as u8
    })
}

fn gaussian(seed: u64) -> Vec<f32> {
    let mut rng = SplitMix64(seed);
    (0..3 * SIDE * SIDE)
        .map(|_| {
            let mut total = 0.0f64;
            for _ in 0..12 {
                total += rng.uniform();
            }
            (total - 6.0) as f32
        })
        .collect()
}

/// The fixture's input `name`, normalised, `[1, 3, 224, 224]`.
fn fixture_input(model: &EfficientNet, case: &Case) -> Tensor {
    let side = SIDE as i64;
    let image = |bytes: Vec<u8>| {
        let pixels = Tensor::from_slice(bytes.as_slice())
            .view([1, 3, side, side])
            .to_kind(Kind::Float)
            / 255.0;
        model.normalize(&pixels).expect("normalize")
    };
    let seed = case.seed.unwrap_or_default();
    match case.name.as_str() {
        "gradient_disc" => image(gradient_disc()),
        "checker_noise" => image(checker_noise(seed)),
        "gaussian" => Tensor::from_slice(gaussian(seed).as_slice()).view([1, 3, side, side]),
        other => panic!("unknown fixture input {other}"),
    }
}

fn max_abs_diff(ours: &Tensor, theirs: &[f32]) -> f64 {
    let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).expect("floats");
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max)
}

/// The safetensors header's `__metadata__`, where `scripts/torch2safetensors.py`
/// records what it converted.
fn safetensors_metadata(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).expect("weights");
    let len = u64::from_le_bytes(bytes[..8].try_into().expect("length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).expect("header");
    header["__metadata__"].clone()
}

#[test]
fn lite0_matches_the_reference_implementation() {
    let dir = lite0_dir();
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/efficientnet_parity.json");
    let fixture: Fixture =
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("parse");
    assert_eq!(
        safetensors_metadata(&dir.join("model.safetensors"))["source_sha256"],
        fixture.weights.sha256.as_str(),
        "the installed weights were converted from another file than the fixture's"
    );

    let model = EfficientNet::load(&dir, Device::Cpu).expect("load efficientnet-lite0");
    assert_eq!(model.config().image_size as i64, fixture.image_size);
    let inputs: Vec<Tensor> = fixture
        .inputs
        .iter()
        .map(|case| fixture_input(&model, case))
        .collect();
    for (x, case) in inputs.iter().zip(&fixture.inputs) {
        let expected = &case.input_checksum;
        let sum = x.sum(Kind::Double).double_value(&[]);
        let abs_sum = x.abs().sum(Kind::Double).double_value(&[]);
        assert!(
            (sum - expected.sum).abs() < 1e-6 * expected.abs_sum
                && (abs_sum - expected.abs_sum).abs() < 1e-6 * expected.abs_sum,
            "input {} is not the reference's: sum {sum} vs {}, |sum| {abs_sum} vs {}",
            case.name,
            expected.sum,
            expected.abs_sum
        );
        let first = Vec::<f32>::try_from(x.flatten(0, -1).narrow(0, 0, 4)).expect("floats");
        assert_eq!(first, expected.first, "first values of input {}", case.name);
    }

    // One batch, as the reference ran.
    let batch = Tensor::cat(&inputs, 0);
    let (logits, features) = tch::no_grad(|| {
        (
            model.forward(&batch, false).expect("logits"),
            model.forward_features(&batch, false).expect("features"),
        )
    });
    let (mut worst_logit, mut worst_feature) = (0.0f64, 0.0f64);
    for (i, case) in fixture.inputs.iter().enumerate() {
        let row = logits.get(i as i64);
        let logit_diff = max_abs_diff(&row, &case.logits);
        let feature_diff = max_abs_diff(&features.get(i as i64), &case.features);
        assert!(
            logit_diff < 1e-4,
            "logits of {} are off by {logit_diff}",
            case.name
        );
        assert!(
            feature_diff < 1e-4,
            "features of {} are off by {feature_diff}",
            case.name
        );
        let top5 = Vec::<i64>::try_from(row.topk(5, 0, true, true).1).expect("indices");
        assert_eq!(top5, case.top5, "top-5 classes of {}", case.name);
        worst_logit = worst_logit.max(logit_diff);
        worst_feature = worst_feature.max(feature_diff);
    }
    println!(
        "efficientnet-lite0 parity: logits max abs diff {worst_logit:e}, \
         pooled features max abs diff {worst_feature:e}"
    );
}

#[test]
fn lite0_checkpoint_has_no_tensor_the_model_leaves_unused() {
    let dir = lite0_dir();
    let vs = nn::VarStore::new(Device::Cpu);
    let config = EfficientNetConfig::from_file(&dir.join("config.json")).expect("config");
    let _model = EfficientNet::new(&vs.root(), &config, Init::Zeros).expect("model");
    let ours: BTreeSet<String> = vs.variables().into_keys().collect();
    let file: BTreeSet<String> = Tensor::read_safetensors(dir.join("model.safetensors"))
        .expect("read")
        .into_iter()
        .map(|(name, _)| name)
        .filter(|name| !name.ends_with(".num_batches_tracked"))
        .collect();
    assert_eq!(
        ours.symmetric_difference(&file).collect::<Vec<_>>(),
        Vec::<&String>::new()
    );
}
