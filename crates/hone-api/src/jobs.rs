//! `/v1/fine_tuning/jobs`: everything about a job is validated here, before it is
//! queued, so that a worker only ever fails a job for reasons it could not foresee.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use hone_domain::dataset::TaskType;
use hone_domain::job::{
    base_model_of, check_integrations, validate_suffix, HyperparametersInput, JobStatus,
    MethodInput,
};
use hone_domain::resources::{FileObject, FineTuningJob, JobCurves, JobMetrics};
use hone_domain::{JobId, Page};
use hone_store::idempotency::Once;
use hone_store::jobs::NewJob;
use hone_store::StoreError;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{key_reused, HashedJson, IdempotencyKey};
use crate::params::ListParams;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_job, list_jobs))
        .routes(routes!(get_job))
        .routes(routes!(cancel_job))
        .routes(routes!(pause_job))
        .routes(routes!(resume_job))
        .routes(routes!(get_metrics))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateJobRequest {
    /// The base model to fine-tune: an id from `GET /v1/base-models` (also listed by
    /// `GET /v1/models` with `owned_by: "system"`). Required, as `model` or
    /// `base_model`.
    #[schema(example = "all-MiniLM-L6-v2")]
    pub model: Option<String>,
    /// hone's name for `model`; with both, they must name the same model.
    #[schema(example = "all-MiniLM-L6-v2")]
    pub base_model: Option<String>,
    /// The id of an uploaded file with the training examples.
    #[schema(example = "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub training_file: String,
    /// An uploaded file with held-out examples, evaluated after every epoch. Its labels
    /// must all occur in the training file.
    pub validation_file: Option<String>,
    /// How to transfer the model: `full` (default) fine-tunes every weight, `partial`
    /// freezes the bottom `frozen_layers`, `feature_extraction` trains only a head on
    /// cached features of the frozen encoder, `auto` lets the server choose and say why.
    /// OpenAI's `{"type": "supervised", "supervised": {"hyperparameters": {…}}}` runs
    /// as `auto`, with those hyperparameters.
    #[serde(default)]
    pub method: MethodInput,
    /// Hyperparameters; with `method.type` `supervised` they may instead be given in
    /// `method.supervised.hyperparameters` (not in both places).
    pub hyperparameters: Option<HyperparametersInput>,
    /// OpenAI's integrations (e.g. Weights & Biases): hone has none, so only an empty
    /// list is accepted.
    #[schema(value_type = Option<Vec<Object>>, example = json!([]))]
    pub integrations: Option<Vec<serde_json::Value>>,
    /// Seeds shuffling, dropout and the head's initialisation; a job with the same
    /// seed, data and hyperparameters trains the same model. Random when left out.
    pub seed: Option<i64>,
    /// Up to 40 letters, digits, `-` or `_`, added to the fine-tuned model's id.
    #[schema(example = "reviews")]
    pub suffix: Option<String>,
    /// Up to 16 string key-value pairs of the user's own.
    #[schema(value_type = Option<Object>, example = json!({"team": "support"}))]
    pub metadata: Option<serde_json::Value>,
}

/// The query of `GET /v1/fine_tuning/jobs` (documentation: the handler reads the pairs
/// itself, for `metadata[key]=value`); any other parameter is refused.
#[allow(dead_code)]
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListJobsParams {
    /// Items per page, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last job of the previous page.
    after: Option<String>,
    /// Only jobs with this status.
    #[param(value_type = Option<JobStatus>)]
    status: Option<String>,
    /// Only jobs whose metadata has every one of these pairs, sent as OpenAI's SDKs do:
    /// `metadata[team]=support`.
    #[param(style = DeepObject, explode, value_type = Option<Object>)]
    metadata: Option<std::collections::HashMap<String, String>>,
}

/// The filters of a job list, from the query's pairs.
struct JobFilter {
    page: ListParams,
    status: Option<JobStatus>,
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

fn job_filter(pairs: Vec<(String, String)>) -> Result<JobFilter, ApiError> {
    let mut filter = JobFilter {
        page: ListParams {
            limit: None,
            after: None,
        },
        status: None,
        metadata: None,
    };
    for (name, value) in pairs {
        match name.as_str() {
            "limit" => {
                filter.page.limit = Some(value.parse().map_err(|_| {
                    ApiError::invalid("limit", "invalid_value", "limit must be a whole number")
                })?)
            }
            "after" => filter.page.after = Some(value),
            "status" => {
                filter.status = Some(JobStatus::parse(&value).ok_or_else(|| {
                    ApiError::invalid(
                        "status",
                        "invalid_value",
                        format!("unknown status {value:?}; one of validating_files, queued, running, paused, succeeded, failed, cancelled"),
                    )
                })?)
            }
            other => match other
                .strip_prefix("metadata[")
                .and_then(|k| k.strip_suffix(']'))
            {
                Some(key) if !key.is_empty() => {
                    filter
                        .metadata
                        .get_or_insert_with(Default::default)
                        .insert(key.to_owned(), value.into());
                }
                _ => {
                    return Err(ApiError::invalid(
                        other.to_owned(),
                        "unknown_parameter",
                        format!(
                            "unknown query parameter {other:?}; jobs are listed by limit, \
                             after, status and metadata[<key>]=<value>"
                        ),
                    ))
                }
            },
        }
    }
    Ok(filter)
}

fn check_metadata(metadata: &Option<serde_json::Value>) -> Result<(), ApiError> {
    let Some(value) = metadata else { return Ok(()) };
    let bad = |m: &str| ApiError::invalid("metadata", "invalid_value", m.to_owned());
    let map = value
        .as_object()
        .ok_or_else(|| bad("metadata must be an object of string values"))?;
    if map.len() > 16 {
        return Err(bad("metadata has more than 16 keys"));
    }
    for (k, v) in map {
        let Some(s) = v.as_str() else {
            return Err(bad(&format!("metadata.{k} must be a string")));
        };
        if k.chars().count() > 64 || s.chars().count() > 512 {
            return Err(bad(
                "metadata keys are at most 64 and values at most 512 characters",
            ));
        }
    }
    Ok(())
}

/// Create a fine-tuning job.
///
/// Validates the base model, the files and every hyperparameter, then queues the
/// job and returns at once with status `queued`. Poll `GET /v1/fine_tuning/jobs/{id}`.
/// With an `Idempotency-Key`, a retry of the same request creates nothing and gets
/// the first response.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs", tag = "fine-tuning",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: the same key with the same body returns the first response; with another body, 409")),
    request_body(content = CreateJobRequest, example = json!({
        "base_model": "all-MiniLM-L6-v2",
        "training_file": "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
        "method": {"type": "full"},
        "hyperparameters": {"epochs": 3, "batch_size": 16, "learning_rate": 5e-5},
        "seed": 42,
        "suffix": "reviews"})),
    responses(
        (status = 200, description = "The queued job", body = FineTuningJob),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorResponse,
            example = json!({"error": {"message": "no file with id \"file-…\"", "type": "invalid_request_error", "param": "training_file", "code": "file_not_found"}})),
        (status = 409, description = "The Idempotency-Key was used with another request", body = ErrorResponse),
        (status = 429, description = "The project has `max_active_jobs` queued or running jobs; retry after `Retry-After` seconds", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse)))]
async fn create_job(
    State(state): State<AppState>,
    project: Project,
    idempotency: IdempotencyKey,
    HashedJson(req, request_sha256): HashedJson<CreateJobRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = idempotency.for_request(
        "POST /v1/fine_tuning/jobs",
        request_sha256,
        state.settings.idempotency_ttl,
    );
    check_integrations(req.integrations.as_deref())?;
    let param = if req.model.is_none() && req.base_model.is_some() {
        "base_model"
    } else {
        "model"
    };
    let base_model = base_model_of(req.model, req.base_model)?;
    let base = hone_serving::catalog::find_base_model(&state.settings.models_dir, &base_model)
        .ok_or_else(|| {
            ApiError::invalid(
                param,
                "model_not_found",
                format!("no base model {base_model:?}; see GET /v1/base-models"),
            )
        })?;
    let (method, hyperparameters) = req.method.resolve(req.hyperparameters)?;
    let method = method.validate(u32::try_from(base.layers).unwrap_or(u32::MAX))?;
    // Only text models have a sequence length; an image model refuses the text-only
    // hyperparameters by name.
    let hyperparameters = match base.max_seq_len {
        Some(max_seq_len) => {
            hyperparameters.validate(u32::try_from(max_seq_len).unwrap_or(u32::MAX), method.kind)?
        }
        None => hyperparameters.validate_image(method.kind)?,
    };
    if let Some(suffix) = &req.suffix {
        validate_suffix(suffix)?;
    }
    check_metadata(&req.metadata)?;

    let training = lookup_file(&state, &project, &req.training_file, "training_file").await?;
    check_modality(&training, &base, "training_file")?;
    check_task_weights(&hyperparameters.task_weights, &training)?;
    if let Some(validation_file) = &req.validation_file {
        let validation = lookup_file(&state, &project, validation_file, "validation_file").await?;
        check_modality(&validation, &base, "validation_file")?;
        if (validation.task_type, validation.text_pairs)
            != (training.task_type, training.text_pairs)
        {
            let kind = |t: TaskType, pairs: bool| {
                format!("{t}{}", if pairs { " on text pairs" } else { "" })
            };
            return Err(ApiError::invalid(
                "validation_file",
                "task_mismatch",
                format!(
                    "the validation file holds {} but the training file {}",
                    kind(validation.task_type, validation.text_pairs),
                    kind(training.task_type, training.text_pairs)
                ),
            ));
        }
        check_validation_labels(&training, &validation)?;
    }
    let seed = req.seed.unwrap_or_else(|| i64::from(rand_seed()));
    let new = NewJob {
        id: JobId::generate(),
        project: project.id.clone(),
        base_model: base.id,
        training_file: training.id,
        validation_file: req.validation_file,
        method,
        hyperparameters,
        seed,
        suffix: req.suffix,
        metadata: req.metadata,
        max_attempts: state.settings.job_max_attempts,
    };
    let created = state
        .db
        .create_job_once(&new, Some(project.max_active_jobs), key.as_ref())
        .await
        .map_err(|e| match e {
            StoreError::Conflict(m) => ApiError::invalid("training_file", "file_not_found", m),
            other => other.into(),
        })?;
    match created {
        Once::Created(job) => {
            tracing::info!(job.id = %job.id, "job queued");
            Ok(Json(
                serde_json::to_value(job).map_err(|e| ApiError::internal("job", &e))?,
            ))
        }
        Once::Replayed(first) => Ok(Json(first)),
        Once::Mismatch => Err(key_reused()),
    }
}

/// A seed for jobs that did not choose one; 31 bits so that every client's JSON
/// number type holds it exactly.
fn rand_seed() -> u32 {
    (uuid::Uuid::new_v4().as_u128() as u32) >> 1
}

/// Task weights only make sense for a multi-task file, and only for its tasks.
fn check_task_weights(
    weights: &std::collections::BTreeMap<String, f64>,
    training: &FileObject,
) -> Result<(), ApiError> {
    if weights.is_empty() {
        return Ok(());
    }
    if training.task_type != TaskType::MultiTask {
        return Err(ApiError::invalid(
            "hyperparameters.task_weights",
            "not_multi_task",
            format!(
                "task_weights need a multi-task training file; this one holds {} data",
                training.task_type
            ),
        ));
    }
    if let Some(task) = weights
        .keys()
        .find(|t| !training.task_label_counts.contains_key(*t))
    {
        return Err(ApiError::invalid(
            format!("hyperparameters.task_weights.{task}"),
            "unknown_task",
            format!(
                "the training file has no task {task:?}; its tasks are {:?}",
                training.task_label_counts.keys().collect::<Vec<_>>()
            ),
        ));
    }
    Ok(())
}

/// Every label (and task) of the validation file must be one the model can output.
fn check_validation_labels(training: &FileObject, validation: &FileObject) -> Result<(), ApiError> {
    let unknown: Vec<String> = if training.task_type == TaskType::MultiTask {
        validation
            .task_label_counts
            .iter()
            .flat_map(|(task, labels)| {
                let known = training.task_label_counts.get(task);
                labels
                    .keys()
                    .filter(move |l| known.is_none_or(|k| !k.contains_key(*l)))
                    .map(move |l| format!("{task}: {l}"))
            })
            .collect()
    } else {
        validation
            .label_counts
            .keys()
            .filter(|l| !training.label_counts.contains_key(*l))
            .cloned()
            .collect()
    };
    if unknown.is_empty() {
        return Ok(());
    }
    Err(ApiError::invalid(
        "validation_file",
        "unknown_labels",
        format!("the validation file has labels the training file lacks: {unknown:?}"),
    ))
}

/// A base model reads one kind of input; a file of the other kind could only fail in
/// the worker.
fn check_modality(
    file: &FileObject,
    base: &hone_domain::resources::BaseModelObject,
    param: &str,
) -> Result<(), ApiError> {
    if file.modality.as_str() == base.modality {
        return Ok(());
    }
    let article = |m: &str| if m == "image" { "an" } else { "a" };
    Err(ApiError::invalid(
        param,
        "modality_mismatch",
        format!(
            "{param} {} holds {} examples but {:?} is {} {} model; pick a base model of the \
             file's modality (GET /v1/base-models lists each model's `modality`)",
            file.id,
            file.modality,
            base.id,
            article(base.modality),
            base.modality
        ),
    ))
}

async fn lookup_file(
    state: &AppState,
    project: &Project,
    raw: &str,
    param: &str,
) -> Result<FileObject, ApiError> {
    let not_found =
        || ApiError::invalid(param, "file_not_found", format!("no file with id {raw:?}"));
    let id = hone_domain::FileId::parse(raw).ok_or_else(not_found)?;
    match state.db.get_file(&project.id, id.as_str()).await {
        Ok(f) if f.object.purpose == hone_store::files::RESULTS_PURPOSE => Err(ApiError::invalid(
            param,
            "invalid_file",
            format!("{raw} is a job's results file, not a dataset; upload training data with purpose `fine-tune`"),
        )),
        Ok(f) => Ok(f.object),
        Err(StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// List fine-tuning jobs, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs", tag = "fine-tuning", params(ListJobsParams),
    responses(
        (status = 200, description = "A page of jobs", body = inline(Page<FineTuningJob>)),
        (status = 400, description = "Invalid query", body = ErrorResponse)))]
async fn list_jobs(
    State(state): State<AppState>,
    project: Project,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Json<Page<FineTuningJob>>, ApiError> {
    let filter = job_filter(query?.0)?;
    let page = filter.page.page()?;
    let rows = state
        .db
        .list_jobs(&project.id, &page, filter.status, filter.metadata.as_ref())
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |j| j.id.clone())))
}

pub(crate) fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::not_found("fine-tuning job", raw))
}

/// A store error, with `NotFound` said of the job `raw`.
pub(crate) fn not_found_as(raw: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found("fine-tuning job", raw),
        other => other.into(),
    }
}

/// Get a job: status, progress (epoch, step, ETA), result and error.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job", body = FineTuningJob),
        (status = 404, description = "No such job", body = ErrorResponse)))]
async fn get_job(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let id = job_id(&raw)?;
    Ok(Json(
        state
            .db
            .get_job(&project.id, id.as_str())
            .await
            .map_err(not_found_as(&raw))?,
    ))
}

/// Cancel a job. A queued job is cancelled at once; a running one stops at its next
/// training step.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{job_id}/cancel", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, `cancelled` or still `running` until the worker stops", body = FineTuningJob),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job has already finished", body = ErrorResponse)))]
async fn cancel_job(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let id = job_id(&raw)?;
    let job = state
        .db
        .cancel_job(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    if job.status == JobStatus::Cancelled {
        // Cancelled with no worker (queued or paused): the checkpoints an earlier
        // attempt left go, as a worker's cancel removes them.
        let folder = hone_store::checkpoints::job_prefix(id.as_str());
        if let Err(e) = state.artifacts.delete(&folder).await {
            tracing::warn!(error = %e, folder, "cannot remove a cancelled job's checkpoints");
        }
        state.db.delete_checkpoints(id.as_str()).await?;
    }
    Ok(Json(job))
}

/// Pause a job, as OpenAI's API does. A queued job is `paused` at once; a running one
/// trains on to its next checkpoint (the end of the epoch), then hands its worker back
/// and reads `paused`. A paused job waits, holding its checkpoints, until it is
/// resumed. Pausing a paused job changes nothing.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{job_id}/pause", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job: `paused`, or still `running` until its next checkpoint", body = FineTuningJob),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job has already finished", body = ErrorResponse)))]
async fn pause_job(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let id = job_id(&raw)?;
    Ok(Json(
        state
            .db
            .pause_job(&project.id, id.as_str())
            .await
            .map_err(not_found_as(&raw))?,
    ))
}

/// Resume a paused job: it is queued again, and the worker that claims it goes on
/// from its last checkpoint (the path a job takes after a worker crash). A running job
/// whose pause has not taken effect yet keeps running.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs/{job_id}/resume", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job, `queued` (or still `running`)", body = FineTuningJob),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 409, description = "The job is not paused", body = ErrorResponse),
        (status = 429, description = "The project has `max_active_jobs` queued or running jobs; retry after `Retry-After` seconds", body = ErrorResponse)))]
async fn resume_job(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<FineTuningJob>, ApiError> {
    let id = job_id(&raw)?;
    Ok(Json(
        state
            .db
            .resume_job(&project.id, id.as_str(), Some(project.max_active_jobs))
            .await
            .map_err(not_found_as(&raw))?,
    ))
}

/// A job's metrics: the per-step training loss and per-epoch validation curves (while
/// it runs), and once it is done the data report, the transferability estimate and the
/// evaluation report (per-class metrics, confusion matrix, calibration, train/validation
/// gap) of the published epoch.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}/metrics", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id")),
    responses(
        (status = 200, description = "The job's metrics", body = JobMetrics),
        (status = 404, description = "No such job", body = ErrorResponse)))]
async fn get_metrics(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<JobMetrics>, ApiError> {
    let id = job_id(&raw)?;
    let job = state
        .db
        .get_job(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    let curves: JobCurves = match state
        .db
        .get_metrics(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?
    {
        Some(value) => serde_json::from_value(value)
            .map_err(|e| ApiError::internal("unreadable job metrics", &e))?,
        None => JobCurves::default(),
    };
    let result = job.result.unwrap_or_default();
    Ok(Json(JobMetrics {
        object: "fine_tuning.job.metrics",
        job_id: job.id,
        status: job.status,
        steps: curves.steps,
        epochs: curves.epochs,
        best_epoch: result.best_epoch,
        stopped_early: result.stopped_early,
        evaluation: result.evaluation,
        data_report: result.data_report,
        transferability: result.transferability,
    }))
}
