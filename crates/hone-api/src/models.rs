//! `/v1/models`: published fine-tuned models, and predictions with them.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use std::collections::BTreeMap;

use hone_domain::resources::ModelObject;
use hone_domain::Page;
use hone_serving::{ClassPrediction, Prediction};
use hone_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::ApiJson;
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
    /// Texts to classify; for a model trained on text pairs, pairs as
    /// `{"text": …, "text_pair": …}` (every input, in the same request).
    #[schema(example = json!(["A gripping, beautifully acted film.", "Two hours I will never get back."]), min_items = 1)]
    pub inputs: Vec<PredictInput>,
}

/// One input: a text, or a text pair.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum PredictInput {
    Text(String),
    Pair(TextPair),
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

/// List fine-tuned models, newest first.
#[utoipa::path(get, path = "/v1/models", tag = "models", params(ListParams),
    responses((status = 200, description = "A page of models", body = inline(Page<ModelObject>)),
        (status = 400, description = "Invalid query", body = ErrorResponse)))]
async fn list_models(
    State(state): State<AppState>,
    project: Project,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<ModelObject>>, ApiError> {
    let page = query?.0.page()?;
    let rows = state.db.list_models(&project.id, &page).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |m| m.id.clone())))
}

/// Get a fine-tuned model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "models",
    params(("model" = String, Path, description = "The model's id, `ft:...`")),
    responses(
        (status = 200, description = "The model", body = ModelObject),
        (status = 404, description = "No such model", body = ErrorResponse)))]
async fn get_model(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
) -> Result<Json<ModelObject>, ApiError> {
    Ok(Json(
        state
            .db
            .get_model(&project.id, &id)
            .await
            .map_err(not_found_as(&id))?
            .object,
    ))
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

/// Classify texts with a fine-tuned model.
///
/// Returns, for each input, the most probable label, its probability and every
/// label's probability. The model is loaded on first use and kept in memory.
#[utoipa::path(post, path = "/v1/models/{model}/predict", tag = "models",
    params(("model" = String, Path, description = "The model's id, `ft:...`")),
    request_body = PredictRequest,
    responses(
        (status = 200, description = "One prediction per input", body = PredictResponse),
        (status = 400, description = "Invalid inputs", body = ErrorResponse),
        (status = 404, description = "No such model", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 429, description = "Too many predictions in flight; retry after `Retry-After` seconds", body = ErrorResponse)))]
async fn predict(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    let settings = &state.settings;
    if req.inputs.is_empty() {
        return Err(ApiError::invalid(
            "inputs",
            "empty",
            "send at least one input",
        ));
    }
    if req.inputs.len() > settings.max_predict_inputs {
        return Err(ApiError::invalid(
            "inputs",
            "too_many_inputs",
            format!("at most {} inputs per request", settings.max_predict_inputs),
        ));
    }
    let is_pair = |input: &PredictInput| matches!(input, PredictInput::Pair(_));
    let pairs = is_pair(&req.inputs[0]);
    if let Some(i) = req.inputs.iter().position(|input| is_pair(input) != pairs) {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            "mixed_inputs",
            "inputs must be all texts or all text pairs",
        ));
    }
    let too_long = |input: &PredictInput| match input {
        PredictInput::Text(t) => t.chars().count() > settings.max_predict_chars,
        PredictInput::Pair(p) => {
            p.text.chars().count() + p.text_pair.chars().count() > settings.max_predict_chars
        }
    };
    if let Some(i) = req.inputs.iter().position(too_long) {
        return Err(ApiError::invalid(
            format!("inputs[{i}]"),
            "input_too_long",
            format!(
                "inputs are at most {} characters",
                settings.max_predict_chars
            ),
        ));
    }
    let model = state
        .db
        .get_model(&project.id, &id)
        .await
        .map_err(not_found_as(&id))?;
    let dir = state.artifacts.local_dir(&model.storage_key).await?;
    let (texts, text_pairs) = if pairs {
        req.inputs
            .into_iter()
            .filter_map(|input| match input {
                PredictInput::Pair(p) => Some((p.text, p.text_pair)),
                PredictInput::Text(_) => None,
            })
            .unzip()
    } else {
        let texts = req
            .inputs
            .into_iter()
            .filter_map(|input| match input {
                PredictInput::Text(t) => Some(t),
                PredictInput::Pair(_) => None,
            })
            .collect();
        (texts, Vec::new())
    };
    let predictions = state
        .predictor
        .predict(&id, dir, texts, pairs.then_some(text_pairs))
        .await?;
    Ok(Json(PredictResponse {
        model: id,
        predictions: predictions.into_iter().map(PredictionOut::from).collect(),
    }))
}
