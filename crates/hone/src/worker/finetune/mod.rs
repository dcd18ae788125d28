//! The fine-tuning job body: read and check the data, train on a dedicated OS thread
//! (libtorch work never runs on the async runtime), report progress, publish the model.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hone_domain::job::MethodType;
use hone_domain::resources::{EvaluationReport, JobResult};
use hone_domain::ModelId;
use hone_store::events::NewEvent;
use hone_store::feature_cache as features;
use hone_store::models::NewModel;
use hone_store::queue::{ClaimedJob, Lease};
use hone_store::{ArtifactStore, Db};
use hone_train::train::TrainError;
use hone_train::Report;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{StopFlags, WorkerSettings};

mod failure;
mod prepare;
mod progress;
mod publish;
mod targets;
mod thread;

use failure::{classify, transient, Failure};
use prepare::{prepare, Prepared, Validation};
use progress::{eval_report, resume_point, Reporter};
use publish::{model_tasks, write_manifest};
use targets::describe;
use thread::{run_training, FeatureCacheKeys, ThreadInput};

#[tracing::instrument(skip_all, fields(job.id = %claimed.job.id, attempt = claimed.attempt))]
pub async fn run_job(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
    flags: Arc<StopFlags>,
) {
    let job = &claimed.job;
    let attempt = claimed.attempt;
    let outcome = match prepare(db, artifacts, settings, claimed).await {
        Ok(prepared) => train_and_publish(db, artifacts, settings, claimed, prepared, &flags).await,
        Err(f) => Err(f),
    };
    let result = match outcome {
        Ok(()) => return,
        Err(Failure::User(e)) => db.fail_job(&job.id, attempt, &e, false).await.map(|_| ()),
        Err(Failure::Transient(e)) if e.code == "stopped" => {
            finish_stopped(db, artifacts, &job.id, attempt, &flags).await
        }
        Err(Failure::Transient(e)) => db.fail_job(&job.id, attempt, &e, true).await.map(|_| ()),
    };
    if let Err(e) = result {
        // The lease will expire and the rescuer will requeue the job.
        tracing::error!(error = %e, "could not record the job's outcome");
    }
}

/// Training stopped early: say why in the job's state.
async fn finish_stopped(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    job_id: &str,
    attempt: i32,
    flags: &StopFlags,
) -> Result<(), hone_store::StoreError> {
    if flags.lease_lost.load(Ordering::Relaxed) {
        return Ok(()); // another worker owns the job now
    }
    if flags.cancelled.load(Ordering::Relaxed) {
        // A cancelled job leaves nothing behind: its checkpoints go with it, before
        // the job reads `cancelled`, so that a client who sees that status finds no
        // files left. Every attempt's checkpoints lie under the job's folder, recorded
        // or not (a stale attempt's upload is never recorded).
        if let Lease::Held { .. } = db.cancel_requested(job_id, attempt).await? {
            let folder = hone_store::checkpoints::job_prefix(job_id);
            if let Err(e) = artifacts.delete(&folder).await {
                tracing::warn!(error = %e, folder, "cannot remove a cancelled job's checkpoints");
            }
        }
        if db.finish_cancelled(job_id, attempt).await? {
            db.delete_checkpoints(job_id).await?;
        }
    } else {
        db.release_job(job_id, attempt).await?;
    }
    Ok(())
}

async fn train_and_publish(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
    prepared: Prepared,
    flags: &Arc<StopFlags>,
) -> Result<(), Failure> {
    let job = &claimed.job;
    let attempt = claimed.attempt;
    let hp = &job.hyperparameters;
    let out_dir = settings.scratch_dir.join(format!("{}-{attempt}", job.id));
    let _ = std::fs::remove_dir_all(&out_dir);
    // Whatever ends the attempt (success, failure, cancel, shutdown), its scratch
    // files go: the training thread has stopped by the time this function returns.
    let _scratch = ScratchDir(out_dir.clone());
    std::fs::create_dir_all(&out_dir).map_err(|e| {
        transient(
            "worker_error",
            format!("cannot create {}: {e}", out_dir.display()),
        )
    })?;
    let trained_examples = prepared.train_rows.len() as u64;
    let validation_note = match &prepared.validation {
        Validation::None => "no validation data".to_owned(),
        Validation::Split(rows) => format!("{} held out for validation", rows.len()),
        Validation::File(data, _) => format!("{} validation examples", data.len()),
    };
    let (method, frozen) = job.method.effective();
    db.add_event(
        &job.id,
        attempt,
        &NewEvent::info(format!(
            "Fine-tuning {}{} ({}{}) on {} examples ({validation_note}), {}, for {} epochs",
            job.base_model,
            if job.method.from_scratch {
                " from random weights (the from-scratch baseline)"
            } else {
                ""
            },
            method.as_str(),
            frozen.map_or(String::new(), |k| format!(", {k} layers frozen")),
            trained_examples,
            describe(&prepared.objective),
            hp.epochs
        )),
    )
    .await
    .map_err(|e| transient("storage_error", e.to_string()))?;

    // The feature cache: only strategies that train on frozen features fill it.
    // A from-scratch baseline's frozen features are those of random weights: never
    // the cache's.
    let needs_features = matches!(method, MethodType::FeatureExtraction | MethodType::Auto)
        && !job.method.from_scratch;
    let mut cache = FeatureCacheKeys::default();
    if needs_features {
        let weights = features::base_weights_digest(&prepared.base_dir)
            .await
            .map_err(|e| transient("worker_error", format!("cannot read the base model: {e}")))?;
        // An image model's features also depend on its preprocessing (input size,
        // normalisation), which config.json holds: its digest joins the key.
        let base_key = if prepared.file.images.is_empty() {
            job.base_model.clone()
        } else {
            let config = tokio::fs::read(prepared.base_dir.join("config.json"))
                .await
                .map_err(|e| {
                    transient("worker_error", format!("cannot read the base model: {e}"))
                })?;
            format!(
                "{}@{}",
                job.base_model,
                hex::encode(Sha256::digest(&config))
            )
        };
        let key = |file_sha: &str| {
            features::cache_key(&base_key, &weights, file_sha, hp.max_seq_len, hp.pooling)
        };
        let train =
            features::lookup(artifacts, key(&prepared.file_sha256), &out_dir, "train").await;
        if train.1.is_some() {
            db.add_event(
                &job.id,
                attempt,
                &NewEvent::info(
                    "Reusing the cached features of the training file: the frozen encoder does not run again",
                ),
            )
            .await
            .map_err(|e| transient("storage_error", e.to_string()))?;
        }
        cache.train = Some(train);
        if let Validation::File(_, sha) = &prepared.validation {
            cache.validation =
                Some(features::lookup(artifacts, key(sha), &out_dir, "validation").await);
        }
    }

    let mut reporter = Reporter::new(db, artifacts, job, attempt, prepared.data_report);
    let resume_from = resume_point(db, artifacts, &mut reporter, attempt, &out_dir).await;

    let input = ThreadInput {
        resume_from,
        base_dir: prepared.base_dir.clone(),
        objective: prepared.objective.clone(),
        file: prepared.file,
        train_rows: prepared.train_rows,
        validation: prepared.validation,
        method: job.method.clone(),
        hyperparameters: hp.clone(),
        seed: job.seed as u64,
        device: settings.device,
        threads: settings.threads,
        out_dir: out_dir.clone(),
        cache,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let observer_flags = flags.clone();
    let span = tracing::Span::current();
    let started = Instant::now();
    std::thread::Builder::new()
        .name(format!("hone-train-{}", &job.id))
        .spawn(move || {
            let _entered = span.enter();
            let result = run_training(input, &tx, &observer_flags);
            let _ = done_tx.send(result);
        })
        .map_err(|e| {
            transient(
                "worker_error",
                format!("cannot start the training thread: {e}"),
            )
        })?;

    let mut done_rx = done_rx;
    let outcome = loop {
        tokio::select! {
            Some(update) = rx.recv() => reporter.handle(update).await,
            result = &mut done_rx => break result,
        }
    };
    while let Ok(update) = rx.try_recv() {
        reporter.handle(update).await;
    }
    reporter.flush().await;
    reporter.save_metrics().await;
    let stopped = || transient("stopped", "training stopped");
    let output = match outcome {
        Err(_) => return Err(transient("worker_error", "the training thread died")),
        Ok(Err(TrainError::Cancelled)) => return Err(stopped()),
        Ok(Err(e)) if flags.any() => {
            tracing::warn!(error = %e, "training ended while stopping");
            return Err(stopped());
        }
        Ok(Err(e)) => return Err(classify(e)),
        Ok(Ok(output)) => output,
    };

    let kept = output.kept.as_ref();
    let result = JobResult {
        train_loss: kept.map(|m| m.train_loss).unwrap_or(f64::NAN),
        validation: kept.and_then(|m| m.validation.as_ref()).map(eval_report),
        trained_examples,
        training_seconds: started.elapsed().as_secs_f64(),
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
    };
    if let Some(gap) = result.evaluation.as_ref().map(|e| &e.generalization) {
        if gap.overfitting {
            reporter
                .event(NewEvent::warn(format!(
                    "Possible overfitting: training accuracy {:.3} vs validation accuracy {:.3} \
                     (gap {:.3}); consider more data, fewer epochs, early stopping or a \
                     frozen strategy",
                    gap.train_accuracy, gap.validation_accuracy, gap.gap
                )))
                .await;
        }
    }
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
    write_manifest(
        &model_dir,
        job,
        &job_method,
        model_id.as_str(),
        &prepared.objective,
        &result,
    )
    .map_err(|e| transient("storage_error", format!("cannot write the manifest: {e}")))?;
    let key = hone_store::models::attempt_storage_key(model_id.as_str(), attempt);
    artifacts
        .put_dir(&key, &model_dir)
        .await
        .map_err(|e| transient("storage_error", format!("cannot publish the model: {e}")))?;
    let new_model = NewModel {
        id: model_id.to_string(),
        job_id: job.id.clone(),
        base_model: job.base_model.clone(),
        storage_key: key.clone(),
        task_type: prepared.objective.task_type,
        labels: prepared.objective.labels().to_vec(),
        tasks: model_tasks(&prepared.objective),
        checkpoint_epoch: None,
    };
    match db.succeed_job(&job.id, attempt, &new_model, &result).await {
        Ok(true) => {
            tracing::info!(model = %model_id, seconds = result.training_seconds, "job succeeded");
            Ok(())
        }
        Ok(false) => {
            // The lease was lost meanwhile: the job is someone else's now.
            let _ = artifacts.delete(&key).await;
            Ok(())
        }
        Err(e) => {
            let _ = artifacts.delete(&key).await;
            Err(transient("storage_error", e.to_string()))
        }
    }
}

/// A scratch directory removed when dropped.
struct ScratchDir(PathBuf);

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = %self.0.display(), "cannot remove scratch files");
            }
        }
    }
}
