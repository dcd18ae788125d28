//! `/v1/models`: published fine-tuned models, and predictions with them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::http::header;
use axum::Json;
use std::collections::BTreeMap;

use hone_domain::dataset::images::{base64_bytes, check_image_header, Refusal};
use hone_domain::resources::{AnyModel, BaseModelObject, SystemModelObject};
use hone_domain::Page;
use hone_serving::{ClassPrediction, PredictInputs, Prediction};
use hone_store::StoreError;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::json_body;
use crate::layers::nul_in;
use crate::params::ListParams;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model, delete_model))
        .routes(routes!(predict))
}

#[derive(Serialize, ToSchema)]
struct DeletedModel {
    id: String,
    #[schema(example = "model")]
    object: &'static str,
    deleted: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PredictRequest {
    /// Texts to classify, each a string or `{"text": …}` (a training file's row
    /// without its label); for a model trained on text pairs, pairs as
    /// `{"text": …, "text_pair": …}` (every input, in the same request).
    #[schema(example = json!(["A gripping, beautifully acted film.", "Two hours I will never get back."]), min_items = 1)]
    pub inputs: Vec<PredictInput>,
}

/// One input: a text (a string, or an object with `text` alone), a text pair, or an
/// image.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictInput {
    Text(String),
    Pair(TextPair),
    TextObject(TextInput),
    Image(ImageInput),
}

/// A text as the rows of a training file hold it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextInput {
    #[schema(example = "A gripping, beautifully acted film.")]
    pub text: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageInput {
    /// A PNG or JPEG image, base64 (standard alphabet; padding optional; a
    /// `data:image/…;base64,` prefix is accepted).
    #[schema(
        example = "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAAAAADhZOFXAAAAMElEQVR42mNgUHBIaFhw4AGDgEFAwYQNFz7ABRigAgIMUAEFBqiAAQNUwIEBKhAAACeEHgGXwHUAAAAAAElFTkSuQmCC"
    )]
    pub image: String,
}

/// The multipart form of a predict request with image files (documentation only: the
/// handler reads it).
#[allow(dead_code)]
#[derive(ToSchema)]
struct PredictForm {
    /// One or more PNG or JPEG files; repeat the field for several images. Answers
    /// come in the order of the fields.
    #[schema(value_type = Vec<String>, format = Binary)]
    image: Vec<Vec<u8>>,
}

/// A predict request: JSON, or a multipart form of image files.
pub enum PredictBody {
    Json(PredictRequest),
    Images(Vec<Vec<u8>>),
}

impl FromRequest<AppState> for PredictBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let multipart = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        if !multipart {
            let bytes = json_body(req, state).await?;
            let inputs = bounded_inputs(&bytes, state.settings.max_predict_inputs)?;
            return Ok(PredictBody::Json(PredictRequest { inputs }));
        }
        let mut form = Multipart::from_request(req, state)
            .await
            .map_err(|e| ApiError::new(e.status(), "invalid_multipart", e.body_text()))?;
        let max = state.settings.max_predict_inputs;
        let mut images = Vec::new();
        while let Some(field) = form.next_field().await? {
            if field.name() != Some("image") {
                return Err(ApiError::invalid(
                    field.name().unwrap_or("form").to_owned(),
                    "unknown_field",
                    "the form takes `image` files only; repeat the field for several images",
                ));
            }
            if images.len() == max {
                return Err(too_many_inputs(max));
            }
            images.push(field.bytes().await?.to_vec());
        }
        Ok(PredictBody::Images(images))
    }
}

/// The `inputs` of a JSON predict body, reading at most `max` of them: a body of many
/// tiny inputs is refused at input `max + 1`, not held in memory whole (each input
/// takes far more room parsed than its few bytes of JSON).
fn bounded_inputs(bytes: &[u8], max: usize) -> Result<Vec<PredictInput>, ApiError> {
    let over = Cell::new(false);
    let mut track = serde_path_to_error::Track::new();
    let mut json = serde_json::Deserializer::from_slice(bytes);
    let read = BoundedRequest { max, over: &over }
        .deserialize(serde_path_to_error::Deserializer::new(
            &mut json, &mut track,
        ))
        .and_then(|inputs| json.end().map(|()| inputs));
    let inputs = match read {
        Ok(inputs) => inputs,
        Err(_) if over.get() => return Err(too_many_inputs(max)),
        Err(e) => {
            let path = track.path().to_string();
            let mut error = ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_json",
                format!(
                    "invalid JSON body: {}",
                    crate::extract::user_words(&e.to_string())
                ),
            );
            if path != "." && !path.contains('?') {
                error = error.with_param(path);
            }
            return Err(error);
        }
    };
    let holds_nul = |input: &PredictInput| match input {
        PredictInput::Text(t) | PredictInput::TextObject(TextInput { text: t }) => t.contains('\0'),
        PredictInput::Pair(p) => p.text.contains('\0') || p.text_pair.contains('\0'),
        PredictInput::Image(i) => i.image.contains('\0'),
    };
    if let Some(i) = inputs.iter().position(holds_nul) {
        return Err(nul_in(&format!("inputs[{i}]")));
    }
    Ok(inputs)
}

/// `{"inputs": [...]}` with at most `max` inputs; `over` says when there were more.
#[derive(Clone, Copy)]
struct BoundedRequest<'a> {
    max: usize,
    over: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedRequest<'_> {
    type Value = Vec<PredictInput>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for BoundedRequest<'_> {
    type Value = Vec<PredictInput>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with `inputs`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut inputs = None;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match key.as_ref() {
                "inputs" if inputs.is_some() => return Err(de::Error::duplicate_field("inputs")),
                "inputs" => inputs = Some(map.next_value_seed(BoundedInputs(self))?),
                other => return Err(de::Error::unknown_field(other, &["inputs"])),
            }
        }
        inputs.ok_or_else(|| de::Error::missing_field("inputs"))
    }
}

struct BoundedInputs<'a>(BoundedRequest<'a>);

impl<'de> DeserializeSeed<'de> for BoundedInputs<'_> {
    type Value = Vec<PredictInput>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for BoundedInputs<'_> {
    type Value = Vec<PredictInput>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of inputs")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut inputs = Vec::new();
        while let Some(input) = seq.next_element::<PredictInput>()? {
            if inputs.len() == self.0.max {
                self.0.over.set(true);
                return Err(de::Error::custom("too many inputs"));
            }
            inputs.push(input);
        }
        Ok(inputs)
    }
}

fn too_many_inputs(max: usize) -> ApiError {
    ApiError::invalid(
        "inputs",
        "too_many_inputs",
        format!("at most {max} inputs per request"),
    )
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TextPair {
    #[schema(example = "A man is playing a guitar.")]
    pub text: String,
    #[schema(example = "Someone plays an instrument.")]
    pub text_pair: String,
}

/// What the model says about one input; its shape follows the model's `task_type`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum PredictionOut {
    /// Single-label classification.
    Class(ClassOut),
    /// Multi-label classification.
    MultiLabel(MultiLabelOut),
    /// Multi-task: one answer per task.
    MultiTask(MultiTaskOut),
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassOut {
    /// The most probable label.
    #[schema(example = "fresh")]
    pub label: String,
    /// Its probability.
    #[schema(example = 0.93)]
    pub score: f32,
    /// Every label's probability (they sum to 1).
    #[schema(example = json!({"fresh": 0.93, "rotten": 0.07}))]
    pub scores: BTreeMap<String, f32>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MultiLabelOut {
    /// The labels whose probability is at least `threshold`; possibly none.
    #[schema(example = json!(["comedy", "romance"]))]
    pub labels: Vec<String>,
    /// Every label's own probability (independent sigmoids: they need not sum to 1).
    #[schema(example = json!({"comedy": 0.81, "horror": 0.04, "romance": 0.66}))]
    pub scores: BTreeMap<String, f32>,
    /// The decision threshold, tuned on the job's validation data.
    #[schema(example = 0.35)]
    pub threshold: f32,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MultiTaskOut {
    /// Every task's answer.
    #[schema(example = json!({"sentiment": {"label": "fresh", "score": 0.93, "scores": {"fresh": 0.93, "rotten": 0.07}}}))]
    pub tasks: BTreeMap<String, ClassOut>,
}

fn class_out(p: ClassPrediction) -> ClassOut {
    ClassOut {
        label: p.label,
        score: p.score,
        scores: p.scores.into_iter().collect(),
    }
}

impl From<Prediction> for PredictionOut {
    fn from(p: Prediction) -> Self {
        match p {
            Prediction::Class(c) => PredictionOut::Class(class_out(c)),
            Prediction::MultiLabel {
                labels,
                scores,
                threshold,
            } => PredictionOut::MultiLabel(MultiLabelOut {
                labels,
                scores: scores.into_iter().collect(),
                threshold,
            }),
            Prediction::MultiTask(tasks) => PredictionOut::MultiTask(MultiTaskOut {
                tasks: tasks
                    .into_iter()
                    .map(|(task, c)| (task, class_out(c)))
                    .collect(),
            }),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PredictResponse {
    #[schema(example = "ft:all-MiniLM-L6-v2:reviews:9d0e1f2a")]
    pub model: String,
    /// One prediction per input, in input order.
    pub predictions: Vec<PredictionOut>,
}

fn not_found_as(raw: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found("model", raw),
        other => other.into(),
    }
}

/// A base model as a model list shows it (OpenAI's `owned_by: "system"`); `created` is
/// when its folder was installed.
fn system_model(models_dir: &std::path::Path, base: BaseModelObject) -> SystemModelObject {
    let created = std::fs::metadata(models_dir.join(&base.id))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    SystemModelObject {
        id: base.id,
        object: "model",
        created,
        owned_by: "system",
        modality: base.modality,
        architecture: base.architecture,
    }
}

/// The base models after the cursor `after` (all of them when it is none or names a
/// fine-tuned model), in id order.
async fn system_models(state: &AppState, after: Option<&str>) -> Vec<AnyModel> {
    let dir = state.settings.models_dir.clone();
    let after = after.filter(|a| !a.starts_with("ft:")).map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        hone_serving::catalog::list_base_models(&dir)
            .into_iter()
            .filter(|b| after.as_ref().is_none_or(|a| b.id.as_str() > a.as_str()))
            .map(|b| AnyModel::Base(system_model(&dir, b)))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// List models: the project's fine-tuned models, newest first, then the base models
/// this server fine-tunes (`owned_by: "system"`, by id), as OpenAI lists its own
/// models beside yours. `after` may name either kind.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ListParams),
    responses((status = 200, description = "A page of models", body = inline(Page<AnyModel>)),
        (status = 400, description = "Invalid query", body = ErrorResponse)))]
async fn list_models(
    State(state): State<AppState>,
    project: Project,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<AnyModel>>, ApiError> {
    let page = query?.0.page()?;
    let after_base = page.after.as_deref().is_some_and(|a| !a.starts_with("ft:"));
    let mut rows: Vec<AnyModel> = if after_base {
        Vec::new()
    } else {
        let fine_tuned = state.db.list_models(&project.id, &page).await?;
        fine_tuned
            .into_iter()
            .map(|m| AnyModel::FineTuned(Box::new(m)))
            .collect()
    };
    // A page that the fine-tuned models do not fill goes on with the base models.
    if rows.len() as i64 <= page.limit {
        rows.extend(system_models(&state, page.after.as_deref()).await);
    }
    Ok(Json(Page::from_rows(rows, page.limit, |m| {
        m.id().to_owned()
    })))
}

/// Get a model: a fine-tuned one (`ft:…`) or a base model (`owned_by: "system"`).
#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "The model's id: `ft:...`, or a base model's")),
    responses(
        (status = 200, description = "The model", body = AnyModel),
        (status = 404, description = "No such model", body = ErrorResponse)))]
async fn get_model(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
) -> Result<Json<AnyModel>, ApiError> {
    match state.db.get_model(&project.id, &id).await {
        Ok(model) => Ok(Json(AnyModel::FineTuned(Box::new(model.object)))),
        Err(StoreError::NotFound) if !id.starts_with("ft:") => {
            let dir = state.settings.models_dir.clone();
            let id_for_task = id.clone();
            let base = tokio::task::spawn_blocking(move || {
                hone_serving::catalog::find_base_model(&dir, &id_for_task)
                    .map(|b| system_model(&dir, b))
            })
            .await
            .map_err(|e| ApiError::internal("base model lookup", &e))?;
            base.map(|b| Json(AnyModel::Base(b)))
                .ok_or_else(|| ApiError::not_found("model", &id))
        }
        Err(e) => Err(not_found_as(&id)(e)),
    }
}

/// Delete a fine-tuned model and its files.
#[utoipa::path(delete, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "The model's id, `ft:...`")),
    responses(
        (status = 200, description = "Deleted", body = DeletedModel),
        (status = 404, description = "No such model", body = ErrorResponse)))]
async fn delete_model(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
) -> Result<Json<DeletedModel>, ApiError> {
    let model = state
        .db
        .delete_model(&project.id, &id)
        .await
        .map_err(not_found_as(&id))?;
    state.predictor.evict(&id);
    if let Err(e) = state.artifacts.delete(&model.storage_key).await {
        tracing::error!(error = %e, model = %id, "model row deleted but its files could not be removed");
    }
    Ok(Json(DeletedModel {
        id,
        object: "model",
        deleted: true,
    }))
}

/// Classify texts or images with a fine-tuned model.
///
/// Returns, for each input, the most probable label, its probability and every
/// label's probability. Send JSON (texts, text pairs, or base64 images), or a
/// multipart form with one `image` file per input. The model is loaded on first use
/// and kept in memory.
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "models",
    params(("model" = String, Path, description = "The model's id, `ft:...`")),
    request_body(content(
        (PredictRequest = "application/json"),
        (PredictForm = "multipart/form-data"))),
    responses(
        (status = 200, description = "One prediction per input", body = PredictResponse),
        (status = 400, description = "Invalid inputs; `param` names the input at fault", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 413, description = "The body is over the size limit", body = ErrorResponse),
        (status = 415, description = "The body is neither JSON nor a multipart form", body = ErrorResponse),
        (status = 429, description = "The inference queue stayed full for the queue timeout; retry after `Retry-After` seconds", body = ErrorResponse)))]
async fn predict(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
    body: PredictBody,
) -> Result<Json<PredictResponse>, ApiError> {
    // The request's shape first: counts, kinds and lengths, nothing decoded.
    let unchecked = match body {
        PredictBody::Json(req) => json_inputs(&state, req.inputs)?,
        PredictBody::Images(images) => {
            check_count(&state, images.len())?;
            Unchecked::Images(images.into_iter().map(RawImage::Bytes).collect())
        }
    };
    // Then the model: an unknown one is 404 before any input is decoded.
    let model = state
        .db
        .get_model(&project.id, &id)
        .await
        .map_err(not_found_as(&id))?;
    let dir = state.artifacts.local_dir(&model.storage_key).await?;
    // Then a place in the queue, so that a flood of image requests waits in line
    // rather than decoding them all at once.
    let admitted = state.predictor.admit(project.id.as_str()).await?;
    let inputs = match unchecked {
        Unchecked::Ready(inputs) => inputs,
        Unchecked::Images(raw) => PredictInputs::Images(checked_images(&state, raw).await?),
    };
    let predictions = state
        .predictor
        .predict_admitted(admitted, &id, dir.to_path_buf(), inputs)
        .await?;
    Ok(Json(PredictResponse {
        model: id,
        predictions: predictions.into_iter().map(PredictionOut::from).collect(),
    }))
}

fn check_count(state: &AppState, n: usize) -> Result<(), ApiError> {
    if n == 0 {
        return Err(ApiError::invalid(
            "inputs",
            "empty",
            "send at least one input",
        ));
    }
    let max = state.settings.max_predict_inputs;
    if n > max {
        return Err(too_many_inputs(max));
    }
    Ok(())
}

fn input_error(i: usize, (kind, message): Refusal) -> ApiError {
    ApiError::invalid(
        format!("inputs[{i}]"),
        kind.code(),
        format!("input {i}: {message}"),
    )
}

/// A request's inputs once their shape is checked: ready to predict, or images still
/// to decode and check.
enum Unchecked {
    Ready(PredictInputs),
    Images(Vec<RawImage>),
}

/// An image as the request sent it.
enum RawImage {
    Base64(String),
    Bytes(Vec<u8>),
}

/// Checks every image's bytes and header as uploads are checked (a PNG or JPEG by its
/// bytes, within the size bounds), off the async threads, within predict's limits (a
/// smaller pixel cap than uploads'). The pixels are decoded once, by the inference
/// thread, which names an input that does not decode.
async fn checked_images(state: &AppState, raw: Vec<RawImage>) -> Result<Vec<Vec<u8>>, ApiError> {
    let limits = state.settings.predict_image_limits.clone();
    tokio::task::spawn_blocking(move || {
        raw.into_iter()
            .enumerate()
            .map(|(i, image)| {
                match image {
                    RawImage::Base64(encoded) => base64_bytes(&encoded),
                    RawImage::Bytes(bytes) => Ok(bytes),
                }
                .and_then(|bytes| check_image_header(&bytes, &limits).map(|_| bytes))
                .map_err(|refusal| input_error(i, refusal))
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::internal("image checks", &e))?
}

/// The inputs of a JSON request, all of one kind, each within the limits; images are
/// left to decode.
fn json_inputs(state: &AppState, inputs: Vec<PredictInput>) -> Result<Unchecked, ApiError> {
    check_count(state, inputs.len())?;
    let kind = |input: &PredictInput| match input {
        PredictInput::Text(_) | PredictInput::TextObject(_) => 0,
        PredictInput::Pair(_) => 1,
        PredictInput::Image(_) => 2,
    };
    let first = kind(&inputs[0]);
    if let Some(i) = inputs.iter().position(|input| kind(input) != first) {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            "mixed_inputs",
            "inputs must be all texts, all text pairs or all images",
        ));
    }
    let max_chars = state.settings.max_predict_chars;
    let too_long = |input: &PredictInput| match input {
        PredictInput::Text(t) | PredictInput::TextObject(TextInput { text: t }) => {
            t.chars().count() > max_chars
        }
        PredictInput::Pair(p) => p.text.chars().count() + p.text_pair.chars().count() > max_chars,
        PredictInput::Image(_) => false,
    };
    if let Some(i) = inputs.iter().position(too_long) {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            "input_too_long",
            format!("inputs are at most {max_chars} characters"),
        ));
    }
    let mut texts = Vec::new();
    let mut pairs = Vec::new();
    let mut images = Vec::new();
    for input in inputs {
        match input {
            PredictInput::Text(t) | PredictInput::TextObject(TextInput { text: t }) => {
                texts.push(t)
            }
            PredictInput::Pair(p) => {
                texts.push(p.text);
                pairs.push(p.text_pair);
            }
            PredictInput::Image(image) => images.push(RawImage::Base64(image.image)),
        }
    }
    Ok(match first {
        0 => Unchecked::Ready(PredictInputs::Texts(texts)),
        1 => Unchecked::Ready(PredictInputs::Pairs { texts, pairs }),
        _ => Unchecked::Images(images),
    })
}
