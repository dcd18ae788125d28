//! EfficientNet-Lite, the image backbone, built from tch primitives.
//!
//! The Lite variants are EfficientNet without squeeze-and-excitation, with ReLU6 instead
//! of swish and with the stem (32 channels), the head (1280 channels) and the repeats of
//! the first and last stages kept fixed when the network is scaled — the changes that
//! made it quantise well on phones. This port follows the PyTorch implementation the
//! pretrained weights were published for (PyPI `efficientnet-lite-pytorch`, itself the
//! lukemelas EfficientNet-PyTorch with Lite support), so variables carry its names
//! (`_conv_stem.weight`, `_blocks.3._depthwise_conv.weight`, `_bn1.running_var`, …) and
//! a converted checkpoint loads by name.
//!
//! Convolutions pad as TensorFlow's `"SAME"` does (the weights come from TensorFlow):
//! the output is `ceil(input / stride)` and an odd total padding puts the extra row and
//! column at the bottom and right. The reference computes that padding once from the
//! configured image size; here it is computed from the actual input, which gives the
//! same result at `image_size` and the TensorFlow result at any other size.
//!
//! BatchNorm follows PyTorch: `momentum` weighs the new batch statistic (the config's
//! `batch_norm_momentum`, 0.01 for TensorFlow's 0.99) and `train` uses and updates batch
//! statistics. For transfer learning the layers up to a depth can be kept in inference
//! mode while the rest trains ([`EfficientNet::set_frozen_depth`], [`layer_depth`]).
//! At momentum 0.01 the running statistics of the trained layers lag far behind their
//! weights (a few hundred fine-tuning steps move them by less than their weights
//! moved), and a network evaluated on them can score far below what it learned; so
//! training re-estimates them on the training images ([`EfficientNet::estimate_pass`],
//! driven by [`crate::recalibrate`]).
//!
//! One architecture, one file (config, the blocks, the network and its layer depths),
//! as [`crate::bert`] is; the operations it is made of (SAME-padded convolutions,
//! BatchNorm, ReLU6, stochastic depth) are in `efficientnet/ops.rs`.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::nn;
use tch::nn::init::{FanInOut, NonLinearity, NormalOrUniform};
use tch::{Device, TchError, Tensor};

use crate::error::TrainError;
use crate::layers::{dropout, Linear, WeightInit};
use crate::model_dir::{CONFIG_FILE, WEIGHTS_FILE};

mod ops;

use ops::{drop_connect, relu6, BatchNorm, Conv2dSame, Stats};

/// config.json's `model_type` for this module.
pub const ARCHITECTURE: &str = "efficientnet_lite";

/// One stage of the network before scaling: `repeats` MBConv blocks, the first with
/// `stride` and `input_filters` → `output_filters`, the others with stride 1 and
/// `output_filters` in and out (the reference's `BlockArgs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageArgs {
    pub repeats: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub input_filters: usize,
    pub output_filters: usize,
}

/// The stages of EfficientNet-Lite0 (B0 without squeeze-and-excitation), from which
/// Lite1–4 are scaled.
pub fn lite_stages() -> Vec<StageArgs> {
    [
        (1, 3, 1, 1, 32, 16),
        (2, 3, 2, 6, 16, 24),
        (2, 5, 2, 6, 24, 40),
        (3, 3, 2, 6, 40, 80),
        (3, 5, 1, 6, 80, 112),
        (4, 5, 2, 6, 112, 192),
        (1, 3, 1, 6, 192, 320),
    ]
    .into_iter()
    .map(
        |(repeats, kernel_size, stride, expand_ratio, input_filters, output_filters)| StageArgs {
            repeats,
            kernel_size,
            stride,
            expand_ratio,
            input_filters,
            output_filters,
        },
    )
    .collect()
}

fn default_model_type() -> String {
    ARCHITECTURE.into()
}
fn default_coefficient() -> f64 {
    1.0
}
fn default_depth_divisor() -> usize {
    8
}
fn default_num_classes() -> usize {
    1000
}
fn default_rate() -> f64 {
    0.2
}
fn default_bn_momentum() -> f64 {
    0.01
}
fn default_bn_eps() -> f64 {
    1e-3
}
fn default_true() -> bool {
    true
}
/// TensorFlow's "inception-style" normalisation of the edge models, `(p - 127) / 128`
/// on 0–255 pixels, written for pixels in [0, 1].
fn default_mean() -> [f64; 3] {
    [127.0 / 255.0; 3]
}
fn default_std() -> [f64; 3] {
    [128.0 / 255.0; 3]
}
fn default_crop_padding() -> usize {
    32
}

/// A base-model directory's config.json for an EfficientNet-Lite. Defaults are those of
/// EfficientNet-Lite0, so a config naming only the coefficients and the image size
/// describes Lite1–4.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EfficientNetConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// For people reading the file, e.g. `"efficientnet-lite0"`.
    #[serde(default)]
    pub variant: Option<String>,
    #[serde(default = "default_coefficient")]
    pub width_coefficient: f64,
    #[serde(default = "default_coefficient")]
    pub depth_coefficient: f64,
    /// Scaled channel counts are rounded to multiples of this.
    #[serde(default = "default_depth_divisor")]
    pub depth_divisor: usize,
    /// Lower bound of a scaled channel count; `depth_divisor` when absent.
    #[serde(default)]
    pub min_depth: Option<usize>,
    /// The side of the square images the network was trained on.
    pub image_size: usize,
    /// The shorter side images are resized to before the centre crop of `image_size`
    /// (torchvision's evaluation); absent, [`crate::vision_data::Preprocess`] derives it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_size: Option<usize>,
    /// Classes of the pretrained classifier (`_fc`), 1000 for ImageNet.
    #[serde(default = "default_num_classes")]
    pub num_classes: usize,
    /// Dropout before the classifier.
    #[serde(default = "default_rate")]
    pub dropout_rate: f64,
    /// Stochastic depth: block `i` of `n` drops its residual branch with probability
    /// `drop_connect_rate * i / n` in training.
    #[serde(default = "default_rate")]
    pub drop_connect_rate: f64,
    /// PyTorch's convention: the weight of the new batch statistic.
    #[serde(default = "default_bn_momentum")]
    pub batch_norm_momentum: f64,
    #[serde(default = "default_bn_eps")]
    pub batch_norm_epsilon: f64,
    /// Lite: the stem, the head and the first and last stages' repeats are not scaled.
    #[serde(default = "default_true")]
    pub fix_head_stem: bool,
    #[serde(default = "lite_stages")]
    pub stages: Vec<StageArgs>,
    /// Per-channel (RGB) normalisation of pixels in [0, 1]: `(x - mean) / std`.
    #[serde(default = "default_mean")]
    pub mean: [f64; 3],
    #[serde(default = "default_std")]
    pub std: [f64; 3],
    /// Evaluation preprocessing as in TensorFlow's EfficientNet: the centre crop is
    /// `image_size / (image_size + crop_padding)` of the shorter side, then resized to
    /// `image_size`.
    #[serde(default = "default_crop_padding")]
    pub crop_padding: usize,
}

/// Stem input channels (RGB) and the unscaled widths of the stem and the head.
const IN_CHANNELS: usize = 3;
const STEM_FILTERS: usize = 32;
const HEAD_FILTERS: usize = 1280;

/// One MBConv block after scaling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockSpec {
    pub kernel_size: usize,
    pub stride: usize,
    pub expand_ratio: usize,
    pub input_filters: usize,
    pub output_filters: usize,
    /// The stochastic-depth rate of this block in training.
    pub drop_connect_rate: f64,
}

impl BlockSpec {
    /// Whether the block adds its input back (same shape in and out).
    pub fn has_skip(&self) -> bool {
        self.stride == 1 && self.input_filters == self.output_filters
    }
}

impl EfficientNetConfig {
    /// Reads and checks a config.json; another `model_type` is refused by name.
    pub fn from_file(path: &Path) -> Result<Self, TrainError> {
        let bytes = std::fs::read(path).map_err(|e| TrainError::io(path, e))?;
        let config: Self = serde_json::from_slice(&bytes)
            .map_err(|e| TrainError::config(path, format!("not an EfficientNet config: {e}")))?;
        if config.model_type != ARCHITECTURE {
            return Err(TrainError::UnsupportedArchitecture {
                message: format!(
                    "{} declares model_type {:?}; this loader reads {ARCHITECTURE}",
                    path.display(),
                    config.model_type
                ),
                architecture: config.model_type,
            });
        }
        config
            .validate()
            .map_err(|message| TrainError::config(path, message))?;
        Ok(config)
    }

    /// Checks what the forward pass relies on.
    pub fn validate(&self) -> Result<(), String> {
        for (name, v) in [
            ("width_coefficient", self.width_coefficient),
            ("depth_coefficient", self.depth_coefficient),
            ("batch_norm_epsilon", self.batch_norm_epsilon),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return Err(format!("{name} {v} must be positive"));
            }
        }
        for (name, p) in [
            ("dropout_rate", self.dropout_rate),
            ("drop_connect_rate", self.drop_connect_rate),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is not in [0, 1)"));
            }
        }
        if !(0.0..=1.0).contains(&self.batch_norm_momentum) {
            return Err(format!(
                "batch_norm_momentum {} is not in [0, 1]",
                self.batch_norm_momentum
            ));
        }
        if let Some(s) = self.std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!("std {s} must be positive"));
        }
        if self.image_size == 0 || self.num_classes == 0 || self.depth_divisor == 0 {
            return Err("image_size, num_classes and depth_divisor must be positive".into());
        }
        if self.stages.is_empty() {
            return Err("stages must not be empty".into());
        }
        for (i, s) in self.stages.iter().enumerate() {
            let sizes = [
                s.repeats,
                s.kernel_size,
                s.stride,
                s.expand_ratio,
                s.input_filters,
                s.output_filters,
            ];
            if sizes.contains(&0) {
                return Err(format!("stage {i}: every size must be positive"));
            }
        }
        Ok(())
    }

    /// The reference's `round_filters`: scales a channel count by the width
    /// coefficient and rounds it to the nearest multiple of `depth_divisor`, never
    /// down by more than 10%.
    pub fn round_filters(&self, filters: usize) -> usize {
        let divisor = self.depth_divisor as f64;
        let scaled = filters as f64 * self.width_coefficient;
        let min_depth = self.min_depth.unwrap_or(self.depth_divisor);
        let mut rounded =
            min_depth.max(((scaled + divisor / 2.0) / divisor) as usize * self.depth_divisor);
        if (rounded as f64) < 0.9 * scaled {
            rounded += self.depth_divisor;
        }
        rounded
    }

    /// The reference's `round_repeats`: `ceil(depth_coefficient * repeats)`.
    pub fn round_repeats(&self, repeats: usize) -> usize {
        (self.depth_coefficient * repeats as f64).ceil() as usize
    }

    pub fn stem_channels(&self) -> usize {
        if self.fix_head_stem {
            STEM_FILTERS
        } else {
            self.round_filters(STEM_FILTERS)
        }
    }

    /// Channels of the pooled features (`forward_features`).
    pub fn head_channels(&self) -> usize {
        if self.fix_head_stem {
            HEAD_FILTERS
        } else {
            self.round_filters(HEAD_FILTERS)
        }
    }

    /// Every MBConv block in order, scaled as the reference scales them.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let last = self.stages.len().saturating_sub(1);
        let mut blocks = Vec::new();
        for (i, stage) in self.stages.iter().enumerate() {
            let fixed = self.fix_head_stem && (i == 0 || i == last);
            let repeats = if fixed {
                stage.repeats
            } else {
                self.round_repeats(stage.repeats)
            };
            let input_filters = if self.fix_head_stem && i == 0 {
                self.stem_channels()
            } else {
                self.round_filters(stage.input_filters)
            };
            let output_filters = self.round_filters(stage.output_filters);
            for r in 0..repeats {
                blocks.push(BlockSpec {
                    kernel_size: stage.kernel_size,
                    stride: if r == 0 { stage.stride } else { 1 },
                    expand_ratio: stage.expand_ratio,
                    input_filters: if r == 0 {
                        input_filters
                    } else {
                        output_filters
                    },
                    output_filters,
                    drop_connect_rate: 0.0,
                });
            }
        }
        let n = blocks.len() as f64;
        for (i, block) in blocks.iter_mut().enumerate() {
            block.drop_connect_rate = self.drop_connect_rate * i as f64 / n;
        }
        blocks
    }
}

/// How new variables are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Init {
    /// As torchvision initialises its EfficientNets: convolutions He-normal over the
    /// fan-out, BatchNorm identity, the classifier normal with standard deviation 0.01.
    /// Draws from libtorch's global generator.
    Random,
    /// Zeros (BatchNorm identity): for variables a checkpoint is about to overwrite;
    /// draws no random numbers.
    Zeros,
}

impl Init {
    fn conv(self) -> nn::Init {
        match self {
            Self::Random => nn::Init::Kaiming {
                dist: NormalOrUniform::Normal,
                fan: FanInOut::FanOut,
                non_linearity: NonLinearity::ReLU,
            },
            Self::Zeros => nn::Init::Const(0.0),
        }
    }

    fn linear(self) -> WeightInit {
        match self {
            Self::Random => WeightInit::Random { std: 0.01 },
            Self::Zeros => WeightInit::Zeros,
        }
    }
}

/// A BatchNorm of `channels` with the config's momentum and epsilon.
fn batch_norm(
    vs: &nn::Path,
    channels: usize,
    config: &EfficientNetConfig,
) -> Result<BatchNorm, TchError> {
    BatchNorm::new(
        vs,
        channels,
        config.batch_norm_momentum,
        config.batch_norm_epsilon,
    )
}

/// Mobile inverted bottleneck without squeeze-and-excitation: 1×1 expansion (absent
/// when `expand_ratio` is 1), depthwise k×k, 1×1 projection, and the input added back
/// when the shapes allow, with stochastic depth in training.
#[derive(Debug)]
pub struct MbConvBlock {
    expand: Option<(Conv2dSame, BatchNorm)>,
    depthwise_conv: Conv2dSame,
    bn1: BatchNorm,
    project_conv: Conv2dSame,
    bn2: BatchNorm,
    spec: BlockSpec,
}

impl MbConvBlock {
    fn new(
        vs: &nn::Path,
        spec: BlockSpec,
        config: &EfficientNetConfig,
        init: Init,
    ) -> Result<Self, TchError> {
        let inner = spec.input_filters * spec.expand_ratio;
        let expand = if spec.expand_ratio != 1 {
            Some((
                Conv2dSame::new(
                    &vs.sub("_expand_conv"),
                    spec.input_filters,
                    inner,
                    1,
                    1,
                    1,
                    init.conv(),
                )?,
                batch_norm(&vs.sub("_bn0"), inner, config)?,
            ))
        } else {
            None
        };
        Ok(Self {
            expand,
            depthwise_conv: Conv2dSame::new(
                &vs.sub("_depthwise_conv"),
                inner,
                inner,
                spec.kernel_size,
                spec.stride,
                inner,
                init.conv(),
            )?,
            bn1: batch_norm(&vs.sub("_bn1"), inner, config)?,
            project_conv: Conv2dSame::new(
                &vs.sub("_project_conv"),
                inner,
                spec.output_filters,
                1,
                1,
                1,
                init.conv(),
            )?,
            bn2: batch_norm(&vs.sub("_bn2"), spec.output_filters, config)?,
            spec,
        })
    }

    pub fn spec(&self) -> &BlockSpec {
        &self.spec
    }

    /// `drops`: stochastic depth (training only).
    fn forward(&self, inputs: &Tensor, stats: Stats, drops: bool) -> Result<Tensor, TchError> {
        let mut xs = match &self.expand {
            Some((conv, bn)) => relu6(bn.forward(&conv.forward(inputs)?, stats)?)?,
            None => inputs.shallow_clone(),
        };
        xs = relu6(
            self.bn1
                .forward(&self.depthwise_conv.forward(&xs)?, stats)?,
        )?;
        xs = self.bn2.forward(&self.project_conv.forward(&xs)?, stats)?;
        if !self.spec.has_skip() {
            return Ok(xs);
        }
        let p = self.spec.drop_connect_rate;
        if drops && p > 0.0 {
            xs = drop_connect(&xs, p)?;
        }
        xs.f_add(inputs)
    }
}

/// 0 for the stem, `i + 1` for block `i`, `blocks + 1` for the head convolution and
/// its BatchNorm, `blocks + 2` for anything else (the pretrained classifier `_fc`, or
/// a new head): the order in which features get more specific to ImageNet. Freezing
/// every variable at depth ≤ k is the `partial` strategy with k frozen layers; depth ≤
/// `blocks + 1` is the whole backbone, a fixed feature extractor.
pub fn layer_depth(name: &str, blocks: usize) -> usize {
    let top = name.split('.').next().unwrap_or(name);
    match top {
        "_conv_stem" | "_bn0" => 0,
        "_conv_head" | "_bn1" => blocks + 1,
        "_blocks" => name
            .split('.')
            .nth(1)
            .and_then(|i| i.parse::<usize>().ok())
            .map_or(blocks + 2, |i| i + 1),
        _ => blocks + 2,
    }
}

/// The kinds of forward pass, as each layer above the frozen depth runs them (frozen
/// layers always run as in inference).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Pass {
    /// Running statistics, no stochastic depth.
    Eval,
    /// Batch statistics folded into the running ones at the config's momentum,
    /// stochastic depth.
    Train,
    /// Batch statistics folded into the running ones with `weight`, no stochastic
    /// depth ([`EfficientNet::estimate_pass`]).
    Estimate { weight: f64 },
}

/// EfficientNet-Lite: stem, MBConv blocks, 1×1 head convolution, global average pool
/// and (for the pretrained network) the ImageNet classifier.
#[derive(Debug)]
pub struct EfficientNet {
    conv_stem: Conv2dSame,
    bn0: BatchNorm,
    blocks: Vec<MbConvBlock>,
    conv_head: Conv2dSame,
    bn1: BatchNorm,
    fc: Option<Linear>,
    config: EfficientNetConfig,
    /// Layers at depth ≤ this run in inference mode even in training.
    frozen_depth: Option<usize>,
}

impl EfficientNet {
    /// The whole pretrained network, ImageNet classifier (`_fc`) included, with its
    /// variables under `vs`; load a checkpoint over them with
    /// [`crate::weights::load_safetensors`].
    pub fn new(vs: &nn::Path, config: &EfficientNetConfig, init: Init) -> Result<Self, TrainError> {
        let mut model = Self::backbone(vs, config, init)?;
        model.fc = Some(Linear::new(
            &vs.sub("_fc"),
            config.head_channels(),
            config.num_classes,
            init.linear(),
        )?);
        Ok(model)
    }

    /// The network without the ImageNet classifier: what fine-tuning starts from, with
    /// a head of its own on [`Self::forward_features`].
    pub fn backbone(
        vs: &nn::Path,
        config: &EfficientNetConfig,
        init: Init,
    ) -> Result<Self, TrainError> {
        config
            .validate()
            .map_err(|m| TrainError::InvalidInput(format!("EfficientNet config: {m}")))?;
        let stem = config.stem_channels();
        let specs = config.blocks();
        let blocks_vs = vs.sub("_blocks");
        let blocks = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| MbConvBlock::new(&blocks_vs.sub(i), *spec, config, init))
            .collect::<Result<Vec<_>, _>>()?;
        let last = specs.last().map_or(stem, |b| b.output_filters);
        let head = config.head_channels();
        Ok(Self {
            conv_stem: Conv2dSame::new(
                &vs.sub("_conv_stem"),
                IN_CHANNELS,
                stem,
                3,
                2,
                1,
                init.conv(),
            )?,
            bn0: batch_norm(&vs.sub("_bn0"), stem, config)?,
            blocks,
            conv_head: Conv2dSame::new(&vs.sub("_conv_head"), last, head, 1, 1, 1, init.conv())?,
            bn1: batch_norm(&vs.sub("_bn1"), head, config)?,
            fc: None,
            config: config.clone(),
            frozen_depth: None,
        })
    }

    /// Loads a base-model directory (config.json + model.safetensors), classifier
    /// included, e.g. to compare it with the reference implementation.
    pub fn load(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let config = EfficientNetConfig::from_file(&dir.join(CONFIG_FILE))?;
        let vs = nn::VarStore::new(device);
        let model = Self::new(&vs.root(), &config, Init::Zeros)?;
        crate::weights::load_safetensors(&vs, &dir.join(WEIGHTS_FILE), &|_| false)?;
        // The model holds its own handles on the variables; the store can go.
        Ok(model)
    }

    pub fn config(&self) -> &EfficientNetConfig {
        &self.config
    }

    /// The MBConv blocks in order; block `i`'s variables are under `_blocks.{i}.`.
    pub fn blocks(&self) -> &[MbConvBlock] {
        &self.blocks
    }

    /// What `partial` counts: the blocks and the head convolution (see
    /// [`layer_depth`]).
    pub fn num_layers(&self) -> usize {
        self.blocks.len() + 1
    }

    /// Keeps every layer at depth ≤ `depth` (see [`layer_depth`]) in inference mode
    /// when training: BatchNorm normalises with, and keeps, the checkpoint's statistics
    /// and no block is dropped. The layers whose weights are frozen should be, or their
    /// statistics drift to the small batches of a fine-tuning run. `None` trains all.
    pub fn set_frozen_depth(&mut self, depth: Option<usize>) {
        self.frozen_depth = depth;
    }

    fn trains(&self, depth: usize) -> bool {
        self.frozen_depth.is_none_or(|frozen| depth > frozen)
    }

    /// Whether any BatchNorm is above the frozen depth, so that training changes what
    /// it normalises: the head convolution's is the last one, at depth `blocks + 1`.
    pub fn trains_batch_norm(&self) -> bool {
        self.trains(self.blocks.len() + 1)
    }

    /// What a layer at `depth` does in a forward pass of kind `pass`: the statistics
    /// its BatchNorms use, and whether it drops its residual branch.
    fn layer_pass(&self, depth: usize, pass: Pass) -> (Stats, bool) {
        match pass {
            _ if !self.trains(depth) => (Stats::Running, false),
            Pass::Eval => (Stats::Running, false),
            Pass::Train => (Stats::Batch, true),
            Pass::Estimate { weight } => (Stats::Estimate { weight }, false),
        }
    }

    /// `(x - mean) / std` per channel, for RGB pixels in [0, 1] `[batch, 3, h, w]`.
    pub fn normalize(&self, pixels: &Tensor) -> Result<Tensor, TrainError> {
        let options = (pixels.kind(), pixels.device());
        let mean = Tensor::f_from_slice(&self.config.mean)?
            .f_to_kind(options.0)?
            .f_to_device(options.1)?
            .f_view([1, 3, 1, 1])?;
        let std = Tensor::f_from_slice(&self.config.std)?
            .f_to_kind(options.0)?
            .f_to_device(options.1)?
            .f_view([1, 3, 1, 1])?;
        Ok(pixels.f_sub(&mean)?.f_div(&std)?)
    }

    /// Pooled features `[batch, head_channels]` of normalised images
    /// `[batch, 3, h, w]`: what a fine-tuning head, or a frozen-feature cache, reads.
    /// `train` enables batch statistics and stochastic depth outside the frozen layers.
    pub fn forward_features(&self, images: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let pass = if train { Pass::Train } else { Pass::Eval };
        self.features(images, pass)
    }

    /// One step of re-estimating the running statistics of the BatchNorms above the
    /// frozen depth from normalised images `[batch, 3, h, w]`: each normalises with
    /// the batch's statistics and folds them into its running ones with `weight`
    /// (PyTorch's momentum; `batch / images so far` averages over the batches, see
    /// [`crate::recalibrate`]). No block is dropped, so the statistics are those of the
    /// network as it runs in inference; frozen layers keep theirs, since their inputs
    /// do not change. Run it under `no_grad`.
    pub fn estimate_pass(&self, images: &Tensor, weight: f64) -> Result<(), TrainError> {
        if !(weight > 0.0 && weight <= 1.0) {
            return Err(TrainError::InvalidInput(format!(
                "a BatchNorm estimate's weight {weight} is not in (0, 1]"
            )));
        }
        let _ = self.features(images, Pass::Estimate { weight })?;
        Ok(())
    }

    fn features(&self, images: &Tensor, pass: Pass) -> Result<Tensor, TrainError> {
        let size = images.size();
        if size.len() != 4 || size[1] != IN_CHANNELS as i64 {
            return Err(TrainError::InvalidInput(format!(
                "images must be [batch, 3, height, width], got {size:?}"
            )));
        }
        let stem = self.conv_stem.forward(images)?;
        let (stats, _) = self.layer_pass(0, pass);
        let mut xs = relu6(self.bn0.forward(&stem, stats)?)?;
        for (i, block) in self.blocks.iter().enumerate() {
            let (stats, drops) = self.layer_pass(i + 1, pass);
            xs = block.forward(&xs, stats, drops)?;
        }
        let head = self.conv_head.forward(&xs)?;
        let (stats, _) = self.layer_pass(self.blocks.len() + 1, pass);
        xs = relu6(self.bn1.forward(&head, stats)?)?;
        Ok(xs.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?)
    }

    /// ImageNet logits `[batch, num_classes]`: pooled features, dropout in training,
    /// the pretrained classifier.
    pub fn forward(&self, images: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let fc = self.fc.as_ref().ok_or_else(|| {
            TrainError::InvalidInput("this EfficientNet was built without its classifier".into())
        })?;
        let xs = self.forward_features(images, train)?;
        let xs = dropout(xs, self.config.dropout_rate, train)?;
        Ok(fc.forward(&xs)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lite0_has_sixteen_blocks_and_fixed_stem_and_head() {
        let config: EfficientNetConfig =
            serde_json::from_str(r#"{"image_size": 224}"#).expect("config");
        let blocks = config.blocks();
        assert_eq!(blocks.len(), 16);
        assert_eq!((config.stem_channels(), config.head_channels()), (32, 1280));
        assert_eq!(blocks[0].input_filters, 32);
        assert_eq!(blocks[15].output_filters, 320);
        assert!((blocks[15].drop_connect_rate - 0.2 * 15.0 / 16.0).abs() < 1e-12);
    }

    #[test]
    fn lite4_scales_as_the_reference() {
        // efficientnet-lite4: width 1.4, depth 1.8; the reference builds 30 blocks
        // (1 + 4 + 4 + 6 + 6 + 8 + 1: the first and last stages are not scaled).
        let config: EfficientNetConfig = serde_json::from_str(
            r#"{"image_size": 300, "width_coefficient": 1.4, "depth_coefficient": 1.8}"#,
        )
        .expect("config");
        let blocks = config.blocks();
        assert_eq!(blocks.len(), 30);
        assert_eq!(config.round_filters(16), 24);
        assert_eq!(config.round_filters(112), 160);
        assert_eq!(config.round_filters(320), 448);
        assert_eq!((config.stem_channels(), config.head_channels()), (32, 1280));
        assert_eq!(blocks[0].input_filters, 32);
    }

    #[test]
    fn depth_of_each_variable() {
        assert_eq!(layer_depth("_conv_stem.weight", 16), 0);
        assert_eq!(layer_depth("_bn0.running_mean", 16), 0);
        assert_eq!(layer_depth("_blocks.0._bn0.weight", 16), 1);
        assert_eq!(layer_depth("_blocks.15._project_conv.weight", 16), 16);
        assert_eq!(layer_depth("_conv_head.weight", 16), 17);
        assert_eq!(layer_depth("_bn1.bias", 16), 17);
        assert_eq!(layer_depth("_fc.weight", 16), 18);
        assert_eq!(layer_depth("head.out.weight", 16), 18);
    }
}
