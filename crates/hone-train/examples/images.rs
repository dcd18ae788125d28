//! Image transfer strategies through hone's own `fine_tune` — the half of the image
//! benchmark that `bench/images.py train` is the PyTorch half of. `bench/run-images`
//! runs both in one go; BENCHMARKS.md ("Image transfer strategies") explains the numbers.
//!
//! Reads a plan written by `bench/images.py plan` (training, validation and test
//! images as base64 PNGs, the common hyperparameters and one recipe per strategy) and
//! trains EfficientNet-Lite0 with each strategy as the worker does: `full` and
//! `partial` through `fine_tune`; `feature_extraction` on the backbone's features,
//! computed first with `extract_image_features` as the worker fills its feature cache;
//! `auto` as the worker resolves it (those features, a feature-extraction probe scored
//! on the validation images, `choose_method` from hone-domain, then the chosen
//! strategy's recipe); `from_scratch` with `fine_tune_with(…, EncoderInit::Random)`.
//! Every run keeps the epoch with the lowest validation loss. Then
//! `Classifier::predict_images` on the test images. Writes, per strategy: the wall
//! time of the training call, when each epoch ended, the training losses, the predict
//! time and the predicted label indices; `bench/images.py report` scores them.
//!
//! ```text
//! .venv/bin/python bench/images.py plan --out /tmp/plan.json
//! cargo run --release -p hone-train --example images -- \
//!     --plan /tmp/plan.json --threads 2 --json /tmp/hone.json
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use base64::Engine;
use clap::Parser;
use hone_domain::job::{choose_method, AutoEvidence, MethodType};
use hone_train::train::{
    extract_image_features, fine_tune_with, EncoderInit, Features, Strategy, TrainedModel,
};
use hone_train::{inspect_base_model, Objective, TrainConfig, TrainData, TrainJob};
use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

mod support;
use support::{EpochClock, Measured, PlanArgs};

/// Batch of the feature pass, as the worker runs it.
const FEATURE_BATCH: usize = 64;

/// hone's image transfer strategies on the data and recipes of an images plan
/// (`bench/images.py plan`).
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    run: PlanArgs,
    /// The image base-model directory (config.json + model.safetensors).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/efficientnet-lite0"))]
    model_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Plan {
    labels: Vec<String>,
    common: Common,
    strategies: Vec<Recipe>,
    train: Examples,
    validation: Examples,
    test: Examples,
}

#[derive(Debug, Deserialize)]
struct Common {
    batch_size: usize,
    eval_batch_size: usize,
    warmup_ratio: f64,
    weight_decay: f64,
    grad_clip: f64,
    seed: u64,
    augment: bool,
}

/// A strategy's epochs and rate; `auto` has none of its own (it takes the recipe of
/// the strategy it picks).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Recipe {
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    epochs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    learning_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_layers: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Examples {
    /// Base64 image files.
    images: Vec<String>,
    labels: Vec<usize>,
}

/// What `auto` picked, in the names the API uses.
#[derive(Debug, Serialize)]
struct Chosen {
    kind: &'static str,
    frozen_layers: Option<u32>,
    reason: String,
}

#[derive(Debug, Serialize)]
struct StrategyResult {
    #[serde(flatten)]
    recipe: Recipe,
    #[serde(skip_serializing_if = "Option::is_none")]
    chosen: Option<Chosen>,
    #[serde(skip_serializing_if = "Option::is_none")]
    probe_macro_f1: Option<f64>,
    #[serde(flatten)]
    measured: Measured,
}

impl AsRef<Measured> for StrategyResult {
    fn as_ref(&self) -> &Measured {
        &self.measured
    }
}

/// The plan's images decoded from base64, per split.
struct Data {
    train: TrainData,
    validation: TrainData,
    test: Vec<Vec<u8>>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan: Plan = args
        .run
        .read_plan(|plan: &Plan| plan.strategies.iter().map(|s| s.name.clone()).collect())?;
    ensure!(
        plan.common.eval_batch_size >= 1,
        "eval_batch_size must be >= 1"
    );
    let data = Data {
        train: train_data("train", &plan.train)?,
        validation: train_data("validation", &plan.validation)?,
        test: decode("test", &plan.test)?,
    };
    args.run.run_all(
        &args.model_dir,
        &plan.strategies,
        |r| &r.name,
        |recipe| run_strategy(&plan, &data, recipe, &args.model_dir),
    )
}

fn decode(split: &str, examples: &Examples) -> anyhow::Result<Vec<Vec<u8>>> {
    ensure!(
        examples.images.len() == examples.labels.len(),
        "the plan's {split} set has {} images but {} labels",
        examples.images.len(),
        examples.labels.len()
    );
    examples
        .images
        .iter()
        .enumerate()
        .map(|(i, b64)| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("{split} image {i} is not base64"))
        })
        .collect()
}

fn train_data(split: &str, examples: &Examples) -> anyhow::Result<TrainData> {
    Ok(TrainData::images(
        decode(split, examples)?,
        examples.labels.clone().into(),
    ))
}

/// The recipe of the strategy called `name` in the plan.
fn recipe_of<'a>(plan: &'a Plan, name: &str) -> anyhow::Result<&'a Recipe> {
    plan.strategies
        .iter()
        .find(|r| r.name == name)
        .with_context(|| format!("the plan has no {name} recipe"))
}

fn config(plan: &Plan, recipe: &Recipe, strategy: Strategy) -> anyhow::Result<TrainConfig> {
    let common = &plan.common;
    Ok(TrainConfig {
        epochs: recipe
            .epochs
            .with_context(|| format!("{} has no epochs", recipe.name))?,
        batch_size: common.batch_size,
        learning_rate: recipe
            .learning_rate
            .with_context(|| format!("{} has no learning_rate", recipe.name))?,
        warmup_ratio: common.warmup_ratio,
        weight_decay: common.weight_decay,
        seed: common.seed,
        grad_clip: common.grad_clip,
        strategy,
        augment: common.augment,
        // Linear head, no layer-wise decay, smoothing, class weights or early
        // stopping; the best epoch by validation loss: the defaults, and what the
        // PyTorch side does.
        ..TrainConfig::default()
    })
}

/// The backbone's features of the training and validation images, as the worker
/// computes them for its feature cache.
fn features(data: &Data, model_dir: &Path) -> anyhow::Result<Features> {
    let extract = |set: &TrainData| {
        extract_image_features(
            model_dir,
            set.images.clone(),
            FEATURE_BATCH,
            Device::Cpu,
            &|| false,
        )
    };
    Ok(Features {
        train: extract(&data.train)?,
        validation: Some(extract(&data.validation)?),
    })
}

fn shallow(features: &Features) -> Features {
    Features {
        train: features.train.shallow_clone(),
        validation: features.validation.as_ref().map(Tensor::shallow_clone),
    }
}

/// One training call of `strategy` with `recipe`, observed by `clock`.
fn train(
    plan: &Plan,
    data: &Data,
    model_dir: &Path,
    (strategy, recipe): (Strategy, &Recipe),
    init: EncoderInit,
    features: Option<Features>,
    clock: &mut EpochClock,
) -> anyhow::Result<TrainedModel> {
    let job = TrainJob {
        base_model_dir: model_dir,
        objective: Objective::classification(plan.labels.clone()),
        train: data.train.clone(),
        validation: Some(data.validation.clone()),
        config: config(plan, recipe, strategy)?,
        device: Device::Cpu,
        features,
        checkpoint_dir: None,
        resume_from: None,
        frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
    };
    Ok(fine_tune_with(job, init, clock)?)
}

/// The worker's `auto`: a probe on the frozen features, then `choose_method`.
fn choose(
    plan: &Plan,
    data: &Data,
    model_dir: &Path,
    features: &Features,
) -> anyhow::Result<(Chosen, Option<f64>, Strategy)> {
    let probe = train(
        plan,
        data,
        model_dir,
        (
            Strategy::FeatureExtraction,
            recipe_of(plan, "feature_extraction")?,
        ),
        EncoderInit::Pretrained,
        Some(shallow(features)),
        &mut EpochClock::starting_now(),
    )?;
    let probe_macro_f1 = probe.evaluation().map(|e| e.validation.macro_f1());
    let mut counts = vec![0; plan.labels.len()];
    for &label in &plan.train.labels {
        *counts
            .get_mut(label)
            .with_context(|| format!("training label {label} is out of range"))? += 1;
    }
    let chosen = choose_method(&AutoEvidence {
        examples: data.train.len(),
        classes: plan.labels.len(),
        smallest_class: counts.iter().copied().min().unwrap_or(0),
        // Images have no tokens: the worker passes 0.
        mean_tokens: 0.0,
        probe_macro_f1,
        model_layers: inspect_base_model(model_dir)?.num_layers as u32,
        validation_examples: data.validation.len(),
    });
    let strategy = match (chosen.kind, chosen.frozen_layers) {
        (MethodType::Full, _) => Strategy::Full,
        (MethodType::Partial, Some(k)) => Strategy::Partial {
            frozen_layers: k as usize,
        },
        (MethodType::FeatureExtraction, _) => Strategy::FeatureExtraction,
        (kind, k) => bail!("auto chose {kind:?} with frozen_layers {k:?}"),
    };
    Ok((
        Chosen {
            kind: chosen.kind.as_str(),
            frozen_layers: chosen.frozen_layers,
            reason: chosen.reason,
        },
        probe_macro_f1,
        strategy,
    ))
}

/// One strategy, timed from the outside, then the test predictions.
fn run_strategy(
    plan: &Plan,
    data: &Data,
    recipe: &Recipe,
    model_dir: &Path,
) -> anyhow::Result<StrategyResult> {
    let mut clock = EpochClock::starting_now();
    let (mut chosen, mut probe_macro_f1) = (None, None);
    let trained = match (recipe.name.as_str(), recipe.frozen_layers) {
        ("full", _) => train(
            plan,
            data,
            model_dir,
            (Strategy::Full, recipe),
            EncoderInit::Pretrained,
            None,
            &mut clock,
        )?,
        ("partial", Some(frozen_layers)) => train(
            plan,
            data,
            model_dir,
            (Strategy::Partial { frozen_layers }, recipe),
            EncoderInit::Pretrained,
            None,
            &mut clock,
        )?,
        ("partial", None) => bail!("the partial strategy needs frozen_layers"),
        ("feature_extraction", _) => {
            let features = features(data, model_dir)?;
            train(
                plan,
                data,
                model_dir,
                (Strategy::FeatureExtraction, recipe),
                EncoderInit::Pretrained,
                Some(features),
                &mut clock,
            )?
        }
        ("auto", _) => {
            let features = features(data, model_dir)?;
            let (picked, f1, strategy) = choose(plan, data, model_dir, &features)?;
            let chosen_recipe = recipe_of(plan, picked.kind)?;
            eprintln!("hone: auto chose {}", picked.reason);
            (chosen, probe_macro_f1) = (Some(picked), f1);
            let features = (strategy == Strategy::FeatureExtraction).then_some(features);
            train(
                plan,
                data,
                model_dir,
                (strategy, chosen_recipe),
                EncoderInit::Pretrained,
                features,
                &mut clock,
            )?
        }
        ("from_scratch", _) => train(
            plan,
            data,
            model_dir,
            (Strategy::Full, recipe),
            EncoderInit::Random,
            None,
            &mut clock,
        )?,
        (other, _) => bail!("unknown strategy {other:?}"),
    };
    let measured = Measured::finish(clock, &plan.labels, || {
        trained
            .classifier()
            .predict_images(&data.test, plan.common.eval_batch_size)
    })?;
    Ok(StrategyResult {
        recipe: recipe.clone(),
        chosen,
        probe_macro_f1,
        measured,
    })
}
