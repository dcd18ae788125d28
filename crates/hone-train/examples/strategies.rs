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
use std::time::Instant;

use anyhow::{ensure, Context};
use clap::Parser;
use hone_train::train::Strategy;
use hone_train::Objective;
use hone_train::{fine_tune, TrainConfig, TrainData, TrainJob};
use serde::{Deserialize, Serialize};
use tch::Device;

mod support;
use support::{libtorch_version, write_json, EpochClock};

/// hone's transfer strategies on the data and configs of a strategies plan.
#[derive(Debug, Parser)]
struct Args {
    /// The plan `bench/strategies.py plan` wrote.
    #[arg(long)]
    plan: PathBuf,
    /// Hugging Face model directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/all-MiniLM-L6-v2"))]
    model_dir: PathBuf,
    /// tch::set_num_threads; default: libtorch's own choice.
    #[arg(long)]
    threads: Option<i32>,
    /// Comma-separated subset of the plan's strategies; default: all.
    #[arg(long, value_delimiter = ',')]
    strategies: Vec<String>,
    /// Write the results here.
    #[arg(long)]
    json: PathBuf,
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
    total_s: f64,
    epoch_end_s: Vec<f64>,
    train_losses: Vec<f64>,
    predict_s: f64,
    predictions: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.plan)
        .with_context(|| format!("reading {}", args.plan.display()))?;
    let plan: Plan =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", args.plan.display()))?;
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
    for wanted in &args.strategies {
        ensure!(
            plan.strategies.iter().any(|s| &s.name == wanted),
            "the plan has no strategy {wanted:?}"
        );
    }
    if let Some(threads) = args.threads {
        ensure!(threads >= 1, "--threads must be >= 1");
        tch::set_num_threads(threads);
    }

    let mut results = Vec::new();
    for strategy_plan in &plan.strategies {
        if !args.strategies.is_empty() && !args.strategies.contains(&strategy_plan.name) {
            continue;
        }
        eprintln!(
            "hone: {} ({} epochs, lr {})",
            strategy_plan.name, strategy_plan.epochs, strategy_plan.learning_rate
        );
        let result = run_strategy(&plan, strategy_plan, &args.model_dir)?;
        let losses: Vec<String> = result
            .train_losses
            .iter()
            .map(|l| format!("{l:.3}"))
            .collect();
        eprintln!(
            "hone: {}: {:.1}s, losses {}",
            strategy_plan.name,
            result.total_s,
            losses.join(" ")
        );
        results.push(result);
    }

    let output = serde_json::json!({
        "impl": "hone",
        "torch": libtorch_version(),
        "hone_train": env!("CARGO_PKG_VERSION"),
        "threads": tch::get_num_threads(),
        "device": "cpu",
        "model": args.model_dir.file_name().map(|n| n.to_string_lossy()),
        "strategies": results,
    });
    write_json(&args.json, &output)
}

/// One `fine_tune` call, timed from the outside, then the test predictions.
fn run_strategy(
    plan: &Plan,
    strategy_plan: &StrategyPlan,
    model_dir: &Path,
) -> anyhow::Result<StrategyResult> {
    let strategy = match (strategy_plan.name.as_str(), strategy_plan.frozen_layers) {
        ("full", _) => Strategy::Full,
        ("partial", Some(frozen_layers)) => Strategy::Partial { frozen_layers },
        ("partial", None) => anyhow::bail!("the partial strategy needs frozen_layers"),
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
    };
    let mut clock = EpochClock::starting_now();
    let trained = fine_tune(job, &mut clock)?;
    let total_s = clock.start.elapsed().as_secs_f64();

    let start = Instant::now();
    let predictions = trained
        .classifier()
        .predict(&plan.test.texts, common.eval_batch_size)?;
    let predict_s = start.elapsed().as_secs_f64();
    let predictions = predictions
        .iter()
        .map(|p| {
            let label = p.label().context("not a single-label prediction")?;
            plan.labels
                .iter()
                .position(|l| l == label)
                .with_context(|| format!("predicted an unknown label {label:?}"))
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    Ok(StrategyResult {
        plan: strategy_plan.clone(),
        total_s,
        epoch_end_s: clock.epoch_end_s,
        train_losses: clock.train_losses,
        predict_s,
        predictions,
    })
}
