//! What a published model says to the people who take it away: the `README.md` and
//! `preprocessing.json` that `GET /v1/models/{model}/content` adds to the archive of its
//! directory. The README's Python snippet is exact, not an outline: run on the archive's
//! files it gives the probabilities that [`crate::predict::Classifier`] gives (the
//! export test in `tests/e2e/` runs it and compares, within 1e-4). Text models load with
//! `transformers` (`AutoModel`, `AutoTokenizer`) plus the pooling and head spelled out;
//! `transformers` has no EfficientNet-Lite, so image models get the backbone in plain
//! PyTorch, reading the same safetensors file by name.
//!
//! The snippets live in `export/text.md` and `export/image.md` with `{{name}}`
//! placeholders, filled here from `hone_model.json`, `manifest.json` and `config.json`.

use std::path::Path;

use hone_domain::dataset::{Modality, TaskType};
use serde_json::json;

use crate::classifier::{HeadType, Pooling};
use crate::efficientnet::EfficientNetConfig;
use crate::error::TrainError;
use crate::model_dir::{Manifest, ModelMeta, CONFIG_FILE, TOKENIZER_FILE};
use crate::objective::UNTUNED_THRESHOLD;
use crate::vision_data::Preprocess;

/// The README the archive carries at the top of its folder.
pub const README_FILE: &str = "README.md";
/// How an input becomes the network's, as data.
pub const PREPROCESSING_FILE: &str = "preprocessing.json";

const TEXT_README: &str = include_str!("export/text.md");
const IMAGE_README: &str = include_str!("export/image.md");

/// The files an exported model carries besides its directory's own.
#[derive(Debug, Clone, PartialEq)]
pub struct Guide {
    pub readme: String,
    pub preprocessing: Vec<u8>,
}

/// The README and preprocessing of the published model `model_id` in `dir`, to be
/// unpacked into a folder named `folder`.
pub fn guide(dir: &Path, model_id: &str, folder: &str) -> Result<Guide, TrainError> {
    let meta = ModelMeta::read(dir)?;
    // Lineage is for people; a model without a readable manifest still exports.
    let manifest = Manifest::read(dir).ok();
    let mut fills = vec![
        ("model", model_id.to_owned()),
        ("folder", folder.to_owned()),
        (
            "base_model",
            manifest
                .as_ref()
                .map_or_else(|| meta.architecture.clone(), |m| m.base_model.clone()),
        ),
        (
            "job",
            manifest
                .as_ref()
                .map_or_else(String::new, |m| format!(" (job `{}`)", m.job_id)),
        ),
        ("head_names", head_names(&meta).to_owned()),
        ("task_words", task_words(&meta).to_owned()),
        ("answer_body", answer_body(&meta).to_owned()),
        ("answer_words", answer_words(&meta)),
    ];
    let (template, preprocessing) = match meta.modality {
        Modality::Text => {
            fills.extend(text_fills(&meta));
            (TEXT_README, text_preprocessing(&meta))
        }
        Modality::Image => {
            let config = EfficientNetConfig::from_file(&dir.join(CONFIG_FILE))?;
            let strides: Vec<usize> = config.blocks().iter().map(|b| b.stride).collect();
            fills.push(("strides", format!("{strides:?}")));
            (IMAGE_README, image_preprocessing(&config))
        }
    };
    let preprocessing = serde_json::to_vec_pretty(&preprocessing)
        .map_err(|e| TrainError::InvalidInput(format!("preprocessing.json: {e}")))?;
    Ok(Guide {
        readme: fill(template, &fills),
        preprocessing,
    })
}

/// `template` with every `{{name}}` of `fills` replaced by its value.
fn fill(template: &str, fills: &[(&str, String)]) -> String {
    fills
        .iter()
        .fold(template.to_owned(), |text, (name, value)| {
            text.replace(&format!("{{{{{name}}}}}"), value)
        })
}

fn text_fills(meta: &ModelMeta) -> Vec<(&'static str, String)> {
    let (pooling_words, pooling_body) = match meta.pooling {
        Pooling::Mean => (
            "mean pooling over the text's tokens",
            "    mask = batch[\"attention_mask\"].unsqueeze(-1).to(hidden.dtype)\n    \
             pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # mean pooling",
        ),
        Pooling::Cls => (
            "the first token's state",
            "    pooled = hidden[:, 0]  # the first token's state ([CLS])",
        ),
    };
    let (head_words, head_body) = match meta.head {
        HeadType::Linear => ("linear", "    return linear(pooled, name)"),
        HeadType::Mlp => (
            "small MLP (`dense`, tanh, `out_proj`)",
            "    return linear(torch.tanh(linear(pooled, f\"{name}.dense\")), f\"{name}.out_proj\")",
        ),
    };
    let (inputs, example) = if meta.text_pairs {
        (
            "texts, text_pairs",
            "[\"A man is playing a guitar.\"], [\"Someone plays an instrument.\"]",
        )
    } else {
        ("texts", "[\"A gripping, beautifully acted film.\"]")
    };
    vec![
        ("architecture", meta.architecture.clone()),
        ("pooling_words", pooling_words.to_owned()),
        ("pooling_body", pooling_body.to_owned()),
        ("head_words", head_words.to_owned()),
        ("head_body", head_body.to_owned()),
        ("inputs", inputs.to_owned()),
        ("tokenizer_args", inputs.to_owned()),
        ("example", example.to_owned()),
    ]
}

fn head_names(meta: &ModelMeta) -> &'static str {
    match meta.task_type {
        TaskType::MultiTask => {
            " (`head.0.`, `head.1.`, …: one head per task, in the order of `hone_model.json`'s \
             `tasks`)"
        }
        _ => "",
    }
}

fn task_words(meta: &ModelMeta) -> &'static str {
    match meta.task_type {
        TaskType::Classification => "",
        TaskType::MultiLabel => ", and `threshold`, the probability at which a label is predicted",
        TaskType::MultiTask => " (here `tasks`: each task's `name` and `labels`, one head each)",
    }
}

fn answer_body(meta: &ModelMeta) -> &'static str {
    match meta.task_type {
        TaskType::Classification => {
            "    return [dict(zip(meta[\"labels\"], p.tolist())) for p in head(pooled, \"head\").softmax(-1)]"
        }
        TaskType::MultiLabel => {
            "    return [dict(zip(meta[\"labels\"], p.tolist())) for p in head(pooled, \"head\").sigmoid()]"
        }
        TaskType::MultiTask => {
            "    answers = [{} for _ in pooled]\n    \
             for i, task in enumerate(meta[\"tasks\"]):\n        \
             for answer, p in zip(answers, head(pooled, f\"head.{i}\").softmax(-1)):\n            \
             answer[task[\"name\"]] = dict(zip(task[\"labels\"], p.tolist()))\n    \
             return answers"
        }
    }
}

fn answer_words(meta: &ModelMeta) -> String {
    match meta.task_type {
        TaskType::Classification => ": label → probability, a softmax (they sum to 1); the \
            predicted label is the most probable"
            .to_owned(),
        TaskType::MultiLabel => format!(
            ": label → probability, each label's own sigmoid; a label is predicted when its \
             probability is at least `threshold` ({})",
            meta.threshold.unwrap_or(UNTUNED_THRESHOLD)
        ),
        TaskType::MultiTask => ": task → (label → probability), a softmax per task, as the \
            `tasks` of hone's answer"
            .to_owned(),
    }
}

fn text_preprocessing(meta: &ModelMeta) -> serde_json::Value {
    json!({
        "modality": "text",
        "tokenizer": TOKENIZER_FILE,
        "text_pairs": meta.text_pairs,
        "max_length": meta.max_seq_len,
        "truncation": "longest_first",
        "padding": "each batch to its longest input, masked out by attention_mask",
    })
}

fn image_preprocessing(config: &EfficientNetConfig) -> serde_json::Value {
    let p = Preprocess::from_config(config);
    json!({
        "modality": "image",
        "color": "RGB: gray is repeated over the channels, alpha is dropped",
        "resize_shorter_side": p.resize_size,
        "longer_side": "resize_shorter_side * longer // shorter (integer division)",
        "resample": "bilinear, antialiased: Pillow's filter (Image.Resampling.BILINEAR, as \
            torchvision's Resize on a PIL image) in fast_image_resize's fixed point, the \
            vertical pass first; resize() in README.md is exact",
        "center_crop": p.image_size,
        "crop_offset": "round((side - center_crop) / 2), halves to even",
        "scale": "1/255",
        "mean": config.mean,
        "std": config.std,
        "layout": "[3, center_crop, center_crop], channels first",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(modality: Modality, task_type: TaskType) -> ModelMeta {
        ModelMeta {
            format_version: crate::model_dir::MODEL_META_VERSION,
            modality,
            architecture: match modality {
                Modality::Text => "bert".into(),
                Modality::Image => crate::efficientnet::ARCHITECTURE.into(),
            },
            pooling: Pooling::Mean,
            head: HeadType::Linear,
            text_pairs: false,
            task_type,
            labels: match task_type {
                TaskType::MultiTask => Vec::new(),
                _ => vec!["neg".into(), "pos".into()],
            },
            tasks: match task_type {
                TaskType::MultiTask => ["tone", "topic"]
                    .map(|name| crate::objective::TaskSpec {
                        name: name.into(),
                        labels: vec!["a".into(), "b".into()],
                        weight: 1.0,
                    })
                    .to_vec(),
                _ => Vec::new(),
            },
            threshold: None,
            max_seq_len: match modality {
                Modality::Text => 64,
                Modality::Image => 0,
            },
            quantization: None,
        }
    }

    #[test]
    fn every_placeholder_is_filled() {
        for modality in [Modality::Text, Modality::Image] {
            for task_type in [
                TaskType::Classification,
                TaskType::MultiLabel,
                TaskType::MultiTask,
            ] {
                let dir = tempfile::tempdir().expect("tempdir");
                meta(modality, task_type).write(dir.path()).expect("meta");
                if modality == Modality::Image {
                    std::fs::write(
                        dir.path().join(CONFIG_FILE),
                        r#"{"model_type": "efficientnet_lite", "image_size": 224}"#,
                    )
                    .expect("config");
                }
                let guide = guide(dir.path(), "ft:m:x:1", "ft-m-x-1").expect("guide");
                assert!(!guide.readme.contains("{{"), "{}", guide.readme);
                assert!(guide.readme.contains("model_dir = \"ft-m-x-1\""));
                let prep: serde_json::Value =
                    serde_json::from_slice(&guide.preprocessing).expect("json");
                assert_eq!(prep["modality"], modality.as_str());
                if modality == Modality::Image {
                    assert_eq!(prep["resize_shorter_side"], 256);
                    assert_eq!(prep["center_crop"], 224);
                    assert!(guide
                        .readme
                        .contains("strides = [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1]"));
                }
            }
        }
    }
}
