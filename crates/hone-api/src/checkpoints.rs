//! `/v1/fine_tuning/jobs/{job_id}/checkpoints`: the weights of every epoch of a job,
//! with the epoch's metrics, and publishing one of them as a model that predict serves
//! like the job's own.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use hone_domain::resources::{JobCheckpoint, JobResult, ModelObject};
use hone_domain::{CheckpointId, Page};
use hone_store::models::{storage_key, NewModel};
use hone_store::StoreError;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::jobs::{job_id, not_found_as};
use crate::params::ListParams;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_checkpoints))
        .routes(routes!(publish_checkpoint))
}

/// A job's per-epoch checkpoints, oldest first, in OpenAI's shape (`ftckpt-` ids,
/// `step_number`, `metrics`) with hone's fields after it: each epoch's training loss
/// and validation metrics; `published_model` names the model made from one, if any.
/// `after` is a checkpoint's `id`.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}/checkpoints", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id"), ListParams),
    responses(
        (status = 200, description = "A page of the job's checkpoints", body = inline(Page<JobCheckpoint>)),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse)))]
async fn list_checkpoints(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<JobCheckpoint>>, ApiError> {
    let id = job_id(&raw)?;
    let page = query?.0.page()?;
    let after = match page.after.as_deref() {
        None => None,
        Some(cursor) => match CheckpointId::parse(cursor) {
            Some(c) if c.job == id => Some(c.epoch),
            _ => {
                return Err(ApiError::invalid(
                    "after",
                    "invalid_value",
                    format!("after must be the id of one of job {raw}'s checkpoints (ftckpt-…)"),
                ))
            }
        },
    };
    state
        .db
        .get_job(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    let rows: Vec<JobCheckpoint> = state
        .db
        .list_checkpoints(&project.id, id.as_str(), after, page.limit + 1)
        .await?
        .into_iter()
        .map(|c| c.object)
        .collect();
    Ok(Json(Page::from_rows(rows, page.limit, |c| c.id.clone())))
}

/// Publish the weights of one epoch as a model (`<job's model>:ckpt-<epoch>`), e.g. an
/// epoch that scored better on a metric other than the one the job monitored. The job
/// must have succeeded; publishing the same checkpoint again returns the same model.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{job_id}/checkpoints/{epoch}/publish",
    tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id"),
           ("epoch" = u32, Path, description = "The checkpoint's epoch")),
    responses(
        (status = 200, description = "The published model", body = ModelObject),
        (status = 404, description = "No such job or checkpoint", body = ErrorResponse),
        (status = 409, description = "The job has not succeeded", body = ErrorResponse)))]
async fn publish_checkpoint(
    State(state): State<AppState>,
    project: Project,
    Path((raw, epoch)): Path<(String, String)>,
) -> Result<Json<ModelObject>, ApiError> {
    let id = job_id(&raw)?;
    let no_checkpoint = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {raw:?} has no checkpoint of epoch {epoch:?}"),
        )
        .with_param("epoch")
    };
    let epoch_number: u32 = epoch.parse().map_err(|_| no_checkpoint())?;
    let job = state
        .db
        .get_job(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    let checkpoint = match state
        .db
        .get_checkpoint(&project.id, id.as_str(), epoch_number)
        .await
    {
        Ok(c) => c,
        Err(StoreError::NotFound) => return Err(no_checkpoint()),
        Err(e) => return Err(e.into()),
    };
    let model = match state.db.final_model_of(&project.id, id.as_str()).await {
        Ok(m) => m,
        Err(StoreError::NotFound) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "job_not_succeeded",
                format!(
                    "job {raw} is {}; a checkpoint is published from the job's model, \
                     which exists once the job has succeeded",
                    job.status.as_str()
                ),
            ))
        }
        Err(e) => return Err(e.into()),
    };
    let model_id = format!("{}:ckpt-{epoch_number}", model.object.id);
    match state.db.get_model(&project.id, &model_id).await {
        Ok(existing) => return Ok(Json(existing.object)),
        Err(StoreError::NotFound) => {}
        Err(e) => return Err(e.into()),
    }

    let model_dir = state.artifacts.local_dir(&model.storage_key).await?;
    let checkpoint_dir = state.artifacts.local_dir(&checkpoint.storage_key).await?;
    let scratch = tempfile::tempdir().map_err(|e| ApiError::internal("scratch dir", &e))?;
    let out_dir = scratch.path().join("model");
    let threshold = checkpoint
        .object
        .metrics
        .validation
        .as_ref()
        .and_then(|v| v.threshold);
    let (id_for_task, out_for_task) = (model_id.clone(), out_dir.clone());
    tokio::task::spawn_blocking(move || {
        hone_serving::checkpoints::materialize(
            &model_dir,
            &checkpoint_dir.join(hone_store::checkpoints::WEIGHTS_FILE),
            &out_for_task,
            &id_for_task,
            epoch_number,
            threshold,
        )
    })
    .await
    .map_err(|e| ApiError::internal("checkpoint task", &e))?
    .map_err(|e| ApiError::internal("cannot build the checkpoint's model", &e))?;

    let key = storage_key(&model_id);
    let bytes = hone_store::dir_bytes(&out_dir).await?;
    state.artifacts.put_dir(&key, &out_dir).await?;
    let metrics = checkpoint.object.metrics;
    let result = JobResult {
        train_loss: metrics.train_loss,
        validation: metrics.validation,
        best_epoch: Some(epoch_number),
        // The detailed report describes the weights the job itself published.
        evaluation: None,
        ..job.result.clone().unwrap_or_default()
    };
    let new = NewModel {
        id: model_id.clone(),
        job_id: job.id.clone(),
        base_model: job.base_model.clone(),
        storage_key: key.clone(),
        task_type: model.object.task_type,
        labels: model.object.labels.clone(),
        tasks: model.object.tasks.clone(),
        checkpoint_epoch: Some(epoch_number),
        bytes,
    };
    if !state.db.add_model(&new, &result).await? {
        // Published meanwhile by a concurrent request: keep that one.
        tracing::info!(model = %model_id, "checkpoint published concurrently");
    } else {
        tracing::info!(model = %model_id, job.id = %job.id, epoch = epoch_number, "checkpoint published");
    }
    Ok(Json(
        state.db.get_model(&project.id, &model_id).await?.object,
    ))
}
