//! What one run is given ([`TrainJob`]): the base model, the objective, the data,
//! the settings, the device, and where checkpoints go and come from. The argument of
//! [`fine_tune`](crate::fine_tune), kept apart from the loop so that callers name it
//! without the loop's internals.

use std::path::Path;

use tch::Device;

use crate::config::TrainConfig;
use crate::data::{Features, TrainData};
use crate::objective::Objective;

/// Everything one run needs. `device` is the caller's choice (CUDA when present).
#[derive(Debug)]
pub struct TrainJob<'a> {
    /// A base model directory: config.json and model.safetensors, plus tokenizer.json
    /// for a text model (a Hugging Face directory); config.json's `model_type` says
    /// which modality `train` and `validation` must hold.
    pub base_model_dir: &'a Path,
    /// What the heads predict: the labels (single- or multi-label) or the tasks.
    pub objective: Objective,
    pub train: TrainData,
    pub validation: Option<TrainData>,
    pub config: TrainConfig,
    pub device: Device,
    /// For [`Strategy::FeatureExtraction`]: the pooled encoder outputs of the inputs,
    /// as [`extract_features`] computes them, e.g. from a cache. Computed when absent.
    ///
    /// [`Strategy::FeatureExtraction`]: crate::config::Strategy::FeatureExtraction
    /// [`extract_features`]: crate::extract_features
    pub features: Option<Features>,
    /// Where to write a checkpoint after every epoch (see [`Checkpoint`]); none when
    /// absent.
    ///
    /// [`Checkpoint`]: crate::observer::Checkpoint
    pub checkpoint_dir: Option<&'a Path>,
    /// A [`Checkpoint::dir`] of an earlier run of this very job (same data, settings
    /// and seed) to go on from: training continues after that checkpoint's epoch and
    /// ends as the uninterrupted run would have.
    ///
    /// [`Checkpoint::dir`]: crate::observer::Checkpoint::dir
    pub resume_from: Option<&'a Path>,
    /// For [`Strategy::Partial`] on text: the most bytes the outputs of the frozen
    /// layers may take in memory (on `device`) to be computed once rather than every
    /// step (see [`crate::frozen`]); [`DEFAULT_FROZEN_CACHE_BYTES`] unless the caller
    /// knows better, 0 to always run them every step.
    ///
    /// [`Strategy::Partial`]: crate::config::Strategy::Partial
    pub frozen_cache_bytes: u64,
}

/// 2 GiB: the frozen outputs of about 170,000 texts of 32 tokens on a 384-wide
/// encoder (MiniLM), or 57,000 on a 768-wide one (BERT base).
pub const DEFAULT_FROZEN_CACHE_BYTES: u64 = 2 << 30;
