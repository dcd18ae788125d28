//! The base models this server can start from: every directory in the base-models
//! folder whose architecture hone implements (Hugging Face text encoders, converted
//! image backbones). A folder that cannot be used is left out of the list and logged,
//! so one bad folder does not hide the others.

use std::path::Path;

use hone_domain::resources::BaseModelObject;
use hone_train::base_model::{
    inspect_base_model, list_base_models as scan, BaseModelInfo, BaseModelInput,
};

fn object(id: String, info: BaseModelInfo) -> BaseModelObject {
    let (max_seq_len, image_size) = match info.input {
        BaseModelInput::Text {
            max_position_embeddings,
            ..
        } => (Some(max_position_embeddings as u64), None),
        BaseModelInput::Image { image_size } => (None, Some(image_size as u64)),
    };
    BaseModelObject {
        source: format!("local directory {id}"),
        id,
        object: "base_model",
        modality: info.modality.as_str(),
        architecture: info.architecture,
        parameters: info.parameters,
        hidden_size: info.hidden_size as u64,
        layers: info.num_layers as u64,
        max_seq_len,
        image_size,
    }
}

pub fn list_base_models(dir: &Path) -> Vec<BaseModelObject> {
    let mut models: Vec<BaseModelObject> = scan(dir)
        .into_iter()
        .filter_map(|(id, info)| match info {
            Ok(info) => Some(object(id, info)),
            Err(e) => {
                tracing::warn!(model = %id, error = %e, "skipping unusable base model directory");
                None
            }
        })
        .collect();
    models.sort_by(|a, b| a.id.cmp(&b.id));
    models
}

/// Looks one model up by id; ids are folder names, so anything that could name
/// another folder is refused.
pub fn find_base_model(dir: &Path, id: &str) -> Option<BaseModelObject> {
    let safe = !id.is_empty()
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !safe {
        return None;
    }
    let info = inspect_base_model(&dir.join(id)).ok()?;
    Some(object(id.to_owned(), info))
}
