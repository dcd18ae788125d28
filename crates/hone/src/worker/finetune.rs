//! The fine-tuning job body: read and check the data, train on a dedicated OS thread
//! (libtorch work never runs on the async runtime), report progress, publish the model.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_domain::dataset::{parse_examples, Example};
use hone_domain::resources::{EvalReport, JobError, JobProgress, JobResult};
use hone_domain::ModelId;
use hone_store::jobs::{ClaimedJob, NewEvent};
use hone_store::models::NewModel;
use hone_store::{ArtifactStore, Db};
use hone_train::train::{
    fine_tune, EpochMetrics, StepProgress, TrainConfig, TrainData, TrainError, TrainJob,
    TrainObserver,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{StopFlags, WorkerSettings};

/// Why a job could not be done.
enum Failure {
    /// The job itself is wrong (its data, its base model): retrying cannot help.
    User(JobError),
    /// Something that may work on another attempt.
    Transient(JobError),
}

fn user(code: &str, message: impl Into<String>, param: Option<&str>) -> Failure {
    Failure::User(JobError {
        code: code.into(),
        message: message.into(),
        param: param.map(str::to_owned),
    })
}

fn transient(code: &str, message: impl Into<String>) -> Failure {
    Failure::Transient(JobError {
        code: code.into(),
        message: message.into(),
        param: None,
    })
}

struct Prepared {
    base_dir: PathBuf,
    labels: Vec<String>,
    train: TrainData,
    validation: Option<TrainData>,
}

enum Update {
    Step(StepProgress),
    Epoch(EpochMetrics),
}

struct Observer {
    tx: mpsc::UnboundedSender<Update>,
    flags: Arc<StopFlags>,
}

impl TrainObserver for Observer {
    fn on_step(&mut self, p: &StepProgress) {
        let _ = self.tx.send(Update::Step(p.clone()));
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        let _ = self.tx.send(Update::Epoch(m.clone()));
    }
    fn cancelled(&self) -> bool {
        self.flags.any()
    }
}

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
            finish_stopped(db, &job.id, attempt, &flags).await
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
    job_id: &str,
    attempt: i32,
    flags: &StopFlags,
) -> Result<(), hone_store::StoreError> {
    if flags.lease_lost.load(Ordering::Relaxed) {
        return Ok(()); // another worker owns the job now
    }
    if flags.cancelled.load(Ordering::Relaxed) {
        db.finish_cancelled(job_id, attempt).await?;
    } else {
        db.release_job(job_id, attempt).await?;
    }
    Ok(())
}

async fn read_examples(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    file_id: &str,
    param: &str,
) -> Result<Vec<Example>, Failure> {
    let file = db.get_file(file_id).await.map_err(|e| match e {
        hone_store::StoreError::NotFound => user(
            "file_not_found",
            format!("{param} {file_id} was deleted"),
            Some(param),
        ),
        other => transient("storage_error", other.to_string()),
    })?;
    let bytes = artifacts
        .read(&file.storage_key)
        .await
        .map_err(|e| transient("storage_error", format!("cannot read {file_id}: {e}")))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != file.object.sha256 {
        return Err(user(
            "file_corrupted",
            format!("{file_id} no longer matches the checksum it was uploaded with"),
            Some(param),
        ));
    }
    parse_examples(file.object.format, &bytes)
        .map_err(|e| user("invalid_file", format!("{file_id}: {e}"), Some(param)))
}

async fn prepare(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
) -> Result<Prepared, Failure> {
    let job = &claimed.job;
    let base_dir = settings.models_dir.join(&job.base_model);
    if !base_dir.join("config.json").is_file() {
        return Err(user(
            "base_model_unavailable",
            format!(
                "base model {} is not installed on this worker",
                job.base_model
            ),
            Some("base_model"),
        ));
    }
    let train_examples = read_examples(db, artifacts, &job.training_file, "training_file").await?;
    let labels: Vec<String> = train_examples
        .iter()
        .map(|e| e.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let index: BTreeMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.as_str(), i))
        .collect();
    let to_data = |examples: Vec<Example>, param: &str| -> Result<TrainData, Failure> {
        let mut data = TrainData {
            texts: Vec::with_capacity(examples.len()),
            labels: Vec::with_capacity(examples.len()),
        };
        for e in examples {
            let Some(&i) = index.get(e.label.as_str()) else {
                return Err(user(
                    "unknown_label",
                    format!(
                        "label {:?} of the {param} does not occur in the training file",
                        e.label
                    ),
                    Some(param),
                ));
            };
            data.texts.push(e.text);
            data.labels.push(i);
        }
        Ok(data)
    };
    let validation = match &job.validation_file {
        Some(id) => Some(to_data(
            read_examples(db, artifacts, id, "validation_file").await?,
            "validation_file",
        )?),
        None => None,
    };
    let train = to_data(train_examples, "training_file")?;
    Ok(Prepared {
        base_dir,
        labels,
        train,
        validation,
    })
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
    let trained_examples = prepared.train.texts.len() as u64;
    let total_epochs = hp.epochs;
    db.add_event(
        &job.id,
        attempt,
        &NewEvent::info(format!(
            "Fine-tuning {} ({} method) on {} examples, {} labels, for {} epochs",
            job.base_model,
            serde_json::to_value(job.method.kind)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("full"),
            trained_examples,
            prepared.labels.len(),
            total_epochs
        )),
    )
    .await
    .map_err(|e| transient("storage_error", e.to_string()))?;

    let config = TrainConfig {
        epochs: hp.epochs,
        batch_size: hp.batch_size as usize,
        learning_rate: hp.learning_rate,
        warmup_ratio: hp.warmup_ratio,
        weight_decay: hp.weight_decay,
        max_seq_len: hp.max_seq_len as usize,
        seed: job.seed as u64,
        grad_clip: 1.0,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = oneshot::channel();
    let observer_flags = flags.clone();
    let device = settings.device;
    let thread_out = out_dir.clone();
    let labels = prepared.labels.clone();
    let span = tracing::Span::current();
    let started = Instant::now();
    std::thread::Builder::new()
        .name(format!("hone-train-{}", &job.id))
        .spawn(move || {
            let _entered = span.enter();
            let mut observer = Observer {
                tx,
                flags: observer_flags,
            };
            let result = fine_tune(
                TrainJob {
                    base_model_dir: &prepared.base_dir,
                    label_names: labels,
                    train: prepared.train,
                    validation: prepared.validation,
                    config,
                    device,
                },
                &mut observer,
            )
            .and_then(|model| model.save(&thread_out));
            let _ = done_tx.send(result);
        })
        .map_err(|e| {
            transient(
                "worker_error",
                format!("cannot start the training thread: {e}"),
            )
        })?;

    let mut reporter = Reporter::new(db, &job.id, attempt, total_epochs);
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
    let stopped = || transient("stopped", "training stopped");
    match outcome {
        Err(_) => return Err(transient("worker_error", "the training thread died")),
        Ok(Err(TrainError::Cancelled)) => return Err(stopped()),
        Ok(Err(e)) if flags.any() => {
            tracing::warn!(error = %e, "training ended while stopping");
            return Err(stopped());
        }
        Ok(Err(e)) => return Err(classify(e)),
        Ok(Ok(())) => {}
    }

    let last = reporter.last_epoch.clone();
    let result = JobResult {
        train_loss: last.as_ref().map(|m| m.train_loss).unwrap_or(f64::NAN),
        validation: last
            .as_ref()
            .and_then(|m| m.validation.as_ref())
            .map(|v| EvalReport {
                loss: v.loss,
                accuracy: v.accuracy,
                macro_f1: v.macro_f1,
                examples: v.examples as u64,
            }),
        trained_examples,
        training_seconds: started.elapsed().as_secs_f64(),
    };
    let model_id = ModelId::for_job(
        &job.base_model,
        job.suffix.as_deref(),
        &hone_domain::JobId::parse(&job.id)
            .ok_or_else(|| transient("worker_error", "malformed job id"))?,
    );
    write_manifest(&out_dir, job, model_id.as_str(), &prepared.labels, &result)
        .map_err(|e| transient("storage_error", format!("cannot write the manifest: {e}")))?;
    let key = hone_store::models::storage_key(model_id.as_str());
    artifacts
        .put_dir(&key, &out_dir)
        .await
        .map_err(|e| transient("storage_error", format!("cannot publish the model: {e}")))?;
    let _ = std::fs::remove_dir_all(&out_dir);
    let new_model = NewModel {
        id: model_id.to_string(),
        job_id: job.id.clone(),
        base_model: job.base_model.clone(),
        storage_key: key.clone(),
        labels: prepared.labels,
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

fn classify(e: TrainError) -> Failure {
    if e.is_user_error() {
        user("invalid_job", e.to_string(), None)
    } else {
        transient("training_error", e.to_string())
    }
}

fn write_manifest(
    dir: &Path,
    job: &hone_domain::resources::FineTuningJob,
    model_id: &str,
    labels: &[String],
    result: &JobResult,
) -> std::io::Result<()> {
    let manifest = serde_json::json!({
        "format_version": 1,
        "model_id": model_id,
        "job_id": job.id,
        "base_model": job.base_model,
        "task": "single_label_classification",
        "labels": labels,
        "method": job.method,
        "hyperparameters": job.hyperparameters,
        "seed": job.seed,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "metrics": result,
        "created_at": chrono::Utc::now(),
        "hone_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
}

/// Turns training updates into progress and events, without flooding the database:
/// progress at most once a second, a metrics event about fifty times per job.
struct Reporter<'a> {
    db: &'a Db,
    job_id: &'a str,
    attempt: i32,
    total_epochs: u32,
    last_write: Option<Instant>,
    pending: Option<JobProgress>,
    last_epoch: Option<EpochMetrics>,
}

impl<'a> Reporter<'a> {
    fn new(db: &'a Db, job_id: &'a str, attempt: i32, total_epochs: u32) -> Self {
        Self {
            db,
            job_id,
            attempt,
            total_epochs,
            last_write: None,
            pending: None,
            last_epoch: None,
        }
    }

    async fn handle(&mut self, update: Update) {
        match update {
            Update::Step(p) => {
                let elapsed = p.elapsed.as_secs_f64();
                let eta = (p.step > 0)
                    .then(|| elapsed / p.step as f64 * p.total_steps.saturating_sub(p.step) as f64);
                self.pending = Some(JobProgress {
                    epoch: p.epoch,
                    total_epochs: self.total_epochs,
                    step: p.step,
                    total_steps: p.total_steps,
                    train_loss: Some(p.loss),
                    elapsed_seconds: elapsed,
                    eta_seconds: eta,
                });
                let every = (p.total_steps / 50).max(1);
                if p.step % every == 0 || p.step == p.total_steps {
                    self.event(NewEvent::metrics(
                        format!(
                            "Step {}/{}: training loss {:.4}",
                            p.step, p.total_steps, p.loss
                        ),
                        serde_json::json!({
                            "step": p.step, "total_steps": p.total_steps, "epoch": p.epoch,
                            "train_loss": p.loss, "learning_rate": p.learning_rate,
                        }),
                    ))
                    .await;
                }
                if self
                    .last_write
                    .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    self.flush().await;
                }
            }
            Update::Epoch(m) => {
                let mut message = format!(
                    "Epoch {}/{} done: training loss {:.4}",
                    m.epoch, self.total_epochs, m.train_loss
                );
                let mut data = serde_json::json!({ "epoch": m.epoch, "train_loss": m.train_loss });
                if let Some(v) = &m.validation {
                    message.push_str(&format!(
                        ", validation loss {:.4}, accuracy {:.3}, macro-F1 {:.3}",
                        v.loss, v.accuracy, v.macro_f1
                    ));
                    data["validation_loss"] = v.loss.into();
                    data["validation_accuracy"] = v.accuracy.into();
                    data["validation_macro_f1"] = v.macro_f1.into();
                }
                self.event(NewEvent::metrics(message, data)).await;
                self.last_epoch = Some(m);
            }
        }
    }

    async fn event(&self, event: NewEvent) {
        if let Err(e) = self.db.add_event(self.job_id, self.attempt, &event).await {
            tracing::warn!(error = %e, "cannot record a job event");
        }
    }

    async fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            if let Err(e) = self.db.set_progress(self.job_id, self.attempt, &p).await {
                tracing::warn!(error = %e, "cannot record job progress");
            }
            self.last_write = Some(Instant::now());
        }
    }
}
