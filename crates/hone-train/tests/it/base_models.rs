//! Describing base model directories without loading them.

use std::path::Path;

use hone_train::base_model::{inspect_base_model, list_base_models, BaseModelInput, Modality};
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
    assert_eq!(info.modality, Modality::Text);
    assert_eq!((info.hidden_size, info.num_layers), (32, 2));
    assert_eq!(
        info.input,
        BaseModelInput::Text {
            num_heads: 2,
            max_position_embeddings: 64,
            vocab_size: 100
        }
    );
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
    let reason = listed[0].1.as_ref().expect_err("distilbert").to_string();
    assert!(
        reason.contains("\"distilbert\"")
            && reason.contains("bert (text)")
            && reason.contains("efficientnet_lite (image)"),
        "{reason}"
    );
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
    assert_eq!((info.hidden_size, info.num_layers), (384, 6));
    assert!(matches!(
        info.input,
        BaseModelInput::Text { num_heads: 12, .. }
    ));
}

#[test]
fn real_efficientnet_lite0_header() {
    let dir = crate::efficientnet::lite0_dir();
    let info = inspect_base_model(&dir).expect("inspect efficientnet-lite0");
    assert_eq!(info.architecture, "efficientnet_lite");
    assert_eq!(info.modality, Modality::Image);
    // The reference's `sum(p.numel() for p in model.parameters())`: BatchNorm's running
    // statistics and `num_batches_tracked` are buffers.
    assert_eq!(info.parameters, 4_652_008);
    // 16 MBConv blocks and the head convolution; features of 1280 channels.
    assert_eq!((info.hidden_size, info.num_layers), (1280, 17));
    assert_eq!(info.input, BaseModelInput::Image { image_size: 224 });
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}
