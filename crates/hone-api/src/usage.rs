//! `/v1/usage`: what the key's project stores and runs, against its limits.

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_usage))
}

/// Stored bytes by kind; their total is what `max_stored_bytes` limits.
#[derive(Serialize, ToSchema)]
struct StoredBytes {
    /// Uploaded files and jobs' results files.
    #[schema(example = 1_048_576)]
    files: u64,
    /// The checkpoints jobs keep (`checkpoint_retention`).
    #[schema(example = 182_452_224)]
    checkpoints: u64,
    /// Published models: jobs' own and checkpoints published as models.
    #[schema(example = 91_226_112)]
    models: u64,
    /// The feature cache's entries for the project's files (frozen-encoder outputs,
    /// reused by later jobs and estimates), least recently used evicted past
    /// `feature_cache_max_bytes_per_project`.
    #[schema(example = 3_145_728)]
    features: u64,
    #[schema(example = 277_872_640)]
    total: u64,
}

#[derive(Serialize, ToSchema)]
struct UsageObject {
    #[schema(example = "usage")]
    object: &'static str,
    #[schema(example = "team-a")]
    project: String,
    stored_bytes: StoredBytes,
    /// The project's limit on stored bytes; past it uploads are refused (413).
    #[schema(example = 10_737_418_240_u64)]
    max_stored_bytes: i64,
    /// Jobs validating, queued or running.
    #[schema(example = 2)]
    active_jobs: u64,
    /// The project's limit on active jobs; past it new jobs are refused (429).
    #[schema(example = 16)]
    max_active_jobs: i64,
}

/// The key's project's usage: stored bytes by kind (files, checkpoints, models) and
/// active jobs, each with its limit.
#[utoipa::path(get, path = "/v1/usage", tag = "projects",
    responses(
        (status = 200, description = "The project's usage", body = UsageObject),
        (status = 401, description = "No valid API key", body = ErrorResponse)))]
async fn get_usage(
    State(state): State<AppState>,
    project: Project,
) -> Result<Json<UsageObject>, ApiError> {
    let usage = state.db.usage(&project.id).await?;
    Ok(Json(UsageObject {
        object: "usage",
        project: project.name.clone(),
        stored_bytes: StoredBytes {
            files: usage.file_bytes,
            checkpoints: usage.checkpoint_bytes,
            models: usage.model_bytes,
            features: usage.feature_bytes,
            total: usage.stored_bytes(),
        },
        max_stored_bytes: project.max_stored_bytes,
        active_jobs: usage.active_jobs,
        max_active_jobs: project.max_active_jobs,
    }))
}
