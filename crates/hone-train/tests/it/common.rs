//! Fixtures shared by the tests.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use hone_train::bert::{BertConfig, BertModel};
use hone_train::layers::WeightInit;
use hone_train::train::{
    EpochMetrics, StepProgress, TrainConfig, TrainData, TrainJob, TrainObserver, TrainedModel,
};
use hone_train::Objective;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tch::{nn, Device, Kind, Tensor};
use tempfile::TempDir;

/// libtorch's random generator is global: a test that draws from it (random init,
/// dropout) holds this lock, so tests running in parallel threads cannot change each
/// other's random numbers and seeded runs stay reproducible.
///
/// It also gives the test thread a single libtorch thread: the tiny models gain nothing
/// from more, and on a busy machine OpenMP workers waiting for a core made a tiny
/// training step 15 times slower.
pub fn torch_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    guard
}

/// Every variable of a published model, by name.
pub fn weights(model: &TrainedModel) -> HashMap<String, Tensor> {
    let dir = tempfile::tempdir().expect("tempdir");
    model.save(dir.path()).expect("save");
    Tensor::read_safetensors(dir.path().join("model.safetensors"))
        .expect("read")
        .into_iter()
        .collect()
}

pub fn tiny_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

pub fn tiny_config() -> BertConfig {
    BertConfig::from_file(&tiny_fixture().join("config.json")).expect("tiny config")
}

/// How the weights of a generated checkpoint are named.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// As `BertModel` checkpoints: `embeddings.…`, plus a pooler and `position_ids`.
    Plain,
    /// As `BertForSequenceClassification` checkpoints: `bert.` prefix and a
    /// `classifier` head, LayerNorm parameters as `gamma`/`beta`.
    PrefixedLegacy,
}

/// Writes a complete base model directory with random weights drawn from `seed`.
pub fn tiny_base_model(seed: i64, naming: Naming) -> TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    for name in [
        "config.json",
        "tokenizer.json",
        "vocab.txt",
        "tokenizer_config.json",
    ] {
        std::fs::copy(tiny_fixture().join(name), dir.path().join(name)).expect("copy fixture");
    }
    write_random_weights(dir.path(), seed, naming);
    dir
}

pub fn write_random_weights(dir: &Path, seed: i64, naming: Naming) {
    let config = tiny_config();
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = BertModel::new(&vs.root(), &config, WeightInit::random(&config)).expect("model");
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| {
            let name = match naming {
                Naming::Plain => name,
                Naming::PrefixedLegacy => format!(
                    "bert.{}",
                    name.replace("LayerNorm.weight", "LayerNorm.gamma")
                        .replace("LayerNorm.bias", "LayerNorm.beta")
                ),
            };
            (name, t.detach())
        })
        .collect();
    let h = config.hidden_size as i64;
    let extra = |name: &str| match naming {
        Naming::Plain => name.to_owned(),
        Naming::PrefixedLegacy => format!("bert.{name}"),
    };
    tensors.push((
        extra("pooler.dense.weight"),
        Tensor::randn([h, h], (Kind::Float, Device::Cpu)),
    ));
    tensors.push((
        extra("pooler.dense.bias"),
        Tensor::zeros([h], (Kind::Float, Device::Cpu)),
    ));
    tensors.push((
        extra("embeddings.position_ids"),
        Tensor::arange(
            config.max_position_embeddings as i64,
            (Kind::Int64, Device::Cpu),
        )
        .view([1, -1]),
    ));
    if naming == Naming::PrefixedLegacy {
        tensors.push((
            "classifier.weight".into(),
            Tensor::zeros([3, h], (Kind::Float, Device::Cpu)),
        ));
    }
    Tensor::write_safetensors(&tensors, dir.join("model.safetensors")).expect("write weights");
}

pub const POSITIVE: &[&str] = &["good", "great", "excellent", "wonderful", "happy", "loved"];
pub const NEGATIVE: &[&str] = &["bad", "awful", "terrible", "boring", "sad", "hated"];
pub const FILLER: &[&str] = &[
    "the", "movie", "film", "was", "is", "very", "really", "plot", "acting", "it", "this",
];

/// A sentiment toy task a small model separates quickly: label 1 sentences contain a
/// positive word, label 0 a negative one, both among random filler words.
pub fn toy_data(n: usize, seed: u64) -> TrainData {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut data = TrainData::default();
    let mut targets = Vec::with_capacity(n);
    for i in 0..n {
        let label = i % 2;
        let words = if label == 1 { POSITIVE } else { NEGATIVE };
        let mut sentence: Vec<&str> = (0..rng.gen_range(2..8))
            .map(|_| *FILLER.choose(&mut rng).expect("filler"))
            .collect();
        let at = rng.gen_range(0..=sentence.len());
        sentence.insert(at, words.choose(&mut rng).expect("word"));
        data.texts.push(sentence.join(" "));
        targets.push(label);
    }
    data.labels = targets.into();
    data
}

/// The labels of single-label data.
pub fn single(targets: &hone_train::Targets) -> &[usize] {
    targets.as_single().expect("single-label targets")
}

/// The answer of a single-label model.
pub fn class(p: &hone_train::Prediction) -> &hone_train::ClassPrediction {
    match p {
        hone_train::Prediction::Class(c) => c,
        other => panic!("not a single-label prediction: {other:?}"),
    }
}

pub fn labels() -> Vec<String> {
    vec!["negative".into(), "positive".into()]
}

/// A job on the CPU with nothing precomputed: no cached features, no checkpoints, no
/// resume point.
pub fn cpu_job<'a>(
    base: &'a Path,
    objective: Objective,
    train: TrainData,
    validation: Option<TrainData>,
    config: TrainConfig,
) -> TrainJob<'a> {
    TrainJob {
        base_model_dir: base,
        objective,
        train,
        validation,
        config,
        device: Device::Cpu,
        features: None,
        checkpoint_dir: None,
        resume_from: None,
        frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
    }
}

pub fn fast_config(seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 8,
        learning_rate: 1e-3,
        warmup_ratio: 0.1,
        weight_decay: 0.01,
        max_seq_len: 16,
        seed,
        grad_clip: 1.0,
        ..TrainConfig::default()
    }
}

/// Records everything and cancels after `cancel_after` steps when asked to.
#[derive(Default)]
pub struct Recorder {
    pub steps: Vec<StepProgress>,
    pub epochs: Vec<EpochMetrics>,
    pub notices: Vec<String>,
    pub cancel_after: Option<u64>,
    /// Tell training to stop after this epoch ([`TrainObserver::stop_after`]).
    pub stop_after: Option<u32>,
    /// The epochs `stop_after` was asked about.
    pub asked_to_stop: Vec<u32>,
}

impl TrainObserver for Recorder {
    fn on_step(&mut self, p: &StepProgress) {
        self.steps.push(p.clone());
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.epochs.push(m.clone());
    }
    fn on_notice(&mut self, message: &str) {
        self.notices.push(message.to_owned());
    }
    fn cancelled(&self) -> bool {
        self.cancel_after
            .is_some_and(|n| self.steps.len() as u64 >= n)
    }
    fn stop_after(&mut self, m: &EpochMetrics) -> Option<String> {
        self.asked_to_stop.push(m.epoch);
        (self.stop_after == Some(m.epoch)).then(|| "the test says so".to_owned())
    }
}
