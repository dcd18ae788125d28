//! The catalogue of base models: what a base-model directory holds, read cheaply
//! enough to answer `GET /v1/base-models` on every call — config.json and the
//! safetensors header only, never the weights.
//!
//! A directory's config.json names its architecture in `model_type`: a Hugging Face
//! BERT-family encoder (text) as it comes from the hub, or an image backbone that
//! `scripts/setup` converted (safetensors + a config.json of ours). Adding a backbone
//! is a module that builds it, a row in [`ARCHITECTURES`] and an arm in
//! [`inspect_base_model`].

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::bert::BertConfig;
use crate::efficientnet::{self, EfficientNetConfig};
use crate::error::TrainError;
use crate::model_dir::{CONFIG_FILE, TOKENIZER_FILE, WEIGHTS_FILE};

/// What a base model reads: the modality files have, so the two compare directly.
pub use hone_domain::dataset::Modality;

/// Every architecture hone builds, by config.json's `model_type`.
pub const ARCHITECTURES: &[(&str, Modality)] = &[
    ("bert", Modality::Text),
    (efficientnet::ARCHITECTURE, Modality::Image),
];

/// A base model directory as the API describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BaseModelInfo {
    /// config.json's `model_type`, e.g. `"bert"` or `"efficientnet_lite"`.
    pub architecture: String,
    pub modality: Modality,
    /// Width of the pooled features a head is trained on.
    pub hidden_size: usize,
    /// The layers the `partial` strategy can freeze: encoder layers (text), or MBConv
    /// blocks plus the head convolution (image).
    pub num_layers: usize,
    /// Trainable floating-point values in the checkpoint: integer buffers such as
    /// `position_ids` and BatchNorm's running statistics are not parameters; a BERT
    /// pooler and an ImageNet classifier are counted when the checkpoint has them.
    pub parameters: u64,
    pub input: BaseModelInput,
}

/// What the model's inputs look like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseModelInput {
    Text {
        num_heads: usize,
        max_position_embeddings: usize,
        vocab_size: usize,
    },
    /// Square RGB images of this side.
    Image { image_size: usize },
}

/// config.json's `model_type` (`"bert"` when absent, as transformers reads it) and its
/// modality; an architecture hone does not build is an
/// [`TrainError::UnsupportedArchitecture`] that lists the ones it does.
pub fn architecture_of(dir: &Path) -> Result<(String, Modality), TrainError> {
    let path = dir.join(CONFIG_FILE);
    let bytes = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let raw: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| TrainError::config(&path, format!("not valid JSON: {e}")))?;
    let model_type = raw
        .get("model_type")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("bert")
        .to_owned();
    match ARCHITECTURES.iter().find(|(name, _)| *name == model_type) {
        Some((_, modality)) => Ok((model_type, *modality)),
        None => {
            let known: Vec<String> = ARCHITECTURES
                .iter()
                .map(|(name, modality)| format!("{name} ({})", modality.as_str()))
                .collect();
            Err(TrainError::UnsupportedArchitecture {
                message: format!(
                    "{} declares model_type {model_type:?}; hone implements {}",
                    path.display(),
                    known.join(", ")
                ),
                architecture: model_type,
            })
        }
    }
}

/// Reads `dir`'s config.json, checks that the architecture is one hone implements and
/// that the files it needs are there (weights; the tokenizer of a text model), and
/// counts the parameters from the safetensors header.
pub fn inspect_base_model(dir: &Path) -> Result<BaseModelInfo, TrainError> {
    let (architecture, _) = architecture_of(dir)?;
    if architecture == efficientnet::ARCHITECTURE {
        inspect_efficientnet(dir)
    } else {
        inspect_text(dir)
    }
}

fn inspect_text(dir: &Path) -> Result<BaseModelInfo, TrainError> {
    let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
    let tokenizer = dir.join(TOKENIZER_FILE);
    if !tokenizer.is_file() {
        return Err(TrainError::io(
            &tokenizer,
            std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
        ));
    }
    let parameters = count_parameters(&dir.join(WEIGHTS_FILE))?;
    Ok(BaseModelInfo {
        architecture: config.model_type,
        modality: Modality::Text,
        hidden_size: config.hidden_size,
        num_layers: config.num_hidden_layers,
        parameters,
        input: BaseModelInput::Text {
            num_heads: config.num_attention_heads,
            max_position_embeddings: config.max_position_embeddings,
            vocab_size: config.vocab_size,
        },
    })
}

fn inspect_efficientnet(dir: &Path) -> Result<BaseModelInfo, TrainError> {
    let config = EfficientNetConfig::from_file(&dir.join(CONFIG_FILE))?;
    let parameters = count_parameters(&dir.join(WEIGHTS_FILE))?;
    Ok(BaseModelInfo {
        architecture: config.model_type.clone(),
        modality: Modality::Image,
        hidden_size: config.head_channels(),
        num_layers: config.blocks().len() + 1,
        parameters,
        input: BaseModelInput::Image {
            image_size: config.image_size,
        },
    })
}

/// Every subdirectory of `root` (hidden ones skipped) with its description or the
/// reason it cannot be used, sorted by name; the name is the base model's id. An
/// unreadable `root` lists nothing.
pub fn list_base_models(root: &Path) -> Vec<(String, Result<BaseModelInfo, TrainError>)> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(root = %root.display(), error = %e, "cannot list base models");
            return Vec::new();
        }
    };
    let mut models: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|name| !name.starts_with('.'))
        .map(|name| {
            let info = inspect_base_model(&root.join(&name));
            (name, info)
        })
        .collect();
    models.sort_by(|a, b| a.0.cmp(&b.0));
    models
}

/// The largest header accepted; real ones are tens of kilobytes.
const MAX_HEADER_BYTES: u64 = 100 << 20;

/// Sums the element counts of the floating-point tensors listed in a safetensors
/// header (8-byte little-endian length, then that many bytes of JSON), BatchNorm's
/// running statistics left out: they are buffers, not parameters.
pub fn count_parameters(path: &Path) -> Result<u64, TrainError> {
    let bad = |message: String| TrainError::config(path, message);
    let mut file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|e| TrainError::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > MAX_HEADER_BYTES {
        return Err(bad(format!("safetensors header of {len} bytes")));
    }
    let mut header = Vec::with_capacity(len as usize);
    file.take(len)
        .read_to_end(&mut header)
        .map_err(|e| TrainError::io(path, e))?;
    if header.len() as u64 != len {
        return Err(bad("truncated safetensors header".into()));
    }
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("malformed safetensors header: {e}")))?;
    let mut total = 0u64;
    for (name, entry) in &header {
        if name == "__metadata__"
            || name.ends_with(".running_mean")
            || name.ends_with(".running_var")
        {
            continue;
        }
        let dtype = entry.get("dtype").and_then(serde_json::Value::as_str);
        let shape = entry.get("shape").and_then(serde_json::Value::as_array);
        let (Some(dtype), Some(shape)) = (dtype, shape) else {
            return Err(bad(format!("tensor {name} has no dtype or shape")));
        };
        if !matches!(
            dtype,
            "F16" | "BF16" | "F32" | "F64" | "F8_E4M3" | "F8_E5M2"
        ) {
            continue;
        }
        let numel = shape
            .iter()
            .try_fold(1u64, |acc, d| d.as_u64().and_then(|d| acc.checked_mul(d)));
        total += numel.ok_or_else(|| bad(format!("tensor {name} has a malformed shape")))?;
    }
    Ok(total)
}
