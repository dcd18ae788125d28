//! The training thread end to end on a tiny random-weight BERT (2 layers, 32 wide,
//! the hone-train fixture's): `auto`'s search and the final fit, as the thread reports
//! them, without a database.

use std::path::Path;
use std::sync::Arc;

use hone_domain::job::{ChosenMethod, HyperparametersInput, Method, MethodType};
use hone_train::train::TrainData;
use hone_train::Objective;
use tch::{nn, Device, Kind, Tensor};
use tempfile::TempDir;
use tokio::sync::mpsc;

use super::{run_training, FeatureCacheKeys, ThreadInput, ThreadOutput, Update, Validation};
use crate::StopFlags;

const POSITIVE: &[&str] = &["good", "great", "excellent", "wonderful", "happy", "loved"];
const NEGATIVE: &[&str] = &["bad", "awful", "terrible", "boring", "sad", "hated"];
const FILLER: &[&str] = &[
    "the", "movie", "film", "was", "is", "very", "really", "plot", "acting", "it", "this",
];

/// A base model directory: the tiny fixture's config and tokenizer, random weights.
fn tiny_base_model() -> TempDir {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hone-train/tests/fixtures/tiny");
    let dir = tempfile::tempdir().expect("tempdir");
    for entry in std::fs::read_dir(&fixture).expect("the tiny fixture") {
        let path = entry.expect("a fixture file").path();
        std::fs::copy(&path, dir.path().join(path.file_name().expect("a name"))).expect("copy");
    }
    let config = hone_train::BertConfig::from_file(&fixture.join("config.json")).expect("config");
    tch::manual_seed(3);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model =
        hone_train::BertModel::new(&vs.root(), &config, hone_train::WeightInit::random(&config))
            .expect("model");
    let mut tensors: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(name, t)| (name, t.detach()))
        .collect();
    tensors.push((
        "embeddings.position_ids".into(),
        Tensor::arange(
            config.max_position_embeddings as i64,
            (Kind::Int64, Device::Cpu),
        )
        .view([1, -1]),
    ));
    Tensor::write_safetensors(&tensors, dir.path().join("model.safetensors")).expect("weights");
    dir
}

/// `n` sentences, alternately negative and positive: a sentiment word among filler;
/// every seventh label is flipped, so that no candidate scores a perfect validation
/// (which would leave nothing to try).
fn toy_data(n: usize) -> TrainData {
    let texts = (0..n)
        .map(|i| {
            let words = if i % 2 == 1 { POSITIVE } else { NEGATIVE };
            let mut sentence: Vec<&str> = (0..2 + i % 5)
                .map(|j| FILLER[(i * 7 + j * 3) % FILLER.len()])
                .collect();
            sentence.insert(i % 3, words[(i / 2) % words.len()]);
            sentence.join(" ")
        })
        .collect();
    TrainData {
        texts,
        labels: (0..n)
            .map(|i| (i % 2) ^ usize::from(i % 7 == 0))
            .collect::<Vec<_>>()
            .into(),
        ..TrainData::default()
    }
}

/// The thread's input for `method` and `hyperparameters` (JSON as a request gives
/// them) on 80 toy examples, the last 20 held out for validation.
fn input(
    base: &Path,
    out: &Path,
    kind: MethodType,
    hyperparameters: serde_json::Value,
) -> ThreadInput {
    let hp: HyperparametersInput = serde_json::from_value(hyperparameters).expect("input");
    ThreadInput {
        base_dir: base.to_owned(),
        objective: Objective::classification(vec!["negative".into(), "positive".into()]),
        file: toy_data(80),
        train_rows: (0..60).collect(),
        validation: Validation::Split((60..80).collect()),
        method: Method {
            kind,
            ..Method::default()
        },
        hyperparameters: hp.validate(64, kind).expect("valid hyperparameters"),
        seed: 11,
        device: Device::Cpu,
        threads: 1,
        batch_work: Default::default(),
        frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
        out_dir: out.to_owned(),
        cache: FeatureCacheKeys {
            train: matches!(kind, MethodType::Auto | MethodType::FeatureExtraction)
                .then(|| ("toy".to_owned(), None)),
            validation: None,
        },
        resume_from: None,
    }
}

/// Runs the thread to its end: what it handed back, and what it reported.
fn run(kind: MethodType, hyperparameters: serde_json::Value) -> (ThreadOutput, Vec<Update>) {
    run_as(kind, hyperparameters, None)
}

/// [`run`] for a job whose `auto` choice is already stored (`chosen`).
fn run_as(
    kind: MethodType,
    hyperparameters: serde_json::Value,
    chosen: Option<ChosenMethod>,
) -> (ThreadOutput, Vec<Update>) {
    let base = tiny_base_model();
    let out = tempfile::tempdir().expect("tempdir");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let flags = Arc::new(StopFlags::default());
    let mut input = input(base.path(), out.path(), kind, hyperparameters);
    input.method.chosen = chosen;
    let output = run_training(input, &tx, &flags).expect("training");
    assert!(out.path().join("model/model.safetensors").is_file());
    let mut updates = Vec::new();
    while let Ok(u) = rx.try_recv() {
        updates.push(u);
    }
    (output, updates)
}

fn chosen(updates: &[Update]) -> ChosenMethod {
    updates
        .iter()
        .find_map(|u| match u {
            Update::Chosen(c, _) => Some(c.clone()),
            _ => None,
        })
        .expect("auto chose")
}

fn notices(updates: &[Update]) -> Vec<String> {
    updates
        .iter()
        .filter_map(|u| match u {
            Update::Notice(_, m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

/// The choice without the times, which differ from run to run.
fn timeless(mut c: ChosenMethod) -> ChosenMethod {
    for candidate in &mut c.candidates {
        candidate.seconds = None;
    }
    c
}

#[test]
fn auto_tries_its_candidates_records_them_and_repeats_itself() {
    let _lock = torch_lock();
    let (_, updates) = run(MethodType::Auto, serde_json::json!({}));
    let first = chosen(&updates);
    // The floor (the head alone), partial with 1 of 2 layers frozen, full: each
    // tried, with a score and a time.
    let tried: Vec<(MethodType, Option<u32>)> = first
        .candidates
        .iter()
        .map(|c| (c.candidate.kind, c.candidate.frozen_layers))
        .collect();
    assert_eq!(
        tried,
        [
            (MethodType::FeatureExtraction, None),
            (MethodType::Partial, Some(1)),
            (MethodType::Full, None)
        ],
        "{first:#?}"
    );
    assert!(
        first.candidates.iter().all(|c| c.skipped.is_none()
            && c.validation_macro_f1
                .is_some_and(|s| (0.0..=1.0).contains(&s))
            && c.seconds.is_some_and(|s| s > 0.0)),
        "{first:#?}"
    );
    assert!(first.reason.contains("by trial"), "{}", first.reason);
    eprintln!("auto chose {}", first.reason);
    let told = notices(&updates);
    assert_eq!(
        told.iter().filter(|m| m.starts_with("auto tried")).count(),
        3,
        "{told:#?}"
    );
    // The same seed, the same search.
    let (_, again) = run(MethodType::Auto, serde_json::json!({}));
    assert_eq!(timeless(chosen(&again)), timeless(first));
}

#[test]
fn a_job_that_has_chosen_does_not_search_again() {
    let _lock = torch_lock();
    // As a resumed attempt finds an auto job: its choice stored with the job.
    let stored = ChosenMethod {
        kind: MethodType::Partial,
        frozen_layers: Some(1),
        reason: "chosen by an earlier attempt".into(),
        candidates: Vec::new(),
    };
    let (output, updates) = run_as(MethodType::Auto, serde_json::json!({}), Some(stored));
    assert!(
        !updates.iter().any(|u| matches!(u, Update::Chosen(..))),
        "chose again"
    );
    let told = notices(&updates);
    assert!(
        !told.iter().any(|m| m.starts_with("auto tried")),
        "{told:#?}"
    );
    assert_eq!(output.epochs_run, 3, "partial's epochs");
}

#[test]
fn a_budget_stops_the_search_at_the_floor() {
    let _lock = torch_lock();
    let (_, updates) = run(MethodType::Auto, serde_json::json!({"auto_budget": 0.2}));
    let c = chosen(&updates);
    assert_eq!(c.kind, MethodType::FeatureExtraction, "{c:#?}");
    assert!(c.candidates[0].validation_macro_f1.is_some(), "{c:#?}");
    assert!(
        c.candidates[1..]
            .iter()
            .all(|t| t.validation_macro_f1.is_none()
                && t.skipped.as_deref().is_some_and(|s| s.contains("budget"))),
        "{c:#?}"
    );
    let told = notices(&updates);
    assert_eq!(
        told.iter().filter(|m| m.starts_with("auto tried")).count(),
        1,
        "{told:#?}"
    );
}

#[test]
fn a_final_fit_trains_on_the_validation_rows_too() {
    let _lock = torch_lock();
    let hp = serde_json::json!({"epochs": 2, "refit_on_validation": true});
    let (output, updates) = run(MethodType::Full, hp);
    assert_eq!(output.refit_examples, Some(80));
    let told = notices(&updates);
    assert!(
        told.iter()
            .any(|m| m.starts_with("Final fit") && m.contains("on 80 training and validation")),
        "{told:#?}"
    );
    // The reported metrics are the first run's, measured on the 20 held out.
    let evaluation = output.evaluation.expect("evaluation");
    assert!(evaluation.validation.macro_f1().is_finite());
    let (plain, _) = run(MethodType::Full, serde_json::json!({"epochs": 2}));
    assert_eq!(plain.refit_examples, None);
}

#[test]
fn learning_rate_auto_tries_its_grid_trains_at_the_best_and_repeats_itself() {
    let _lock = torch_lock();
    let hp = serde_json::json!({"epochs": 3, "learning_rate": "auto"});
    let (output, updates) = run(MethodType::Full, hp.clone());
    let search = output.learning_rate_search.expect("a search");
    let rates: Vec<f64> = search.trials.iter().map(|t| t.learning_rate).collect();
    assert_eq!(
        rates,
        hone_domain::job::learning_rate_grid(5e-5, 0.1),
        "{search:#?}"
    );
    assert!(
        search.trials.iter().all(|t| t.epochs == 1
            && t.seconds > 0.0
            && t.validation_macro_f1
                .is_some_and(|s| (0.0..=1.0).contains(&s))),
        "{search:#?}"
    );
    let best = search
        .trials
        .iter()
        .filter_map(|t| t.validation_macro_f1)
        .fold(0.0, f64::max);
    let kept = search
        .trials
        .iter()
        .find(|t| t.learning_rate == search.chosen)
        .expect("the chosen rate was tried");
    assert!(
        kept.validation_macro_f1
            .is_some_and(|s| s >= best - hone_domain::job::tie_margin(best, 20)),
        "{search:#?}"
    );
    // The job then trains its own epochs at that rate.
    assert_eq!(output.epochs_run, 3);
    let told = notices(&updates);
    assert_eq!(
        told.iter()
            .filter(|m| m.starts_with("learning_rate \"auto\" tried"))
            .count(),
        4,
        "{told:#?}"
    );
    assert!(
        told.iter()
            .any(|m| m.starts_with("learning_rate \"auto\" chose")),
        "{told:#?}"
    );
    // The same seed, the same rate; and a job with a rate of its own does not search.
    let (again, _) = run(MethodType::Full, hp);
    assert_eq!(
        again.learning_rate_search.map(|s| s.chosen),
        Some(search.chosen)
    );
    let (fixed, _) = run(MethodType::Full, serde_json::json!({"epochs": 1}));
    assert!(fixed.learning_rate_search.is_none());
}

/// libtorch's random generator is global: tests that train hold this lock, so seeded
/// runs in parallel test threads cannot draw each other's numbers.
fn torch_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::set_num_threads(1);
    guard
}
