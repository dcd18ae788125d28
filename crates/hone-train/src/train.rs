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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Kind, Tensor};

use hone_domain::dataset::TaskType;
use hone_domain::metrics::GeneralizationGap;

use crate::base_model::{architecture_of, Modality};
use crate::bert::BertConfig;
use crate::checks::{check_job, check_vocab};
use crate::classifier::SequenceClassifier;
pub use crate::config::{EncoderInit, Strategy, TrainConfig};
pub use crate::data::{Features, TrainData};
use crate::early_stopping::{monitor_name, BestEpoch};
use crate::efficientnet::EfficientNetConfig;
pub use crate::error::TrainError;
use crate::evaluate::{score, score_subset};
pub use crate::features::{extract_features, extract_image_features, FeatureRun};
use crate::features::{image_features, pooled_features};
use crate::inputs::{Inputs, Split};
pub use crate::job::TrainJob;
use crate::layers::{is_head_variable, WeightInit};
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
use crate::resume::{self, TrainState};
use crate::schedule::LinearSchedule;
use crate::tokenize::{Encoded, TextTokenizer};
pub use crate::trainable::apply_checkpoint;
use crate::trainable::{freeze, load_trainable, prefixed, trainable, with_prefix};
use crate::vision::ImageClassifier;
use crate::vision_data::{ImageSet, LoaderOptions, Preprocess};
use crate::weights::load_safetensors;

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
/// weights of the same architecture.
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
    } = job;
    let (architecture, modality) = architecture_of(base_model_dir)?;
    check_job(&objective, &train, validation.as_ref(), &config, modality)?;
    let per_task = objective.task_type == TaskType::MultiTask;
    let cancelled = || observer.cancelled();

    tch::manual_seed(config.seed as i64);
    let vs = nn::VarStore::new(device);
    // What each modality feeds the loop: token ids or an image loader per set.
    let mut encoded: Option<(Vec<Encoded>, Option<Vec<Encoded>>, u32)> = None;
    let mut image_sets: Option<(Arc<ImageSet>, Option<Arc<ImageSet>>)> = None;
    let (network, frozen, hidden) = match modality {
        Modality::Text => {
            let bert_config = BertConfig::from_file(&base_model_dir.join(CONFIG_FILE))?;
            if config.max_seq_len > bert_config.max_position_embeddings {
                return Err(TrainError::InvalidInput(format!(
                    "max_seq_len {} exceeds the base model's max_position_embeddings {}",
                    config.max_seq_len, bert_config.max_position_embeddings
                )));
            }
            let layers = bert_config.num_hidden_layers;
            if let Strategy::Partial { frozen_layers } = config.strategy {
                if frozen_layers > layers {
                    return Err(TrainError::InvalidInput(format!(
                        "frozen_layers {frozen_layers} exceeds the base model's {layers} layers"
                    )));
                }
            }
            let tokenizer = TextTokenizer::from_dir(base_model_dir, config.max_seq_len)?;
            check_vocab(&tokenizer, &bert_config, base_model_dir)?;
            let model = SequenceClassifier::with_heads(
                &vs.root(),
                &bert_config,
                &objective.sizes(),
                per_task,
                config.head,
                config.pooling,
                WeightInit::random(&bert_config),
            )?;
            if init == EncoderInit::Pretrained {
                load_safetensors(&vs, &base_model_dir.join(WEIGHTS_FILE), &is_head_variable)?;
            }
            let frozen = freeze(&vs, config.strategy, layers)?;
            let pad_id = tokenizer.pad_id();
            let train_encoded =
                tokenizer.encode_maybe_pairs(&train.texts, train.text_pairs.as_deref())?;
            let validation_encoded = match &validation {
                Some(v) => Some(tokenizer.encode_maybe_pairs(&v.texts, v.text_pairs.as_deref())?),
                None => None,
            };
            encoded = Some((train_encoded, validation_encoded, pad_id));
            (
                Network::Text { model, tokenizer },
                frozen,
                bert_config.hidden_size,
            )
        }
        Modality::Image => {
            let image_config = EfficientNetConfig::from_file(&base_model_dir.join(CONFIG_FILE))?;
            let sizes = objective.sizes();
            let mut model = match init {
                EncoderInit::Pretrained => {
                    ImageClassifier::from_base_model(&vs, base_model_dir, &sizes, per_task)?
                }
                EncoderInit::Random => {
                    ImageClassifier::from_scratch(&vs, &image_config, &sizes, per_task)?
                }
            };
            let frozen = model.freeze(&vs, config.strategy)?;
            let preprocess = Preprocess::from_config(&image_config);
            let set = |images: &[Vec<u8>]| {
                ImageSet::new(
                    images.to_vec(),
                    preprocess.clone(),
                    LoaderOptions::default(),
                )
            };
            let validation_set = match &validation {
                Some(v) => Some(set(&v.images)?),
                None => None,
            };
            image_sets = Some((set(&train.images)?, validation_set));
            (
                Network::Image { model, preprocess },
                frozen,
                image_config.head_channels(),
            )
        }
    };

    let (train_features, validation_features) = match (config.strategy, features) {
        (Strategy::FeatureExtraction, Some(f)) => {
            let hidden = hidden as i64;
            let check = |t: Tensor, n: usize, name: &str| -> Result<Tensor, TrainError> {
                if t.size() != [n as i64, hidden] {
                    return Err(TrainError::InvalidInput(format!(
                        "{name} features have shape {:?}, expected [{n}, {hidden}]",
                        t.size()
                    )));
                }
                Ok(t.f_to_kind(Kind::Float)?.f_to_device(device)?)
            };
            let v = match (f.validation, &validation) {
                (Some(t), Some(v)) => Some(check(t, v.len(), "validation")?),
                (None, None) => None,
                _ => {
                    return Err(TrainError::InvalidInput(
                        "validation features and validation data must come together".into(),
                    ))
                }
            };
            (Some(check(f.train, train.len(), "training")?), v)
        }
        (Strategy::FeatureExtraction, None) => {
            let batch_size = config.batch_size.max(32);
            let extract = |split: Split| -> Result<Option<Tensor>, TrainError> {
                let features = match (&network, &encoded, &image_sets) {
                    (Network::Text { model, .. }, Some((train, validation, pad_id)), _) => {
                        let e = match split {
                            Split::Train => Some(train),
                            Split::Validation => validation.as_ref(),
                        };
                        match e {
                            Some(e) => Some(pooled_features(
                                model.encoder(),
                                config.pooling,
                                e,
                                *pad_id,
                                batch_size,
                                device,
                                &cancelled,
                            )?),
                            None => None,
                        }
                    }
                    (Network::Image { model, .. }, _, Some((train, validation))) => {
                        let set = match split {
                            Split::Train => Some(train),
                            Split::Validation => validation.as_ref(),
                        };
                        match set {
                            Some(set) => {
                                Some(image_features(model, set, batch_size, device, &cancelled)?)
                            }
                            None => None,
                        }
                    }
                    _ => None,
                };
                features
                    .map(|f| f.f_to_device(device))
                    .transpose()
                    .map_err(Into::into)
            };
            (extract(Split::Train)?, extract(Split::Validation)?)
        }
        _ => (None, None),
    };
    let augment =
        (config.augment && config.strategy != Strategy::FeatureExtraction).then_some(config.seed);
    let inputs_of = |split: Split| -> Option<Inputs> {
        let features = match split {
            Split::Train => train_features.as_ref(),
            Split::Validation => validation_features.as_ref(),
        };
        if let Some(f) = features {
            return Some(Inputs::Features(f));
        }
        if let Some((train, validation, pad_id)) = &encoded {
            let encoded = match split {
                Split::Train => train,
                Split::Validation => validation.as_ref()?,
            };
            return Some(Inputs::Tokens {
                encoded,
                pad_id: *pad_id,
            });
        }
        let (train, validation) = image_sets.as_ref()?;
        Some(match split {
            Split::Train => Inputs::Images {
                set: train,
                augment,
            },
            Split::Validation => Inputs::Images {
                set: validation.as_ref()?,
                augment: None,
            },
        })
    };
    let train_inputs = inputs_of(Split::Train).ok_or_else(|| {
        TrainError::InvalidInput("the training set has no inputs of the model's kind".into())
    })?;
    let validation_inputs = inputs_of(Split::Validation);

    let steps_per_epoch = train.len().div_ceil(config.batch_size) as u64;
    let total_steps = steps_per_epoch * u64::from(config.epochs);
    let schedule = LinearSchedule::new(&config, total_steps);
    let mut optimizer = Optimizer::new(&vs, &config)?;
    let loss_weights = objective.loss_weights(config.class_weights, &train.labels, device)?;
    tracing::info!(
        examples = train.len(),
        task_type = %objective.task_type,
        outputs = objective.width(),
        total_steps,
        ?device,
        ?init,
        strategy = ?config.strategy,
        frozen_parameters = frozen,
        "fine-tuning"
    );

    let mut history: Vec<EpochMetrics> = Vec::with_capacity(config.epochs as usize);
    let mut best = BestEpoch::new(&vs, config.monitor)?;
    let mut step = 0u64;
    let mut stopped_early = false;
    let mut best_probs: Option<Vec<Vec<f32>>> = None;
    let mut first_epoch = 1;
    if let Some(dir) = resume_from {
        let state = (|| {
            let loaded = resume::load(dir)?;
            let state = loaded.state;
            if state.config != config || state.train_examples != train.len() {
                return Err(TrainError::config(
                    dir.join(resume::STATE_FILE),
                    "the checkpoint was taken by a run with other settings or data",
                ));
            }
            load_trainable(&vs, &loaded.weights, dir)?;
            optimizer.load_state(
                &prefixed(&loaded.tensors, "optimizer."),
                &state.optimizer_steps,
            )?;
            best.load(state.best, &prefixed(&loaded.tensors, "best."))?;
            Ok(state)
        })()
        .map_err(|e| TrainError::Resume(e.to_string()))?;
        step = state.step;
        history = state.history;
        best_probs = state.best_probs;
        first_epoch = state.epoch + 1;
        tracing::info!(epoch = state.epoch, step, "resuming from a checkpoint");
    }
    let stop_after = |epoch: u32, best: &BestEpoch| {
        config.early_stopping_patience > 0
            && epoch < config.epochs
            && best.epochs_since(epoch) >= config.early_stopping_patience
    };
    let mut epochs = first_epoch..=config.epochs;
    if first_epoch > 1 && stop_after(first_epoch - 1, &best) {
        stopped_early = true;
        epochs = first_epoch..=first_epoch - 1;
    }
    for epoch in epochs {
        // Shuffle and dropout of an epoch depend on (seed, epoch) only, so a run
        // resumed at an epoch boundary draws what the uninterrupted one drew.
        let epoch_seed = resume::epoch_seed(config.seed, epoch);
        tch::manual_seed(epoch_seed as i64);
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut StdRng::seed_from_u64(epoch_seed));
        let mut loss_sum = 0.0;
        for batch in train_inputs.batches(order, config.batch_size, Some(epoch))? {
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let batch = batch?;
            let indices = batch.indices.as_slice();
            let learning_rate = schedule.at(step);
            let logits = train_inputs.logits(&network, &batch, true, device)?;
            let loss = objective.loss(
                &logits,
                &train.labels,
                indices,
                &loss_weights,
                config.label_smoothing,
            )?;
            optimizer.step(&loss, learning_rate)?;

            let loss = loss.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(TrainError::InvalidInput(format!(
                    "training diverged: the loss is {loss} at step {}; try a lower learning rate",
                    step + 1
                )));
            }
            step += 1;
            loss_sum += loss * indices.len() as f64;
            observer.on_step(&StepProgress {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate,
                elapsed: started.elapsed(),
            });
        }
        let scored = match (&validation, &validation_inputs) {
            (Some(data), Some(inputs)) => Some(score(
                &network,
                &objective,
                inputs,
                &data.labels,
                config.batch_size,
                device,
                &|| observer.cancelled(),
            )?),
            _ => None,
        };
        let validation_metrics = match (&validation, &scored) {
            (Some(data), Some(scored)) => Some(scored.metrics(&objective, &data.labels)),
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            validation: validation_metrics,
        };
        tracing::info!(
            epoch,
            train_loss = metrics.train_loss,
            validation_loss = metrics.validation.as_ref().map(|v| v.loss),
            "epoch done"
        );
        if let Some(v) = &metrics.validation {
            if best.offer(epoch, v)? {
                // The final report describes these weights: keep their scores rather
                // than score the validation data again once they are restored.
                best_probs = scored.map(|s| s.probs);
            }
        }
        observer.on_epoch(&metrics);
        history.push(metrics.clone());
        if let Some(dir) = checkpoint_dir {
            let dir = dir.join(format!("epoch-{epoch}"));
            let mut state = TrainState::new(epoch, step, &config, train.len());
            state.history = history.clone();
            state.best = best.best;
            state.best_probs = best_probs.clone();
            state.optimizer_steps = optimizer.steps();
            let mut tensors = with_prefix(optimizer.state_tensors()?, "optimizer.");
            tensors.extend(with_prefix(best.saved_named(), "best."));
            resume::save(&dir, &trainable(&vs), &tensors, &state)?;
            observer.on_checkpoint(&Checkpoint {
                epoch,
                step,
                path: dir.join(resume::WEIGHTS_FILE),
                dir,
                metrics,
            });
        }
        if stop_after(epoch, &best) {
            stopped_early = true;
            observer.on_notice(&format!(
                "early stopping after epoch {epoch}: validation {} has not improved for {} epochs",
                monitor_name(config.monitor),
                config.early_stopping_patience
            ));
            break;
        }
    }
    let epochs_run = history.len() as u32;
    let best_epoch = best.restore()?.unwrap_or(epochs_run);
    if best_epoch != epochs_run {
        observer.on_notice(&format!(
            "keeping the weights of epoch {best_epoch}, the best by validation {}",
            monitor_name(config.monitor)
        ));
    }

    let evaluation = match (&validation, &best_probs) {
        (Some(data), Some(probs)) => {
            // A multi-label model's threshold is tuned here, on the validation data.
            let report = objective.report(&data.labels, probs, None);
            let sample: Vec<usize> = (0..train.len()).take(TRAIN_EVAL_EXAMPLES).collect();
            let train_probs = score_subset(
                &network,
                &objective,
                &train_inputs,
                &sample,
                config.batch_size,
                device,
            )?;
            let train_report = objective.report(
                &train.labels.select(&sample),
                &train_probs,
                report.threshold(),
            );
            Some(Evaluation {
                best_epoch,
                epochs_run,
                stopped_early,
                generalization: GeneralizationGap::new(train_report.accuracy(), report.accuracy()),
                train_accuracy: train_report.accuracy(),
                validation: report,
            })
        }
        _ => None,
    };
    let threshold = (objective.task_type == TaskType::MultiLabel).then(|| {
        evaluation
            .as_ref()
            .and_then(|e| e.validation.threshold())
            .unwrap_or(UNTUNED_THRESHOLD)
    });

    let meta = ModelMeta {
        format_version: MODEL_META_VERSION,
        modality,
        architecture,
        pooling: config.pooling,
        head: config.head,
        text_pairs: train.text_pairs.is_some(),
        task_type: objective.task_type,
        labels: objective.labels().to_vec(),
        tasks: match objective.task_type {
            TaskType::MultiTask => objective.heads.clone(),
            _ => Vec::new(),
        },
        threshold,
        max_seq_len: match modality {
            Modality::Text => config.max_seq_len,
            Modality::Image => 0,
        },
    };
    Ok(TrainedModel {
        classifier: Classifier::from_parts(vs, network, meta, device),
        base_model_dir: base_model_dir.to_owned(),
        history,
        best_epoch,
        evaluation,
    })
}
