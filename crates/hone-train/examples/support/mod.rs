//! What the benchmark examples share: the service's allocator, the flags and the
//! strategy loop of the two strategy benchmarks, an observer that clocks epochs, the
//! libtorch version, and writing the result file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context};
use hone_train::{EpochMetrics, Prediction, StepProgress, TrainError, TrainObserver};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The `hone` binary's allocator (jemalloc, keeping freed pages; see
/// .cargo/config.toml), so the benchmarks measure what the service runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The flags of a strategy benchmark besides its model directory.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The plan the benchmark's Python script wrote (`plan` subcommand).
    #[arg(long)]
    pub plan: PathBuf,
    /// tch::set_num_threads; default: libtorch's own choice.
    #[arg(long)]
    pub threads: Option<i32>,
    /// Comma-separated subset of the plan's strategies; default: all.
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Write the results here.
    #[arg(long)]
    pub json: PathBuf,
}

impl PlanArgs {
    /// Reads the plan, checks that every strategy asked for is among `names` (the
    /// plan's) and sets libtorch's threads.
    pub fn read_plan<P: DeserializeOwned>(
        &self,
        names: impl Fn(&P) -> Vec<String>,
    ) -> anyhow::Result<P> {
        let text = std::fs::read_to_string(&self.plan)
            .with_context(|| format!("reading {}", self.plan.display()))?;
        let plan: P = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", self.plan.display()))?;
        let names = names(&plan);
        for wanted in &self.strategies {
            ensure!(
                names.contains(wanted),
                "the plan has no strategy {wanted:?}"
            );
        }
        if let Some(threads) = self.threads {
            ensure!(threads >= 1, "--threads must be >= 1");
            tch::set_num_threads(threads);
        }
        Ok(plan)
    }

    /// Runs `run` on every strategy asked for, in the plan's order, logging each, and
    /// writes the results with what ran them to `--json`.
    pub fn run_all<S, R: Serialize + AsRef<Measured>>(
        &self,
        model_dir: &Path,
        strategies: &[S],
        name: impl Fn(&S) -> &str,
        mut run: impl FnMut(&S) -> anyhow::Result<R>,
    ) -> anyhow::Result<()> {
        let mut results = Vec::new();
        for strategy in strategies {
            let name = name(strategy);
            if !self.strategies.is_empty() && !self.strategies.iter().any(|s| s == name) {
                continue;
            }
            eprintln!("hone: {name}");
            let result = run(strategy)?;
            let measured = result.as_ref();
            let losses: Vec<String> = measured
                .train_losses
                .iter()
                .map(|l| format!("{l:.3}"))
                .collect();
            eprintln!(
                "hone: {name}: {:.1}s, losses {}",
                measured.total_s,
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
            "model": model_dir.file_name().map(|n| n.to_string_lossy()),
            "strategies": results,
        });
        write_json(&self.json, &output)
    }
}

/// What a strategy benchmark measures of one run: the wall time of the training call,
/// when each epoch ended and its training loss, the predict time and the predicted
/// label indices (which the Python report scores).
#[derive(Debug, Serialize)]
pub struct Measured {
    pub total_s: f64,
    pub epoch_end_s: Vec<f64>,
    pub train_losses: Vec<f64>,
    pub predict_s: f64,
    pub predictions: Vec<usize>,
}

impl Measured {
    /// Stops the training `clock`, then times `predict` and turns its single-label
    /// predictions into indices of `labels`.
    pub fn finish(
        clock: EpochClock,
        labels: &[String],
        predict: impl FnOnce() -> Result<Vec<Prediction>, TrainError>,
    ) -> anyhow::Result<Self> {
        let total_s = clock.start.elapsed().as_secs_f64();
        let start = Instant::now();
        let predictions = predict()?;
        let predict_s = start.elapsed().as_secs_f64();
        let predictions = predictions
            .iter()
            .map(|p| {
                let label = p.label().context("not a single-label prediction")?;
                labels
                    .iter()
                    .position(|l| l == label)
                    .with_context(|| format!("predicted an unknown label {label:?}"))
            })
            .collect::<anyhow::Result<Vec<usize>>>()?;
        Ok(Self {
            total_s,
            epoch_end_s: clock.epoch_end_s,
            train_losses: clock.train_losses,
            predict_s,
            predictions,
        })
    }
}

/// Remembers when each epoch ended, from `start`, and its training loss.
pub struct EpochClock {
    pub start: Instant,
    pub epoch_end_s: Vec<f64>,
    pub train_losses: Vec<f64>,
}

impl EpochClock {
    pub fn starting_now() -> Self {
        Self {
            start: Instant::now(),
            epoch_end_s: Vec::new(),
            train_losses: Vec::new(),
        }
    }
}

impl TrainObserver for EpochClock {
    fn on_step(&mut self, _progress: &StepProgress) {}

    fn on_epoch(&mut self, metrics: &EpochMetrics) {
        self.epoch_end_s.push(self.start.elapsed().as_secs_f64());
        self.train_losses.push(metrics.train_loss);
    }

    fn cancelled(&self) -> bool {
        false
    }
}

/// The libtorch this binary was built against, as scripts/setup records it.
pub fn libtorch_version() -> String {
    option_env!("LIBTORCH")
        .and_then(|dir| std::fs::read_to_string(Path::new(dir).join("build-version")).ok())
        .map_or_else(|| "unknown".to_owned(), |v| v.trim().to_owned())
}

/// Pretty JSON with a final newline, its folder created.
pub fn write_json(path: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
