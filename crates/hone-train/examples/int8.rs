//! The int8 lever on a real encoder: all-MiniLM-L6-v2's forward pass (tokenized texts of
//! the Rotten Tomatoes corpus → mean-pooled embeddings, eval mode, no autograd) in fp32
//! and with its Linear layers in int8 (`BertModel::quantize_int8`, libtorch's fbgemm
//! kernels through hone-train's C++), one after the other in one run, on the same
//! threads: milliseconds per batch at 1 and 32 texts (median of `--repeat` rounds of
//! `--calls` calls), and how far the int8 embeddings are from the fp32 ones (cosine
//! similarity over every text).
//!
//! ```text
//! cargo run --release -p hone-train --example int8 -- --threads 2
//! ```

use std::fs::File;
use std::io::BufReader;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hone_train::bert::BertModel;
use hone_train::tokenize::{collate, Encoded, TextTokenizer};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Parser)]
struct Args {
    /// Hugging Face model directory.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/models/all-MiniLM-L6-v2"))]
    model_dir: PathBuf,
    /// CSV (bz2) with a text column.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../../.deps/data/rotten_tomatoes_corpus.csv.bz2"))]
    data: PathBuf,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    #[arg(long, default_value_t = 20)]
    calls: usize,
    #[arg(long, default_value_t = 128)]
    seq_len: usize,
}

fn texts(args: &Args, n: usize) -> anyhow::Result<Vec<String>> {
    let file = File::open(&args.data).with_context(|| format!("{}", args.data.display()))?;
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_reader(bzip2::read::MultiBzDecoder::new(BufReader::new(file)));
    let column = reader
        .headers()?
        .iter()
        .position(|h| h == "text")
        .context("no text column")?;
    let mut out = Vec::with_capacity(n);
    for record in reader.records().take(n) {
        out.push(record?.get(column).unwrap_or_default().to_owned());
    }
    Ok(out)
}

/// Median milliseconds per call of `f`.
fn time(args: &Args, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<f64> {
    f()?;
    let mut rounds = Vec::with_capacity(args.repeat);
    for _ in 0..args.repeat {
        let start = Instant::now();
        for _ in 0..args.calls {
            f()?;
        }
        rounds.push(start.elapsed().as_secs_f64() * 1e3 / args.calls as f64);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    hone_train::threads::use_intra_op_threads(args.threads);
    let tokenizer = TextTokenizer::from_dir(&args.model_dir, args.seq_len)?;
    let fp32 = BertModel::load(&args.model_dir, Device::Cpu)?;
    let mut int8 = BertModel::load(&args.model_dir, Device::Cpu)?;
    int8.quantize_int8()?;

    let all = texts(&args, 512)?;
    let encoded = tokenizer.encode(&all)?;
    let batch_of = |items: &[Encoded]| {
        let items: Vec<&Encoded> = items.iter().collect();
        collate(&items, tokenizer.pad_id(), Device::Cpu)
    };
    let mut cosines = Vec::new();
    for chunk in encoded.chunks(64) {
        let batch = batch_of(chunk)?;
        let a = fp32.mean_pooled(&batch.input_ids, &batch.attention_mask)?;
        let b = int8.mean_pooled(&batch.input_ids, &batch.attention_mask)?;
        let cos = Tensor::f_cosine_similarity(&a, &b, 1, 1e-8)?;
        cosines.extend(Vec::<f64>::try_from(cos.to_kind(Kind::Double))?);
    }
    cosines.sort_by(f64::total_cmp);
    let mean = cosines.iter().sum::<f64>() / cosines.len() as f64;
    println!(
        "embeddings of {} texts: cosine(fp32, int8) mean {mean:.5}, min {:.5}",
        cosines.len(),
        cosines[0]
    );

    println!("| texts per call | fp32 ms | int8 ms | int8 speed-up |");
    println!("|---|---|---|---|");
    for size in [1usize, 32] {
        let batch = batch_of(&encoded[..size])?;
        let run = |model: &BertModel| -> anyhow::Result<()> {
            let pooled: Tensor = model.mean_pooled(&batch.input_ids, &batch.attention_mask)?;
            anyhow::ensure!(pooled.size()[0] == size as i64);
            Ok(())
        };
        let a = time(&args, || run(&fp32))?;
        let b = time(&args, || run(&int8))?;
        println!("| {size} | {a:.2} | {b:.2} | {:.2}× |", a / b);
    }
    Ok(())
}
