//! Publishing a trained job: its result, the manifest written beside the model's
//! weights, the upload of the model directory and the attempt-guarded `succeed_job`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use hone_domain::dataset::TaskType;
use hone_domain::job::{Method, Quantization};
use hone_domain::resources::{EvaluationReport, JobResult, QuantizationReport};
use hone_domain::ModelId;
use hone_store::models::NewModel;
use hone_store::queue::ClaimedJob;
use hone_store::{ArtifactStore, Db, StoreError};
use hone_train::model_dir::{QuantizationType, MANIFEST_VERSION};
use hone_train::{Manifest, Objective, Report};

use super::failure::{transient, user, Failure};
use super::progress::{eval_report, Reporter};
use super::thread::ThreadOutput;

/// A multi-task model's tasks and their labels, as the model object lists them.
fn model_tasks(objective: &Objective) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    (objective.task_type == TaskType::MultiTask).then(|| {
        objective
            .heads
            .iter()
            .map(|h| (h.name.clone(), h.labels.clone()))
            .collect()
    })
}

/// The manifest of the model `model_id` that `job` trained.
fn manifest(
    job: &hone_domain::resources::FineTuningJob,
    method: &Method,
    model_id: &str,
    objective: &Objective,
    result: &JobResult,
) -> Manifest {
    Manifest {
        base_model: job.base_model.clone(),
        checkpoint_epoch: None,
        created_at: chrono::Utc::now(),
        format_version: MANIFEST_VERSION,
        hone_version: env!("CARGO_PKG_VERSION").to_owned(),
        hyperparameters: job.hyperparameters.clone(),
        job_id: job.id.clone(),
        labels: objective.labels().to_vec(),
        method: method.clone(),
        metrics: Some(result.clone()),
        model_id: model_id.to_owned(),
        published_from: None,
        seed: job.seed,
        task_type: objective.task_type,
        tasks: model_tasks(objective),
        training_file: job.training_file.clone(),
        validation_file: job.validation_file.clone(),
    }
}

/// The job's result from what the training thread kept and what the reporter gathered.
pub(super) fn job_result(
    output: ThreadOutput,
    trained_examples: u64,
    elapsed: Duration,
    reporter: &mut Reporter<'_>,
) -> JobResult {
    let kept = output.kept.as_ref();
    JobResult {
        train_loss: kept.map(|m| m.train_loss).unwrap_or(f64::NAN),
        validation: kept.and_then(|m| m.validation.as_ref()).map(eval_report),
        trained_examples,
        training_seconds: elapsed.as_secs_f64(),
        best_epoch: kept.map(|m| m.epoch),
        epochs_run: Some(output.epochs_run),
        stopped_early: output.evaluation.as_ref().is_some_and(|e| e.stopped_early),
        evaluation: output.evaluation.map(|e| {
            let mut report = EvaluationReport {
                validation: None,
                multi_label: None,
                tasks: Vec::new(),
                generalization: e.generalization,
            };
            match e.validation {
                Report::Classification(r) => report.validation = Some(r),
                Report::MultiLabel(r) => report.multi_label = Some(r),
                Report::MultiTask(t) => report.tasks = t,
            }
            report
        }),
        data_report: reporter.data_report.take(),
        transferability: reporter.transferability.take(),
        trained_tokens: reporter
            .tokens_per_epoch
            .map(|t| t * u64::from(output.epochs_run)),
        result_file: None,
        quantization: output.quantization.map(|q| QuantizationReport {
            kind: match q.kind {
                QuantizationType::Int8 => Quantization::Int8,
            },
            validation_fp32: q.validation.as_ref().map(|v| eval_report(&v.fp32)),
            validation_quantized: q.validation.as_ref().map(|v| eval_report(&v.quantized)),
        }),
        learning_rate_search: output.learning_rate_search,
    }
}

/// Publishes the model the training thread saved under `out_dir` and marks the job
/// succeeded; when the job is no longer this attempt's, the upload is taken back.
pub(super) async fn publish(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    claimed: &ClaimedJob,
    reporter: &Reporter<'_>,
    objective: &Objective,
    result: &JobResult,
    out_dir: &Path,
) -> Result<(), Failure> {
    let job = &claimed.job;
    let attempt = claimed.attempt;
    let job_method = reporter
        .method
        .clone()
        .unwrap_or_else(|| job.method.clone());
    let model_id = ModelId::for_job(
        &job.base_model,
        job.suffix.as_deref(),
        &hone_domain::JobId::parse(&job.id)
            .ok_or_else(|| transient("worker_error", "malformed job id"))?,
    );
    let model_dir = out_dir.join("model");
    manifest(job, &job_method, model_id.as_str(), objective, result)
        .write(&model_dir)
        .map_err(|e| transient("storage_error", format!("cannot write the manifest: {e}")))?;
    let key = hone_store::models::attempt_storage_key(model_id.as_str(), attempt);
    let bytes = hone_store::dir_bytes(&model_dir)
        .await
        .map_err(|e| transient("storage_error", format!("cannot size the model: {e}")))?;
    artifacts
        .put_dir(&key, &model_dir)
        .await
        .map_err(|e| transient("storage_error", format!("cannot publish the model: {e}")))?;
    // The results file goes with the success, in its transaction; a job whose curve
    // cannot be stored still publishes its model, without the file.
    let results =
        match super::results::store(artifacts, &job.id, &reporter.steps, &reporter.epochs).await {
            Ok(file) => Some(file),
            Err(e) => {
                tracing::warn!(error = %e, "cannot store the results file");
                None
            }
        };
    let result = &JobResult {
        result_file: results.as_ref().map(|f| f.id.to_string()),
        ..result.clone()
    };
    let new_model = NewModel {
        id: model_id.to_string(),
        job_id: job.id.clone(),
        base_model: job.base_model.clone(),
        storage_key: key.clone(),
        task_type: objective.task_type,
        labels: objective.labels().to_vec(),
        tasks: model_tasks(objective),
        checkpoint_epoch: None,
        bytes,
    };
    match db
        .succeed_job_with(&job.id, attempt, &new_model, result, results.as_ref())
        .await
    {
        Ok(true) => {
            tracing::info!(model = %model_id, seconds = result.training_seconds, "job succeeded");
            Ok(())
        }
        Ok(false) => {
            // The lease was lost meanwhile: the job is someone else's now.
            take_back(artifacts, &key, results.as_ref()).await;
            Ok(())
        }
        Err(e) => match recorded(db, &job.id, model_id.as_str()).await {
            // The error hid a commit that happened: the job is done, its model stays.
            Some(true) => {
                tracing::info!(model = %model_id, error = %e, "job succeeded (its commit answered with an error)");
                Ok(())
            }
            Some(false) => {
                take_back(artifacts, &key, results.as_ref()).await;
                Err(match e {
                    StoreError::Unwritable(what) => {
                        tracing::warn!(%what, "the job's result cannot be stored");
                        user(
                            "training_diverged",
                            "the training produced a loss or metric that is not a finite \
                             number, so its result cannot be kept; try a lower learning rate",
                            None,
                        )
                    }
                    other => {
                        tracing::warn!(error = %other, "cannot record the job's success");
                        transient("storage_error", "the job's success could not be recorded")
                    }
                })
            }
            // Unknown: keep the upload (at worst an orphan for the sweep, never a
            // succeeded job without its model); another attempt will tell.
            None => {
                tracing::warn!(error = %e, "cannot record the job's success, nor read whether it was");
                Err(transient(
                    "storage_error",
                    "the job's success could not be recorded",
                ))
            }
        },
    }
}

/// Whether the job's success under `model` was recorded, asked a few times over about
/// 7 s; `None` when the database cannot say.
async fn recorded(db: &Db, id: &str, model: &str) -> Option<bool> {
    let mut wait = Duration::from_secs(1);
    for _ in 0..3 {
        match db.recorded_success(id, model).await {
            Ok(done) => return Some(done),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read back the job's status");
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
        }
    }
    None
}

/// Removes what an attempt uploaded for a success that was not recorded.
async fn take_back(
    artifacts: &Arc<dyn ArtifactStore>,
    model_key: &str,
    results: Option<&hone_store::files::ResultsFile>,
) {
    let _ = artifacts.delete(model_key).await;
    if let Some(f) = results {
        let _ = artifacts
            .delete(&hone_store::files::storage_key(&f.id))
            .await;
    }
}
