//! Pooled features of a frozen backbone: what feature extraction trains a head on, the
//! worker caches, and the transferability estimate scores (next to those of a randomly
//! initialised encoder, [`random_init_features`]). Text features come from BERT's
//! encoder and the classifier's pooling ([`extract_features`], [`FeatureRun`]), image
//! features from EfficientNet's global pooling ([`extract_image_features`]); the loop
//! computes the same ones when no cache hands them in.

use std::path::Path;
use std::sync::Arc;

use tch::{nn, Device, Kind, Tensor};

use crate::bert::{BertConfig, BertModel};
use crate::checks::check_vocab;
use crate::classifier::{pool, Pooling};
use crate::efficientnet::{EfficientNetConfig, Init as ImageInit};
use crate::error::TrainError;
use crate::layers::{is_head_variable, WeightInit};
use crate::model_dir::{CONFIG_FILE, WEIGHTS_FILE};
use crate::tokenize::{collate, Encoded, TextTokenizer};
use crate::vision::ImageClassifier;
use crate::vision_data::{ImageSet, LoaderOptions, Mode as ImageMode, Preprocess};
use crate::weights::load_safetensors;

/// Pooled features of every image of `set` under `model`'s frozen backbone, in eval
/// mode under `no_grad` on evaluation-preprocessed images: `[images, channels]` f32 on
/// the CPU, row `i` for image `i`.
pub(crate) fn image_features(
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
///
/// [`Strategy::FeatureExtraction`]: crate::config::Strategy::FeatureExtraction
/// [`TrainJob::features`]: crate::job::TrainJob::features
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
///
/// [`Strategy::FeatureExtraction`]: crate::config::Strategy::FeatureExtraction
/// [`TrainJob::features`]: crate::job::TrainJob::features
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

/// Pooled features of `texts` under an encoder of the base model's architecture with
/// random weights drawn from `seed`: the no-transfer reference of a transferability
/// estimate.
pub fn random_init_features(
    run: &FeatureRun,
    texts: &[String],
    pairs: Option<&[String]>,
    seed: u64,
) -> Result<Tensor, TrainError> {
    let device = run.device;
    run.features(texts, pairs, &|| false, |config| {
        tch::manual_seed(seed as i64);
        let vs = nn::VarStore::new(device);
        // The model keeps its own handles on the variables; the store can go.
        BertModel::new(&vs.root(), config, WeightInit::random(config))
    })
}
