//! The encoder, the tokenizer and checkpoint loading.

use hone_train::bert::{BertConfig, BertModel};
use hone_train::classifier::{HeadType, Pooling, SequenceClassifier};
use hone_train::layers::WeightInit;
use hone_train::tokenize::{collate, TextTokenizer};
use hone_train::TrainError;
use tch::{nn, Device, Kind, Tensor};

use crate::common::{tiny_base_model, tiny_config, tiny_fixture, torch_lock, Naming};

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).abs().max().double_value(&[])
}

#[test]
fn tokenizer_truncates_and_never_pads() {
    let tokenizer = TextTokenizer::from_dir(&tiny_fixture(), 8).expect("tokenizer");
    let encoded = tokenizer
        .encode(&[
            "the movie",
            "the movie was really very very good and great acting",
        ])
        .expect("encode");
    assert_eq!(encoded[0].ids, vec![2, 5, 7, 3]); // [CLS] the movie [SEP]
    assert_eq!(encoded[1].len(), 8); // truncated, [SEP] kept
    assert_eq!(encoded[1].ids[7], 3);
    assert!(encoded.iter().all(|e| e.type_ids.iter().all(|&t| t == 0)));

    let batch =
        collate(&[&encoded[0], &encoded[1]], tokenizer.pad_id(), Device::Cpu).expect("collate");
    assert_eq!(batch.input_ids.size(), [2, 8]);
    assert_eq!(batch.input_ids.kind(), Kind::Int64);
    let mask = Vec::<i64>::try_from(batch.attention_mask.flatten(0, -1)).expect("mask");
    assert_eq!(&mask[..8], &[1, 1, 1, 1, 0, 0, 0, 0]);
    assert!(mask[8..].iter().all(|&m| m == 1));
    let ids = Vec::<i64>::try_from(batch.input_ids.flatten(0, -1)).expect("ids");
    assert_eq!(&ids[4..8], &[0, 0, 0, 0]);
    assert_eq!(batch.token_type_ids.sum(Kind::Int64).int64_value(&[]), 0);
}

#[test]
fn tokenizer_refuses_a_length_without_room() {
    let err = TextTokenizer::from_dir(&tiny_fixture(), 2).expect_err("too short");
    assert!(matches!(err, TrainError::InvalidInput(_)), "{err}");
}

#[test]
fn shapes() {
    let _lock = torch_lock();
    let config = tiny_config();
    let vs = nn::VarStore::new(Device::Cpu);
    let model = SequenceClassifier::new(
        &vs.root(),
        &config,
        3,
        HeadType::Linear,
        Pooling::Mean,
        WeightInit::random(&config),
    )
    .expect("model");
    let tokenizer = TextTokenizer::from_dir(&tiny_fixture(), 16).expect("tokenizer");
    let encoded = tokenizer
        .encode(&["good film", "a really boring plot and bad acting", "it"])
        .expect("encode");
    let items: Vec<_> = encoded.iter().collect();
    let batch = collate(&items, 0, Device::Cpu).expect("collate");
    let seq = batch.input_ids.size()[1];

    let hidden = model
        .encoder()
        .forward(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            false,
        )
        .expect("forward");
    assert_eq!(hidden.size(), [3, seq, 32]);
    let logits = model.forward(&batch, true).expect("logits");
    assert_eq!(logits.size(), [3, 3]);
    let pooled = model
        .encoder()
        .mean_pooled(&batch.input_ids, &batch.attention_mask)
        .expect("pool");
    assert_eq!(pooled.size(), [3, 32]);
    assert!(!pooled.requires_grad());
}

#[test]
fn padding_does_not_change_a_sentence() {
    let _lock = torch_lock();
    let dir = tiny_base_model(7, Naming::Plain);
    let model = BertModel::load(dir.path(), Device::Cpu).expect("load");
    let tokenizer = TextTokenizer::from_dir(dir.path(), 32).expect("tokenizer");
    let encoded = tokenizer
        .encode(&[
            "good movie",
            "the plot was really very boring and the acting was bad",
        ])
        .expect("encode");

    let alone = collate(&[&encoded[0]], 0, Device::Cpu).expect("collate");
    let together = collate(&[&encoded[0], &encoded[1]], 0, Device::Cpu).expect("collate");
    assert!(together.input_ids.size()[1] > alone.input_ids.size()[1]);
    let a = model
        .mean_pooled(&alone.input_ids, &alone.attention_mask)
        .expect("pool");
    let b = model
        .mean_pooled(&together.input_ids, &together.attention_mask)
        .expect("pool");
    let diff = max_abs_diff(&a.get(0), &b.get(0));
    assert!(diff < 1e-5, "padding moved the embedding by {diff}");
    // The pad id does not matter either.
    let mut other_pad = collate(&[&encoded[0], &encoded[1]], 0, Device::Cpu).expect("collate");
    other_pad.input_ids = other_pad
        .input_ids
        .where_self(&other_pad.attention_mask.eq(1), &Tensor::from(42i64));
    let c = model
        .mean_pooled(&other_pad.input_ids, &other_pad.attention_mask)
        .expect("pool");
    assert!(max_abs_diff(&b, &c) < 1e-5);
}

#[test]
fn dropout_only_in_training() {
    let _lock = torch_lock();
    let dir = tiny_base_model(3, Naming::Plain);
    let model = BertModel::load(dir.path(), Device::Cpu).expect("load");
    let ids = Tensor::from_slice(&[2i64, 15, 7, 3]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let eval1 = model.forward(&ids, &mask, None, false).expect("eval");
    let eval2 = model.forward(&ids, &mask, None, false).expect("eval");
    assert_eq!(max_abs_diff(&eval1, &eval2), 0.0);
    let train = model.forward(&ids, &mask, None, true).expect("train");
    assert!(max_abs_diff(&eval1, &train) > 1e-4);
}

#[test]
fn prefixed_and_legacy_names_load_the_same_weights() {
    let _lock = torch_lock();
    let plain = tiny_base_model(11, Naming::Plain);
    let prefixed = tiny_base_model(11, Naming::PrefixedLegacy);
    let a = BertModel::load(plain.path(), Device::Cpu).expect("plain");
    let b = BertModel::load(prefixed.path(), Device::Cpu).expect("prefixed");
    let ids = Tensor::from_slice(&[2i64, 20, 21, 3]).view([1, 4]);
    let mask = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let ea = a.mean_pooled(&ids, &mask).expect("a");
    let eb = b.mean_pooled(&ids, &mask).expect("b");
    assert_eq!(max_abs_diff(&ea, &eb), 0.0);
}

#[test]
fn a_checkpoint_that_does_not_fit_is_reported_in_full() {
    let _lock = torch_lock();
    let dir = tiny_base_model(5, Naming::Plain);
    let path = dir.path().join("model.safetensors");
    let mut tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(&path)
        .expect("read")
        .into_iter()
        .filter(|(name, _)| name != "encoder.layer.1.output.dense.bias")
        .collect();
    for (name, t) in tensors.iter_mut() {
        if name == "embeddings.word_embeddings.weight" {
            *t = Tensor::zeros([50, 32], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&tensors, &path).expect("write");
    match BertModel::load(dir.path(), Device::Cpu) {
        Err(TrainError::Weights {
            missing,
            mismatched,
            ..
        }) => {
            assert_eq!(missing, ["encoder.layer.1.output.dense.bias"]);
            assert_eq!(mismatched.len(), 1);
            assert!(
                mismatched[0].starts_with("embeddings.word_embeddings.weight"),
                "{mismatched:?}"
            );
        }
        other => panic!("expected a weights error, got {other:?}"),
    }
}

#[test]
fn unsupported_architectures_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"model_type":"distilbert","vocab_size":10,"dim":8}"#,
    )
    .expect("write");
    match BertConfig::from_file(&path) {
        Err(e @ TrainError::UnsupportedArchitecture { .. }) => {
            assert!(e.to_string().contains("distilbert"), "{e}");
        }
        other => panic!("expected unsupported architecture, got {other:?}"),
    }
    std::fs::write(&path, r#"{"model_type":"bert","vocab_size":10,"hidden_size":9,"num_hidden_layers":1,"num_attention_heads":2,"intermediate_size":4}"#).expect("write");
    assert!(matches!(
        BertConfig::from_file(&path),
        Err(TrainError::Config { .. })
    ));
}

#[test]
fn hidden_act_names() {
    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 10, "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "intermediate_size": 16, "hidden_act": "gelu_new"
    }))
    .expect("config");
    assert_eq!(config.hidden_act, hone_train::bert::HiddenAct::GeluTanh);
    assert_eq!(config.layer_norm_eps, 1e-12);
    assert_eq!(config.max_position_embeddings, 512);
}
