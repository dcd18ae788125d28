//! The fine-tuning job body: read and check the data, train on a dedicated OS thread
//! (libtorch work never runs on the async runtime), report progress, publish the model.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_domain::data_report::{DataReport, DataReportBuilder};
use hone_domain::dataset::images::read_image_examples;
use hone_domain::dataset::{parse_examples, Example, Modality, TaskType};
use hone_domain::job::{
    choose_method, AutoEvidence, ChosenMethod, Hyperparameters, Method, MethodType,
};
use hone_domain::resources::{
    EpochPoint, EvalReport, EvaluationReport, EventLevel, FineTuningJob, JobError, JobProgress,
    JobResult, Transferability,
};
use hone_domain::split::stratified_split;
use hone_domain::ModelId;
use hone_store::events::NewEvent;
use hone_store::models::NewModel;
use hone_store::queue::{ClaimedJob, Lease};
use hone_store::{ArtifactStore, Db};
use hone_train::train::{
    fine_tune, fine_tune_with, Checkpoint, EncoderInit, EpochMetrics, Evaluation, Features,
    StepProgress, Strategy, TrainConfig, TrainData, TrainError, TrainJob, TrainObserver,
};
use hone_train::{FeatureRun, Objective, Report};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use sha2::{Digest, Sha256};
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use hone_store::feature_cache as features;

use super::{StopFlags, WorkerSettings};

mod targets;
use targets::{class_evidence, describe, objective_of, report_labels, Indexer};

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
    objective: Objective,
    /// The training file's texts and label indices, every row.
    file: TrainData,
    /// Its SHA-256, part of the feature-cache key.
    file_sha256: String,
    /// Rows of `file` trained on.
    train_rows: Vec<usize>,
    validation: Validation,
    data_report: DataReportBuilder,
}

/// Where validation data comes from.
enum Validation {
    None,
    /// Rows of the training file held out (stratified).
    Split(Vec<usize>),
    /// A validation file, with its SHA-256.
    File(TrainData, String),
}

enum Update {
    Step(StepProgress),
    Epoch(EpochMetrics),
    Notice(EventLevel, String),
    /// Token counts of the training inputs, for the data report.
    TokenLengths(Vec<usize>),
    /// Features were computed and written to this scratch file: cache them under the key.
    FeaturesComputed {
        key: String,
        path: PathBuf,
    },
    Transferability(Transferability),
    /// An epoch's weights were written; store them as the job's checkpoint.
    Checkpoint(Checkpoint),
    /// `auto` chose; progress now counts this many epochs.
    Chosen(ChosenMethod, u32),
}

struct Observer {
    tx: mpsc::UnboundedSender<Update>,
    flags: Arc<StopFlags>,
    /// A probe reports nothing but still obeys cancellation.
    quiet: bool,
}

impl TrainObserver for Observer {
    fn on_step(&mut self, p: &StepProgress) {
        if !self.quiet {
            let _ = self.tx.send(Update::Step(p.clone()));
        }
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        if !self.quiet {
            let _ = self.tx.send(Update::Epoch(m.clone()));
        }
    }
    fn cancelled(&self) -> bool {
        self.flags.any()
    }
    fn on_notice(&mut self, message: &str) {
        if !self.quiet {
            let _ = self
                .tx
                .send(Update::Notice(EventLevel::Info, message.to_owned()));
        }
    }
    fn on_checkpoint(&mut self, checkpoint: &Checkpoint) {
        if !self.quiet {
            let _ = self.tx.send(Update::Checkpoint(checkpoint.clone()));
        }
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

/// A file's examples: for an image file, `images[i]` is example `i`'s encoded image and
/// its `text` is empty.
struct FileExamples {
    examples: Vec<Example>,
    images: Vec<Vec<u8>>,
    sha256: String,
}

async fn read_examples(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    file_id: &str,
    param: &str,
) -> Result<FileExamples, Failure> {
    let file = db.get_file_of_job(file_id).await.map_err(|e| match e {
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
    let invalid = |e: hone_domain::dataset::DatasetError| {
        user("invalid_file", format!("{file_id}: {e}"), Some(param))
    };
    let (examples, images) = match file.object.modality {
        Modality::Text => (
            parse_examples(file.object.format, &bytes).map_err(invalid)?,
            Vec::new(),
        ),
        Modality::Image => read_image_examples(file.object.format, &bytes)
            .map_err(invalid)?
            .into_iter()
            .map(|e| {
                let example = Example {
                    text: String::new(),
                    text_pair: None,
                    target: e.target,
                };
                (example, e.image)
            })
            .unzip(),
    };
    Ok(FileExamples {
        examples,
        images,
        sha256: digest,
    })
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
    let FileExamples {
        examples: train_examples,
        images: train_images,
        sha256: file_sha256,
    } = read_examples(db, artifacts, &job.training_file, "training_file").await?;
    let task_type = train_examples
        .first()
        .map(|e| e.target.task_type())
        .unwrap_or_default();
    let pairs = train_examples
        .first()
        .is_some_and(|e| e.text_pair.is_some());
    let objective = objective_of(&train_examples, task_type, &job.hyperparameters)?;
    let indexer = Indexer::new(&objective);
    let to_data =
        |examples: Vec<Example>, images: Vec<Vec<u8>>, param: &str| -> Result<TrainData, Failure> {
            let mut texts = Vec::with_capacity(examples.len());
            let mut text_pairs = pairs.then(|| Vec::with_capacity(examples.len()));
            let mut targets = Vec::with_capacity(examples.len());
            for e in examples {
                match (&e.text_pair, &mut text_pairs) {
                    (Some(pair), Some(pairs)) => pairs.push(pair.clone()),
                    (None, None) => {}
                    _ => {
                        let what = if pairs { "text pairs" } else { "single texts" };
                        return Err(user(
                            "task_mismatch",
                            format!("the {param} is not made of {what} like the training file"),
                            Some(param),
                        ));
                    }
                }
                targets.push(indexer.index(&e.target, param)?);
                texts.push(e.text);
            }
            if !images.is_empty() {
                return Ok(TrainData::images(images, indexer.collect(targets)));
            }
            Ok(TrainData {
                texts,
                text_pairs,
                labels: indexer.collect(targets),
                ..TrainData::default()
            })
        };
    let file = to_data(train_examples, train_images, "training_file")?;
    let (train_rows, validation) = match &job.validation_file {
        Some(id) => {
            let v = read_examples(db, artifacts, id, "validation_file").await?;
            (
                (0..file.len()).collect(),
                Validation::File(to_data(v.examples, v.images, "validation_file")?, v.sha256),
            )
        }
        None => {
            let fraction = job.hyperparameters.validation_fraction(file.len());
            let (train, held) = stratified_split(&file.labels.strata(), fraction, job.seed as u64);
            if held.is_empty() {
                (train, Validation::None)
            } else {
                (train, Validation::Split(held))
            }
        }
    };
    let mut data_report = DataReportBuilder::new();
    let pair_of = |data: &TrainData, i: usize| -> Option<String> {
        data.text_pairs.as_ref().map(|p| p[i].clone())
    };
    // An image stands in the report as its digest: identical images count as leaked
    // into validation as identical texts do.
    let input_of = |data: &TrainData, i: usize| -> String {
        match data.images.get(i) {
            Some(image) => hex::encode(Sha256::digest(image)),
            None => data.texts[i].clone(),
        }
    };
    for &i in &train_rows {
        data_report.add_training(
            &input_of(&file, i),
            pair_of(&file, i).as_deref(),
            &report_labels(&objective, &file.labels, i),
        );
    }
    match &validation {
        Validation::None => {}
        Validation::Split(rows) => {
            for &i in rows {
                data_report.add_validation(&input_of(&file, i), pair_of(&file, i).as_deref());
            }
        }
        Validation::File(data, _) => {
            for i in 0..data.len() {
                data_report.add_validation(&input_of(data, i), pair_of(data, i).as_deref());
            }
        }
    }
    Ok(Prepared {
        base_dir,
        objective,
        file,
        file_sha256,
        train_rows,
        validation,
        data_report,
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

/// The reporter's curves, saved with each checkpoint.
#[derive(serde::Serialize)]
struct Curves<'a> {
    steps: &'a LossCurve,
    epochs: &'a [EpochMetrics],
}

#[derive(serde::Deserialize)]
struct SavedCurves {
    steps: LossCurve,
    epochs: Vec<EpochMetrics>,
}

const CURVES_FILE: &str = "curves.json";

/// The latest checkpoint an earlier attempt left, copied to scratch, with the curves
/// up to it given back to `reporter`; none for a first attempt or when there is no
/// usable checkpoint (then training starts over, as it must).
async fn resume_point(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    reporter: &mut Reporter<'_>,
    attempt: i32,
    out_dir: &Path,
) -> Option<PathBuf> {
    let job_id = &reporter.job.id;
    let point = match db.resume_point(job_id, attempt).await {
        Ok(Some(point)) => point,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, "cannot look for a checkpoint to resume from");
            return None;
        }
    };
    let dir = out_dir.join("resume");
    let copied = async {
        let from = artifacts.local_dir(&point.storage_key).await?;
        tokio::fs::create_dir_all(&dir).await?;
        let mut entries = tokio::fs::read_dir(&from).await?;
        while let Some(entry) = entries.next_entry().await? {
            tokio::fs::copy(entry.path(), dir.join(entry.file_name())).await?;
        }
        let curves: SavedCurves =
            serde_json::from_slice(&tokio::fs::read(dir.join(CURVES_FILE)).await?)?;
        Ok::<SavedCurves, std::io::Error>(curves)
    }
    .await;
    match copied {
        Ok(curves) => {
            reporter.steps = curves.steps;
            reporter.epochs = curves.epochs;
            reporter
                .event(NewEvent::info(format!(
                    "Resumed from epoch {} step {} (checkpoint of attempt {})",
                    point.epoch, point.step, point.attempt
                )))
                .await;
            Some(dir)
        }
        Err(e) => {
            reporter
                .event(NewEvent::warn(format!(
                    "Cannot read the checkpoint of epoch {} ({e}); training from the start",
                    point.epoch
                )))
                .await;
            None
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

/// Cache entries of the features a job may train on: the key, and the cached file
/// copied to scratch when there was one.
#[derive(Default)]
struct FeatureCacheKeys {
    train: Option<(String, Option<PathBuf>)>,
    validation: Option<(String, Option<PathBuf>)>,
}

/// Everything the training thread owns.
struct ThreadInput {
    base_dir: PathBuf,
    objective: Objective,
    file: TrainData,
    train_rows: Vec<usize>,
    validation: Validation,
    method: Method,
    hyperparameters: Hyperparameters,
    seed: u64,
    device: tch::Device,
    /// libtorch intra-op threads for this thread.
    threads: usize,
    out_dir: PathBuf,
    cache: FeatureCacheKeys,
    /// A checkpoint of an earlier attempt to go on from.
    resume_from: Option<PathBuf>,
}

/// What the training thread hands back besides the saved model directory.
struct ThreadOutput {
    /// The epoch whose weights were published.
    kept: Option<EpochMetrics>,
    epochs_run: u32,
    evaluation: Option<Evaluation>,
}

/// Training examples the transferability estimate scores: LogME is cheap, the
/// features are not, and a couple of thousand examples rank models reliably.
const TRANSFERABILITY_EXAMPLES: usize = 2000;

/// The whole tch side of a job, on its own OS thread: token counts, features and the
/// transferability estimate, `auto`'s choice, training, saving.
fn run_training(
    input: ThreadInput,
    tx: &mpsc::UnboundedSender<Update>,
    flags: &Arc<StopFlags>,
) -> Result<ThreadOutput, TrainError> {
    let ThreadInput {
        base_dir,
        objective,
        file,
        train_rows,
        validation,
        method,
        hyperparameters,
        seed,
        device,
        threads,
        out_dir,
        cache,
        resume_from,
    } = input;
    hone_train::threads::use_intra_op_threads(threads);
    let send = |u: Update| {
        let _ = tx.send(u);
    };
    let notice = |level: EventLevel, message: String| send(Update::Notice(level, message));
    let cancelled = || flags.any();
    let hp = &hyperparameters;
    let max_seq_len = hp.max_seq_len as usize;
    let base = hone_train::inspect_base_model(&base_dir)?;
    let hidden = base.hidden_size;
    let images = base.modality == hone_train::Modality::Image;
    let pick = |data: &TrainData, rows: &[usize]| data.select(rows);
    let train = pick(&file, &train_rows);
    let validation_data = match &validation {
        Validation::None => None,
        Validation::Split(rows) => Some(pick(&file, rows)),
        Validation::File(data, _) => Some(data.clone()),
    };

    let feature_run = FeatureRun {
        base_model_dir: &base_dir,
        max_seq_len,
        pooling: hp.pooling,
        batch_size: 64,
        device,
    };
    // Token counts mean nothing for images: `auto` sees 0 and the report leaves
    // truncation out.
    let mean_tokens = if images {
        0.0
    } else {
        let lengths = hone_train::transfer::token_lengths(
            &base_dir,
            &train.texts,
            train.text_pairs.as_deref(),
        )?;
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        send(Update::TokenLengths(lengths));
        mean
    };
    let extract = |data: &TrainData| -> Result<Tensor, TrainError> {
        if images {
            hone_train::train::extract_image_features(
                &base_dir,
                data.images.clone(),
                64,
                device,
                &cancelled,
            )
        } else {
            hone_train::extract_features(
                &feature_run,
                &data.texts,
                data.text_pairs.as_deref(),
                &cancelled,
            )
        }
    };

    // Features of the frozen encoder: the whole training file (cached) when a strategy
    // may train on them, else a sample for the transferability estimate.
    let features_of = |entry: &Option<(String, Option<PathBuf>)>,
                       data: &TrainData,
                       name: &str|
     -> Result<Tensor, TrainError> {
        if let Some((_, Some(path))) = entry {
            match hone_train::transfer::load_features(path, data.len(), hidden) {
                Ok(t) => return Ok(t),
                Err(e) => notice(
                    EventLevel::Warn,
                    format!("Ignoring a damaged feature cache entry: {e}"),
                ),
            }
        }
        let t = extract(data)?;
        if let Some((key, _)) = entry {
            let path = out_dir.join(format!("{name}-features.safetensors"));
            hone_train::transfer::save_features(&t, &path)?;
            send(Update::FeaturesComputed {
                key: key.clone(),
                path,
            });
        }
        Ok(t)
    };
    let file_features = match &cache.train {
        Some(_) => Some(features_of(&cache.train, &file, "train")?),
        None => None,
    };

    // Transferability on a sample of the training rows (the first ones of a seeded
    // shuffle, so every class is likely present); text base models only so far.
    if images {
        notice(
            EventLevel::Info,
            "No transferability estimate: it covers text base models so far".to_owned(),
        );
    } else if !method.from_scratch {
        estimate_transferability(
            &feature_run,
            file_features.as_ref(),
            &train,
            &train_rows,
            seed,
            &send,
            &cancelled,
        )?;
    }
    if cancelled() {
        return Err(TrainError::Cancelled);
    }
    let rows_tensor = |rows: &[usize]| -> Result<Tensor, TrainError> {
        let rows: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        Ok(Tensor::f_from_slice(&rows)?)
    };

    let split_features = |f: &Tensor| -> Result<Features, TrainError> {
        let train_f = f.f_index_select(0, &rows_tensor(&train_rows)?)?;
        let validation_f = match &validation {
            Validation::None => None,
            Validation::Split(rows) => Some(f.f_index_select(0, &rows_tensor(rows)?)?),
            Validation::File(data, _) => Some(features_of(&cache.validation, data, "validation")?),
        };
        Ok(Features {
            train: train_f,
            validation: validation_f,
        })
    };
    let checkpoint_dir = out_dir.join("checkpoints");
    let job_for = |strategy: Strategy,
                   hp: &Hyperparameters,
                   features: Option<Features>,
                   checkpoints: bool,
                   resume: bool| TrainJob {
        base_model_dir: &base_dir,
        objective: objective.clone(),
        train: train.clone(),
        validation: validation_data.clone(),
        config: train_config(hp, strategy, seed),
        device,
        features,
        checkpoint_dir: checkpoints.then_some(checkpoint_dir.as_path()),
        resume_from: resume_from.as_deref().filter(|_| resume),
    };

    let (mut strategy, mut hp) = (strategy_of(method.effective()), hp.clone());
    if method.kind == MethodType::Auto && method.chosen.is_none() {
        let features = file_features
            .as_ref()
            .ok_or_else(|| TrainError::InvalidInput("auto needs features".into()))?;
        let probe_hp = hp.rebased_on(MethodType::FeatureExtraction);
        let mut quiet = Observer {
            tx: tx.clone(),
            flags: flags.clone(),
            quiet: true,
        };
        let probe = fine_tune(
            job_for(
                Strategy::FeatureExtraction,
                &probe_hp,
                Some(split_features(features)?),
                false,
                false,
            ),
            &mut quiet,
        )?;
        let (classes, smallest_class) = class_evidence(&objective, &train.labels);
        let chosen = choose_method(&AutoEvidence {
            examples: train.len(),
            classes,
            smallest_class,
            mean_tokens,
            probe_macro_f1: probe.evaluation().map(|e| e.validation.macro_f1()),
            model_layers: base.num_layers as u32,
        });
        hp = hp.rebased_on(chosen.kind);
        strategy = strategy_of((chosen.kind, chosen.frozen_layers));
        send(Update::Chosen(chosen, hp.epochs));
    }
    let features = match (strategy, &file_features) {
        (Strategy::FeatureExtraction, Some(f)) => Some(split_features(f)?),
        _ => None,
    };
    let mut observer = Observer {
        tx: tx.clone(),
        flags: flags.clone(),
        quiet: false,
    };
    let init = if method.from_scratch {
        EncoderInit::Random
    } else {
        EncoderInit::Pretrained
    };
    let model = match resume_from {
        Some(_) => {
            let features_again = features.as_ref().map(|f| Features {
                train: f.train.shallow_clone(),
                validation: f.validation.as_ref().map(Tensor::shallow_clone),
            });
            match fine_tune_with(
                job_for(strategy, &hp, features, true, true),
                init,
                &mut observer,
            ) {
                Err(TrainError::Resume(reason)) => {
                    notice(
                        EventLevel::Warn,
                        format!(
                            "Cannot resume from the checkpoint ({reason}); training from the start"
                        ),
                    );
                    fine_tune_with(
                        job_for(strategy, &hp, features_again, true, false),
                        init,
                        &mut observer,
                    )?
                }
                other => other?,
            }
        }
        None => fine_tune_with(
            job_for(strategy, &hp, features, true, false),
            init,
            &mut observer,
        )?,
    };
    model.save(&out_dir.join("model"))?;
    Ok(ThreadOutput {
        kept: model.final_metrics().cloned(),
        epochs_run: model.history().len() as u32,
        evaluation: model.evaluation().cloned(),
    })
}

/// The transferability estimate on a sample of the training rows (the first ones of a
/// seeded shuffle, so every class is likely present), from the file's features when
/// they were computed anyway; an estimate that fails is a warning, not a failure.
fn estimate_transferability(
    run: &FeatureRun,
    file_features: Option<&Tensor>,
    train: &TrainData,
    train_rows: &[usize],
    seed: u64,
    send: &dyn Fn(Update),
    cancelled: &dyn Fn() -> bool,
) -> Result<(), TrainError> {
    let mut sample: Vec<usize> = (0..train.len()).collect();
    sample.shuffle(&mut StdRng::seed_from_u64(seed));
    sample.truncate(TRANSFERABILITY_EXAMPLES);
    sample.sort_unstable();
    let sample_data = train.select(&sample);
    let sample_features = match file_features {
        Some(f) => {
            let file_rows: Vec<i64> = sample.iter().map(|&i| train_rows[i] as i64).collect();
            f.f_index_select(0, &Tensor::f_from_slice(&file_rows)?)?
        }
        None => hone_train::extract_features(
            run,
            &sample_data.texts,
            sample_data.text_pairs.as_deref(),
            cancelled,
        )?,
    };
    match transferability(run, &sample_features, &sample_data, seed) {
        Ok(t) => send(Update::Transferability(t)),
        Err(TrainError::Cancelled) => return Err(TrainError::Cancelled),
        Err(e) => send(Update::Notice(
            EventLevel::Warn,
            format!("No transferability estimate: {e}"),
        )),
    }
    Ok(())
}

/// LogME of the base model's features and of a random encoder's on the same sample.
fn transferability(
    run: &FeatureRun,
    features: &Tensor,
    sample: &TrainData,
    seed: u64,
) -> Result<Transferability, TrainError> {
    let score = hone_train::logme_targets(features, &sample.labels)?;
    let random = hone_train::transfer::random_init_features(
        run,
        &sample.texts,
        sample.text_pairs.as_deref(),
        seed,
    )
    .and_then(|f| hone_train::logme_targets(&f, &sample.labels));
    let dimensions = features.size2()?.1 as u64;
    let examples = sample.len() as u64;
    Ok(Transferability {
        metric: "logme".into(),
        score,
        random_init_score: random.ok(),
        examples,
        feature_dimensions: dimensions,
        reliable: examples > dimensions,
    })
}

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

/// An epoch's metrics as the API shows them.
fn epoch_point(m: &EpochMetrics) -> EpochPoint {
    EpochPoint {
        epoch: m.epoch,
        train_loss: m.train_loss,
        validation: m.validation.as_ref().map(eval_report),
    }
}

fn eval_report(v: &hone_train::EvalMetrics) -> EvalReport {
    EvalReport {
        loss: v.loss,
        accuracy: v.accuracy,
        macro_f1: v.macro_f1,
        examples: v.examples as u64,
        threshold: v.threshold,
    }
}

fn strategy_of((kind, frozen): (MethodType, Option<u32>)) -> Strategy {
    match kind {
        MethodType::Partial => Strategy::Partial {
            frozen_layers: frozen.unwrap_or(0) as usize,
        },
        MethodType::FeatureExtraction => Strategy::FeatureExtraction,
        // `auto` resolves before training; a job stored before `chosen` existed trains fully.
        MethodType::Full | MethodType::Auto => Strategy::Full,
    }
}

fn train_config(hp: &Hyperparameters, strategy: Strategy, seed: u64) -> TrainConfig {
    TrainConfig {
        epochs: hp.epochs,
        batch_size: hp.batch_size as usize,
        learning_rate: hp.learning_rate,
        warmup_ratio: hp.warmup_ratio,
        weight_decay: hp.weight_decay,
        max_seq_len: hp.max_seq_len as usize,
        seed,
        grad_clip: 1.0,
        strategy,
        head: hp.head,
        pooling: hp.pooling,
        layer_lr_decay: hp.layer_lr_decay,
        label_smoothing: hp.label_smoothing,
        class_weights: hp.class_weights,
        early_stopping_patience: hp.early_stopping_patience,
        monitor: hp.early_stopping_metric,
        augment: hp.augment,
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
    method: &Method,
    model_id: &str,
    objective: &Objective,
    result: &JobResult,
) -> std::io::Result<()> {
    let manifest = serde_json::json!({
        "format_version": 2,
        "model_id": model_id,
        "job_id": job.id,
        "base_model": job.base_model,
        "task_type": objective.task_type,
        "labels": objective.labels(),
        "tasks": model_tasks(objective),
        "method": method,
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

/// Points kept of the per-step loss curve; beyond it, neighbouring steps are averaged
/// pairwise, so a long job's curve stays bounded and still covers every step.
const MAX_CURVE_POINTS: usize = 2000;

/// The per-step training loss, downsampled by averaging when it grows long.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct LossCurve {
    /// `(last step of the bucket, epoch, mean loss, learning rate at the last step)`.
    points: Vec<(u64, u32, f64, f64)>,
    /// Steps per point.
    bucket: u64,
    /// The bucket being filled: (sum of losses, steps).
    open: (f64, u64),
}

impl LossCurve {
    fn push(&mut self, p: &StepProgress) {
        if self.bucket == 0 {
            self.bucket = 1;
        }
        self.open.0 += p.loss;
        self.open.1 += 1;
        if self.open.1 < self.bucket && p.step != p.total_steps {
            return;
        }
        self.points.push((
            p.step,
            p.epoch,
            self.open.0 / self.open.1 as f64,
            p.learning_rate,
        ));
        self.open = (0.0, 0);
        if self.points.len() >= MAX_CURVE_POINTS {
            self.points = self
                .points
                .chunks(2)
                .map(|pair| {
                    let last = pair[pair.len() - 1];
                    let mean = pair.iter().map(|p| p.2).sum::<f64>() / pair.len() as f64;
                    (last.0, last.1, mean, last.3)
                })
                .collect();
            self.bucket *= 2;
        }
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Array(
            self.points
                .iter()
                .map(|&(step, epoch, loss, lr)| {
                    serde_json::json!({"step": step, "epoch": epoch, "train_loss": loss, "learning_rate": lr})
                })
                .collect(),
        )
    }
}

/// Turns training updates into progress, events and curves, without flooding the
/// database: progress at most once a second, a metrics event about fifty times per
/// job, curves at every epoch's end.
struct Reporter<'a> {
    db: &'a Db,
    artifacts: &'a Arc<dyn ArtifactStore>,
    job: &'a FineTuningJob,
    attempt: i32,
    total_epochs: u32,
    last_write: Option<Instant>,
    pending: Option<JobProgress>,
    builder: Option<DataReportBuilder>,
    data_report: Option<DataReport>,
    transferability: Option<Transferability>,
    /// The job's method once `auto` chose.
    method: Option<Method>,
    steps: LossCurve,
    epochs: Vec<EpochMetrics>,
}

impl<'a> Reporter<'a> {
    fn new(
        db: &'a Db,
        artifacts: &'a Arc<dyn ArtifactStore>,
        job: &'a FineTuningJob,
        attempt: i32,
        builder: DataReportBuilder,
    ) -> Self {
        Self {
            db,
            artifacts,
            job,
            attempt,
            total_epochs: job.hyperparameters.epochs,
            last_write: None,
            pending: None,
            builder: Some(builder),
            data_report: None,
            transferability: None,
            method: None,
            steps: LossCurve::default(),
            epochs: Vec::new(),
        }
    }

    async fn handle(&mut self, update: Update) {
        match update {
            Update::Step(p) => {
                self.steps.push(&p);
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
                self.epochs.push(m);
                self.save_metrics().await;
            }
            Update::Notice(level, message) => {
                let event = match level {
                    EventLevel::Warn => NewEvent::warn(message),
                    _ => NewEvent::info(message),
                };
                self.event(event).await;
            }
            Update::TokenLengths(lengths) => {
                if let Some(mut builder) = self.builder.take() {
                    builder.token_lengths(&lengths, self.job.hyperparameters.max_seq_len as usize);
                    let report = builder.build();
                    for w in &report.warnings {
                        self.event(NewEvent::warn(format!("Data: {}", w.message)))
                            .await;
                    }
                    self.data_report = Some(report);
                }
            }
            Update::Checkpoint(c) => self.store_checkpoint(c).await,
            Update::FeaturesComputed { key, path } => {
                if let Err(e) = features::store(self.artifacts, &key, &path).await {
                    tracing::warn!(error = %e, "cannot cache features");
                }
            }
            Update::Transferability(t) => {
                let reference = t.random_init_score.map_or(String::new(), |r| {
                    format!(" (a randomly initialised encoder of the same shape: {r:.4})")
                });
                self.event(NewEvent::metrics(
                    format!(
                        "Transferability of {} to this data: LogME {:.4}{reference}, on {} \
                         training examples; higher means the pretrained features fit the \
                         labels better",
                        self.job.base_model, t.score, t.examples
                    ),
                    serde_json::to_value(&t).unwrap_or_default(),
                ))
                .await;
                if !t.reliable {
                    self.event(NewEvent::warn(format!(
                        "The transferability estimate is only a weak hint: {} examples are no \
                         more than the {} feature dimensions, so a linear model fits any labels",
                        t.examples, t.feature_dimensions
                    )))
                    .await;
                }
                self.transferability = Some(t);
            }
            Update::Chosen(chosen, epochs) => {
                self.total_epochs = epochs;
                let mut method = self.job.method.clone();
                let hp = self.job.hyperparameters.rebased_on(chosen.kind);
                self.event(NewEvent::info(format!("auto chose {}", chosen.reason)))
                    .await;
                method.chosen = Some(chosen);
                if let Err(e) = self
                    .db
                    .set_method(&self.job.id, self.attempt, &method, &hp)
                    .await
                {
                    tracing::warn!(error = %e, "cannot record the chosen method");
                }
                self.method = Some(method);
            }
        }
    }

    /// Moves a checkpoint into the artifact store, with the curves so far (a resumed
    /// attempt starts from them), and records it; a checkpoint that cannot be stored
    /// costs a warning, not the job.
    async fn store_checkpoint(&self, c: Checkpoint) {
        let key = hone_store::checkpoints::storage_key(&self.job.id, self.attempt, c.epoch);
        let stored = async {
            let bytes = tokio::fs::metadata(&c.path).await?.len();
            let curves = serde_json::to_vec(&Curves {
                steps: &self.steps,
                epochs: &self.epochs,
            })?;
            tokio::fs::write(c.dir.join(CURVES_FILE), curves).await?;
            self.artifacts.delete(&key).await?;
            self.artifacts.put_dir(&key, &c.dir).await?;
            let _ = tokio::fs::remove_dir_all(&c.dir).await;
            Ok::<u64, std::io::Error>(bytes)
        }
        .await;
        let bytes = match stored {
            Ok(bytes) => bytes,
            Err(e) => {
                tracing::warn!(error = %e, epoch = c.epoch, "cannot store a checkpoint");
                self.event(NewEvent::warn(format!(
                    "The checkpoint of epoch {} could not be stored: {e}",
                    c.epoch
                )))
                .await;
                return;
            }
        };
        let checkpoint = hone_store::checkpoints::NewCheckpoint {
            epoch: c.epoch,
            step: c.step,
            metrics: epoch_point(&c.metrics),
            storage_key: key.clone(),
            bytes,
            resumable: true,
        };
        // An earlier attempt's checkpoint of this epoch, replaced below.
        let replaced = self
            .db
            .get_checkpoint_of_job(&self.job.id, c.epoch)
            .await
            .ok();
        match self
            .db
            .put_checkpoint(&self.job.id, self.attempt, &checkpoint)
            .await
        {
            Ok(true) => {
                if let Some(old) = replaced.filter(|old| old.storage_key != key) {
                    let _ = self.artifacts.delete(&old.storage_key).await;
                }
            }
            Ok(false) => {
                let _ = self.artifacts.delete(&key).await;
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a checkpoint"),
        }
    }

    async fn event(&self, event: NewEvent) {
        if let Err(e) = self.db.add_event(&self.job.id, self.attempt, &event).await {
            tracing::warn!(error = %e, "cannot record a job event");
        }
    }

    async fn save_metrics(&self) {
        let metrics = serde_json::json!({
            "steps": self.steps.to_json(),
            "epochs": self.epochs,
        });
        if let Err(e) = self
            .db
            .set_metrics(&self.job.id, self.attempt, &metrics)
            .await
        {
            tracing::warn!(error = %e, "cannot record job metrics");
        }
    }

    async fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            if let Err(e) = self.db.set_progress(&self.job.id, self.attempt, &p).await {
                tracing::warn!(error = %e, "cannot record job progress");
            }
            self.last_write = Some(Instant::now());
        }
    }
}
