//! Describing base model directories without loading them.

use std::path::Path;

use hone_train::base_model::{inspect_base_model, list_base_models};
use hone_train::TrainError;
use tch::Tensor;

use crate::common::{tiny_base_model, torch_lock, Naming};

#[test]
fn counts_floating_point_parameters_from_the_header() {
    let _lock = torch_lock();
    let dir = tiny_base_model(1, Naming::Plain);
    let expected: i64 = Tensor::read_safetensors(dir.path().join("model.safetensors"))
        .expect("read")
        .iter()
        .filter(|(name, _)| name != "embeddings.position_ids")
        .map(|(_, t)| t.numel() as i64)
        .sum();
    let info = inspect_base_model(dir.path()).expect("inspect");
    assert_eq!(info.parameters, expected as u64);
    assert_eq!(info.architecture, "bert");
    assert_eq!(
        (info.hidden_size, info.num_layers, info.num_heads),
        (32, 2, 2)
    );
    assert_eq!((info.max_position_embeddings, info.vocab_size), (64, 100));
}

#[test]
fn lists_every_directory_with_its_problem() {
    let _lock = torch_lock();
    let root = tempfile::tempdir().expect("tempdir");
    let good = tiny_base_model(2, Naming::Plain);
    copy_dir(good.path(), &root.path().join("tiny"));
    std::fs::create_dir(root.path().join("empty")).expect("mkdir");
    std::fs::create_dir(root.path().join(".hidden")).expect("mkdir");
    let distil = root.path().join("distil");
    std::fs::create_dir(&distil).expect("mkdir");
    std::fs::write(distil.join("config.json"), r#"{"model_type":"distilbert"}"#).expect("write");
    std::fs::write(root.path().join("stray-file"), "x").expect("write");

    let listed = list_base_models(root.path());
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["distil", "empty", "tiny"]);
    assert!(matches!(
        listed[0].1,
        Err(TrainError::UnsupportedArchitecture { .. })
    ));
    assert!(matches!(listed[1].1, Err(TrainError::Io { .. })));
    assert!(listed[2].1.is_ok());
    assert!(list_base_models(&root.path().join("nope")).is_empty());
}

#[test]
fn missing_tokenizer_is_reported() {
    let _lock = torch_lock();
    let dir = tiny_base_model(3, Naming::Plain);
    std::fs::remove_file(dir.path().join("tokenizer.json")).expect("rm");
    let err = inspect_base_model(dir.path()).expect_err("no tokenizer");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn real_minilm_header() {
    let dir = crate::parity::minilm_dir();
    let info = inspect_base_model(&dir).expect("inspect all-MiniLM-L6-v2");
    // 22,713,216: the figure transformers' `num_parameters()` gives with the pooler.
    assert_eq!(info.parameters, 22_713_216);
    assert_eq!(
        (info.hidden_size, info.num_layers, info.num_heads),
        (384, 6, 12)
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
