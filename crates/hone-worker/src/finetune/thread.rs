//! The training thread: the whole tch side of a job (token counts, features and the
//! transferability estimate, `auto`'s choice, training, saving) on a dedicated OS thread,
//! so libtorch never runs on the async runtime. The only module of the worker that touches
//! tensors; it reports through [`Update`] messages and owns nothing of the database.

use std::path::PathBuf;
use std::sync::Arc;

use hone_domain::job::{
    prior_choice, AutoEvidence, Hyperparameters, Method, MethodType, Quantization,
};
use hone_domain::resources::{EventLevel, Transferability};
use hone_train::train::{
    fine_tune_with, Checkpoint, EncoderInit, EpochMetrics, Evaluation, Features, StepProgress,
    Strategy, TrainConfig, TrainData, TrainError, TrainJob, TrainObserver, TrainedModel,
};
use hone_train::{FeatureRun, Objective};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Tensor;
use tokio::sync::{mpsc, oneshot};

use super::failure::{transient, Failure};
use super::prepare::Validation;
use super::progress::{Reporter, Update};
use super::targets::class_evidence;
use crate::StopFlags;

mod learning_rate;
mod refit;
mod search;

struct Observer {
    tx: mpsc::UnboundedSender<Update>,
    flags: Arc<StopFlags>,
    /// A probe reports nothing but still obeys cancellation.
    quiet: bool,
    /// A checkpoint was written while the job was paused: stop now, and the attempt
    /// that resumes the job starts from it.
    pausing: bool,
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
        self.pausing || self.flags.any()
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
            self.pausing = self.flags.paused.load(std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Cache entries of the features a job may train on: the key, and the cached file
/// copied to scratch when there was one.
#[derive(Default)]
pub(super) struct FeatureCacheKeys {
    pub(super) train: Option<(String, Option<PathBuf>)>,
    pub(super) validation: Option<(String, Option<PathBuf>)>,
}

/// Everything the training thread owns.
pub(super) struct ThreadInput {
    pub(super) base_dir: PathBuf,
    pub(super) objective: Objective,
    pub(super) file: TrainData,
    pub(super) train_rows: Vec<usize>,
    pub(super) validation: Validation,
    pub(super) method: Method,
    pub(super) hyperparameters: Hyperparameters,
    pub(super) seed: u64,
    pub(super) device: tch::Device,
    /// libtorch intra-op threads for this thread.
    pub(super) threads: usize,
    pub(super) batch_work: hone_train::threads::BatchWork,
    /// [`TrainJob::frozen_cache_bytes`].
    pub(super) frozen_cache_bytes: u64,
    pub(super) out_dir: PathBuf,
    pub(super) cache: FeatureCacheKeys,
    /// A checkpoint of an earlier attempt to go on from.
    pub(super) resume_from: Option<PathBuf>,
}

/// What the training thread hands back besides the saved model directory.
pub(super) struct ThreadOutput {
    /// The epoch whose weights were published.
    pub(super) kept: Option<EpochMetrics>,
    pub(super) epochs_run: u32,
    pub(super) evaluation: Option<Evaluation>,
    /// How the published model serves when not in fp32, with what that changes.
    pub(super) quantization: Option<hone_train::model_dir::Quantization>,
    /// The examples a final fit trained on (training and validation data together),
    /// when there was one.
    pub(super) refit_examples: Option<u64>,
    /// With `"learning_rate": "auto"`: the rates tried and the one kept.
    pub(super) learning_rate_search: Option<hone_domain::job::LearningRateSearch>,
}

/// Training examples the transferability estimate scores: LogME is cheap, the
/// features are not, and a couple of thousand examples rank models reliably.
const TRANSFERABILITY_EXAMPLES: usize = 2000;

/// Runs `input` on a training thread of its own and feeds its updates to `reporter`
/// until it ends: what the thread hands back, or why the job stops.
pub(super) async fn train(
    input: ThreadInput,
    job_id: &str,
    reporter: &mut Reporter<'_>,
    flags: &Arc<StopFlags>,
) -> Result<ThreadOutput, Failure> {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (done_tx, mut done_rx) = oneshot::channel();
    let observer_flags = flags.clone();
    let span = tracing::Span::current();
    std::thread::Builder::new()
        .name(format!("hone-train-{job_id}"))
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
    let stopped = || transient(super::failure::STOPPED, "training stopped");
    match outcome {
        Err(_) => Err(transient("worker_error", "the training thread died")),
        Ok(Err(TrainError::Cancelled)) => Err(stopped()),
        Ok(Err(e)) if flags.any() => {
            tracing::warn!(error = %e, "training ended while stopping");
            Err(stopped())
        }
        Ok(Err(e)) => Err(Failure::from(e)),
        Ok(Ok(output)) => Ok(output),
    }
}

/// The whole tch side of a job, on its own OS thread: token counts, features and the
/// transferability estimate, `auto`'s choice, training, saving.
fn run_training(
    input: ThreadInput,
    tx: &mpsc::UnboundedSender<Update>,
    flags: &Arc<StopFlags>,
) -> Result<ThreadOutput, TrainError> {
    let _working = input.batch_work.enter();
    hone_train::threads::use_intra_op_threads(input.threads);
    let run = Run::new(input, tx, flags)?;
    let mean_tokens = run.token_lengths()?;
    let file_features = run.file_features()?;
    run.estimate_transferability(file_features.as_ref())?;
    if run.cancelled() {
        return Err(TrainError::Cancelled);
    }
    let (strategy, hp) = run.resolve_method(file_features.as_ref(), mean_tokens)?;
    let (hp, learning_rate_search) = run.search_learning_rate(strategy, hp)?;
    let features = match (strategy, &file_features) {
        (Strategy::FeatureExtraction, Some(f)) => Some(run.split_features(f)?),
        _ => None,
    };
    let refit_features = features.as_ref().map(|f| Features {
        train: f.train.shallow_clone(),
        validation: f.validation.as_ref().map(Tensor::shallow_clone),
    });
    let model = run.train(strategy, &hp, features)?;
    let model_dir = run.input.out_dir.join("model");
    let refit = run.refit(strategy, &hp, &model, refit_features.as_ref())?;
    match &refit {
        Some(r) => refit::save_refit(&r.model, &model, &model_dir)?,
        None => model.save(&model_dir)?,
    }
    // Measured on the validation data, which a final fit trained on too: the change
    // int8 makes is still what it reports.
    let quantization = match hp.quantization {
        Quantization::None => None,
        Quantization::Int8 => Some(hone_train::quantize::quantize_published(
            &model_dir,
            run.validation.as_ref(),
            hp.batch_size as usize,
        )?),
    };
    Ok(ThreadOutput {
        kept: model.final_metrics().cloned(),
        epochs_run: model.history().len() as u32,
        evaluation: model.evaluation().cloned(),
        quantization,
        refit_examples: refit.map(|r| r.examples as u64),
        learning_rate_search,
    })
}

/// One job on its training thread: what it owns, the data as the trainer takes it, and
/// the channel it reports on. Each step of [`run_training`] is a method.
struct Run<'a> {
    input: ThreadInput,
    tx: &'a mpsc::UnboundedSender<Update>,
    flags: &'a Arc<StopFlags>,
    base: hone_train::BaseModelInfo,
    /// Token counts mean nothing for images: `auto` sees 0 and the report leaves
    /// truncation out.
    images: bool,
    /// The training rows of the file.
    train: TrainData,
    validation: Option<TrainData>,
    checkpoint_dir: PathBuf,
}

impl<'a> Run<'a> {
    fn new(
        input: ThreadInput,
        tx: &'a mpsc::UnboundedSender<Update>,
        flags: &'a Arc<StopFlags>,
    ) -> Result<Self, TrainError> {
        let base = hone_train::inspect_base_model(&input.base_dir)?;
        let images = base.modality == hone_train::Modality::Image;
        let train = input.file.select(&input.train_rows);
        let validation = match &input.validation {
            Validation::None => None,
            Validation::Split(rows) => Some(input.file.select(rows)),
            Validation::File(data, _) => Some(data.clone()),
        };
        let checkpoint_dir = input.out_dir.join("checkpoints");
        Ok(Self {
            checkpoint_dir,
            input,
            tx,
            flags,
            base,
            images,
            train,
            validation,
        })
    }

    /// Examples the validation data holds (0 without): what trials are scored on.
    fn validation_examples(&self) -> usize {
        self.validation.as_ref().map_or(0, TrainData::len)
    }

    fn send(&self, update: Update) {
        let _ = self.tx.send(update);
    }

    fn cancelled(&self) -> bool {
        self.flags.any()
    }

    fn observer(&self, quiet: bool) -> Observer {
        Observer {
            tx: self.tx.clone(),
            flags: self.flags.clone(),
            quiet,
            pausing: false,
        }
    }

    fn feature_run(&self) -> FeatureRun<'_> {
        FeatureRun {
            base_model_dir: &self.input.base_dir,
            max_seq_len: self.input.hyperparameters.max_seq_len as usize,
            pooling: self.input.hyperparameters.pooling,
            batch_size: 64,
            device: self.input.device,
        }
    }

    /// Sends the training inputs' token counts for the data report; their mean (0 for
    /// images) is evidence for `auto`.
    fn token_lengths(&self) -> Result<f64, TrainError> {
        if self.images {
            return Ok(0.0);
        }
        let lengths = hone_train::tokenize::token_lengths(
            &self.input.base_dir,
            &self.train.texts,
            self.train.text_pairs.as_deref(),
        )?;
        let mean = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
        self.send(Update::TokenLengths(lengths));
        Ok(mean)
    }

    /// The frozen encoder's features of `data`.
    fn extract(&self, data: &TrainData) -> Result<Tensor, TrainError> {
        let cancelled = || self.cancelled();
        if self.images {
            hone_train::train::extract_image_features(
                &self.input.base_dir,
                data.images.clone(),
                64,
                self.input.device,
                &cancelled,
            )
        } else {
            hone_train::extract_features(
                &self.feature_run(),
                &data.texts,
                data.text_pairs.as_deref(),
                &cancelled,
            )
        }
    }

    /// Features of `data` from the cache entry when it has a sound copy, else computed
    /// and handed to the reporter to cache under the entry's key.
    fn features_of(
        &self,
        entry: &Option<(String, Option<PathBuf>)>,
        data: &TrainData,
        name: &str,
    ) -> Result<Tensor, TrainError> {
        if let Some((_, Some(path))) = entry {
            match hone_train::feature_file::load_features(path, data.len(), self.base.hidden_size) {
                Ok(t) => return Ok(t),
                Err(e) => self.send(Update::Notice(
                    EventLevel::Warn,
                    format!("Ignoring a damaged feature cache entry: {e}"),
                )),
            }
        }
        let t = self.extract(data)?;
        if let Some((key, _)) = entry {
            let path = self
                .input
                .out_dir
                .join(format!("{name}-features.safetensors"));
            hone_train::feature_file::save_features(&t, &path)?;
            self.send(Update::FeaturesComputed {
                key: key.clone(),
                path,
            });
        }
        Ok(t)
    }

    /// Features of the frozen encoder for the whole training file, when a strategy may
    /// train on them (the worker then made a cache entry for them).
    fn file_features(&self) -> Result<Option<Tensor>, TrainError> {
        match &self.input.cache.train {
            Some(_) => Ok(Some(self.features_of(
                &self.input.cache.train,
                &self.input.file,
                "train",
            )?)),
            None => Ok(None),
        }
    }

    /// Transferability on a sample of the training rows; text base models only so far,
    /// and never for the from-scratch baseline.
    fn estimate_transferability(&self, file_features: Option<&Tensor>) -> Result<(), TrainError> {
        if self.images {
            self.send(Update::Notice(
                EventLevel::Info,
                "No transferability estimate: it covers text base models so far".to_owned(),
            ));
            return Ok(());
        }
        if self.input.method.from_scratch {
            return Ok(());
        }
        estimate_transferability(
            &self.feature_run(),
            file_features,
            &self.train,
            &self.input.train_rows,
            self.input.seed,
            &|u| self.send(u),
            &|| self.cancelled(),
        )
    }

    /// The file's features split as the training and validation rows are.
    fn split_features(&self, f: &Tensor) -> Result<Features, TrainError> {
        let rows_tensor = |rows: &[usize]| -> Result<Tensor, TrainError> {
            let rows: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
            Ok(Tensor::f_from_slice(&rows)?)
        };
        let train = f.f_index_select(0, &rows_tensor(&self.input.train_rows)?)?;
        let validation = match &self.input.validation {
            Validation::None => None,
            Validation::Split(rows) => Some(f.f_index_select(0, &rows_tensor(rows)?)?),
            Validation::File(data, _) => {
                Some(self.features_of(&self.input.cache.validation, data, "validation")?)
            }
        };
        Ok(Features { train, validation })
    }

    fn job_for(
        &self,
        strategy: Strategy,
        hp: &Hyperparameters,
        features: Option<Features>,
        checkpoints: bool,
        resume: bool,
    ) -> TrainJob<'_> {
        TrainJob {
            base_model_dir: &self.input.base_dir,
            objective: self.input.objective.clone(),
            train: self.train.clone(),
            validation: self.validation.clone(),
            config: TrainConfig::from_hyperparameters(hp, strategy, self.input.seed),
            device: self.input.device,
            features,
            checkpoint_dir: checkpoints.then_some(self.checkpoint_dir.as_path()),
            resume_from: self.input.resume_from.as_deref().filter(|_| resume),
            frozen_cache_bytes: self.input.frozen_cache_bytes,
        }
    }

    /// The strategy and hyperparameters to train with: the job's own, or for `auto`
    /// the choice made from the data (the prior) or by trial (`search.rs`), sent to
    /// the reporter, which records it. A resumed `auto` job has its choice stored and
    /// does not search again.
    fn resolve_method(
        &self,
        file_features: Option<&Tensor>,
        mean_tokens: f64,
    ) -> Result<(Strategy, Hyperparameters), TrainError> {
        let method = &self.input.method;
        let hp = self.input.hyperparameters.clone();
        if method.kind != MethodType::Auto || method.chosen.is_some() {
            return Ok((strategy_of(method.effective()), hp));
        }
        let features =
            file_features.ok_or_else(|| TrainError::InvalidInput("auto needs features".into()))?;
        let (classes, smallest_class) = class_evidence(&self.input.objective, &self.train.labels);
        let mut evidence = AutoEvidence {
            examples: self.train.len(),
            classes,
            smallest_class,
            mean_tokens,
            probe_macro_f1: None,
            model_layers: self.base.num_layers as u32,
            validation_examples: self.validation_examples(),
        };
        let chosen = match prior_choice(&evidence, self.validation.is_some()) {
            Some(chosen) => chosen,
            None => self.search(features, &mut evidence)?,
        };
        let hp = self.recipe_for(&hp, chosen.kind);
        let strategy = strategy_of((chosen.kind, chosen.frozen_layers));
        self.send(Update::Chosen(chosen, Box::new(hp.clone())));
        Ok((strategy, hp))
    }

    /// `auto`'s hyperparameters for a strategy it tries or chooses: that strategy's
    /// defaults where the request left a field out, its epochs sized for the training
    /// rows.
    fn recipe_for(&self, hp: &Hyperparameters, kind: MethodType) -> Hyperparameters {
        hp.rebased_on(kind).sized_for(kind, self.train.len())
    }

    /// Trains, from the earlier attempt's checkpoint when there is one; a checkpoint
    /// that cannot be resumed from costs a warning and a fresh start.
    fn train(
        &self,
        strategy: Strategy,
        hp: &Hyperparameters,
        features: Option<Features>,
    ) -> Result<TrainedModel, TrainError> {
        let init = if self.input.method.from_scratch {
            EncoderInit::Random
        } else {
            EncoderInit::Pretrained
        };
        let mut observer = self.observer(false);
        if self.input.resume_from.is_none() {
            return fine_tune_with(
                self.job_for(strategy, hp, features, true, false),
                init,
                &mut observer,
            );
        }
        let features_again = features.as_ref().map(|f| Features {
            train: f.train.shallow_clone(),
            validation: f.validation.as_ref().map(Tensor::shallow_clone),
        });
        match fine_tune_with(
            self.job_for(strategy, hp, features, true, true),
            init,
            &mut observer,
        ) {
            Err(TrainError::Resume(reason)) => {
                self.send(Update::Notice(
                    EventLevel::Warn,
                    format!(
                        "Cannot resume from the checkpoint ({reason}); training from the start"
                    ),
                ));
                fine_tune_with(
                    self.job_for(strategy, hp, features_again, true, false),
                    init,
                    &mut observer,
                )
            }
            other => other,
        }
    }
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
    let random = hone_train::features::random_init_features(
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

#[cfg(test)]
mod tests;
