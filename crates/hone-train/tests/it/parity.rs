//! all-MiniLM-L6-v2 through hone against the same model through transformers
//! (`tests/fixtures/minilm_parity.json`; see the README next to it for how it was made).

use std::path::{Path, PathBuf};

use hone_train::bert::BertModel;
use hone_train::tokenize::{collate, TextTokenizer};
use serde::Deserialize;
use tch::{Device, Tensor};

#[derive(Deserialize)]
struct Fixture {
    max_length: usize,
    padded_length: i64,
    hidden_size: usize,
    sentences: Vec<Sentence>,
}

#[derive(Deserialize)]
struct Sentence {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
    cls_hidden_prefix: Vec<f32>,
}

/// Installed by `scripts/setup`, which runs before the tests: a missing model is a
/// broken setup, not a reason to skip.
pub fn minilm_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "all-MiniLM-L6-v2 is not installed at {}; run scripts/setup",
        dir.display()
    );
    dir
}

fn max_abs_diff(ours: &Tensor, theirs: &[f32]) -> f64 {
    let ours = Vec::<f32>::try_from(ours.flatten(0, -1)).expect("floats");
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| f64::from((a - b).abs()))
        .fold(0.0, f64::max)
}

#[test]
fn minilm_matches_transformers() {
    let dir = minilm_dir();
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/minilm_parity.json");
    let fixture: Fixture =
        serde_json::from_slice(&std::fs::read(&path).expect("fixture")).expect("parse");

    let tokenizer = TextTokenizer::from_dir(&dir, fixture.max_length).expect("tokenizer");
    let texts: Vec<&str> = fixture.sentences.iter().map(|s| s.text.as_str()).collect();
    let encoded = tokenizer.encode(&texts).expect("encode");
    for (ours, reference) in encoded.iter().zip(&fixture.sentences) {
        assert_eq!(
            ours.ids, reference.input_ids,
            "token ids of {:?}",
            reference.text
        );
    }

    // One padded batch, as the reference ran.
    let model = BertModel::load(&dir, Device::Cpu).expect("load all-MiniLM-L6-v2");
    let items: Vec<_> = encoded.iter().collect();
    let batch = collate(&items, tokenizer.pad_id(), Device::Cpu).expect("collate");
    assert_eq!(batch.input_ids.size()[1], fixture.padded_length);
    let pooled = model
        .mean_pooled(&batch.input_ids, &batch.attention_mask)
        .expect("pool");
    let hidden =
        tch::no_grad(|| model.forward(&batch.input_ids, &batch.attention_mask, None, false))
            .expect("forward");
    let mut worst = 0.0f64;
    for (i, reference) in fixture.sentences.iter().enumerate() {
        assert_eq!(reference.embedding.len(), fixture.hidden_size);
        let prefix = reference.cls_hidden_prefix.len() as i64;
        let cls = hidden.get(i as i64).get(0).narrow(0, 0, prefix);
        let cls_diff = max_abs_diff(&cls, &reference.cls_hidden_prefix);
        let diff = max_abs_diff(&pooled.get(i as i64), &reference.embedding);
        assert!(
            cls_diff < 1e-4,
            "[CLS] state of {:?} is off by {cls_diff}",
            reference.text
        );
        assert!(
            diff < 1e-4,
            "embedding of {:?} is off by {diff}",
            reference.text
        );
        worst = worst.max(diff);
    }
    println!("all-MiniLM-L6-v2 parity: max abs diff {worst:e}");
}
