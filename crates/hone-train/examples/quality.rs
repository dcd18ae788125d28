//! A quick check of transfer quality on real pictures (issue 19): EfficientNet-Lite0
//! on a few hundred Fashion-MNIST images (Debian's `dataset-fashion-mnist`, which
//! `scripts/setup` installs), each strategy through hone's own `fine_tune` as the
//! worker runs it, scored on held-out test images. Not the benchmark of BENCHMARKS.md
//! (`bench/run-images`, which also runs PyTorch): one process, hone only, for
//! comparing hone with itself before and after a change.
//!
//! Per class, a seeded shuffle of the training file gives `--train-per-class` training
//! and `--validation-per-class` validation images; the first `--test-per-class` of
//! each class in the test file are the test set. Runs `feature_extraction` with the
//! AdamW head (10 epochs at 1e-3, the API's defaults) and with the L-BFGS probe, then
//! `partial` (8 frozen layers) and `full` (3 epochs at 1e-3, batch 16, no
//! augmentation: `bench/run-images`' defaults), each keeping its best epoch by
//! validation loss. Prints one line per strategy: test accuracy, validation accuracy,
//! seconds.
//!
//! ```text
//! cargo run --release -p hone-train --example quality -- --threads 2
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Parser;
use hone_train::train::{extract_image_features, fine_tune, Features, Strategy};
use hone_train::{HeadSolver, Objective, Prediction, TrainConfig, TrainData, TrainJob};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Device;

/// The `hone` binary's allocator (jemalloc, keeping freed pages; see
/// .cargo/config.toml): the system allocator makes EfficientNet several times slower.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[path = "../tests/it/test_images.rs"]
#[allow(dead_code)]
mod test_images;
use test_images::{read_idx, LabelledImage, FASHION_MNIST_DIR};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long, default_value_t = 30)]
    train_per_class: usize,
    #[arg(long, default_value_t = 10)]
    validation_per_class: usize,
    #[arg(long, default_value_t = 50)]
    test_per_class: usize,
    #[arg(long, default_value_t = 0)]
    data_seed: u64,
    #[arg(long, default_value_t = 2)]
    threads: i32,
    /// Strategies to run, of fe-adamw, fe-lbfgs, partial, full.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fe-adamw,fe-lbfgs,partial,full"
    )]
    only: Vec<String>,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/efficientnet-lite0"))]
    model_dir: PathBuf,
}

const CLASSES: usize = 10;

fn per_class(images: &[LabelledImage], counts: &[usize]) -> Vec<Vec<LabelledImage>> {
    let mut taken: Vec<Vec<LabelledImage>> = vec![Vec::new(); counts.len()];
    let mut by_class: Vec<Vec<&LabelledImage>> = vec![Vec::new(); CLASSES];
    for image in images {
        by_class[usize::from(image.label)].push(image);
    }
    for class in by_class {
        let mut from = 0;
        for (split, &n) in counts.iter().enumerate() {
            taken[split].extend(class[from..from + n].iter().map(|&d| d.clone()));
            from += n;
        }
    }
    taken
}

fn data(images: &[LabelledImage]) -> anyhow::Result<TrainData> {
    let pngs = images
        .iter()
        .map(LabelledImage::png)
        .collect::<Result<Vec<_>, _>>()?;
    let labels: Vec<usize> = images.iter().map(|d| usize::from(d.label)).collect();
    Ok(TrainData::images(pngs, labels.into()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tch::set_num_threads(args.threads);
    let dir = Path::new(FASHION_MNIST_DIR);
    let mut train_file = read_idx(
        &dir.join("train-images-idx3-ubyte.gz"),
        &dir.join("train-labels-idx1-ubyte.gz"),
        usize::MAX,
    )?;
    train_file.shuffle(&mut StdRng::seed_from_u64(args.data_seed));
    let splits = per_class(
        &train_file,
        &[args.train_per_class, args.validation_per_class],
    );
    let test_file = read_idx(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        usize::MAX,
    )?;
    let test = per_class(&test_file, &[args.test_per_class]).remove(0);
    let (train, validation, test) = (data(&splits[0])?, data(&splits[1])?, data(&test)?);
    let labels: Vec<String> = (0..CLASSES).map(|c| format!("class-{c}")).collect();

    let started = Instant::now();
    let extract = |set: &TrainData| {
        extract_image_features(
            &args.model_dir,
            set.images.clone(),
            64,
            Device::Cpu,
            &|| false,
        )
    };
    let features = (extract(&train)?, extract(&validation)?);
    println!(
        "features of {} + {} images: {:.1} s",
        train.len(),
        validation.len(),
        started.elapsed().as_secs_f64()
    );

    for name in &args.only {
        let (strategy, epochs, solver) = match name.as_str() {
            "fe-adamw" => (Strategy::FeatureExtraction, 10, HeadSolver::AdamW),
            "fe-lbfgs" => (Strategy::FeatureExtraction, 10, HeadSolver::Lbfgs),
            "partial" => (Strategy::Partial { frozen_layers: 8 }, 3, HeadSolver::AdamW),
            "full" => (Strategy::Full, 3, HeadSolver::AdamW),
            other => anyhow::bail!("no strategy {other}"),
        };
        let config = TrainConfig {
            epochs,
            batch_size: 16,
            learning_rate: 1e-3,
            warmup_ratio: 0.1,
            seed: 42,
            strategy,
            augment: false,
            head_solver: solver,
            ..TrainConfig::default()
        };
        let job = TrainJob {
            base_model_dir: &args.model_dir,
            objective: Objective::classification(labels.clone()),
            train: train.clone(),
            validation: Some(validation.clone()),
            config,
            device: Device::Cpu,
            features: (strategy == Strategy::FeatureExtraction).then(|| Features {
                train: features.0.shallow_clone(),
                validation: Some(features.1.shallow_clone()),
            }),
            checkpoint_dir: None,
            resume_from: None,
            frozen_cache_bytes: hone_train::DEFAULT_FROZEN_CACHE_BYTES,
        };
        let started = Instant::now();
        let model = fine_tune(job, &mut Quiet)?;
        let seconds = started.elapsed().as_secs_f64();
        let predictions = model.classifier().predict_images(&test.images, 32)?;
        let truth = test.labels.as_single().unwrap_or(&[]);
        let right = predictions
            .iter()
            .zip(truth)
            .filter(|(p, &t)| matches!(p, Prediction::Class(c) if c.label == labels[t]))
            .count();
        let validation_accuracy = model
            .evaluation()
            .map_or(f64::NAN, |e| e.validation.accuracy());
        println!(
            "{name:>9}: test accuracy {:.3} ({right}/{}), validation {validation_accuracy:.3}, {seconds:.1} s",
            right as f64 / truth.len() as f64,
            truth.len()
        );
    }
    Ok(())
}

struct Quiet;

impl hone_train::TrainObserver for Quiet {
    fn on_step(&mut self, _: &hone_train::StepProgress) {}
    fn on_epoch(&mut self, m: &hone_train::EpochMetrics) {
        if let Some(v) = &m.validation {
            println!(
                "    epoch {}: train loss {:.4}, validation loss {:.4}, accuracy {:.3}",
                m.epoch, m.train_loss, v.loss, v.accuracy
            );
        }
    }
    fn cancelled(&self) -> bool {
        false
    }
    fn on_notice(&mut self, message: &str) {
        println!("    {message}");
    }
}
