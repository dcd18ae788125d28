//! Transfer strategies through hone's own `fine_tune` — the half of the strategies
//! benchmark that `bench/strategies.py train` is the PyTorch (transformers) half of.
//! `bench/run-strategies` runs both in one go; BENCHMARKS.md explains the numbers.
//!
//! Reads a plan written by `bench/strategies.py plan` (the training and test data, the
//! common hyperparameters and one config per strategy), runs every strategy with
//! `fine_tune` exactly as the worker would, and predicts the test texts with the
//! trained model's `Classifier::predict`. Writes, per strategy: the wall time of the
//! `fine_tune` call, when each epoch ended (from the same start, through the
//! observer), the training losses, the predict time and the predicted label indices;
//! `bench/strategies.py report` scores them.
//!
//! ```text
//! .venv/bin/python bench/strategies.py plan --out /tmp/plan.json
//! cargo run --release -p hone-train --example strategies -- \
//!     --plan /tmp/plan.json --threads 2 --json /tmp/hone.json
//! ```

use std::path::{Path, PathBuf};

use anyhow::ensure;
use clap::Parser;
use hone_train::train::Strategy;
use hone_train::Objective;
use hone_train::{fine_tune, TrainConfig, TrainData, TrainJob};
use serde::{Deserialize, Serialize};
use tch::Device;

mod support;
use support::{EpochClock, Measured, PlanArgs};

/// hone's transfer strategies on the data and configs of a strategies plan
/// (`bench/strategies.py plan`).
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    run: PlanArgs,
    /// Hugging Face model directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/all-MiniLM-L6-v2"))]
    model_dir: PathBuf,
}

#[derive(Debug, Deserialize)]
struct Plan {
    labels: Vec<String>,
    common: Common,
    strategies: Vec<StrategyPlan>,
    train: Examples,
    test: Examples,
}

#[derive(Debug, Deserialize)]
struct Common {
    batch_size: usize,
    max_seq_len: usize,
    warmup_ratio: f64,
    weight_decay: f64,
    grad_clip: f64,
    seed: u64,
    eval_batch_size: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StrategyPlan {
    name: String,
    epochs: u32,
    learning_rate: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    frozen_layers: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct Examples {
    texts: Vec<String>,
    labels: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct StrategyResult {
    #[serde(flatten)]
    plan: StrategyPlan,
    #[serde(flatten)]
    measured: Measured,
}

impl AsRef<Measured> for StrategyResult {
    fn as_ref(&self) -> &Measured {
        &self.measured
    }
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
    for (name, set) in [("train", &plan.train), ("test", &plan.test)] {
        ensure!(
            set.texts.len() == set.labels.len(),
            "the plan's {name} set has {} texts but {} labels",
            set.texts.len(),
            set.labels.len()
        );
    }
    args.run.run_all(
        &args.model_dir,
        &plan.strategies,
        |s| &s.name,
        |strategy_plan| run_strategy(&plan, strategy_plan, &args.model_dir),
    )
}

/// One `fine_tune` call, timed from the outside, then the test predictions.
fn run_strategy(
    plan: &Plan,
    strategy_plan: &StrategyPlan,
    model_dir: &Path,
) -> anyhow::Result<StrategyResult> {
    // `partial_every_step` is `partial` as hone ran it before it computed the frozen
    // layers once and grouped texts by length: both off, for comparison.
    let name = strategy_plan.name.as_str();
    let as_before = name == "partial_every_step";
    let strategy = match (name, strategy_plan.frozen_layers) {
        ("full", _) => Strategy::Full,
        ("partial" | "partial_every_step", Some(frozen_layers)) => {
            Strategy::Partial { frozen_layers }
        }
        ("partial" | "partial_every_step", None) => {
            anyhow::bail!("the partial strategy needs frozen_layers")
        }
        ("feature_extraction", _) => Strategy::FeatureExtraction,
        (other, _) => anyhow::bail!("unknown strategy {other:?}"),
    };
    let common = &plan.common;
    let config = TrainConfig {
        epochs: strategy_plan.epochs,
        batch_size: common.batch_size,
        learning_rate: strategy_plan.learning_rate,
        warmup_ratio: common.warmup_ratio,
        weight_decay: common.weight_decay,
        max_seq_len: common.max_seq_len,
        seed: common.seed,
        grad_clip: common.grad_clip,
        strategy,
        // What a text job gets unless it says otherwise (the PyTorch side draws
        // random batches, as a plain loop does).
        group_by_length: !as_before,
        // Linear head, mean pooling, no layer-wise decay, smoothing, class weights or
        // early stopping: the defaults, and what the PyTorch side does.
        ..TrainConfig::default()
    };
    let job = TrainJob {
        base_model_dir: model_dir,
        objective: Objective::classification(plan.labels.clone()),
        train: TrainData {
            texts: plan.train.texts.clone(),
            text_pairs: None,
            labels: plan.train.labels.clone().into(),
            ..TrainData::default()
        },
        validation: None,
        config,
        device: Device::Cpu,
        features: None,
        checkpoint_dir: None,
        resume_from: None,
        frozen_cache_bytes: if as_before {
            0
        } else {
            hone_train::DEFAULT_FROZEN_CACHE_BYTES
        },
    };
    let mut clock = EpochClock::starting_now();
    let trained = fine_tune(job, &mut clock)?;
    let measured = Measured::finish(clock, &plan.labels, || {
        trained
            .classifier()
            .predict(&plan.test.texts, common.eval_batch_size)
    })?;
    Ok(StrategyResult {
        plan: strategy_plan.clone(),
        measured,
    })
}
