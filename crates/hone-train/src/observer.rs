//! How the training thread talks to its caller: a [`TrainObserver`] hears every step,
//! epoch, notice and [`Checkpoint`], and is asked whether to stop. A leaf, so the
//! worker implements it without depending on the loop.

use std::path::PathBuf;

use serde::Serialize;

use crate::metrics::{EpochMetrics, StepProgress};

/// Receives progress from the training thread and can stop it.
pub trait TrainObserver {
    /// After every optimizer step.
    fn on_step(&mut self, progress: &StepProgress);
    /// After every epoch, with its validation metrics when there is a validation set.
    fn on_epoch(&mut self, metrics: &EpochMetrics);
    /// Polled before every step (and every evaluation batch); `true` ends training
    /// with [`TrainError::Cancelled`].
    ///
    /// [`TrainError::Cancelled`]: crate::error::TrainError::Cancelled
    fn cancelled(&self) -> bool;
    /// Something the user should know about the run (early stopping, the epoch kept).
    fn on_notice(&mut self, _message: &str) {}
    /// Asked after every epoch but the last, once its metrics are reported: a reason
    /// ends training there, as early stopping does (the best epoch so far is kept).
    /// What `auto` uses to end a trial that cannot catch up with a better candidate.
    fn stop_after(&mut self, _metrics: &EpochMetrics) -> Option<String> {
        None
    }
    /// A checkpoint was written (only with [`TrainJob::checkpoint_dir`]). It is written
    /// beside training, so it may be reported a few steps into the next epoch; it is
    /// whole on disk by then, and before training returns, however it ends.
    ///
    /// [`TrainJob::checkpoint_dir`]: crate::job::TrainJob::checkpoint_dir
    fn on_checkpoint(&mut self, _checkpoint: &Checkpoint) {}
}

/// The weights one epoch ended with, as far as training changes them: the variables
/// that require a gradient, under their model names, in a safetensors file. The
/// frozen ones are the published model's, so [`apply_checkpoint`] on the job's model
/// rebuilds the model of that epoch exactly. Next to it in [`Checkpoint::dir`] lies
/// what [`TrainJob::resume_from`] needs to go on from there (see [`crate::resume`]).
///
/// [`apply_checkpoint`]: crate::apply_checkpoint
/// [`TrainJob::resume_from`]: crate::job::TrainJob::resume_from
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Checkpoint {
    pub epoch: u32,
    /// Optimizer steps taken by the end of the epoch.
    pub step: u64,
    /// The weights file, inside `dir`.
    pub path: PathBuf,
    /// The whole checkpoint: weights and training state.
    pub dir: PathBuf,
    pub metrics: EpochMetrics,
}
