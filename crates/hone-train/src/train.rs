//! Transfer of a base model directory to a [`SequenceClassifier`] (text) or an
//! [`ImageClassifier`] (images): every weight ([`Strategy::Full`]), the top of the
//! backbone ([`Strategy::Partial`]) or the head alone on features of the frozen backbone
//! computed once ([`Strategy::FeatureExtraction`]). Both modalities run the same loop
//! (best epoch, early stopping, checkpoints, evaluation); only what feeds it differs —
//! token ids, or images that the loader decodes, augments and batches on its own threads.
//!
//! The recipe is transformers' `Trainer` default, so results are comparable with what
//! users know: cross-entropy, AdamW (no decay on biases and LayerNorm), linear warmup
//! then linear decay to zero stepped once per batch, gradient-norm clipping, dropout
//! only while training. Frozen variables get no gradient and no optimizer state. With
//! validation data every epoch is scored, the best epoch's weights are the ones
//! returned, and training may stop early. Everything that draws random numbers — head
//! initialisation, dropout, the shuffle, image augmentation — is seeded from [`TrainConfig::seed`], so a job rerun with the
//! same seed on the same machine reproduces its losses exactly.
//!
//! [`fine_tune`] blocks; the worker runs it on a dedicated OS thread and hears about
//! progress through a [`TrainObserver`], which is also how it asks training to stop.
//!
//! [`SequenceClassifier`]: crate::classifier::SequenceClassifier
//! [`ImageClassifier`]: crate::vision::ImageClassifier

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Tensor};

use hone_domain::dataset::TaskType;
use hone_domain::metrics::GeneralizationGap;

use crate::base_model::{architecture_of, Modality};
use crate::checks::check_job;
pub use crate::config::{EncoderInit, Strategy, TrainConfig};
pub use crate::data::{Features, TrainData};
use crate::early_stopping::{monitor_name, BestEpoch};
pub use crate::error::TrainError;
use crate::evaluate::{score, score_subset};
pub use crate::features::{extract_features, extract_image_features, FeatureRun};
use crate::frozen::FrozenSplits;
use crate::head_fit::{describe, fit_heads, fits_heads};
use crate::inputs::{grouped_by_length, Inputs, Split};
pub use crate::job::TrainJob;
pub use crate::metrics::{
    EpochMetrics, EvalMetrics, Evaluation, StepProgress, TRAIN_EVAL_EXAMPLES,
};
use crate::model_dir::{
    ModelMeta, CONFIG_FILE, MODEL_META_VERSION, OPTIONAL_FILES, REQUIRED_FILES, WEIGHTS_FILE,
};
use crate::network::Network;
use crate::objective::{Objective, UNTUNED_THRESHOLD};
pub use crate::observer::{Checkpoint, TrainObserver};
pub use crate::optim::Optimizer;
use crate::predict::Classifier;
use crate::recalibrate::recalibrate;
use crate::resume::{self, TrainState};
use crate::schedule::LinearSchedule;
use crate::setup::{
    checked_features, computed_features, frozen_states, set_up_image, set_up_text, FrozenCache,
    JobRef, Setup,
};
pub use crate::trainable::apply_checkpoint;
use crate::trainable::{load_trainable, prefixed, trainable, with_prefix};

/// The result of [`fine_tune`]: the weights of the last epoch, ready to [`save`] — or
/// to predict with at once, through the same code a loaded model uses.
///
/// [`save`]: TrainedModel::save
#[derive(Debug)]
pub struct TrainedModel {
    classifier: Classifier,
    base_model_dir: PathBuf,
    history: Vec<EpochMetrics>,
    best_epoch: u32,
    evaluation: Option<Evaluation>,
}

impl TrainedModel {
    /// Writes a published model directory: `model.safetensors` (backbone under its
    /// checkpoint names, head as `head.weight`/`head.bias`), the base model's config
    /// (and a text model's tokenizer files), and `hone_model.json`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        self.classifier.var_store().save(dir.join(WEIGHTS_FILE))?;
        // An image model's preprocessing (input size, normalisation) is in config.json.
        let (required, optional) = match self.classifier.modality() {
            Modality::Text => (REQUIRED_FILES, OPTIONAL_FILES),
            Modality::Image => (&[CONFIG_FILE][..], &[][..]),
        };
        for name in required.iter().chain(optional) {
            let src = self.base_model_dir.join(name);
            if !src.is_file() && optional.contains(name) {
                continue;
            }
            std::fs::copy(&src, dir.join(name)).map_err(|e| TrainError::io(&src, e))?;
        }
        self.classifier.meta().write(dir)
    }

    /// What `hone_model.json` says.
    pub fn meta(&self) -> &ModelMeta {
        self.classifier.meta()
    }

    /// The metrics of the epoch whose weights this model holds (the best one when
    /// there was validation data, else the last).
    pub fn final_metrics(&self) -> Option<&EpochMetrics> {
        self.history.iter().find(|m| m.epoch == self.best_epoch)
    }

    /// The final evaluation, when there was validation data.
    pub fn evaluation(&self) -> Option<&Evaluation> {
        self.evaluation.as_ref()
    }

    /// Metrics of every epoch, in order.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    pub fn labels(&self) -> &[String] {
        self.classifier.labels()
    }

    /// What the model predicts.
    pub fn objective(&self) -> Objective {
        self.classifier.meta().objective()
    }

    /// The trained model as a predictor, e.g. to evaluate it further before saving.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }
}

/// Transfers the base model to the labels of `job` as `job.config.strategy` says.
pub fn fine_tune(
    job: TrainJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainedModel, TrainError> {
    fine_tune_with(job, EncoderInit::Pretrained, observer)
}

/// [`fine_tune`] with the choice of starting from the checkpoint or from random
/// weights of the same architecture. Reads top to bottom: check the job, build the
/// network and its inputs, take up a checkpoint, run the epochs, measure the weights
/// kept, describe the model.
pub fn fine_tune_with(
    job: TrainJob,
    init: EncoderInit,
    observer: &mut dyn TrainObserver,
) -> Result<TrainedModel, TrainError> {
    let started = Instant::now();
    let TrainJob {
        base_model_dir,
        objective,
        train,
        validation,
        config,
        device,
        features,
        checkpoint_dir,
        resume_from,
        frozen_cache_bytes,
    } = job;
    let (architecture, modality) = architecture_of(base_model_dir)?;
    check_job(&objective, &train, validation.as_ref(), &config, modality)?;
    let job = JobRef {
        base_model_dir,
        objective: &objective,
        train: &train,
        validation: validation.as_ref(),
        config: &config,
        device,
    };

    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(device);
    let Setup {
        network,
        frozen,
        hidden,
        prepared,
    } = match modality {
        Modality::Text => set_up_text(&vs, &job, init)?,
        Modality::Image => set_up_image(&vs, &job, init)?,
    };
    let features = match (config.strategy, features) {
        (Strategy::FeatureExtraction, Some(f)) => Some(checked_features(f, hidden, &job)?),
        (Strategy::FeatureExtraction, None) => {
            computed_features(&network, &prepared, &job, &|| observer.cancelled())?
        }
        _ => None,
    };
    let cache = frozen_states(&network, &prepared, &job, frozen_cache_bytes, &|| {
        observer.cancelled()
    })?;
    let frozen_states = announced(cache, frozen_cache_bytes, observer);
    let augment =
        (config.augment && config.strategy != Strategy::FeatureExtraction).then_some(config.seed);
    let train_inputs = prepared
        .inputs(
            Split::Train,
            features.as_ref(),
            frozen_states.as_ref(),
            augment,
        )
        .ok_or_else(|| {
            TrainError::InvalidInput("the training set has no inputs of the model's kind".into())
        })?;
    let validation_inputs = prepared.inputs(
        Split::Validation,
        features.as_ref(),
        frozen_states.as_ref(),
        augment,
    );

    let mut epochs = EpochLoop::new(
        job,
        &network,
        &vs,
        &train_inputs,
        validation_inputs.as_ref(),
        started,
    )?;
    tracing::info!(
        examples = train.len(),
        task_type = %objective.task_type,
        outputs = objective.width(),
        total_steps = epochs.total_steps,
        ?device,
        ?init,
        strategy = ?config.strategy,
        frozen_parameters = frozen,
        "fine-tuning"
    );
    let fitted = match features.as_ref() {
        Some(f) if fits_heads(&config, &network) => Some(&f.train),
        _ => None,
    };
    if let Some(features) = fitted {
        // A fit takes seconds and is deterministic: a retry fits again rather than
        // resuming.
        epochs.fit_heads(features, checkpoint_dir, observer)?;
    } else {
        let mut first_epoch = 1;
        if let Some(dir) = resume_from {
            let resumed = epochs
                .resume(dir)
                .map_err(|e| TrainError::Resume(e.to_string()))?;
            first_epoch = resumed + 1;
        }
        epochs.run(first_epoch, checkpoint_dir, observer)?;
    }
    let outcome = epochs.finish(observer)?;

    let evaluation = final_evaluation(&job, &network, &train_inputs, &outcome)?;
    let meta = model_meta(&job, architecture, modality, evaluation.as_ref());
    Ok(TrainedModel {
        classifier: Classifier::from_parts(vs, network, meta, device),
        base_model_dir: base_model_dir.to_owned(),
        history: outcome.history,
        best_epoch: outcome.best_epoch,
        evaluation,
    })
}

/// The epochs of a run: what each reads, and what it carries on to the next (the
/// optimizer, the best epoch so far, steps and history), which is also what a
/// checkpoint saves.
struct EpochLoop<'a> {
    job: JobRef<'a>,
    network: &'a Network,
    vs: &'a nn::VarStore,
    train_inputs: &'a Inputs<'a>,
    validation_inputs: Option<&'a Inputs<'a>>,
    schedule: LinearSchedule,
    total_steps: u64,
    optimizer: Optimizer,
    loss_weights: Vec<Option<Tensor>>,
    best: BestEpoch,
    /// Optimizer steps taken.
    step: u64,
    history: Vec<EpochMetrics>,
    /// Validation probabilities of the best epoch, for the final report.
    best_probs: Option<Vec<Vec<f32>>>,
    stopped_early: bool,
    started: Instant,
    /// The checkpoint being written, and what to report once it is whole.
    writing: Option<(resume::Writing, Checkpoint)>,
}

/// How the epochs ended.
struct Outcome {
    history: Vec<EpochMetrics>,
    /// The epoch whose weights the model holds.
    best_epoch: u32,
    stopped_early: bool,
    best_probs: Option<Vec<Vec<f32>>>,
}

impl<'a> EpochLoop<'a> {
    fn new(
        job: JobRef<'a>,
        network: &'a Network,
        vs: &'a nn::VarStore,
        train_inputs: &'a Inputs<'a>,
        validation_inputs: Option<&'a Inputs<'a>>,
        started: Instant,
    ) -> Result<Self, TrainError> {
        let config = job.config;
        let steps_per_epoch = job.train.len().div_ceil(config.batch_size) as u64;
        let total_steps = steps_per_epoch * u64::from(config.epochs);
        let schedule = LinearSchedule::new(config, total_steps);
        let optimizer = Optimizer::new(vs, config)?;
        let loss_weights =
            job.objective
                .loss_weights(config.class_weights, &job.train.labels, job.device)?;
        Ok(Self {
            job,
            network,
            vs,
            train_inputs,
            validation_inputs,
            schedule,
            total_steps,
            optimizer,
            loss_weights,
            best: BestEpoch::new(vs, config.monitor)?,
            step: 0,
            history: Vec::with_capacity(config.epochs as usize),
            best_probs: None,
            stopped_early: false,
            started,
            writing: None,
        })
    }

    /// Takes up where the checkpoint in `dir` (see [`crate::resume`]) left off: its
    /// weights, the optimizer's state, the best epoch so far, steps and history.
    /// Returns the checkpoint's epoch.
    fn resume(&mut self, dir: &Path) -> Result<u32, TrainError> {
        let loaded = resume::load(dir)?;
        let state = loaded.state;
        if state.config != *self.job.config || state.train_examples != self.job.train.len() {
            return Err(TrainError::config(
                dir.join(resume::STATE_FILE),
                "the checkpoint was taken by a run with other settings or data",
            ));
        }
        load_trainable(self.vs, &loaded.weights, dir)?;
        self.optimizer.load_state(
            &prefixed(&loaded.tensors, "optimizer."),
            &state.optimizer_steps,
        )?;
        self.best
            .load(state.best, &prefixed(&loaded.tensors, "best."))?;
        self.step = state.step;
        self.history = state.history;
        self.best_probs = state.best_probs;
        tracing::info!(
            epoch = state.epoch,
            step = self.step,
            "resuming from a checkpoint"
        );
        Ok(state.epoch)
    }

    /// Epochs `first_epoch` to the last, each trained, scored and checkpointed, unless
    /// early stopping ends training first. However they end, the checkpoint still
    /// being written is waited for and reported (a stopped run resumes from it).
    fn run(
        &mut self,
        first_epoch: u32,
        checkpoint_dir: Option<&Path>,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let ran = self.run_epochs(first_epoch, checkpoint_dir, observer);
        let written = self.settle_checkpoint(observer, true);
        match (ran, written) {
            (Err(e), Err(w)) => {
                tracing::warn!(error = %w, "the last checkpoint was not written");
                Err(e)
            }
            (ran, written) => ran.and(written),
        }
    }

    fn run_epochs(
        &mut self,
        first_epoch: u32,
        checkpoint_dir: Option<&Path>,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let config = self.job.config;
        // A run resumed after the epoch that stopped it early has nothing left to do.
        if first_epoch > 1 && self.best.stops_after(first_epoch - 1, config) {
            self.stopped_early = true;
            return Ok(());
        }
        for epoch in first_epoch..=config.epochs {
            let loss_sum = self.train_epoch(epoch, observer)?;
            let metrics = self.end_epoch(epoch, loss_sum, observer)?;
            // Asked before the checkpoint takes the metrics.
            let told_to_stop = if epoch < config.epochs {
                observer.stop_after(&metrics)
            } else {
                None
            };
            if let Some(dir) = checkpoint_dir {
                self.save_checkpoint(dir, metrics, observer)?;
            }
            if self.best.stops_after(epoch, config) {
                self.stopped_early = true;
                observer.on_notice(&format!(
                    "early stopping after epoch {epoch}: validation {} has not improved for {} epochs",
                    monitor_name(config.monitor),
                    config.early_stopping_patience
                ));
                break;
            }
            if let Some(why) = told_to_stop {
                self.stopped_early = true;
                observer.on_notice(&format!("stopped after epoch {epoch}: {why}"));
                break;
            }
        }
        Ok(())
    }

    /// `feature_extraction` with [`crate::config::HeadSolver::Lbfgs`]: the heads fitted
    /// on the training features (see [`crate::head_fit`]) in place of epochs, reported
    /// as epoch 1 (its training loss, its validation scores, its checkpoint).
    fn fit_heads(
        &mut self,
        features: &Tensor,
        checkpoint_dir: Option<&Path>,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        let fits = fit_heads(
            self.vs,
            self.job.objective,
            &self.job.train.labels,
            features,
            self.job.config,
        )?;
        let message = describe(&fits, self.job.objective);
        tracing::info!("{message}");
        observer.on_notice(&message);
        let train = score(
            self.network,
            self.job.objective,
            self.train_inputs,
            &self.job.train.labels,
            self.job.config.batch_size.max(32),
            self.job.device,
            &|| observer.cancelled(),
        )?;
        let loss_sum = train.loss * self.job.train.len() as f64;
        let metrics = self.end_epoch(1, loss_sum, observer)?;
        if let Some(dir) = checkpoint_dir {
            self.save_checkpoint(dir, metrics, observer)?;
        }
        self.settle_checkpoint(observer, true)
    }

    /// One pass over the training data in the epoch's order, an optimizer step per
    /// batch; the sum of the batches' losses weighted by their sizes.
    fn train_epoch(
        &mut self,
        epoch: u32,
        observer: &mut dyn TrainObserver,
    ) -> Result<f64, TrainError> {
        // Shuffle and dropout of an epoch depend on (seed, epoch) only, so a run
        // resumed at an epoch boundary draws what the uninterrupted one drew.
        let epoch_seed = resume::epoch_seed(self.job.config.seed, epoch);
        tch::manual_seed(epoch_seed as i64);
        let mut rng = StdRng::seed_from_u64(epoch_seed);
        let mut order: Vec<usize> = (0..self.job.train.len()).collect();
        order.shuffle(&mut rng);
        if self.job.config.group_by_length {
            if let Some(lengths) = self.train_inputs.token_lengths() {
                order = grouped_by_length(order, &lengths, self.job.config.batch_size, &mut rng);
            }
        }
        let mut loss_sum = 0.0;
        let inputs = self.train_inputs;
        for batch in inputs.batches(order, self.job.config.batch_size, Some(epoch))? {
            self.settle_checkpoint(observer, false)?;
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let batch = batch?;
            let indices = batch.indices.as_slice();
            let learning_rate = self.schedule.at(self.step);
            let logits = inputs.logits(self.network, &batch, true, self.job.device)?;
            let loss = self.job.objective.loss(
                &logits,
                &self.job.train.labels,
                indices,
                &self.loss_weights,
                self.job.config.label_smoothing,
            )?;
            self.optimizer.step(&loss, learning_rate)?;

            let loss = loss.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(TrainError::InvalidInput(format!(
                    "training diverged: the loss is {loss} at step {}; try a lower learning rate",
                    self.step + 1
                )));
            }
            self.step += 1;
            loss_sum += loss * indices.len() as f64;
            observer.on_step(&StepProgress {
                epoch,
                step: self.step,
                total_steps: self.total_steps,
                loss,
                learning_rate,
                elapsed: self.started.elapsed(),
            });
        }
        Ok(loss_sum)
    }

    /// Scores the epoch's weights on the validation data, keeps them aside when they
    /// are the best so far, and reports the epoch.
    fn end_epoch(
        &mut self,
        epoch: u32,
        loss_sum: f64,
        observer: &mut dyn TrainObserver,
    ) -> Result<EpochMetrics, TrainError> {
        self.recalibrate(observer)?;
        let scored = match (self.job.validation, self.validation_inputs) {
            (Some(data), Some(inputs)) => Some(score(
                self.network,
                self.job.objective,
                inputs,
                &data.labels,
                self.job.config.batch_size,
                self.job.device,
                &|| observer.cancelled(),
            )?),
            _ => None,
        };
        let validation_metrics = match (self.job.validation, &scored) {
            (Some(data), Some(scored)) => Some(scored.metrics(self.job.objective, &data.labels)),
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / self.job.train.len() as f64,
            validation: validation_metrics,
        };
        tracing::info!(
            epoch,
            train_loss = metrics.train_loss,
            validation_loss = metrics.validation.as_ref().map(|v| v.loss),
            "epoch done"
        );
        if let Some(v) = &metrics.validation {
            if self.best.offer(epoch, v)? {
                // The final report describes these weights: keep their scores rather
                // than score the validation data again once they are restored.
                self.best_probs = scored.map(|s| s.probs);
            }
        }
        observer.on_epoch(&metrics);
        self.history.push(metrics.clone());
        Ok(metrics)
    }

    /// An image run's BatchNorm statistics, estimated anew on the training images for
    /// the epoch's weights (see [`crate::recalibrate`]), so that the epoch is scored,
    /// checkpointed and kept with the statistics it will predict with.
    fn recalibrate(&self, observer: &mut dyn TrainObserver) -> Result<(), TrainError> {
        if let (Network::Image { model, .. }, Inputs::Images { set, .. }) =
            (self.network, self.train_inputs)
        {
            recalibrate(
                model.backbone(),
                set,
                self.job.config.batch_size.max(32),
                self.job.device,
                &|| observer.cancelled(),
            )?;
        }
        Ok(())
    }

    /// Starts writing the checkpoint of the epoch just ended under `dir` (see
    /// [`crate::resume`]), once the previous one is whole; it is reported when whole.
    fn save_checkpoint(
        &mut self,
        dir: &Path,
        metrics: EpochMetrics,
        observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        self.settle_checkpoint(observer, true)?;
        let epoch = metrics.epoch;
        let dir = dir.join(format!("epoch-{epoch}"));
        let mut state = TrainState::new(epoch, self.step, self.job.config, self.job.train.len());
        state.history = self.history.clone();
        state.best = self.best.best;
        state.best_probs = self.best_probs.clone();
        state.optimizer_steps = self.optimizer.steps();
        let mut tensors = with_prefix(self.optimizer.state_tensors()?, "optimizer.");
        tensors.extend(with_prefix(self.best.saved_named(), "best."));
        let report = Checkpoint {
            epoch,
            step: self.step,
            path: dir.join(resume::WEIGHTS_FILE),
            dir: dir.clone(),
            metrics,
        };
        let writing = resume::Writing::start(dir, &trainable(self.vs), &tensors, state)?;
        self.writing = Some((writing, report));
        Ok(())
    }

    /// Reports the checkpoint being written once it is whole: at once if it is (or,
    /// with `wait`, once it is); nothing when none is being written.
    fn settle_checkpoint(
        &mut self,
        observer: &mut dyn TrainObserver,
        wait: bool,
    ) -> Result<(), TrainError> {
        match &self.writing {
            Some((writing, _)) if wait || writing.is_finished() => {}
            _ => return Ok(()),
        }
        if let Some((writing, report)) = self.writing.take() {
            writing.wait()?;
            observer.on_checkpoint(&report);
        }
        Ok(())
    }

    /// Puts the best epoch's weights back, and says so when they are not the last's.
    fn finish(self, observer: &mut dyn TrainObserver) -> Result<Outcome, TrainError> {
        let epochs_run = self.history.len() as u32;
        let best_epoch = self.best.restore()?.unwrap_or(epochs_run);
        if best_epoch != epochs_run {
            observer.on_notice(&format!(
                "keeping the weights of epoch {best_epoch}, the best by validation {}",
                monitor_name(self.job.config.monitor)
            ));
        }
        Ok(Outcome {
            history: self.history,
            best_epoch,
            stopped_early: self.stopped_early,
            best_probs: self.best_probs,
        })
    }
}

/// How the weights kept do, when there was validation data: on it (as scored when
/// they were the best epoch's) and on a sample of the training data, for the gap
/// between the two.
fn final_evaluation(
    job: &JobRef,
    network: &Network,
    train_inputs: &Inputs,
    outcome: &Outcome,
) -> Result<Option<Evaluation>, TrainError> {
    let (Some(data), Some(probs)) = (job.validation, &outcome.best_probs) else {
        return Ok(None);
    };
    // A multi-label model's threshold is tuned here, on the validation data.
    let report = job.objective.report(&data.labels, probs, None);
    let sample: Vec<usize> = (0..job.train.len()).take(TRAIN_EVAL_EXAMPLES).collect();
    let train_probs = score_subset(
        network,
        job.objective,
        train_inputs,
        &sample,
        job.config.batch_size,
        job.device,
    )?;
    let train_report = job.objective.report(
        &job.train.labels.select(&sample),
        &train_probs,
        report.threshold(),
    );
    Ok(Some(Evaluation {
        best_epoch: outcome.best_epoch,
        epochs_run: outcome.history.len() as u32,
        stopped_early: outcome.stopped_early,
        generalization: GeneralizationGap::new(train_report.accuracy(), report.accuracy()),
        train_accuracy: train_report.accuracy(),
        validation: report,
    }))
}

/// What `hone_model.json` says of the trained model: how to read its inputs, what its
/// heads predict, and a multi-label model's threshold (tuned on the validation data,
/// else the untuned one).
fn model_meta(
    job: &JobRef,
    architecture: String,
    modality: Modality,
    evaluation: Option<&Evaluation>,
) -> ModelMeta {
    let threshold = (job.objective.task_type == TaskType::MultiLabel).then(|| {
        evaluation
            .and_then(|e| e.validation.threshold())
            .unwrap_or(UNTUNED_THRESHOLD)
    });
    ModelMeta {
        format_version: MODEL_META_VERSION,
        modality,
        architecture,
        pooling: job.config.pooling,
        head: job.config.head,
        text_pairs: job.train.text_pairs.is_some(),
        task_type: job.objective.task_type,
        labels: job.objective.labels().to_vec(),
        tasks: match job.objective.task_type {
            TaskType::MultiTask => job.objective.heads.clone(),
            _ => Vec::new(),
        },
        threshold,
        max_seq_len: match modality {
            Modality::Text => job.config.max_seq_len,
            Modality::Image => 0,
        },
        quantization: None,
    }
}

/// The frozen states to train from, if any, told to the user either way when the run
/// has frozen layers to cache (`cap`: the most bytes they may take).
fn announced(
    cache: FrozenCache,
    cap: u64,
    observer: &mut dyn TrainObserver,
) -> Option<FrozenSplits> {
    match cache {
        FrozenCache::Computed(states, bytes) => {
            observer.on_notice(&format!(
                "the frozen layers' outputs ({}) were computed once; every epoch starts from the first trained layer",
                megabytes(bytes)
            ));
            Some(states)
        }
        FrozenCache::TooLarge(bytes) => {
            observer.on_notice(&format!(
                "the frozen layers run every step: their outputs would take {}, more than the {} allowed",
                megabytes(bytes),
                megabytes(cap)
            ));
            None
        }
        FrozenCache::NotApplicable => None,
    }
}

/// `bytes` in MB for a notice, e.g. "38.2 MB".
fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}
