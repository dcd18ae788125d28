//! The fine-tuning job, by stage: [`prepare`] reads and checks the data, [`thread`]
//! trains on a dedicated OS thread (libtorch never runs on the async runtime),
//! [`progress`] reports what it does, [`publish`] publishes the model. This file runs the
//! stages in order and says how an attempt ends.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use hone_domain::job::{JobStatus, MethodType};
use hone_domain::resources::JobResult;
use hone_store::events::NewEvent;
use hone_store::feature_cache as features;
use hone_store::queue::{ClaimedJob, Lease};
use hone_store::{ArtifactStore, Db};
use hone_train::model_dir::CONFIG_FILE;
use sha2::{Digest, Sha256};

use super::{telemetry, StopFlags, WorkerSettings};

mod failure;
mod prepare;
mod progress;
mod publish;
mod results;
mod targets;
mod thread;

use failure::{transient, Failure};
use prepare::{prepare, Prepared, Validation};
use progress::{resume_point, Reporter};
use targets::describe;
use thread::{FeatureCacheKeys, ThreadInput};

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
    let started = Instant::now();
    let mut modality = "unknown";
    let outcome = match prepare(db, artifacts, settings, claimed).await {
        Ok(prepared) => {
            modality = modality_of(&prepared.file);
            train_and_publish(db, artifacts, settings, claimed, prepared, &flags).await
        }
        Err(f) => Err(f),
    };
    let result = match outcome {
        Ok(()) => Ok("succeeded"),
        Err(Failure::User(e)) => db
            .fail_job(&job.id, attempt, &e, false)
            .await
            .map(|_| "failed"),
        Err(Failure::Transient(e)) if e.code == failure::STOPPED => {
            finish_stopped(db, artifacts, settings, &job.id, attempt, &flags).await
        }
        Err(Failure::Transient(e)) => {
            db.fail_job(&job.id, attempt, &e, true)
                .await
                .map(|status| match status {
                    JobStatus::Queued => "retried",
                    JobStatus::Running => "lost_lease",
                    _ => "failed",
                })
        }
    };
    let outcome = result.unwrap_or_else(|e| {
        // The lease will expire and the rescuer will requeue the job.
        tracing::error!(error = %e, "could not record the job's outcome");
        "unrecorded"
    });
    if matches!(outcome, "succeeded" | "failed" | "timed_out") {
        if !settings.keep_all_checkpoints {
            prune_checkpoints(db, artifacts, &job.id).await;
        }
        drop_optimizer_state(db, artifacts, &job.id).await;
    }
    let labels = telemetry::AttemptLabels {
        outcome,
        method: job.method.kind.as_str(),
        modality,
    };
    telemetry::attempt_ended(labels, started.elapsed());
}

/// The job has ended: of its checkpoints only the last, the best and the published
/// stay (`checkpoint_retention = "best_and_last"`, the default).
async fn prune_checkpoints(db: &Db, artifacts: &Arc<dyn ArtifactStore>, job_id: &str) {
    match db.prune_checkpoints(job_id).await {
        Ok(keys) => {
            for key in keys {
                if let Err(e) = artifacts.delete(&key).await {
                    tracing::warn!(error = %e, key, "cannot remove a pruned checkpoint; the orphan sweep will");
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot prune the job's checkpoints"),
    }
}

/// The job has ended: nothing resumes it, so the checkpoints it keeps lose their
/// optimizer moments and best-epoch copy (`state.safetensors`, about twice the
/// weights); their weights stay, to publish. What this misses (a worker stopped in
/// between), the orphan sweep takes.
async fn drop_optimizer_state(db: &Db, artifacts: &Arc<dyn ArtifactStore>, job_id: &str) {
    match db.end_resumability(job_id).await {
        Ok(keys) => {
            db.drop_optimizer_state(artifacts.as_ref(), &keys).await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot end the job's checkpoints' resumability"),
    }
}

/// The metrics' name of a training file's modality.
fn modality_of(file: &hone_train::data::TrainData) -> &'static str {
    if file.images.is_empty() {
        "text"
    } else {
        "image"
    }
}

/// Training stopped early: say why in the job's state; returns how the attempt ended.
async fn finish_stopped(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    job_id: &str,
    attempt: i32,
    flags: &StopFlags,
) -> Result<&'static str, hone_store::StoreError> {
    if flags.lease_lost.load(Ordering::Relaxed) {
        tracing::warn!(job.id = %job_id, "lease lost: another worker owns the job now; stopped it");
        return Ok("lost_lease");
    }
    if flags.timed_out.load(Ordering::Relaxed) && !flags.cancelled.load(Ordering::Relaxed) {
        // Past its time: failed for good (another attempt would run as long), its
        // checkpoints kept for publishing.
        let limit = settings.max_attempt_time.unwrap_or_default().as_secs();
        let error = hone_domain::resources::JobError {
            code: "job_timeout".into(),
            message: format!(
                "the job trained longer than this service allows one attempt \
                 ({limit} s, job_max_seconds) and was stopped; its checkpoints are kept \
                 and can be published"
            ),
            param: None,
        };
        db.fail_job(job_id, attempt, &error, false).await?;
        return Ok("timed_out");
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
        Ok("cancelled")
    } else if flags.paused.load(Ordering::Relaxed) {
        // Stopped at a checkpoint (or on shutdown) while paused: the resumed job goes
        // on from its latest checkpoint, the one named in the event.
        let epoch = db.resume_point(job_id, attempt).await?.map(|p| p.epoch);
        db.finish_paused(job_id, attempt, epoch).await?;
        Ok("paused")
    } else {
        db.release_job(job_id, attempt).await?;
        Ok("released")
    }
}

async fn train_and_publish(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
    prepared: Prepared,
    flags: &Arc<StopFlags>,
) -> Result<(), Failure> {
    let claimed = &sized_for_its_data(db, claimed, prepared.train_rows.len()).await?;
    let job = &claimed.job;
    let attempt = claimed.attempt;
    let out_dir = settings.scratch_dir.join(format!("{}-{attempt}", job.id));
    // Whatever ends the attempt (success, failure, cancel, shutdown), its scratch
    // files go: the training thread has stopped by the time this function returns.
    let _scratch = ScratchDir::create(out_dir.clone())?;
    let trained_examples = prepared.train_rows.len() as u64;
    announce(db, claimed, &prepared).await?;
    let cache = feature_cache(db, artifacts, claimed, &prepared, &out_dir).await?;

    let Prepared {
        base_dir,
        objective,
        file,
        train_rows,
        validation,
        data_report,
        ..
    } = prepared;
    let mut reporter = Reporter::new(db, artifacts, job, attempt, data_report);
    reporter.feature_cache_max_bytes = settings.feature_cache_max_bytes;
    reporter.count_examples(trained_examples, modality_of(&file));
    let resume_from = resume_point(db, artifacts, &mut reporter, attempt, &out_dir).await;
    let input = ThreadInput {
        resume_from,
        base_dir,
        objective: objective.clone(),
        file,
        train_rows,
        validation,
        method: job.method.clone(),
        hyperparameters: job.hyperparameters.clone(),
        seed: job.seed as u64,
        device: settings.device,
        threads: settings.threads,
        batch_work: settings.batch_work.clone(),
        frozen_cache_bytes: settings.frozen_cache_bytes,
        out_dir: out_dir.clone(),
        cache,
    };
    let started = Instant::now();
    let output = thread::train(input, &job.id, &mut reporter, flags).await?;
    let trained_examples = output.refit_examples.unwrap_or(trained_examples);
    let result = publish::job_result(output, trained_examples, started.elapsed(), &mut reporter);
    warn_if_overfitting(&reporter, &result).await;
    publish::publish(
        db, artifacts, claimed, &reporter, &objective, &result, &out_dir,
    )
    .await
}

/// The job with its default epochs sized for its training rows
/// ([`hone_domain::job::Hyperparameters::sized_for`]), stored when they changed so that
/// the job shows what trains. `auto` sizes the recipe of its choice once it has one.
async fn sized_for_its_data(
    db: &Db,
    claimed: &ClaimedJob,
    train_rows: usize,
) -> Result<ClaimedJob, Failure> {
    let mut sized = claimed.clone();
    let job = &mut sized.job;
    job.hyperparameters = job
        .hyperparameters
        .sized_for(job.method.effective().0, train_rows);
    if job.hyperparameters != claimed.job.hyperparameters {
        db.set_method(&job.id, claimed.attempt, &job.method, &job.hyperparameters)
            .await
            .map_err(|e| transient("storage_error", e.to_string()))?;
    }
    Ok(sized)
}

/// The job's first event: what trains, on what, how long.
async fn announce(db: &Db, claimed: &ClaimedJob, prepared: &Prepared) -> Result<(), Failure> {
    let job = &claimed.job;
    let validation_note = match &prepared.validation {
        Validation::None => "no validation data".to_owned(),
        Validation::Split(rows) => format!("{} held out for validation", rows.len()),
        Validation::File(data, _) => format!("{} validation examples", data.len()),
    };
    let (method, frozen) = job.method.effective();
    db.add_event(
        &job.id,
        claimed.attempt,
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
            prepared.train_rows.len(),
            describe(&prepared.objective),
            job.hyperparameters.epochs
        )),
    )
    .await
    .map(|_| ())
    .map_err(|e| transient("storage_error", e.to_string()))
}

/// The feature-cache entries of a job that may train on frozen features, with the
/// cached files copied to scratch when there are some.
async fn feature_cache(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    claimed: &ClaimedJob,
    prepared: &Prepared,
    out_dir: &Path,
) -> Result<FeatureCacheKeys, Failure> {
    let job = &claimed.job;
    let hp = &job.hyperparameters;
    let mut cache = FeatureCacheKeys::default();
    // Only strategies that train on frozen features fill it. A from-scratch baseline's
    // frozen features are those of random weights: never the cache's.
    let (method, _) = job.method.effective();
    if !matches!(method, MethodType::FeatureExtraction | MethodType::Auto)
        || job.method.from_scratch
    {
        return Ok(cache);
    }
    let weights = features::base_weights_digest(&prepared.base_dir)
        .await
        .map_err(|e| transient("worker_error", format!("cannot read the base model: {e}")))?;
    // An image model's features also depend on its preprocessing (input size,
    // normalisation), which config.json holds: its digest joins the key.
    let base_key = if prepared.file.images.is_empty() {
        job.base_model.clone()
    } else {
        let config = tokio::fs::read(prepared.base_dir.join(CONFIG_FILE))
            .await
            .map_err(|e| transient("worker_error", format!("cannot read the base model: {e}")))?;
        format!(
            "{}@{}",
            job.base_model,
            hex::encode(Sha256::digest(&config))
        )
    };
    let key = |file_sha: &str| {
        features::cache_key(
            &claimed.project,
            file_sha,
            &base_key,
            &weights,
            file_sha,
            hp.max_seq_len,
            hp.pooling,
        )
    };
    let train = features::lookup(db, artifacts, key(&prepared.file_sha256), out_dir, "train").await;
    if train.1.is_some() {
        db.add_event(
            &job.id,
            claimed.attempt,
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
            Some(features::lookup(db, artifacts, key(sha), out_dir, "validation").await);
    }
    Ok(cache)
}

/// A warning event when the final model fits its training data much better than the
/// validation data.
async fn warn_if_overfitting(reporter: &Reporter<'_>, result: &JobResult) {
    let Some(gap) = result.evaluation.as_ref().map(|e| &e.generalization) else {
        return;
    };
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

/// A scratch directory, created empty and removed when dropped.
struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Empties and creates `dir`. The guard exists before the directory does, so a
    /// half-made one goes too.
    fn create(dir: PathBuf) -> Result<Self, Failure> {
        let _ = std::fs::remove_dir_all(&dir);
        let guard = Self(dir);
        std::fs::create_dir_all(&guard.0).map_err(|e| {
            transient(
                "worker_error",
                format!("cannot create {}: {e}", guard.0.display()),
            )
        })?;
        Ok(guard)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(error = %e, dir = %self.0.display(), "cannot remove scratch files");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_store_drops_the_file_training_keeps_its_optimizer_state_in() {
        assert_eq!(
            hone_store::checkpoints::OPTIMIZER_STATE_FILE,
            hone_train::resume::STATE_TENSORS_FILE
        );
        assert_eq!(
            hone_store::checkpoints::WEIGHTS_FILE,
            hone_train::resume::WEIGHTS_FILE
        );
    }
}
