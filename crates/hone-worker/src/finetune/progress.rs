//! Progress of a running job as the API shows it: the training thread's updates become
//! the job's progress, events, curves, checkpoints and feature-cache entries. The one
//! place that writes a running job's progress to the database, and it paces the writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_domain::data_report::{DataReport, DataReportBuilder};
use hone_domain::job::{ChosenMethod, Hyperparameters, Method};
use hone_domain::resources::{
    EpochPoint, EvalReport, EventLevel, FineTuningJob, JobProgress, Transferability,
};
use hone_store::events::NewEvent;
use hone_store::feature_cache as features;
use hone_store::{ArtifactStore, Db};
use hone_train::train::{Checkpoint, EpochMetrics, StepProgress};

pub(super) enum Update {
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
    /// `auto` chose, and will train with these hyperparameters.
    Chosen(ChosenMethod, Box<Hyperparameters>),
}

/// The reporter's curves, saved with each checkpoint.
#[derive(serde::Serialize)]
pub(super) struct Curves<'a> {
    pub(super) steps: &'a LossCurve,
    pub(super) epochs: &'a [EpochMetrics],
}

#[derive(serde::Deserialize)]
pub(super) struct SavedCurves {
    pub(super) steps: LossCurve,
    pub(super) epochs: Vec<EpochMetrics>,
}

pub(super) const CURVES_FILE: &str = "curves.json";

/// The latest checkpoint an earlier attempt left, copied to scratch, with the curves
/// up to it given back to `reporter`; none for a first attempt or when there is no
/// usable checkpoint (then training starts over, as it must).
pub(super) async fn resume_point(
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
        let mut entries = tokio::fs::read_dir(from.path()).await?;
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

/// An epoch's metrics as the API shows them.
pub(super) fn epoch_point(m: &EpochMetrics) -> EpochPoint {
    EpochPoint {
        epoch: m.epoch,
        train_loss: m.train_loss,
        validation: m.validation.as_ref().map(eval_report),
    }
}

pub(super) fn eval_report(v: &hone_train::EvalMetrics) -> EvalReport {
    EvalReport {
        loss: v.loss,
        accuracy: v.accuracy,
        macro_f1: v.macro_f1,
        examples: v.examples as u64,
        threshold: v.threshold,
    }
}

/// Points kept of the per-step loss curve; beyond it, neighbouring steps are averaged
/// pairwise, so a long job's curve stays bounded and still covers every step.
pub(super) const MAX_CURVE_POINTS: usize = 2000;

/// The per-step training loss, downsampled by averaging when it grows long.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub(super) struct LossCurve {
    /// `(last step of the bucket, epoch, mean loss, learning rate at the last step)`.
    pub(super) points: Vec<(u64, u32, f64, f64)>,
    /// Steps per point.
    pub(super) bucket: u64,
    /// The bucket being filled: (sum of losses, steps).
    pub(super) open: (f64, u64),
}

impl LossCurve {
    pub(super) fn push(&mut self, p: &StepProgress) {
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

    pub(super) fn to_json(&self) -> serde_json::Value {
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
pub(super) struct Reporter<'a> {
    pub(super) db: &'a Db,
    pub(super) artifacts: &'a Arc<dyn ArtifactStore>,
    pub(super) job: &'a FineTuningJob,
    pub(super) attempt: i32,
    pub(super) total_epochs: u32,
    pub(super) last_write: Option<Instant>,
    pub(super) pending: Option<JobProgress>,
    pub(super) builder: Option<DataReportBuilder>,
    pub(super) data_report: Option<DataReport>,
    pub(super) transferability: Option<Transferability>,
    /// The job's method once `auto` chose.
    pub(super) method: Option<Method>,
    pub(super) steps: LossCurve,
    pub(super) epochs: Vec<EpochMetrics>,
    /// For the throughput metric: examples each epoch trains on, and their modality.
    examples_per_epoch: u64,
    modality: &'static str,
    /// Tokens of the training inputs, each cut at `max_seq_len`: one epoch's worth.
    pub(super) tokens_per_epoch: Option<u64>,
    /// The project's feature cache cap (`feature_cache_max_bytes_per_project`).
    pub(super) feature_cache_max_bytes: u64,
    /// The curves as each recent epoch ended (JSON of [`Curves`]), for its checkpoint:
    /// it is written beside training and may be reported a few steps (or an epoch)
    /// later, when the curves have gone on.
    curves_at_epoch_end: Vec<(u32, Vec<u8>)>,
}

/// Epochs whose end-of-epoch curves are kept until their checkpoint is reported: the
/// loop writes one checkpoint at a time, so a report is at most an epoch late.
const CURVES_KEPT: usize = 3;

impl<'a> Reporter<'a> {
    pub(super) fn new(
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
            feature_cache_max_bytes: u64::MAX,
            epochs: Vec::new(),
            examples_per_epoch: 0,
            modality: "unknown",
            tokens_per_epoch: None,
            curves_at_epoch_end: Vec::new(),
        }
    }

    /// What each epoch counts in the training-throughput metric.
    pub(super) fn count_examples(&mut self, per_epoch: u64, modality: &'static str) {
        self.examples_per_epoch = per_epoch;
        self.modality = modality;
    }

    pub(super) async fn handle(&mut self, update: Update) {
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
                    estimated_finish: eta
                        .map(|s| chrono::Utc::now().timestamp() + s.round() as i64),
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
                            "total_epochs": self.total_epochs,
                            "train_loss": p.loss, "learning_rate": p.learning_rate,
                            "elapsed_seconds": elapsed, "eta_seconds": eta,
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
                crate::telemetry::trained(self.examples_per_epoch, self.modality);
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
                let epoch = m.epoch;
                self.epochs.push(m);
                match serde_json::to_vec(&Curves {
                    steps: &self.steps,
                    epochs: &self.epochs,
                }) {
                    Ok(curves) => {
                        if self.curves_at_epoch_end.len() >= CURVES_KEPT {
                            self.curves_at_epoch_end.remove(0);
                        }
                        self.curves_at_epoch_end.push((epoch, curves));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot keep the curves"),
                }
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
                let max_seq_len = self.job.hyperparameters.max_seq_len as usize;
                self.tokens_per_epoch =
                    Some(lengths.iter().map(|&n| n.min(max_seq_len) as u64).sum());
                if let Some(mut builder) = self.builder.take() {
                    builder.token_lengths(&lengths, max_seq_len);
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
                let cap = self.feature_cache_max_bytes;
                if let Err(e) = features::store(self.db, self.artifacts, &key, &path, cap).await {
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
            Update::Chosen(chosen, hp) => {
                self.total_epochs = hp.epochs;
                let message = format!("auto chose {}", chosen.reason);
                // The candidates tried, with their scores and times, as data too.
                let event = if chosen.candidates.is_empty() {
                    NewEvent::info(message)
                } else {
                    let data = serde_json::json!({ "candidates": &chosen.candidates });
                    NewEvent::metrics(message, data)
                };
                self.event(event).await;
                let method = self.job.method.clone().with_choice(chosen);
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

    /// Moves a checkpoint into the artifact store, with the curves as its epoch ended
    /// (a resumed attempt starts from them), and records it; a checkpoint that cannot
    /// be stored costs a warning, not the job.
    pub(super) async fn store_checkpoint(&mut self, c: Checkpoint) {
        let key = hone_store::checkpoints::storage_key(&self.job.id, self.attempt, c.epoch);
        let at_end = self
            .curves_at_epoch_end
            .iter()
            .position(|(epoch, _)| *epoch == c.epoch)
            .map(|i| self.curves_at_epoch_end.remove(i).1);
        self.curves_at_epoch_end
            .retain(|(epoch, _)| *epoch > c.epoch);
        let stored = async {
            let curves = match at_end {
                Some(curves) => curves,
                None => serde_json::to_vec(&Curves {
                    steps: &self.steps,
                    epochs: &self.epochs,
                })?,
            };
            tokio::fs::write(c.dir.join(CURVES_FILE), curves).await?;
            // All it stores (weights, training state, curves) counts in the usage.
            let bytes = hone_store::dir_bytes(&c.dir).await?;
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

    pub(super) async fn event(&self, event: NewEvent) {
        if let Err(e) = self.db.add_event(&self.job.id, self.attempt, &event).await {
            tracing::warn!(error = %e, "cannot record a job event");
        }
    }

    pub(super) async fn save_metrics(&self) {
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

    pub(super) async fn flush(&mut self) {
        if let Some(p) = self.pending.take() {
            if let Err(e) = self.db.set_progress(&self.job.id, self.attempt, &p).await {
                tracing::warn!(error = %e, "cannot record job progress");
            }
            self.last_write = Some(Instant::now());
        }
    }
}
