//! Training and predict throughput of hone's tch path — the half of the benchmark that
//! `bench/reference.py` is the PyTorch (transformers) half of. `bench/run` runs both in
//! one go; BENCHMARKS.md explains the numbers.
//!
//! Both sides do the same work, with the same flags and the same JSON fields: the
//! first `batch_size * train_steps` texts of the Rotten Tomatoes corpus (cycled; label
//! 1 for "fresh", else 0), tokenized up front and padded or truncated to exactly
//! `--seq-len` tokens; the pretrained encoder + mean pooling + dropout + a 2-way head,
//! all parameters trainable, AdamW at lr 2e-5 with weight decay 0.01 (none on biases
//! and LayerNorm), cross-entropy, gradient-norm clipping at 1.0, train mode. Predict
//! times tokenization + forward + softmax per batch, in eval mode without autograd.
//!
//! The spans are the service's own code: `TextTokenizer`, `collate`,
//! `SequenceClassifier::forward`, `train::Optimizer::step` (the step `fine_tune` takes)
//! and, for predict, a `Classifier` loaded with `Classifier::load` from a published
//! model directory of the trained weights. Two things differ from the service, to
//! match the reference: batches are padded up to `--seq-len` instead of to their
//! longest text, and the learning rate is constant instead of scheduled.
//!
//! ```text
//! cargo run --release -p hone-train --example bench -- --threads 2 --json /tmp/hone.json
//! ```

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, ensure, Context};
use clap::Parser;
use hone_train::bert::BertConfig;
use hone_train::classifier::{HeadType, Pooling};
use hone_train::layers::{WeightInit, HEAD_PREFIX};
use hone_train::model_dir::{
    ModelMeta, CONFIG_FILE, MODEL_META_VERSION, TOKENIZER_FILE, WEIGHTS_FILE,
};
use hone_train::tokenize::{collate, Batch, Encoded, TextTokenizer};
use hone_train::train::{Optimizer, TrainConfig};
use hone_train::weights::load_safetensors;
use hone_train::{Classifier, SequenceClassifier, TrainError};
use tch::{nn, Device, Kind, Reduction, Tensor};

// The epoch clock is for the strategy benchmarks; this one times steps itself.
#[allow(dead_code)]
mod support;
use support::{libtorch_version, write_json};

/// The reference's hyperparameters (bench/reference.py).
const LEARNING_RATE: f64 = 2e-5;
const WEIGHT_DECAY: f64 = 0.01;
const GRAD_CLIP: f64 = 1.0;
/// rotten (0) and fresh (1).
const LABELS: [&str; 2] = ["rotten", "fresh"];

/// hone's training and predict throughput on the work bench/reference.py does.
#[derive(Debug, Parser)]
struct Args {
    /// Hugging Face model directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/all-MiniLM-L6-v2"))]
    model_dir: PathBuf,
    /// CSV (bz2) with a text and a category column.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/data/rotten_tomatoes_corpus.csv.bz2"))]
    data: PathBuf,
    /// tch::set_num_threads; default: libtorch's own choice.
    #[arg(long)]
    threads: Option<i32>,
    /// Samples per batch.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Every input padded/truncated to exactly this many tokens.
    #[arg(long, default_value_t = 64)]
    seq_len: usize,
    /// Timed training steps.
    #[arg(long, default_value_t = 20)]
    train_steps: usize,
    /// Timed predict batches.
    #[arg(long, default_value_t = 20)]
    predict_batches: usize,
    /// Untimed steps (and predict batches) before measuring.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Attention implementation; hone always calls scaled_dot_product_attention, the
    /// reference's "sdpa". Accepted so both take the same flags.
    #[arg(long, default_value = "sdpa", value_parser = ["sdpa"])]
    attn: String,
    /// tch::manual_seed (head, dropout).
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Write the results here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    for (name, value) in [
        ("batch-size", args.batch_size),
        ("seq-len", args.seq_len),
        ("train-steps", args.train_steps),
        ("predict-batches", args.predict_batches),
    ] {
        ensure!(value >= 1, "--{name} must be >= 1");
    }
    if let Some(threads) = args.threads {
        ensure!(threads >= 1, "--threads must be >= 1");
        tch::set_num_threads(threads);
    }
    tch::manual_seed(args.seed);
    let device = Device::Cpu;
    let seq_len = args.seq_len as i64;

    // --- model and data, as fine_tune sets them up (not timed) ------------------------
    let bert_config = BertConfig::from_file(&args.model_dir.join(CONFIG_FILE))?;
    ensure!(
        args.seq_len <= bert_config.max_position_embeddings,
        "--seq-len {} exceeds the model's max_position_embeddings {}",
        args.seq_len,
        bert_config.max_position_embeddings
    );
    let tokenizer = TextTokenizer::from_dir(&args.model_dir, args.seq_len)?;
    let pad_id = tokenizer.pad_id();
    let vs = nn::VarStore::new(device);
    let model = SequenceClassifier::new(
        &vs.root(),
        &bert_config,
        LABELS.len(),
        HeadType::Linear,
        Pooling::Mean,
        WeightInit::random(&bert_config),
    )?;
    let is_head = |name: &str| {
        name.strip_prefix(HEAD_PREFIX)
            .is_some_and(|rest| rest.starts_with('.'))
    };
    load_safetensors(&vs, &args.model_dir.join(WEIGHTS_FILE), &is_head)?;

    let rows = load_rows(&args.data, args.batch_size * args.train_steps)?;
    let texts: Vec<String> = rows.iter().map(|(t, _)| t.clone()).collect();
    let encoded = tokenizer.encode(&texts)?;
    let mut batches = Vec::with_capacity(args.train_steps);
    for (items, rows) in encoded
        .chunks(args.batch_size)
        .zip(rows.chunks(args.batch_size))
    {
        let items: Vec<&Encoded> = items.iter().collect();
        let batch = pad_to(collate(&items, pad_id, device)?, seq_len, pad_id)?;
        ensure!(
            batch.input_ids.size() == [args.batch_size as i64, seq_len],
            "a training batch has shape {:?}",
            batch.input_ids.size()
        );
        let targets: Vec<i64> = rows.iter().map(|&(_, label)| label).collect();
        let targets = Tensor::f_from_slice(&targets)?.f_to_device(device)?;
        batches.push((batch, targets));
    }

    // --- training ---------------------------------------------------------------------
    let config = TrainConfig {
        batch_size: args.batch_size,
        learning_rate: LEARNING_RATE,
        weight_decay: WEIGHT_DECAY,
        max_seq_len: args.seq_len,
        grad_clip: GRAD_CLIP,
        ..TrainConfig::default()
    };
    let mut optimizer = Optimizer::new(&vs, &config)?;
    let mut train_step = |batch: &Batch, targets: &Tensor| -> Result<Tensor, TrainError> {
        let logits = model.forward(batch, true)?;
        let loss =
            logits.f_cross_entropy_loss::<Tensor>(targets, None, Reduction::Mean, -100, 0.0)?;
        optimizer.step(&loss, LEARNING_RATE)?;
        Ok(loss)
    };
    for i in 0..args.warmup {
        let (batch, targets) = &batches[i % batches.len()];
        let _ = train_step(batch, targets)?;
    }
    let start = Instant::now();
    let mut loss = None;
    for (batch, targets) in &batches {
        loss = Some(train_step(batch, targets)?);
    }
    let final_loss = loss.context("no training step ran")?.f_double_value(&[])?;
    let train_s = start.elapsed().as_secs_f64();
    let train_sps = (args.batch_size * args.train_steps) as f64 / train_s;

    // --- prediction -------------------------------------------------------------------
    // Through the serving path: publish the trained weights as a model directory, as
    // TrainedModel::save does, and load it with Classifier::load.
    let published = tempfile::tempdir().context("creating a temporary model directory")?;
    let classifier = publish_and_load(&vs, &bert_config, &args, published.path(), device)?;
    drop((optimizer, model, vs));

    let predict_texts: Vec<Vec<String>> = {
        let mut cycled = texts.iter().cycle();
        (0..args.predict_batches)
            .map(|_| cycled.by_ref().take(args.batch_size).cloned().collect())
            .collect()
    };
    let num_labels = classifier.labels().len();
    let predict = |texts: &[String]| -> Result<Vec<f32>, TrainError> {
        tch::no_grad(|| {
            let encoded = classifier
                .tokenizer()
                .ok_or_else(|| TrainError::InvalidInput("a text model".into()))?
                .encode(texts)?;
            let items: Vec<&Encoded> = encoded.iter().collect();
            let batch = pad_to(collate(&items, pad_id, device)?, seq_len, pad_id)?;
            let probs = classifier
                .logits(&batch)?
                .f_softmax(-1, Kind::Float)?
                .f_to_device(Device::Cpu)?
                .f_flatten(0, -1)?;
            Ok(Vec::<f32>::try_from(&probs)?)
        })
    };
    for i in 0..args.warmup {
        predict(&predict_texts[i % predict_texts.len()])?;
    }
    let start = Instant::now();
    let mut probs = Vec::new();
    for texts in &predict_texts {
        probs = predict(texts)?;
    }
    let predict_s = start.elapsed().as_secs_f64();
    ensure!(
        probs.len() == args.batch_size * num_labels,
        "the last predict batch gave {} probabilities",
        probs.len()
    );
    let predict_sps = (args.batch_size * args.predict_batches) as f64 / predict_s;

    let threads = tch::get_num_threads();
    let libtorch = libtorch_version();
    println!(
        "hone (libtorch {libtorch}) threads={threads} batch={} seq_len={} attn={}: \
         train {train_sps:.1} samples/s ({} steps in {train_s:.2}s, final loss {final_loss:.4}), \
         predict {predict_sps:.1} samples/s ({} batches in {predict_s:.2}s)",
        args.batch_size, args.seq_len, args.attn, args.train_steps, args.predict_batches
    );
    if let Some(path) = &args.json {
        let result = serde_json::json!({
            "impl": "hone",
            "torch": libtorch,
            "threads": threads,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "train_samples_per_s": train_sps,
            "predict_samples_per_s": predict_sps,
            "train_steps": args.train_steps,
            "predict_batches": args.predict_batches,
            "warmup": args.warmup,
            "attn_implementation": args.attn,
            "transformers": null,
            "python": null,
            "hone_train": env!("CARGO_PKG_VERSION"),
            "device": "cpu",
            "model": args.model_dir.file_name().map(|n| n.to_string_lossy()),
            "final_loss": final_loss,
        });
        write_json(path, &result)?;
    }
    Ok(())
}

/// The first `n` (text, label) rows of the corpus, cycled if it has fewer; label 1 for
/// "fresh" and 0 otherwise, as the reference.
fn load_rows(path: &Path, n: usize) -> anyhow::Result<Vec<(String, i64)>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bzip2::read::MultiBzDecoder::new(BufReader::new(file)));
    let headers = reader
        .headers()
        .with_context(|| format!("{}: reading the header", path.display()))?
        .clone();
    let column = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .with_context(|| format!("{}: no {name:?} column", path.display()))
    };
    let (text, category) = (column("text")?, column("category")?);
    let mut rows = Vec::with_capacity(n);
    for record in reader.records().take(n) {
        let record = record.with_context(|| format!("{}: reading a row", path.display()))?;
        let label = i64::from(record.get(category) == Some("fresh"));
        rows.push((record.get(text).unwrap_or_default().to_owned(), label));
    }
    if rows.is_empty() {
        bail!("{}: no rows", path.display());
    }
    Ok(rows.iter().cycle().take(n).cloned().collect())
}

/// Pads a collated batch (padded to its longest text) on the right up to `seq_len`
/// tokens: `pad_id` with attention mask 0, as a tokenizer's `padding="max_length"`.
fn pad_to(batch: Batch, seq_len: i64, pad_id: u32) -> Result<Batch, TrainError> {
    let extra = seq_len - batch.input_ids.size2()?.1;
    if extra <= 0 {
        return Ok(batch);
    }
    let pad = |t: &Tensor, value: f64| t.f_pad([0, extra], "constant", Some(value));
    Ok(Batch {
        input_ids: pad(&batch.input_ids, f64::from(pad_id))?,
        attention_mask: pad(&batch.attention_mask, 0.0)?,
        token_type_ids: pad(&batch.token_type_ids, 0.0)?,
    })
}

/// Writes what `TrainedModel::save` writes (weights, config, tokenizer, hone_model.json)
/// into `dir` and loads it back the way the server does.
fn publish_and_load(
    vs: &nn::VarStore,
    bert_config: &BertConfig,
    args: &Args,
    dir: &Path,
    device: Device,
) -> anyhow::Result<Classifier> {
    vs.save(dir.join(WEIGHTS_FILE))?;
    for name in [CONFIG_FILE, TOKENIZER_FILE] {
        let src = args.model_dir.join(name);
        std::fs::copy(&src, dir.join(name))
            .with_context(|| format!("copying {}", src.display()))?;
    }
    ModelMeta {
        format_version: MODEL_META_VERSION,
        modality: Default::default(),
        architecture: bert_config.model_type.clone(),
        pooling: Pooling::Mean,
        head: HeadType::Linear,
        text_pairs: false,
        task_type: Default::default(),
        labels: LABELS.iter().map(|&l| l.to_owned()).collect(),
        tasks: Vec::new(),
        threshold: None,
        max_seq_len: args.seq_len,
        quantization: None,
    }
    .write(dir)?;
    Ok(Classifier::load(dir, device)?)
}
