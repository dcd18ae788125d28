//! What a checkpoint holds besides the weights, so that a later attempt of a job can
//! go on from it and end where an uninterrupted run would have.
//!
//! A checkpoint directory holds `weights.safetensors` (the trainable variables, what
//! the API publishes), `state.safetensors` (the optimizer's moments and the best
//! epoch's weights) and `state.json` (positions, counters, history). The random
//! streams need no saving: the shuffle of epoch `e` and libtorch's generator during
//! that epoch are functions of `(seed, e)` alone (see [`epoch_seed`]), and checkpoints
//! are taken only at epoch boundaries.
//!
//! Writing leaves the training thread ([`Writing`]): the tensors are copied first, as
//! training goes on changing them in place, and a thread of its own writes the copy.
//! One checkpoint is in flight at most, so a run holds at most one extra copy of its
//! trained weights, optimizer moments and best-epoch weights.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};

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

/// A checkpoint being written on a thread of its own; [`Writing::wait`] says how it
/// went. Dropped unwaited, it still waits, so that no write outlives its run.
pub(crate) struct Writing {
    dir: PathBuf,
    handle: Option<JoinHandle<Result<(), TrainError>>>,
}

impl Writing {
    /// Copies the tensors as they are now, and writes the copy into `dir` (as
    /// [`save`]) on a thread of its own.
    pub(crate) fn start(
        dir: PathBuf,
        weights: &[(String, Tensor)],
        tensors: &[(String, Tensor)],
        state: TrainState,
    ) -> Result<Self, TrainError> {
        let weights = snapshot(weights)?;
        let tensors = snapshot(tensors)?;
        let into = dir.clone();
        let handle = std::thread::Builder::new()
            .name("hone-checkpoint".into())
            .spawn(move || save(&into, &weights, &tensors, &state))
            .map_err(|e| TrainError::io(&dir, e))?;
        Ok(Self {
            dir,
            handle: Some(handle),
        })
    }

    /// Whether the write has ended (well or not): [`Writing::wait`] will not block.
    pub(crate) fn is_finished(&self) -> bool {
        self.handle.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Blocks until the checkpoint is whole on disk, or says why it is not.
    pub(crate) fn wait(mut self) -> Result<(), TrainError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), TrainError> {
        match self.handle.take().map(JoinHandle::join) {
            None => Ok(()),
            Some(Ok(written)) => written,
            Some(Err(_)) => Err(TrainError::io(
                &self.dir,
                std::io::Error::other("the checkpoint writer panicked"),
            )),
        }
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        if let Err(e) = self.join() {
            tracing::warn!(error = %e, "a checkpoint nobody waited for was not written");
        }
    }
}

/// Copies of `tensors` that share no storage with them, on the CPU, outside autograd.
fn snapshot(tensors: &[(String, Tensor)]) -> Result<Vec<(String, Tensor)>, TrainError> {
    tch::no_grad(|| {
        tensors
            .iter()
            .map(|(name, t)| {
                // `detach_copy` is detach's copying form: new storage, never a view.
                let copy = if t.device() == Device::Cpu {
                    t.f_detach_copy()?
                } else {
                    t.detach().f_to_device(Device::Cpu)?
                };
                Ok((name.clone(), copy))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_written_in_the_background_holds_the_tensors_as_they_were_when_it_began() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weights = vec![("w".to_owned(), Tensor::from_slice(&[1.0f32, 2.0, 3.0]))];
        let moments = vec![(
            "optimizer.w.exp_avg".to_owned(),
            Tensor::from_slice(&[0.5f32; 3]).set_requires_grad(true),
        )];
        let state = TrainState::new(1, 3, &TrainConfig::default(), 3);
        let writing =
            Writing::start(dir.path().join("epoch-1"), &weights, &moments, state).expect("started");
        // Training goes on changing its tensors in place at once.
        tch::no_grad(|| {
            let _ = weights[0].1.shallow_clone().fill_(9.0);
            let _ = moments[0].1.shallow_clone().fill_(9.0);
        });
        writing.wait().expect("written");
        let loaded = load(&dir.path().join("epoch-1")).expect("whole");
        assert_eq!(
            Vec::<f32>::try_from(&loaded.weights["w"]).expect("w"),
            [1.0, 2.0, 3.0]
        );
        assert_eq!(
            Vec::<f32>::try_from(&loaded.tensors["optimizer.w.exp_avg"]).expect("m"),
            [0.5; 3]
        );
        assert_eq!(loaded.state.step, 3);
    }

    #[test]
    fn a_snapshot_shares_no_storage_with_the_tensors_training_goes_on_changing() {
        let live = vec![(
            "w".to_owned(),
            Tensor::from_slice(&[1.0f32, 2.0]).set_requires_grad(true),
        )];
        let copy = snapshot(&live).expect("snapshot");
        tch::no_grad(|| {
            let _ = live[0].1.shallow_clone().fill_(9.0);
        });
        assert_eq!(Vec::<f32>::try_from(&copy[0].1).expect("copy"), [1.0, 2.0]);
        assert!(!copy[0].1.requires_grad());
    }

    #[test]
    fn a_failed_write_is_reported_by_wait() {
        let file = tempfile::NamedTempFile::new().expect("file");
        // A directory cannot be made under a file.
        let writing = Writing::start(
            file.path().join("epoch-1"),
            &[],
            &[],
            TrainState::new(1, 0, &TrainConfig::default(), 0),
        )
        .expect("started");
        assert!(writing.wait().is_err());
    }
}
