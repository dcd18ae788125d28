//! `/v1/base-models`: the Hugging Face model directories in the base-models folder.
//! The folder is read on every request, so a directory a user drops in appears
//! without a restart.

use axum::extract::{Path, State};
use axum::Json;
use hone_domain::resources::BaseModelObject;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_base_models))
        .routes(routes!(get_base_model))
}

#[derive(Serialize, ToSchema)]
struct BaseModelList {
    #[schema(example = "list")]
    object: &'static str,
    data: Vec<BaseModelObject>,
    has_more: bool,
}

/// List the base models this server can fine-tune.
#[utoipa::path(get, path = "/v1/base-models", tag = "base-models",
    responses((status = 200, description = "Every usable base model", body = BaseModelList)))]
// Base models are the server's, but listing them is for key holders like the rest.
async fn list_base_models(State(state): State<AppState>, _: Project) -> Json<BaseModelList> {
    let dir = state.settings.models_dir.clone();
    let data = tokio::task::spawn_blocking(move || hone_serving::catalog::list_base_models(&dir))
        .await
        .unwrap_or_default();
    Json(BaseModelList {
        object: "list",
        data,
        has_more: false,
    })
}

/// Get one base model.
#[utoipa::path(get, path = "/v1/base-models/{model}", tag = "base-models",
    params(("model" = String, Path, description = "The base model's id")),
    responses(
        (status = 200, description = "The base model", body = BaseModelObject),
        (status = 404, description = "No such base model", body = ErrorResponse)))]
async fn get_base_model(
    State(state): State<AppState>,
    _: Project,
    Path(id): Path<String>,
) -> Result<Json<BaseModelObject>, ApiError> {
    hone_serving::catalog::find_base_model(&state.settings.models_dir, &id)
        .map(Json)
        .ok_or_else(|| ApiError::not_found("base model", &id))
}
