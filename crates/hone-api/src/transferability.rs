//! `/v1/transferability`: which base model to fine-tune on a file, estimated before
//! anything trains. The handler checks the request, reads and samples the file and
//! stages the feature cache; `hone_serving::transferability` runs the encoders and the
//! LogME fits on a thread of its own.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use hone_domain::dataset::{parse_examples, TaskType};
use hone_domain::job::PoolingType;
use hone_domain::resources::BaseModelObject;
use hone_serving::transferability::{
    sample_rows, EstimateInput, FeatureFiles, ModelEstimate, ModelInput, Targets,
};
use hone_store::feature_cache;
use hone_store::StoreError;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::ApiJson;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(estimate))
}

/// Seeds the sample of a large file and the random reference encoder: the same
/// request scores the same examples against the same reference, and hits the cache.
const SEED: u64 = 2021;
const DEFAULT_MAX_SEQ_LEN: u32 = 128;
const DEFAULT_MAX_EXAMPLES: u32 = 2000;
const MAX_EXAMPLES_RANGE: std::ops::RangeInclusive<u32> = 10..=20_000;
/// Names the way a large file is sampled in the cache keys of sample features; change
/// it with [`sample_rows`], so that stale entries are not reused.
const SAMPLE_VERSION: &str = "stratified-v1";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TransferabilityRequest {
    /// The id of an uploaded file of single-label classification examples.
    #[schema(example = "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub training_file: String,
    /// Base model ids from `GET /v1/base-models` to compare. Default: every text
    /// base model installed.
    #[schema(example = json!(["all-MiniLM-L6-v2"]))]
    pub base_models: Option<Vec<String>>,
    /// Tokens per example, 8 up to each model's limit; longer texts are truncated as
    /// in training. Default 128 (or the model's limit when that is smaller), the same
    /// default as a fine-tuning job's, so the features are shared with such jobs.
    #[schema(example = 128, minimum = 8)]
    pub max_seq_len: Option<u32>,
    /// How token states become one vector per example. Default `mean`.
    pub pooling: Option<PoolingType>,
    /// Examples scored, 10–20,000. A file with more rows is scored on a seeded sample
    /// of this many, stratified by label. Default 2,000.
    #[schema(example = 2000, minimum = 10, maximum = 20000)]
    pub max_examples: Option<u32>,
}

/// The estimate for one base model.
#[derive(Debug, Serialize, ToSchema)]
pub struct TransferabilityResult {
    #[schema(example = "all-MiniLM-L6-v2")]
    pub base_model: String,
    /// Position by `score`, 1 for the best.
    #[schema(example = 1, minimum = 1)]
    pub rank: u32,
    /// LogME of the base model's frozen features: the log evidence per example (nats)
    /// of a Bayesian linear model of the labels on the features. Higher is better;
    /// compare it only with other scores of the same request.
    #[schema(example = -0.412)]
    pub score: f64,
    /// The same score for a randomly initialised encoder of the base model's shape
    /// (seeded, so repeatable): what this data gets without any transfer.
    #[schema(example = -0.689)]
    pub random_init_score: f64,
    /// `score - random_init_score`: what the pretrained weights add. Near zero or
    /// negative, the pretraining does not fit this data and training from scratch or
    /// another base model is worth trying.
    #[schema(example = 0.277)]
    pub gain: f64,
    /// Tokens per example the features were computed with.
    #[schema(example = 128)]
    pub max_seq_len: u32,
    /// The base model's features came from the feature cache: the encoder did not run.
    /// The cache is shared with `feature_extraction` and `auto` fine-tuning jobs on the
    /// same file, length and pooling when the whole file is scored.
    #[schema(example = false)]
    pub features_cached: bool,
    /// Seconds this model's estimate took.
    #[schema(example = 2.7)]
    pub seconds: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TransferabilityResponse {
    #[schema(example = "transferability")]
    pub object: &'static str,
    #[schema(example = "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub training_file: String,
    /// How the scores were computed: `logme` (You et al., ICML 2021).
    #[schema(example = "logme")]
    pub metric: &'static str,
    /// Examples scored: every row of the file, or a stratified sample of
    /// `max_examples` of them.
    #[schema(example = 128)]
    pub examples: u64,
    /// Classes among the scored examples.
    /// Labels of the file: its classes, or every task's labels together.
    #[schema(example = 2)]
    pub classes: u64,
    pub task_type: TaskType,
    pub pooling: PoolingType,
    /// One entry per base model, best first.
    pub results: Vec<TransferabilityResult>,
}

/// Estimate how well base models transfer to a file, before training.
///
/// For each base model, the frozen encoder turns every scored example into one vector
/// and LogME (You, Liu, Wang, Long, *LogME: Practical Assessment of Pre-trained Models
/// for Transfer Learning*, ICML 2021) fits a Bayesian linear model of the labels on
/// those vectors, returning its log evidence per example: `score`, in nats, usually
/// negative. **Higher is better**: the labels are easier to separate linearly in this
/// model's features, which predicts a better fine-tuned model. The value depends on
/// the data (its size, classes, balance), so it means nothing on its own: compare
/// models on the same request only, never across files. `random_init_score` is the
/// same score for a randomly initialised encoder of the same shape, the no-transfer
/// reference, and `gain` the difference: how much the pretraining helps on this data.
/// With fewer examples than feature dimensions the ranking is less reliable; score on
/// more examples when you can.
///
/// Results are sorted by `score`, best first. Features are cached: the first call on a
/// file runs both encoders of each model (seconds to minutes, by size), a repeated call
/// takes well under a second per model. When the whole file is scored, the base
/// model's features are shared with `feature_extraction` and `auto` fine-tuning jobs on
/// the same file, `max_seq_len` and pooling, whichever computed them first. One
/// estimate runs at a time; a second is answered 429. Only single-label classification
/// of single texts is estimated so far.
#[utoipa::path(post, path = "/v1/transferability", tag = "transferability",
    request_body(content = TransferabilityRequest, example = json!({
        "training_file": "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
        "base_models": ["all-MiniLM-L6-v2"],
        "max_seq_len": 128,
        "pooling": "mean",
        "max_examples": 2000})),
    responses(
        (status = 200, description = "Every base model's score, best first", body = TransferabilityResponse,
            example = json!({"object": "transferability",
                "training_file": "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f", "metric": "logme",
                "examples": 128, "classes": 2, "pooling": "mean",
                "results": [{"base_model": "all-MiniLM-L6-v2", "rank": 1, "score": -0.412,
                    "random_init_score": -0.689, "gain": 0.277, "max_seq_len": 128,
                    "features_cached": false, "seconds": 2.7}]})),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorResponse,
            example = json!({"error": {"message": "no base model \"bert-huge\"; see GET /v1/base-models", "type": "invalid_request_error", "param": "base_models[0]", "code": "model_not_found"}})),
        (status = 415, description = "The body is not JSON", body = ErrorResponse),
        (status = 429, description = "An estimate is already running; retry after `Retry-After` seconds", body = ErrorResponse),
        (status = 500, description = "The file no longer matches its checksum, or the estimate failed", body = ErrorResponse)))]
async fn estimate(
    State(state): State<AppState>,
    project: Project,
    ApiJson(req): ApiJson<TransferabilityRequest>,
) -> Result<Json<TransferabilityResponse>, ApiError> {
    let max_examples = req.max_examples.unwrap_or(DEFAULT_MAX_EXAMPLES);
    if !MAX_EXAMPLES_RANGE.contains(&max_examples) {
        return Err(ApiError::invalid(
            "max_examples",
            "invalid_value",
            format!(
                "must be between {} and {}",
                MAX_EXAMPLES_RANGE.start(),
                MAX_EXAMPLES_RANGE.end()
            ),
        ));
    }
    let pooling = req.pooling.unwrap_or_default();
    let models = base_models(&state, req.base_models.as_deref()).await?;
    let lengths = models
        .iter()
        .map(|m| max_seq_len(req.max_seq_len, m))
        .collect::<Result<Vec<u32>, ApiError>>()?;
    let file = lookup_file(&state, &project, &req.training_file).await?;
    if file.object.modality != hone_domain::dataset::Modality::Text {
        return Err(ApiError::invalid(
            "training_file",
            "modality_mismatch",
            format!(
                "{} holds {} examples; transferability estimates take text files so far",
                file.object.id, file.object.modality
            ),
        ));
    }

    // Everything cheap is checked; the rest holds the estimator.
    let permit = state.transferability.try_admit()?;
    let bytes = state.artifacts.read(&file.storage_key).await?;
    let file_id = file.object.id.clone();
    let file_sha256 = file.object.sha256.clone();
    let format = file.object.format;
    let scored = tokio::task::spawn_blocking(move || {
        examples_of(
            &file_id,
            &file_sha256,
            format,
            &bytes,
            max_examples as usize,
        )
    })
    .await
    .map_err(|e| ApiError::internal("reading the training file", &e))??;

    let scratch = tempfile::tempdir()?;
    let data_digest = if scored.whole_file {
        // The worker's key: features of every row of the file.
        file.object.sha256.clone()
    } else {
        sample_digest(&file.object.sha256, max_examples)
    };
    let mut inputs = Vec::with_capacity(models.len());
    let mut keys = Vec::with_capacity(models.len());
    for (i, (model, &max_seq_len)) in models.iter().zip(&lengths).enumerate() {
        let dir = state.settings.models_dir.join(&model.id);
        let weights = feature_cache::base_weights_digest(&dir).await?;
        let key = feature_cache::cache_key(
            &project.id,
            &file.object.sha256,
            &model.id,
            &weights,
            &data_digest,
            max_seq_len,
            pooling,
        );
        // Not a model id (those have no `#`), so never the key of a real model.
        let random_key = feature_cache::cache_key(
            &project.id,
            &file.object.sha256,
            &format!("{}#random-init-{SEED}", model.id),
            &weights,
            &data_digest,
            max_seq_len,
            pooling,
        );
        let (key, features) = stage(&state, scratch.path(), key, i, "features").await;
        let (random_key, random_features) =
            stage(&state, scratch.path(), random_key, i, "random").await;
        keys.push((key, random_key));
        inputs.push(ModelInput {
            base_model: model.id.clone(),
            dir,
            max_seq_len: max_seq_len as usize,
            pooling,
            features,
            random_features,
        });
    }

    let estimates = state
        .transferability
        .estimate(
            permit,
            EstimateInput {
                texts: scored.texts,
                pairs: scored.pairs,
                targets: scored.targets,
                seed: SEED,
                models: inputs,
            },
        )
        .await?;
    for (estimate, (key, random_key)) in estimates.iter().zip(&keys) {
        cache(&state, key, &estimate.features_saved).await;
        cache(&state, random_key, &estimate.random_features_saved).await;
    }
    drop(scratch);

    Ok(Json(TransferabilityResponse {
        object: "transferability",
        training_file: file.object.id,
        metric: "logme",
        examples: scored.rows as u64,
        classes: scored.classes as u64,
        task_type: scored.task_type,
        pooling,
        results: ranked(estimates, &lengths),
    }))
}

/// The requested base models, or every text base model installed.
async fn base_models(
    state: &AppState,
    requested: Option<&[String]>,
) -> Result<Vec<BaseModelObject>, ApiError> {
    let dir = state.settings.models_dir.clone();
    let Some(ids) = requested else {
        let all =
            tokio::task::spawn_blocking(move || hone_serving::catalog::list_base_models(&dir))
                .await
                .map_err(|e| ApiError::internal("listing base models", &e))?;
        let text: Vec<BaseModelObject> = all.into_iter().filter(|m| m.modality == "text").collect();
        if text.is_empty() {
            return Err(ApiError::invalid(
                "base_models",
                "model_not_found",
                "no text base model is installed; see GET /v1/base-models",
            ));
        }
        return Ok(text);
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(
            "base_models",
            "invalid_value",
            "name at least one base model, or leave the field out to compare them all",
        ));
    }
    let mut seen = BTreeSet::new();
    let mut models = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let param = format!("base_models[{i}]");
        if !seen.insert(id.as_str()) {
            return Err(ApiError::invalid(
                param,
                "invalid_value",
                format!("{id:?} is listed twice"),
            ));
        }
        let model = hone_serving::catalog::find_base_model(&state.settings.models_dir, id)
            .filter(|m| m.modality == "text")
            .ok_or_else(|| {
                ApiError::invalid(
                    param,
                    "model_not_found",
                    format!("no base model {id:?}; see GET /v1/base-models"),
                )
            })?;
        models.push(model);
    }
    Ok(models)
}

/// The length a model's features are computed with: a fine-tuning job's default, or
/// the requested one when the model allows it.
fn max_seq_len(requested: Option<u32>, model: &BaseModelObject) -> Result<u32, ApiError> {
    // Text models only reach here; an image model would have no limit to offer.
    let limit = model
        .max_seq_len
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    let Some(len) = requested else {
        return Ok(DEFAULT_MAX_SEQ_LEN.min(limit));
    };
    if !(8..=limit).contains(&len) {
        return Err(ApiError::invalid(
            "max_seq_len",
            "invalid_value",
            format!(
                "must be between 8 and {limit} (the limit of base model {})",
                model.id
            ),
        ));
    }
    Ok(len)
}

/// As a fine-tuning job treats its training file: an unknown id is a 400 that names
/// `training_file`.
async fn lookup_file(
    state: &AppState,
    project: &Project,
    raw: &str,
) -> Result<hone_store::files::StoredFile, ApiError> {
    let not_found = || {
        ApiError::invalid(
            "training_file",
            "file_not_found",
            format!("no file with id {raw:?}"),
        )
    };
    let id = hone_domain::FileId::parse(raw).ok_or_else(not_found)?;
    match state.db.get_file(&project.id, id.as_str()).await {
        Ok(f) => Ok(f),
        Err(StoreError::NotFound) => Err(not_found()),
        Err(e) => Err(e.into()),
    }
}

/// The texts of the scored examples and which rows they are, after checking that the
/// bytes are the ones uploaded and hold a task the estimate knows.
fn examples_of(
    file_id: &str,
    sha256: &str,
    format: hone_domain::dataset::DatasetFormat,
    bytes: &[u8],
    max_examples: usize,
) -> Result<Scored, ApiError> {
    if hex::encode(Sha256::digest(bytes)) != sha256 {
        // The stored bytes changed under the id: the store is at fault, not the request.
        tracing::error!(file = file_id, "stored file no longer matches its checksum");
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "file_corrupted",
            format!(
                "{file_id} no longer matches the checksum it was uploaded with; upload it again"
            ),
        )
        .with_param("training_file"));
    }
    let examples = parse_examples(format, bytes).map_err(|e| {
        ApiError::invalid("training_file", "invalid_file", format!("{file_id}: {e}"))
    })?;
    let (objective, targets) = Targets::from_examples(&examples).map_err(|e| {
        ApiError::invalid("training_file", "invalid_file", format!("{file_id}: {e}"))
    })?;
    let pairs = examples.first().is_some_and(|e| e.text_pair.is_some());
    let (mut texts, mut text_pairs): (Vec<String>, Vec<String>) = examples
        .into_iter()
        .map(|e| (e.text, e.text_pair.unwrap_or_default()))
        .unzip();
    // Stratified by label (see `Targets::strata`), numbered densely for the sampler.
    let strata = targets.strata();
    let dense: BTreeMap<(usize, usize), usize> = strata
        .iter()
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .enumerate()
        .map(|(i, s)| (s, i))
        .collect();
    let keys: Vec<usize> = strata.iter().map(|s| dense[s]).collect();
    let sample = sample_rows(&keys, max_examples, SEED);
    let targets = if sample.whole_file {
        targets
    } else {
        targets.select(&sample.rows)
    };
    if !targets.scorable() {
        return Err(ApiError::invalid(
            "training_file",
            "too_few_classes",
            format!(
                "the {} scored examples have a single class (or no label that some have and \
                 others lack); an estimate needs at least two",
                sample.rows.len()
            ),
        ));
    }
    let pick = |all: &mut Vec<String>| -> Vec<String> {
        if sample.whole_file {
            std::mem::take(all)
        } else {
            sample
                .rows
                .iter()
                .map(|&i| std::mem::take(&mut all[i]))
                .collect()
        }
    };
    let texts = pick(&mut texts);
    let pairs = pairs.then(|| pick(&mut text_pairs));
    Ok(Scored {
        texts,
        pairs,
        classes: objective.width(),
        task_type: objective.task_type,
        rows: sample.rows.len(),
        whole_file: sample.whole_file,
        targets,
    })
}

/// The examples an estimate scores.
struct Scored {
    texts: Vec<String>,
    pairs: Option<Vec<String>>,
    targets: Targets,
    /// Labels of the file (of every task, for multi-task).
    classes: usize,
    task_type: TaskType,
    rows: usize,
    whole_file: bool,
}

/// What stands in for the file's digest in the cache keys of a sample's features.
fn sample_digest(file_sha256: &str, max_examples: u32) -> String {
    let mut h = Sha256::new();
    for part in [
        SAMPLE_VERSION,
        file_sha256,
        &max_examples.to_string(),
        &SEED.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(h.finalize())
}

/// A cache entry copied into `dir` when there is one, and where to write the features
/// when they have to be computed.
async fn stage(
    state: &AppState,
    dir: &Path,
    key: String,
    model: usize,
    what: &str,
) -> (String, FeatureFiles) {
    let name = format!("{model}-{what}");
    let save_to = Some(dir.join(format!("{name}.safetensors")));
    let (key, cached) = feature_cache::lookup(&state.db, &state.artifacts, key, dir, &name).await;
    (key, FeatureFiles { cached, save_to })
}

/// Caches features the estimate computed; a failure only costs the next caller time.
async fn cache(state: &AppState, key: &str, saved: &Option<PathBuf>) {
    if let Some(path) = saved {
        let cap = state.settings.feature_cache_max_bytes;
        if let Err(e) = feature_cache::store(&state.db, &state.artifacts, key, path, cap).await {
            tracing::warn!(error = %e, key, "cannot cache features");
        }
    }
}

fn ranked(estimates: Vec<ModelEstimate>, lengths: &[u32]) -> Vec<TransferabilityResult> {
    let mut results: Vec<TransferabilityResult> = estimates
        .into_iter()
        .zip(lengths)
        .map(|(e, &max_seq_len)| TransferabilityResult {
            gain: e.score - e.random_init_score,
            base_model: e.base_model,
            rank: 0,
            score: e.score,
            random_init_score: e.random_init_score,
            max_seq_len,
            features_cached: e.features_cached,
            seconds: e.seconds,
        })
        .collect();
    results.sort_by(|a, b| b.score.total_cmp(&a.score));
    for (i, r) in results.iter_mut().enumerate() {
        r.rank = u32::try_from(i + 1).unwrap_or(u32::MAX);
    }
    results
}
