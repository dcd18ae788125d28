//! What the benchmark examples share: the service's allocator, an observer that clocks
//! epochs, the libtorch version, and writing the result file.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use hone_train::{EpochMetrics, StepProgress, TrainObserver};

/// The `hone` binary's allocator (jemalloc, keeping freed pages; see
/// .cargo/config.toml), so the benchmarks measure what the service runs.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
