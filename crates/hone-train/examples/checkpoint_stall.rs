//! How long training stands still at each epoch's checkpoint (issue 13, "no stalls"):
//! all-MiniLM-L6-v2 fine-tuned `full` with a checkpoint every epoch, through hone's own
//! `fine_tune` as the worker runs it, on short generated texts and no validation split,
//! so that the gap between an epoch's last step and the next epoch's first step is the
//! checkpoint's cost to training and little else (`--no-checkpoints` measures the
//! rest). Prints, per epoch boundary, that gap and the median step time, and the
//! checkpoints' size.
//!
//! Run it at two commits to compare (BENCHMARKS.md, "Checkpoints beside training"):
//!
//! ```text
//! cargo build -p hone-train --example checkpoint_stall --locked
//! target/debug/examples/checkpoint_stall --threads 2 --examples 480 --epochs 3
//! ```

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use hone_train::train::{fine_tune, Strategy};
use hone_train::{Objective, TrainConfig, TrainData, TrainJob};
use tch::Device;

/// The `hone` binary's allocator (jemalloc, keeping freed pages; see .cargo/config.toml).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 2)]
    threads: i32,
    #[arg(long, default_value_t = 5)]
    epochs: u32,
    /// Examples per epoch (batches of 16).
    #[arg(long, default_value_t = 96)]
    examples: usize,
    /// The control: no checkpoints, so the boundaries show what an epoch's start
    /// costs without them.
    #[arg(long)]
    no_checkpoints: bool,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/all-MiniLM-L6-v2"))]
    model_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let words = [
        "film", "plot", "acting", "score", "scene", "story", "cast", "ending",
    ];
    let mut data = TrainData::default();
    let mut labels = Vec::with_capacity(args.examples);
    for i in 0..args.examples {
        let good = i % 2 == 0;
        let text = format!(
            "the {} was {} and the {} {}",
            words[i % words.len()],
            if good { "wonderful" } else { "dull" },
            words[(i / 3) % words.len()],
            if good { "shone" } else { "dragged" }
        );
        data.texts.push(text);
        labels.push(usize::from(good));
    }
    data.labels = labels.into();
    let checkpoints = tempfile::tempdir()?;
    let config = TrainConfig {
        epochs: args.epochs,
        batch_size: 16,
        max_seq_len: 32,
        strategy: Strategy::Full,
        seed: 1,
        ..TrainConfig::default()
    };
    let job = TrainJob {
        base_model_dir: &args.model_dir,
        objective: Objective::classification(vec!["neg".into(), "pos".into()]),
        train: data,
        validation: None,
        config,
        device: Device::Cpu,
        features: None,
        checkpoint_dir: (!args.no_checkpoints).then_some(checkpoints.path()),
        resume_from: None,
        frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
    };
    let mut clock = Clock::default();
    let started = Instant::now();
    fine_tune(job, &mut clock)?;
    let total = started.elapsed().as_secs_f64();

    let mut steps: Vec<f64> = clock
        .steps
        .windows(2)
        .filter(|w| w[0].0 == w[1].0)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    steps.sort_by(f64::total_cmp);
    let median_step = steps.get(steps.len() / 2).copied().unwrap_or(f64::NAN);
    let gaps: Vec<f64> = clock
        .steps
        .windows(2)
        .filter(|w| w[0].0 != w[1].0)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    let bytes: u64 = walk(checkpoints.path()).iter().sum();
    println!(
        "median step {:.0} ms; epoch boundaries (last step to next first step): {} ms; \
         whole run {total:.1} s; checkpoints on disk {:.0} MB in all",
        median_step * 1e3,
        gaps.iter()
            .map(|g| format!("{:.0}", g * 1e3))
            .collect::<Vec<_>>()
            .join(", "),
        bytes as f64 / 1e6
    );
    Ok(())
}

/// Sizes of the files under `dir`.
fn walk(dir: &std::path::Path) -> Vec<u64> {
    let mut sizes = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            sizes.extend(walk(&path));
        } else if let Ok(m) = entry.metadata() {
            sizes.push(m.len());
        }
    }
    sizes
}

/// When each step ended, by epoch.
#[derive(Default)]
struct Clock {
    start: Option<Instant>,
    steps: Vec<(u32, f64)>,
}

impl hone_train::TrainObserver for Clock {
    fn on_step(&mut self, p: &hone_train::StepProgress) {
        let start = *self.start.get_or_insert_with(Instant::now);
        self.steps.push((p.epoch, start.elapsed().as_secs_f64()));
    }
    fn on_epoch(&mut self, _: &hone_train::EpochMetrics) {}
    fn cancelled(&self) -> bool {
        false
    }
}
