//! The training thread: the whole tch side of a job (token counts, features and the
//! transferability estimate, `auto`'s choice, training, saving) on a dedicated OS thread,
//! so libtorch never runs on the async runtime. The only file of the worker that touches
//! tensors; it reports through [`Update`] messages and owns nothing of the database.

use std::path::PathBuf;
use std::sync::Arc;

use hone_domain::job::{choose_method, AutoEvidence, Hyperparameters, Method, MethodType};
use hone_domain::resources::{EventLevel, Transferability};
use hone_train::train::{
    fine_tune, fine_tune_with, Checkpoint, EncoderInit, EpochMetrics, Evaluation, Features,
    StepProgress, Strategy, TrainConfig, TrainData, TrainError, TrainJob, TrainObserver,
};
use hone_train::{FeatureRun, Objective};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::Tensor;
use tokio::sync::mpsc;

use super::prepare::Validation;
use super::progress::Update;
use super::targets::class_evidence;
use crate::worker::StopFlags;

pub(super) struct Observer {
    pub(super) tx: mpsc::UnboundedSender<Update>,
    pub(super) flags: Arc<StopFlags>,
    /// A probe reports nothing but still obeys cancellation.
    pub(super) quiet: bool,
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
}

/// Training examples the transferability estimate scores: LogME is cheap, the
/// features are not, and a couple of thousand examples rank models reliably.
pub(super) const TRANSFERABILITY_EXAMPLES: usize = 2000;

/// The whole tch side of a job, on its own OS thread: token counts, features and the
/// transferability estimate, `auto`'s choice, training, saving.
pub(super) fn run_training(
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
pub(super) fn estimate_transferability(
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
pub(super) fn transferability(
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

pub(super) fn strategy_of((kind, frozen): (MethodType, Option<u32>)) -> Strategy {
    match kind {
        MethodType::Partial => Strategy::Partial {
            frozen_layers: frozen.unwrap_or(0) as usize,
        },
        MethodType::FeatureExtraction => Strategy::FeatureExtraction,
        // `auto` resolves before training; a job stored before `chosen` existed trains fully.
        MethodType::Full | MethodType::Auto => Strategy::Full,
    }
}

pub(super) fn train_config(hp: &Hyperparameters, strategy: Strategy, seed: u64) -> TrainConfig {
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
