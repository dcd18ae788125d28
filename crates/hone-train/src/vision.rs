//! The image classifier hone trains: an EfficientNet-Lite backbone up to its global
//! pooling, dropout, and one linear head per task, named as the text classifier names
//! them (`head.` for one head, `head.{i}.` for the `i`-th task's), so a published image
//! model is one safetensors file that the base-model loader reads back.
//!
//! Transfer strategies map onto [`crate::efficientnet::layer_depth`]: depth 0 is the
//! stem, block `i` is depth `i + 1`, the head convolution `blocks + 1`, the new heads
//! `blocks + 2`. `partial` with k frozen layers freezes the stem and the first k MBConv
//! blocks (k is at most the block count + 1, the head convolution: 17 for Lite0, as the
//! catalogue counts layers); `feature_extraction` freezes everything up to and including
//! the head convolution. Frozen layers also run
//! BatchNorm in inference mode: their running statistics stay those of ImageNet instead
//! of drifting to a fine-tuning run's small batches.

use std::path::Path;

use tch::{nn, Tensor};

use crate::config::Strategy;
use crate::efficientnet::{layer_depth, EfficientNet, EfficientNetConfig, Init};
use crate::error::TrainError;
use crate::layers::{dropout, head_paths, is_head_variable, Linear, WeightInit};
use crate::model_dir::{CONFIG_FILE, WEIGHTS_FILE};

/// The head's initialisation: timm's for EfficientNet classifiers (normal, std 0.01,
/// bias zero), which also keeps the first logits near zero.
const HEAD_INIT: WeightInit = WeightInit::Random { std: 0.01 };

/// The least BatchNorm momentum of a network trained from scratch (PyTorch's default).
/// Its running statistics start at mean 0 and variance 1, which describe nothing; at
/// a pretrained config's momentum (Lite0's 0.01, TensorFlow's 0.99) they would still
/// be more than half the initial ones after the 57 steps of 3 epochs of 300 images,
/// and evaluation would run on them.
pub const SCRATCH_BN_MOMENTUM: f64 = 0.1;

/// EfficientNet backbone + dropout + linear heads.
#[derive(Debug)]
pub struct ImageClassifier {
    backbone: EfficientNet,
    heads: Vec<Linear>,
    dropout: f64,
    num_labels: usize,
}

impl ImageClassifier {
    /// Creates the backbone's variables (initialised by `init`) and one head per entry
    /// of `outputs` under `vs`: under `head.` for a single head, under `head.{i}.` when
    /// `per_task`. Heads draw from libtorch's global generator.
    pub fn new(
        vs: &nn::Path,
        config: &EfficientNetConfig,
        outputs: &[usize],
        per_task: bool,
        init: Init,
    ) -> Result<Self, TrainError> {
        let paths = head_paths(vs, outputs, per_task)?;
        let backbone = EfficientNet::backbone(vs, config, init)?;
        let features = config.head_channels();
        let heads = paths
            .into_iter()
            .map(|(head_vs, n)| Linear::new(&head_vs, features, n, HEAD_INIT))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            backbone,
            heads,
            dropout: config.dropout_rate,
            num_labels: outputs.iter().sum(),
        })
    }

    /// The pretrained backbone of a base-model directory (config.json +
    /// model.safetensors; the ImageNet classifier in the file is left out) with new
    /// heads.
    pub fn from_base_model(
        vs: &nn::VarStore,
        dir: &Path,
        outputs: &[usize],
        per_task: bool,
    ) -> Result<Self, TrainError> {
        let config = EfficientNetConfig::from_file(&dir.join(CONFIG_FILE))?;
        let model = Self::new(&vs.root(), &config, outputs, per_task, Init::Zeros)?;
        crate::weights::load_safetensors(vs, &dir.join(WEIGHTS_FILE), &is_head_variable)?;
        Ok(model)
    }

    /// The same network from random initialisation, the from-scratch baseline:
    /// convolutions He-normal over the fan-out and BatchNorm identity, as torchvision
    /// initialises its EfficientNets, and BatchNorm statistics that follow the data at
    /// least at [`SCRATCH_BN_MOMENTUM`].
    pub fn from_scratch(
        vs: &nn::VarStore,
        config: &EfficientNetConfig,
        outputs: &[usize],
        per_task: bool,
    ) -> Result<Self, TrainError> {
        let config = EfficientNetConfig {
            batch_norm_momentum: config.batch_norm_momentum.max(SCRATCH_BN_MOMENTUM),
            ..config.clone()
        };
        Self::new(&vs.root(), &config, outputs, per_task, Init::Random)
    }

    pub fn backbone(&self) -> &EfficientNet {
        &self.backbone
    }

    pub fn config(&self) -> &EfficientNetConfig {
        self.backbone.config()
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// The MBConv blocks; `partial`'s `frozen_layers` is at most one more.
    pub fn num_blocks(&self) -> usize {
        self.backbone.blocks().len()
    }

    /// Depth of a variable for freezing and for layer-wise learning rates: 0 the stem,
    /// `i + 1` block `i`, `blocks + 1` the head convolution, `blocks + 2` the heads.
    pub fn layer_depth(&self, name: &str) -> usize {
        layer_depth(name, self.num_blocks())
    }

    /// The deepest frozen layer of a strategy, or `None` when everything trains.
    pub fn frozen_depth(&self, strategy: Strategy) -> Result<Option<usize>, TrainError> {
        match strategy {
            Strategy::Full => Ok(None),
            // The catalogue counts the head convolution as a layer too (what the API
            // bounds `frozen_layers` by): all of them frozen leaves the heads alone.
            Strategy::Partial { frozen_layers } if frozen_layers > self.backbone.num_layers() => {
                Err(TrainError::InvalidInput(format!(
                    "frozen_layers {frozen_layers} exceeds the {} layers of the backbone \
                     (its blocks and head convolution)",
                    self.backbone.num_layers()
                )))
            }
            Strategy::Partial { frozen_layers } => Ok(Some(frozen_layers)),
            Strategy::FeatureExtraction => Ok(Some(self.num_blocks() + 1)),
        }
    }

    /// Applies `strategy` to the variables of `vs` (the store this model was built in):
    /// frozen ones stop requiring gradients and their BatchNorms stay in inference mode
    /// in training. Returns the number of frozen values.
    pub fn freeze(&mut self, vs: &nn::VarStore, strategy: Strategy) -> Result<i64, TrainError> {
        let depth = self.frozen_depth(strategy)?;
        self.backbone.set_frozen_depth(depth);
        let Some(depth) = depth else {
            return Ok(0);
        };
        let mut count = 0;
        for (name, tensor) in vs.variables() {
            if self.layer_depth(&name) <= depth {
                if tensor.requires_grad() {
                    count += tensor.numel() as i64;
                }
                let _ = tensor.f_set_requires_grad(false)?;
            }
        }
        Ok(count)
    }

    /// Pooled features `[batch, head_channels]` of normalised images
    /// `[batch, 3, h, w]`; with `feature_extraction` the trainer computes these once on
    /// evaluation-preprocessed images and trains the heads on them.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        self.backbone.forward_features(images, train)
    }

    /// Logits from pooled features, every head's side by side; `train` enables dropout
    /// (drawn once per head, as separate heads would).
    pub fn head_forward(&self, pooled: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let mut logits = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let xs = dropout(pooled.shallow_clone(), self.dropout, train)?;
            logits.push(head.forward(&xs)?);
        }
        Ok(match logits.len() {
            1 => logits.remove(0),
            _ => Tensor::f_cat(&logits, 1)?,
        })
    }

    /// Logits `[batch, num_labels]` of normalised images.
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let pooled = self.forward_features(images, train)?;
        self.head_forward(&pooled, train)
    }
}
