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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use tch::{nn, Device, Kind, Tensor};

use hone_domain::dataset::TaskType;
use hone_domain::job::MonitorMetric;
use hone_domain::metrics::GeneralizationGap;

use std::sync::Arc;

use crate::base_model::{architecture_of, Modality};
use crate::bert::{BertConfig, BertModel};
use crate::classifier::{pool, HeadType, Pooling, SequenceClassifier};
pub use crate::config::{EncoderInit, Strategy, TrainConfig};
pub use crate::data::{Features, TrainData};
use crate::efficientnet::{EfficientNetConfig, Init as ImageInit};
pub use crate::error::TrainError;
pub use crate::job::TrainJob;
use crate::layers::{is_head_variable, WeightInit};
pub use crate::metrics::{
    EpochMetrics, EvalMetrics, Evaluation, StepProgress, TRAIN_EVAL_EXAMPLES,
};
use crate::model_dir::{
    ModelMeta, CONFIG_FILE, MODEL_META_FILE, MODEL_META_VERSION, OPTIONAL_FILES, REQUIRED_FILES,
    TOKENIZER_FILE, WEIGHTS_FILE,
};
use crate::network::Network;
use crate::objective::{Objective, Targets, UNTUNED_THRESHOLD};
pub use crate::observer::{Checkpoint, TrainObserver};
pub use crate::optim::Optimizer;
use crate::predict::Classifier;
use crate::resume::{self, TrainState};
use crate::tokenize::{collate, Encoded, TextTokenizer};
use crate::vision::ImageClassifier;
use crate::vision_data::{ImageSet, LoaderOptions, Mode as ImageMode, Preprocess};
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

/// What the training loop feeds the model: token ids, pooled features of a frozen
/// backbone, or images the loader prepares.
enum Inputs<'a> {
    Tokens {
        encoded: &'a [Encoded],
        pad_id: u32,
    },
    Features(&'a Tensor),
    Images {
        set: &'a Arc<ImageSet>,
        /// The seed of training-time augmentation; `None` trains on the centre crop.
        augment: Option<u64>,
    },
}

/// The examples of one batch and, for images, their prepared pixels.
struct InputBatch {
    indices: Vec<usize>,
    images: Option<Tensor>,
}

type InputBatches<'a> = Box<dyn Iterator<Item = Result<InputBatch, TrainError>> + 'a>;

impl Inputs<'_> {
    fn len(&self) -> Result<usize, TrainError> {
        Ok(match self {
            Inputs::Tokens { encoded, .. } => encoded.len(),
            Inputs::Features(t) => t.size2()?.0 as usize,
            Inputs::Images { set, .. } => set.len(),
        })
    }

    /// The examples of `order` in batches of `batch_size`; `epoch` is the training
    /// epoch (augmented images when enabled), `None` evaluation. Images are prepared
    /// ahead on the loader's threads while the network works.
    fn batches(
        &self,
        order: Vec<usize>,
        batch_size: usize,
        epoch: Option<u32>,
    ) -> Result<InputBatches<'static>, TrainError> {
        match self {
            Inputs::Images { set, augment } => {
                let mode = match (epoch, augment) {
                    (Some(epoch), Some(seed)) => ImageMode::Train {
                        seed: *seed,
                        epoch: u64::from(epoch),
                    },
                    _ => ImageMode::Eval,
                };
                let batches = set.batches(order, batch_size, mode)?;
                Ok(Box::new(batches.map(|b| {
                    b.map(|b| InputBatch {
                        indices: b.indices,
                        images: Some(b.images),
                    })
                })))
            }
            _ => {
                let chunks: Vec<Vec<usize>> =
                    order.chunks(batch_size).map(<[usize]>::to_vec).collect();
                Ok(Box::new(chunks.into_iter().map(|indices| {
                    Ok(InputBatch {
                        indices,
                        images: None,
                    })
                })))
            }
        }
    }

    /// Logits of one batch.
    fn logits(
        &self,
        network: &Network,
        batch: &InputBatch,
        train: bool,
        device: Device,
    ) -> Result<Tensor, TrainError> {
        match (self, network, &batch.images) {
            (Inputs::Tokens { encoded, pad_id }, Network::Text { model, .. }, _) => {
                let items: Vec<&Encoded> = batch.indices.iter().map(|&i| &encoded[i]).collect();
                model.forward(&collate(&items, *pad_id, device)?, train)
            }
            (Inputs::Features(features), _, _) => {
                let rows: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                let rows = Tensor::f_from_slice(&rows)?.f_to_device(features.device())?;
                network.head_forward(&features.f_index_select(0, &rows)?, train)
            }
            (Inputs::Images { .. }, Network::Image { model, .. }, Some(images)) => {
                model.forward(&images.f_to_device(device)?, train)
            }
            _ => Err(TrainError::InvalidInput(
                "the inputs are not of the model's modality".into(),
            )),
        }
    }
}

/// Pooled features of every image of `set` under `model`'s frozen backbone, in eval
/// mode under `no_grad` on evaluation-preprocessed images: `[images, channels]` f32 on
/// the CPU, row `i` for image `i`.
fn image_features(
    model: &ImageClassifier,
    set: &Arc<ImageSet>,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor, TrainError> {
    let channels = model.config().head_channels() as i64;
    let mut parts = vec![Tensor::f_zeros([0, channels], (Kind::Float, Device::Cpu))?];
    tch::no_grad(|| {
        for batch in set.batches((0..set.len()).collect(), batch_size.max(1), ImageMode::Eval)? {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            let images = batch?.images.f_to_device(device)?;
            parts.push(
                model
                    .forward_features(&images, false)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?,
            );
        }
        Ok(Tensor::f_cat(&parts, 0)?)
    })
}

/// The pooled features of `images` (PNG or JPEG bytes) under the pretrained backbone
/// of the image base model in `base_model_dir`, exactly as
/// [`Strategy::FeatureExtraction`] trains on them: `[images, channels]` f32 on the CPU.
/// Callers cache them (keyed by base model and data: the preprocessing is the base
/// model's) and hand them back through [`TrainJob::features`].
pub fn extract_image_features(
    base_model_dir: &Path,
    images: Vec<Vec<u8>>,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor, TrainError> {
    let config = EfficientNetConfig::from_file(&base_model_dir.join(CONFIG_FILE))?;
    let vs = nn::VarStore::new(device);
    let model = ImageClassifier::new(&vs.root(), &config, &[1], false, ImageInit::Zeros)?;
    load_safetensors(&vs, &base_model_dir.join(WEIGHTS_FILE), &is_head_variable)?;
    let set = ImageSet::new(
        images,
        Preprocess::from_config(&config),
        LoaderOptions::default(),
    )?;
    image_features(&model, &set, batch_size, device, cancelled)
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
            let extract = |which: Which| -> Result<Option<Tensor>, TrainError> {
                let features = match (&network, &encoded, &image_sets) {
                    (Network::Text { model, .. }, Some((train, validation, pad_id)), _) => {
                        let e = match which {
                            Which::Train => Some(train),
                            Which::Validation => validation.as_ref(),
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
                        let set = match which {
                            Which::Train => Some(train),
                            Which::Validation => validation.as_ref(),
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
            (extract(Which::Train)?, extract(Which::Validation)?)
        }
        _ => (None, None),
    };
    let augment =
        (config.augment && config.strategy != Strategy::FeatureExtraction).then_some(config.seed);
    let inputs_of = |which: Which| -> Option<Inputs> {
        let features = match which {
            Which::Train => train_features.as_ref(),
            Which::Validation => validation_features.as_ref(),
        };
        if let Some(f) = features {
            return Some(Inputs::Features(f));
        }
        if let Some((train, validation, pad_id)) = &encoded {
            let encoded = match which {
                Which::Train => train,
                Which::Validation => validation.as_ref()?,
            };
            return Some(Inputs::Tokens {
                encoded,
                pad_id: *pad_id,
            });
        }
        let (train, validation) = image_sets.as_ref()?;
        Some(match which {
            Which::Train => Inputs::Images {
                set: train,
                augment,
            },
            Which::Validation => Inputs::Images {
                set: validation.as_ref()?,
                augment: None,
            },
        })
    };
    let train_inputs = inputs_of(Which::Train).ok_or_else(|| {
        TrainError::InvalidInput("the training set has no inputs of the model's kind".into())
    })?;
    let validation_inputs = inputs_of(Which::Validation);

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

fn monitor_name(m: MonitorMetric) -> &'static str {
    match m {
        MonitorMetric::Loss => "loss",
        MonitorMetric::Accuracy => "accuracy",
        MonitorMetric::MacroF1 => "macro-F1",
    }
}

/// The weights of the best epoch so far, copied aside (trainable variables only: the
/// frozen ones never change).
struct BestEpoch {
    monitor: MonitorMetric,
    names: Vec<String>,
    live: Vec<Tensor>,
    saved: Vec<Tensor>,
    best: Option<(u32, f64)>,
}

impl BestEpoch {
    fn new(vs: &nn::VarStore, monitor: MonitorMetric) -> Result<Self, TrainError> {
        let (names, live) = trainable(vs).into_iter().unzip();
        Ok(Self {
            monitor,
            names,
            live,
            saved: Vec::new(),
            best: None,
        })
    }

    /// The saved weights by name, for a checkpoint.
    fn saved_named(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.saved.iter().map(Tensor::shallow_clone))
            .collect()
    }

    /// Takes back what a checkpoint saved of the tracker.
    fn load(
        &mut self,
        best: Option<(u32, f64)>,
        saved: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        self.best = best;
        if best.is_none() {
            return Ok(());
        }
        self.saved = self
            .names
            .iter()
            .map(|name| {
                saved.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
                    TrainError::InvalidInput(format!("the best epoch's {name} is missing"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn value(&self, m: &EvalMetrics) -> f64 {
        match self.monitor {
            MonitorMetric::Loss => m.loss,
            MonitorMetric::Accuracy => m.accuracy,
            MonitorMetric::MacroF1 => m.macro_f1,
        }
    }

    /// Keeps this epoch's weights if they are the best so far (ties keep the earlier);
    /// whether it did.
    fn offer(&mut self, epoch: u32, metrics: &EvalMetrics) -> Result<bool, TrainError> {
        let value = self.value(metrics);
        let better = match self.best {
            None => true,
            Some((_, best)) if self.monitor.higher_is_better() => value > best,
            Some((_, best)) => value < best,
        };
        if !better {
            return Ok(false);
        }
        self.best = Some((epoch, value));
        tch::no_grad(|| -> Result<(), TrainError> {
            if self.saved.is_empty() {
                self.saved = self
                    .live
                    .iter()
                    .map(Tensor::f_detach_copy)
                    .collect::<Result<_, _>>()?;
            } else {
                for (saved, live) in self.saved.iter_mut().zip(&self.live) {
                    saved.f_copy_(live)?;
                }
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn epochs_since(&self, epoch: u32) -> u32 {
        self.best.map_or(0, |(best, _)| epoch - best)
    }

    /// Puts the best weights back; the best epoch, if any was scored.
    fn restore(mut self) -> Result<Option<u32>, TrainError> {
        tch::no_grad(|| -> Result<(), TrainError> {
            for (live, saved) in self.live.iter_mut().zip(&self.saved) {
                live.f_copy_(saved)?;
            }
            Ok(())
        })?;
        Ok(self.best.map(|(epoch, _)| epoch))
    }
}

/// The variables of `vs` that training changes, by name: those that require a
/// gradient and BatchNorm's running statistics (which training updates in place; the
/// frozen layers' ones are included too, they are small and never change), so a
/// checkpoint or the best epoch restores an image model exactly.
fn trainable(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, t)| {
            t.requires_grad() || name.ends_with(".running_mean") || name.ends_with(".running_var")
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Copies a checkpoint's weights into the trainable variables of `vs`; every one of
/// them must be there, in its shape.
fn load_trainable(
    vs: &nn::VarStore,
    weights: &BTreeMap<String, Tensor>,
    dir: &Path,
) -> Result<(), TrainError> {
    let live = trainable(vs);
    if live.len() != weights.len() {
        return Err(TrainError::config(
            dir.join(resume::WEIGHTS_FILE),
            format!(
                "the checkpoint holds {} variables, the model trains {}",
                weights.len(),
                live.len()
            ),
        ));
    }
    tch::no_grad(|| {
        for (name, mut tensor) in live {
            match weights.get(&name) {
                Some(saved) if saved.size() == tensor.size() => {
                    tensor.f_copy_(saved)?;
                }
                _ => {
                    return Err(TrainError::config(
                        dir.join(resume::WEIGHTS_FILE),
                        format!("{name} is missing or has another shape"),
                    ))
                }
            }
        }
        Ok(())
    })
}

fn with_prefix(tensors: Vec<(String, Tensor)>, prefix: &str) -> Vec<(String, Tensor)> {
    tensors
        .into_iter()
        .map(|(name, t)| (format!("{prefix}{name}"), t))
        .collect()
}

/// The tensors under `prefix`, with it removed.
fn prefixed(tensors: &BTreeMap<String, Tensor>, prefix: &str) -> BTreeMap<String, Tensor> {
    tensors
        .iter()
        .filter_map(|(name, t)| Some((name.strip_prefix(prefix)?.to_owned(), t.shallow_clone())))
        .collect()
}

/// Writes to `out_dir` the model of `model_dir` (a published model) with the weights
/// of `checkpoint` (a [`Checkpoint`] file of the same job) in place of its own, and,
/// for a multi-label model, `threshold` as its decision threshold. Every other file is
/// copied as it is. Refuses a checkpoint whose variables the model lacks or shapes
/// differently.
pub fn apply_checkpoint(
    model_dir: &Path,
    checkpoint: &Path,
    out_dir: &Path,
    threshold: Option<f32>,
) -> Result<(), TrainError> {
    let mut meta = ModelMeta::read(model_dir)?;
    let weights = model_dir.join(WEIGHTS_FILE);
    let mut tensors: std::collections::BTreeMap<String, Tensor> =
        Tensor::read_safetensors(&weights)?.into_iter().collect();
    for (name, tensor) in Tensor::read_safetensors(checkpoint)? {
        match tensors.get(&name) {
            Some(t) if t.size() == tensor.size() && t.kind() == tensor.kind() => {
                tensors.insert(name, tensor);
            }
            Some(t) => {
                return Err(TrainError::config(
                    checkpoint,
                    format!(
                        "{name} is {:?} {:?} in the checkpoint but {:?} {:?} in the model",
                        tensor.kind(),
                        tensor.size(),
                        t.kind(),
                        t.size()
                    ),
                ))
            }
            None => {
                return Err(TrainError::config(
                    checkpoint,
                    format!("{name} is not a variable of the model"),
                ))
            }
        }
    }
    std::fs::create_dir_all(out_dir).map_err(|e| TrainError::io(out_dir, e))?;
    let entries = std::fs::read_dir(model_dir).map_err(|e| TrainError::io(model_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| TrainError::io(model_dir, e))?;
        let name = entry.file_name();
        if name == WEIGHTS_FILE || name == MODEL_META_FILE {
            continue;
        }
        if entry.path().is_file() {
            std::fs::copy(entry.path(), out_dir.join(&name))
                .map_err(|e| TrainError::io(entry.path(), e))?;
        }
    }
    let named: Vec<(String, Tensor)> = tensors.into_iter().collect();
    Tensor::write_safetensors(&named, out_dir.join(WEIGHTS_FILE))?;
    if meta.task_type == TaskType::MultiLabel {
        meta.threshold = threshold.or(meta.threshold);
    }
    meta.write(out_dir)
}

/// Freezes what `strategy` keeps fixed; returns the number of frozen scalars.
fn freeze(vs: &nn::VarStore, strategy: Strategy, layers: usize) -> Result<i64, TrainError> {
    let frozen_depth = match strategy {
        Strategy::Full => return Ok(0),
        Strategy::Partial { frozen_layers } => frozen_layers,
        Strategy::FeatureExtraction => layers,
    };
    let mut count = 0;
    for (name, tensor) in vs.variables() {
        if layer_depth(&name, layers) <= frozen_depth {
            let _ = tensor.f_set_requires_grad(false)?;
            count += tensor.numel() as i64;
        }
    }
    Ok(count)
}

/// 0 for the embeddings, `i + 1` for encoder layer `i`, `layers + 1` for the rest (the
/// head): the order in which features get more specific to the pretraining task.
pub fn layer_depth(name: &str, layers: usize) -> usize {
    if name.starts_with("embeddings.") {
        return 0;
    }
    name.strip_prefix("encoder.layer.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|i| i.parse::<usize>().ok())
        .map_or(layers + 1, |i| i + 1)
}

/// Pooled outputs of `encoder` for `encoded`, in eval mode under `no_grad`, as f32 on
/// the CPU, row `i` for input `i`. Inputs run shortest first so batches pad little.
pub(crate) fn pooled_features(
    encoder: &BertModel,
    pooling: Pooling,
    encoded: &[Encoded],
    pad_id: u32,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor, TrainError> {
    let hidden = encoder.config().hidden_size as i64;
    if encoded.is_empty() {
        return Ok(Tensor::f_zeros([0, hidden], (Kind::Float, Device::Cpu))?);
    }
    let mut order: Vec<usize> = (0..encoded.len()).collect();
    order.sort_by_key(|&i| encoded[i].len());
    tch::no_grad(|| {
        let mut parts = Vec::new();
        for indices in order.chunks(batch_size.max(1)) {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            let items: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
            let batch = collate(&items, pad_id, device)?;
            let states = encoder.forward(
                &batch.input_ids,
                &batch.attention_mask,
                Some(&batch.token_type_ids),
                false,
            )?;
            parts.push(
                pool(&states, &batch.attention_mask, pooling)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?,
            );
        }
        let sorted = Tensor::f_cat(&parts, 0)?;
        // Row r of `sorted` is input order[r]; scatter back to input order.
        let mut inverse = vec![0i64; order.len()];
        for (r, &i) in order.iter().enumerate() {
            inverse[i] = r as i64;
        }
        Ok(sorted.f_index_select(0, &Tensor::f_from_slice(&inverse)?)?)
    })
}

/// The pooled features of `texts` under the base model in `base_model_dir`, exactly as
/// [`Strategy::FeatureExtraction`] trains on them: `[texts, hidden]` f32 on the CPU.
/// Callers cache them (keyed by base model, data, `max_seq_len` and `pooling`) and hand
/// them back through [`TrainJob::features`].
pub fn extract_features(
    run: &FeatureRun,
    texts: &[String],
    pairs: Option<&[String]>,
    cancelled: &dyn Fn() -> bool,
) -> Result<Tensor, TrainError> {
    run.features(texts, pairs, cancelled, |_| {
        BertModel::load(run.base_model_dir, run.device)
    })
}

/// Where and how to compute pooled features of an encoder of a base model's shape.
#[derive(Debug, Clone, Copy)]
pub struct FeatureRun<'a> {
    /// The base model directory (config, tokenizer, weights).
    pub base_model_dir: &'a Path,
    pub max_seq_len: usize,
    pub pooling: Pooling,
    /// Inputs per forward pass.
    pub batch_size: usize,
    pub device: Device,
}

impl FeatureRun<'_> {
    /// Features of `texts` under the encoder `make` builds for the base model's config,
    /// tokenized with the base model's tokenizer.
    pub(crate) fn features(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
        cancelled: &dyn Fn() -> bool,
        make: impl FnOnce(&BertConfig) -> Result<BertModel, TrainError>,
    ) -> Result<Tensor, TrainError> {
        let dir = self.base_model_dir;
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        if self.max_seq_len > config.max_position_embeddings {
            return Err(TrainError::InvalidInput(format!(
                "max_seq_len {} exceeds the base model's max_position_embeddings {}",
                self.max_seq_len, config.max_position_embeddings
            )));
        }
        let tokenizer = TextTokenizer::from_dir(dir, self.max_seq_len)?;
        check_vocab(&tokenizer, &config, dir)?;
        let encoder = make(&config)?;
        let encoded = tokenizer.encode_maybe_pairs(texts, pairs)?;
        pooled_features(
            &encoder,
            self.pooling,
            &encoded,
            tokenizer.pad_id(),
            self.batch_size,
            self.device,
            cancelled,
        )
    }
}

/// Loss and probabilities of a model on labelled inputs.
struct Scored {
    loss: f64,
    probs: Vec<Vec<f32>>,
}

impl Scored {
    fn metrics(&self, objective: &Objective, truth: &Targets) -> EvalMetrics {
        let report = objective.report(truth, &self.probs, None);
        EvalMetrics {
            loss: self.loss,
            accuracy: report.accuracy(),
            macro_f1: report.macro_f1(),
            examples: truth.len(),
            threshold: report.threshold(),
        }
    }
}

/// Mean loss (unweighted, unsmoothed: comparable across recipes) and probabilities, in
/// eval mode under `no_grad`. Results stay on the device until the end, so a GPU is not
/// stalled once per batch.
fn score(
    network: &Network,
    objective: &Objective,
    inputs: &Inputs,
    labels: &Targets,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<Scored, TrainError> {
    let n = inputs.len()?;
    tch::no_grad(|| {
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut probs = Vec::new();
        for batch in inputs.batches((0..n).collect(), batch_size, None)? {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            let batch = batch?;
            let indices = batch.indices.as_slice();
            let logits = inputs.logits(network, &batch, false, device)?;
            let loss = objective.loss(&logits, labels, indices, &[], 0.0)?;
            loss_sum = loss_sum.f_add(&loss.f_mul_scalar(indices.len() as f64)?)?;
            probs.push(objective.probabilities(&logits)?);
        }
        let probs = Tensor::f_cat(&probs, 0)?.f_to_device(Device::Cpu)?;
        let probs: Vec<Vec<f32>> = Vec::try_from(&probs)?;
        let loss = loss_sum.f_double_value(&[])? / n.max(1) as f64;
        Ok(Scored { loss, probs })
    })
}

/// Probabilities of the examples at `indices`.
fn score_subset(
    network: &Network,
    objective: &Objective,
    inputs: &Inputs,
    indices: &[usize],
    batch_size: usize,
    device: Device,
) -> Result<Vec<Vec<f32>>, TrainError> {
    tch::no_grad(|| {
        let mut probs = Vec::new();
        for batch in inputs.batches(indices.to_vec(), batch_size, None)? {
            let logits = inputs.logits(network, &batch?, false, device)?;
            probs.push(objective.probabilities(&logits)?);
        }
        let probs = Tensor::f_cat(&probs, 0)?.f_to_device(Device::Cpu)?;
        Ok(Vec::try_from(&probs)?)
    })
}

fn check_job(
    objective: &Objective,
    train: &TrainData,
    validation: Option<&TrainData>,
    config: &TrainConfig,
    modality: Modality,
) -> Result<(), TrainError> {
    let invalid = |m: String| Err(TrainError::InvalidInput(m));
    objective.validate()?;
    if train.is_empty() {
        return invalid("the training set is empty".into());
    }
    for (name, data) in
        std::iter::once(("training", train)).chain(validation.map(|v| ("validation", v)))
    {
        let (inputs, what, other) = match modality {
            Modality::Text => (data.texts.len(), "texts", data.images.len()),
            Modality::Image => (
                data.images.len(),
                "images",
                data.texts.len() + data.text_pairs.as_ref().map_or(0, Vec::len),
            ),
        };
        if other > 0 {
            return invalid(format!(
                "the {name} set is not made of {what}, as the base model reads"
            ));
        }
        if inputs != data.labels.len() {
            return invalid(format!(
                "the {name} set has {inputs} {what} but {} labels",
                data.labels.len()
            ));
        }
        objective.check(&data.labels, name)?;
    }
    for (name, data) in
        std::iter::once(("training", train)).chain(validation.map(|v| ("validation", v)))
    {
        if let Some(pairs) = &data.text_pairs {
            if pairs.len() != data.texts.len() {
                return invalid(format!(
                    "the {name} set has {} texts but {} text pairs",
                    data.texts.len(),
                    pairs.len()
                ));
            }
        }
    }
    if let Some(v) = validation {
        if v.text_pairs.is_some() != train.text_pairs.is_some() {
            return invalid(
                "the training and validation sets must both be text pairs, or neither".into(),
            );
        }
    }
    if validation.is_some_and(TrainData::is_empty) {
        return invalid("the validation set is empty".into());
    }
    if modality == Modality::Image && config.head != HeadType::Linear {
        return invalid("image models take a linear head only".into());
    }
    if config.epochs == 0 || config.batch_size == 0 {
        return invalid("epochs and batch_size must be positive".into());
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return invalid(format!(
            "learning_rate {} must be positive",
            config.learning_rate
        ));
    }
    if !(0.0..=1.0).contains(&config.warmup_ratio) {
        return invalid(format!(
            "warmup_ratio {} is not in [0, 1]",
            config.warmup_ratio
        ));
    }
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return invalid(format!("weight_decay {} must be >= 0", config.weight_decay));
    }
    if !(config.grad_clip.is_finite() && config.grad_clip >= 0.0) {
        return invalid(format!("grad_clip {} must be >= 0", config.grad_clip));
    }
    Ok(())
}

/// An id at or above the embedding table's size would be an index error on CPU and a
/// device-side assert (a dead CUDA context) on GPU: refuse such a pair up front.
pub(crate) fn check_vocab(
    tokenizer: &TextTokenizer,
    config: &BertConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(TrainError::config(
            dir.join(TOKENIZER_FILE),
            format!(
                "the tokenizer knows {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(())
}

/// transformers' `get_linear_schedule_with_warmup`: the multiplier of the `s`-th step
/// (0-based) rises linearly from 0 over the warmup steps, then falls linearly to 0 at
/// the last step.
#[derive(Debug, Clone, Copy)]
struct LinearSchedule {
    peak: f64,
    warmup: u64,
    total: u64,
}

impl LinearSchedule {
    fn new(config: &TrainConfig, total: u64) -> Self {
        Self {
            peak: config.learning_rate,
            warmup: (config.warmup_ratio * total as f64).ceil() as u64,
            total,
        }
    }

    fn at(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let left = self.total.saturating_sub(step) as f64;
            (left / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}

/// Loss, accuracy and macro-F1 of `network` on labelled examples of its modality, in
/// eval mode under `no_grad`.
pub(crate) fn evaluate_data(
    network: &Network,
    objective: &Objective,
    data: &TrainData,
    batch_size: usize,
    device: Device,
) -> Result<EvalMetrics, TrainError> {
    let encoded;
    let set;
    let inputs = match network {
        Network::Text { tokenizer, .. } => {
            encoded = tokenizer.encode_maybe_pairs(&data.texts, data.text_pairs.as_deref())?;
            Inputs::Tokens {
                encoded: &encoded,
                pad_id: tokenizer.pad_id(),
            }
        }
        Network::Image { preprocess, .. } => {
            set = ImageSet::new(
                data.images.clone(),
                preprocess.clone(),
                LoaderOptions::default(),
            )?;
            Inputs::Images {
                set: &set,
                augment: None,
            }
        }
    };
    let scored = score(
        network,
        objective,
        &inputs,
        &data.labels,
        batch_size,
        device,
        &|| false,
    )?;
    Ok(scored.metrics(objective, &data.labels))
}

/// The training or the validation side of a job.
#[derive(Debug, Clone, Copy)]
enum Which {
    Train,
    Validation,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup_ratio: 0.2,
            ..TrainConfig::default()
        };
        let s = LinearSchedule::new(&config, 10);
        let lrs: Vec<f64> = (0..10).map(|i| s.at(i)).collect();
        let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let no_warmup = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                ..config
            },
            4,
        );
        assert_eq!(no_warmup.warmup, 1); // ceil(0.2 * 4)
        let flat = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                warmup_ratio: 0.0,
                ..TrainConfig::default()
            },
            4,
        );
        assert_eq!(flat.at(0), 1.0);
        assert_eq!(flat.at(3), 0.25);
    }
}
