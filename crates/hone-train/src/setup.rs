//! The first step of a run: the network it trains, built from the base model (or
//! random weights of its shape) and frozen as the strategy says, and each split's
//! inputs prepared for it: token ids, image loaders, or the frozen backbone's features,
//! handed in or computed once. [`crate::train`] runs the epochs on what this builds.

use std::path::Path;
use std::sync::Arc;

use tch::{nn, Device, Kind, Tensor};

use hone_domain::dataset::TaskType;

use crate::bert::BertConfig;
use crate::checks::check_vocab;
use crate::classifier::SequenceClassifier;
use crate::config::{EncoderInit, Strategy, TrainConfig};
use crate::data::{Features, TrainData};
use crate::efficientnet::EfficientNetConfig;
use crate::error::TrainError;
use crate::features::{image_features, pooled_features};
use crate::frozen::{FrozenSplits, FrozenStates};
use crate::inputs::Prepared;
use crate::layers::{is_head_variable, WeightInit};
use crate::model_dir::{CONFIG_FILE, WEIGHTS_FILE};
use crate::network::Network;
use crate::objective::Objective;
use crate::tokenize::{Encoded, TextTokenizer};
use crate::trainable::freeze;
use crate::vision::ImageClassifier;
use crate::vision_data::{ImageSet, LoaderOptions, Preprocess};
use crate::weights::load_safetensors;

/// The parts of a [`TrainJob`] every step of a run reads.
///
/// [`TrainJob`]: crate::job::TrainJob
#[derive(Clone, Copy)]
pub(crate) struct JobRef<'a> {
    pub(crate) base_model_dir: &'a Path,
    pub(crate) objective: &'a Objective,
    pub(crate) train: &'a TrainData,
    pub(crate) validation: Option<&'a TrainData>,
    pub(crate) config: &'a TrainConfig,
    pub(crate) device: Device,
}

impl JobRef<'_> {
    /// Whether the heads are one per task (multi-task) rather than one for the labels.
    fn per_task(&self) -> bool {
        self.objective.task_type == TaskType::MultiTask
    }
}

/// The network a run trains, and the inputs of each split prepared for it.
pub(crate) struct Setup {
    pub(crate) network: Network,
    /// Scalars the strategy froze.
    pub(crate) frozen: i64,
    /// Width of the pooled features the heads read.
    pub(crate) hidden: usize,
    pub(crate) prepared: Prepared,
}

/// A text run: a BERT encoder (the base model's weights, or random ones of its shape)
/// with new heads, frozen as the strategy says, and both splits tokenized.
pub(crate) fn set_up_text(
    vs: &nn::VarStore,
    job: &JobRef,
    init: EncoderInit,
) -> Result<Setup, TrainError> {
    let bert_config = BertConfig::from_file(&job.base_model_dir.join(CONFIG_FILE))?;
    if job.config.max_seq_len > bert_config.max_position_embeddings {
        return Err(TrainError::InvalidInput(format!(
            "max_seq_len {} exceeds the base model's max_position_embeddings {}",
            job.config.max_seq_len, bert_config.max_position_embeddings
        )));
    }
    let layers = bert_config.num_hidden_layers;
    if let Strategy::Partial { frozen_layers } = job.config.strategy {
        if frozen_layers > layers {
            return Err(TrainError::InvalidInput(format!(
                "frozen_layers {frozen_layers} exceeds the base model's {layers} layers"
            )));
        }
    }
    let tokenizer = TextTokenizer::from_dir(job.base_model_dir, job.config.max_seq_len)?;
    check_vocab(&tokenizer, &bert_config, job.base_model_dir)?;
    let model = SequenceClassifier::with_heads(
        &vs.root(),
        &bert_config,
        &job.objective.sizes(),
        job.per_task(),
        job.config.head,
        job.config.pooling,
        WeightInit::random(&bert_config),
    )?;
    if init == EncoderInit::Pretrained {
        load_safetensors(
            vs,
            &job.base_model_dir.join(WEIGHTS_FILE),
            &is_head_variable,
        )?;
    }
    let frozen = freeze(vs, job.config.strategy, layers)?;
    let pad_id = tokenizer.pad_id();
    let train_encoded =
        tokenizer.encode_maybe_pairs(&job.train.texts, job.train.text_pairs.as_deref())?;
    let validation_encoded = match job.validation {
        Some(v) => Some(tokenizer.encode_maybe_pairs(&v.texts, v.text_pairs.as_deref())?),
        None => None,
    };
    Ok(Setup {
        network: Network::Text { model, tokenizer },
        frozen,
        hidden: bert_config.hidden_size,
        prepared: Prepared::Tokens {
            train: train_encoded,
            validation: validation_encoded,
            pad_id,
        },
    })
}

/// An image run: an EfficientNet backbone (the base model's weights, or the
/// from-scratch baseline) with new heads, frozen as the strategy says, and a loader
/// for each split.
pub(crate) fn set_up_image(
    vs: &nn::VarStore,
    job: &JobRef,
    init: EncoderInit,
) -> Result<Setup, TrainError> {
    let sizes = job.objective.sizes();
    let image_config = EfficientNetConfig::from_file(&job.base_model_dir.join(CONFIG_FILE))?;
    let mut model = match init {
        EncoderInit::Pretrained => {
            ImageClassifier::from_base_model(vs, job.base_model_dir, &sizes, job.per_task())?
        }
        EncoderInit::Random => {
            ImageClassifier::from_scratch(vs, &image_config, &sizes, job.per_task())?
        }
    };
    let frozen = model.freeze(vs, job.config.strategy)?;
    let preprocess = Preprocess::from_config(&image_config);
    let set = |images: &[Vec<u8>]| {
        ImageSet::new(
            images.to_vec(),
            preprocess.clone(),
            LoaderOptions::default(),
        )
    };
    let validation_set = match job.validation {
        Some(v) => Some(set(&v.images)?),
        None => None,
    };
    let train_set = set(&job.train.images)?;
    Ok(Setup {
        network: Network::Image { model, preprocess },
        frozen,
        hidden: image_config.head_channels(),
        prepared: Prepared::Images {
            train: train_set,
            validation: validation_set,
        },
    })
}

/// Features handed in with the job, checked against the data and the backbone's width
/// and moved to the run's device.
pub(crate) fn checked_features(
    f: Features,
    hidden: usize,
    job: &JobRef,
) -> Result<Features, TrainError> {
    let hidden = hidden as i64;
    let check = |t: Tensor, n: usize, name: &str| -> Result<Tensor, TrainError> {
        if t.size() != [n as i64, hidden] {
            return Err(TrainError::InvalidInput(format!(
                "{name} features have shape {:?}, expected [{n}, {hidden}]",
                t.size()
            )));
        }
        Ok(t.f_to_kind(Kind::Float)?.f_to_device(job.device)?)
    };
    let validation = match (f.validation, job.validation) {
        (Some(t), Some(v)) => Some(check(t, v.len(), "validation")?),
        (None, None) => None,
        _ => {
            return Err(TrainError::InvalidInput(
                "validation features and validation data must come together".into(),
            ))
        }
    };
    Ok(Features {
        train: check(f.train, job.train.len(), "training")?,
        validation,
    })
}

/// The frozen backbone's features of both splits, computed once on the run's device.
pub(crate) fn computed_features(
    network: &Network,
    prepared: &Prepared,
    job: &JobRef,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<Features>, TrainError> {
    let batch_size = job.config.batch_size.max(32);
    let device = job.device;
    let on_device = |t: Tensor| -> Result<Tensor, TrainError> { Ok(t.f_to_device(device)?) };
    Ok(match (network, prepared) {
        (
            Network::Text { model, .. },
            Prepared::Tokens {
                train,
                validation,
                pad_id,
            },
        ) => {
            let pooled = |encoded: &[Encoded]| {
                pooled_features(
                    model.encoder(),
                    job.config.pooling,
                    encoded,
                    *pad_id,
                    batch_size,
                    device,
                    cancelled,
                )
                .and_then(on_device)
            };
            let train = pooled(train)?;
            let validation = validation.as_deref().map(pooled).transpose()?;
            Some(Features { train, validation })
        }
        (Network::Image { model, .. }, Prepared::Images { train, validation }) => {
            let pooled = |set: &Arc<ImageSet>| {
                image_features(model, set, batch_size, device, cancelled).and_then(on_device)
            };
            let train = pooled(train)?;
            let validation = validation.as_ref().map(pooled).transpose()?;
            Some(Features { train, validation })
        }
        _ => None,
    })
}

/// What [`frozen_states`] decided.
pub(crate) enum FrozenCache {
    /// The states of every split, computed once; their size in bytes.
    Computed(FrozenSplits, u64),
    /// The states would take this many bytes, more than the cap: the frozen layers run
    /// every step.
    TooLarge(u64),
    /// Nothing frozen to cache: not a text run, or not `partial`.
    NotApplicable,
}

/// The hidden states after the frozen blocks of a `partial` text run, for every
/// training and validation input, when they fit in `max_bytes` (see
/// [`crate::frozen`]).
pub(crate) fn frozen_states(
    network: &Network,
    prepared: &Prepared,
    job: &JobRef,
    max_bytes: u64,
    cancelled: &dyn Fn() -> bool,
) -> Result<FrozenCache, TrainError> {
    let (
        Strategy::Partial { frozen_layers },
        Network::Text { model, .. },
        Prepared::Tokens {
            train,
            validation,
            pad_id,
        },
    ) = (job.config.strategy, network, prepared)
    else {
        return Ok(FrozenCache::NotApplicable);
    };
    let hidden = model.encoder().config().hidden_size;
    let bytes = FrozenStates::bytes_for(train, hidden)
        + validation
            .as_deref()
            .map_or(0, |v| FrozenStates::bytes_for(v, hidden));
    if bytes > max_bytes {
        return Ok(FrozenCache::TooLarge(bytes));
    }
    let batch_size = job.config.batch_size.max(32);
    let compute = |encoded: &[Encoded]| {
        FrozenStates::compute(
            model.encoder(),
            frozen_layers,
            encoded,
            *pad_id,
            batch_size,
            job.device,
            cancelled,
        )
    };
    let splits = FrozenSplits {
        train: compute(train)?,
        validation: validation.as_deref().map(compute).transpose()?,
    };
    Ok(FrozenCache::Computed(splits, bytes))
}
