//! What a checkpoint holds besides the weights, so that a later attempt of a job can
//! go on from it and end where an uninterrupted run would have.
//!
//! A checkpoint directory holds `weights.safetensors` (the trainable variables, what
//! the API publishes), `state.safetensors` (the optimizer's moments and the best
//! epoch's weights) and `state.json` (positions, counters, history). The random
//! streams need no saving: the shuffle of epoch `e` and libtorch's generator during
//! that epoch are functions of `(seed, e)` alone (see [`epoch_seed`]), and checkpoints
//! are taken only at epoch boundaries.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use tch::Tensor;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::EpochMetrics;

/// The trainable weights of the epoch.
pub const WEIGHTS_FILE: &str = "weights.safetensors";
/// Optimizer moments (`optimizer.{name}.exp_avg[_sq]`) and best-epoch weights
/// (`best.{name}`).
pub const STATE_TENSORS_FILE: &str = "state.safetensors";
/// [`TrainState`] as JSON; written last, so its presence means the checkpoint is whole.
pub const STATE_FILE: &str = "state.json";

const FORMAT_VERSION: u32 = 1;

/// Positions and counters of a run at the end of an epoch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainState {
    pub format_version: u32,
    /// The epoch just finished (1-based).
    pub epoch: u32,
    /// Optimizer steps taken so far (the schedule's position).
    pub step: u64,
    /// The run's settings: a checkpoint resumes only a run with the same ones.
    pub config: TrainConfig,
    pub train_examples: usize,
    pub history: Vec<EpochMetrics>,
    /// The best epoch so far and its monitored value.
    pub best: Option<(u32, f64)>,
    /// Validation probabilities of the best epoch, for the final report.
    pub best_probs: Option<Vec<Vec<f32>>>,
    pub optimizer_steps: BTreeMap<String, u64>,
}

/// A checkpoint read back.
pub(crate) struct Loaded {
    pub state: TrainState,
    pub weights: BTreeMap<String, Tensor>,
    pub tensors: BTreeMap<String, Tensor>,
}

/// The seed of epoch `epoch`'s shuffle and dropout: distinct per epoch, the same in
/// every run with `seed`.
pub(crate) fn epoch_seed(seed: u64, epoch: u32) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(u64::from(epoch).wrapping_mul(0xBF58_476D_1CE4_E5B9))
}

fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), TrainError>,
) -> Result<(), TrainError> {
    let tmp = path.with_extension("tmp");
    write(&tmp)?;
    std::fs::rename(&tmp, path).map_err(|e| TrainError::io(path, e))
}

/// Writes a checkpoint into `dir`, each file under a temporary name first.
pub(crate) fn save(
    dir: &Path,
    weights: &[(String, Tensor)],
    tensors: &[(String, Tensor)],
    state: &TrainState,
) -> Result<(), TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
    write_atomic(&dir.join(WEIGHTS_FILE), |p| {
        Ok(Tensor::write_safetensors(weights, p)?)
    })?;
    write_atomic(&dir.join(STATE_TENSORS_FILE), |p| {
        Ok(Tensor::write_safetensors(tensors, p)?)
    })?;
    write_atomic(&dir.join(STATE_FILE), |p| {
        let json = serde_json::to_vec(state)
            .map_err(|e| TrainError::InvalidInput(format!("training state: {e}")))?;
        std::fs::write(p, json).map_err(|e| TrainError::io(p, e))
    })
}

/// Reads the checkpoint in `dir`; refuses one of another format version.
pub(crate) fn load(dir: &Path) -> Result<Loaded, TrainError> {
    let path = dir.join(STATE_FILE);
    let json = std::fs::read(&path).map_err(|e| TrainError::io(&path, e))?;
    let state: TrainState = serde_json::from_slice(&json)
        .map_err(|e| TrainError::config(&path, format!("not a training state: {e}")))?;
    if state.format_version != FORMAT_VERSION {
        return Err(TrainError::config(
            &path,
            format!(
                "training state version {} (this build reads {FORMAT_VERSION})",
                state.format_version
            ),
        ));
    }
    let read = |name: &str| -> Result<BTreeMap<String, Tensor>, TrainError> {
        Ok(Tensor::read_safetensors(dir.join(name))?
            .into_iter()
            .collect())
    };
    Ok(Loaded {
        weights: read(WEIGHTS_FILE)?,
        tensors: read(STATE_TENSORS_FILE)?,
        state,
    })
}

impl TrainState {
    pub fn new(epoch: u32, step: u64, config: &TrainConfig, train_examples: usize) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            epoch,
            step,
            config: config.clone(),
            train_examples,
            history: Vec::new(),
            best: None,
            best_probs: None,
            optimizer_steps: BTreeMap::new(),
        }
    }
}
