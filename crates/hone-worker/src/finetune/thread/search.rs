//! `auto` by trial, the worker's half: the head alone on the cached features (the
//! floor), then the trials `hone_domain::job::plan_trials` allows, each a short quiet
//! run scored on the validation data and told to the job as an event; the choice is
//! `choose_by_trials`'s. Every run is seeded as the job is, so a rerun of a seeded
//! job tries the same candidates and gets the same scores.

use std::time::Instant;

use hone_domain::job::{
    choose_by_trials, plan_trials, AutoEvidence, Candidate, CandidateTrial, ChosenMethod,
    Hyperparameters, MethodType, SearchSettings, TrialBar,
};
use hone_domain::resources::EventLevel;
use hone_train::train::{fine_tune, Strategy, TrainError, TrainedModel};
use hone_train::{EpochMetrics, StepProgress, TrainObserver};
use tch::Tensor;

use super::{strategy_of, Observer, Run, Update};

impl Run<'_> {
    /// Fits the floor, runs the planned trials and chooses; `evidence` gains the
    /// floor's score.
    pub(super) fn search(
        &self,
        features: &Tensor,
        evidence: &mut AutoEvidence,
    ) -> Result<ChosenMethod, TrainError> {
        let hp = &self.input.hyperparameters;
        let started = Instant::now();
        let floor_hp = hp.rebased_on(MethodType::FeatureExtraction);
        let floor_model = fine_tune(
            self.job_for(
                Strategy::FeatureExtraction,
                &floor_hp,
                Some(self.split_features(features)?),
                false,
                false,
            ),
            &mut self.observer(true),
        )?;
        let floor = CandidateTrial {
            candidate: Candidate::HEAD_ONLY,
            epochs: Some(floor_model.history().len() as u32),
            validation_macro_f1: validation_macro_f1(&floor_model),
            seconds: Some(started.elapsed().as_secs_f64()),
            cost: 0.0,
            skipped: None,
            stopped: None,
        };
        drop(floor_model);
        self.tell_trial(&floor);
        evidence.probe_macro_f1 = floor.validation_macro_f1;
        let settings = SearchSettings {
            budget: hp.auto_budget,
            epochs: self.recipe_for(hp, MethodType::Full).epochs,
            model_layers: evidence.model_layers,
        };
        let mut trials = plan_trials(&settings, floor.validation_macro_f1.unwrap_or(0.0));
        for i in 0..trials.len() {
            if trials[i].skipped.is_some() {
                continue;
            }
            if self.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let c = trials[i].candidate;
            let mut trial_hp = self.recipe_for(hp, c.kind);
            trial_hp.epochs = trials[i].epochs.unwrap_or(1);
            // The floor and the trials before this one, cheapest first.
            let bar = TrialBar::new(
                std::iter::once(&floor).chain(&trials[..i]),
                evidence.validation_examples,
                evidence.model_layers,
                trial_hp.epochs,
            );
            let run = self.trial(strategy_of((c.kind, c.frozen_layers)), &trial_hp, bar)?;
            let trial = &mut trials[i];
            trial.validation_macro_f1 = run.validation_macro_f1;
            trial.seconds = Some(run.seconds);
            if run.stopped.is_some() {
                trial.epochs = Some(run.epochs);
                trial.stopped = run.stopped;
            }
            self.tell_trial(trial);
        }
        Ok(choose_by_trials(evidence, floor, trials))
    }

    /// A short quiet run of `strategy` with `hp` (no checkpoints, nothing cached),
    /// ended early when it falls behind `bar`. What `auto`'s candidates and the
    /// learning-rate search are scored by.
    pub(super) fn trial(
        &self,
        strategy: Strategy,
        hp: &Hyperparameters,
        bar: Option<TrialBar>,
    ) -> Result<TrialRun, TrainError> {
        let started = Instant::now();
        let mut observer = TrialObserver {
            inner: self.observer(true),
            bar,
            best_so_far: f64::NEG_INFINITY,
            stopped: None,
        };
        let model = fine_tune(
            self.job_for(strategy, hp, None, false, false),
            &mut observer,
        )?;
        Ok(TrialRun {
            validation_macro_f1: validation_macro_f1(&model),
            seconds: started.elapsed().as_secs_f64(),
            epochs: model.history().len() as u32,
            stopped: observer.stopped,
        })
    }

    /// One event per candidate tried, as it ends, so a long search shows its progress.
    fn tell_trial(&self, trial: &CandidateTrial) {
        let score = trial
            .validation_macro_f1
            .map_or("no validation score".to_owned(), |s| {
                format!("validation macro-F1 {s:.3}")
            });
        let epochs = trial.epochs.unwrap_or(0);
        let stopped = stopped_early(trial.stopped.as_deref());
        self.send(Update::Notice(
            EventLevel::Info,
            format!(
                "auto tried {} for {epochs} epoch{}: {score}, in {:.1} s{stopped}",
                trial.candidate.describe(self.base.num_layers as u32),
                if epochs == 1 { "" } else { "s" },
                trial.seconds.unwrap_or(0.0)
            ),
        ));
    }
}

/// How an event about a trial ends when its bar stopped it: "; stopped early: why".
pub(super) fn stopped_early(why: Option<&str>) -> String {
    why.map_or(String::new(), |why| format!("; stopped early: {why}"))
}

/// What a trial measured.
pub(super) struct TrialRun {
    /// Of its kept (best) epoch.
    pub(super) validation_macro_f1: Option<f64>,
    pub(super) seconds: f64,
    /// Epochs it trained.
    pub(super) epochs: u32,
    /// Why it ended before its epochs, when its bar ended it.
    pub(super) stopped: Option<String>,
}

/// A trial's observer: quiet, obeys cancellation, and ends the run when its best
/// validation macro-F1 so far falls behind its [`TrialBar`].
struct TrialObserver {
    inner: Observer,
    bar: Option<TrialBar>,
    best_so_far: f64,
    stopped: Option<String>,
}

impl TrainObserver for TrialObserver {
    fn on_step(&mut self, p: &StepProgress) {
        self.inner.on_step(p);
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        if let Some(v) = &m.validation {
            self.best_so_far = self.best_so_far.max(v.macro_f1);
        }
        self.inner.on_epoch(m);
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
    fn on_notice(&mut self, message: &str) {
        self.inner.on_notice(message);
    }
    fn stop_after(&mut self, m: &EpochMetrics) -> Option<String> {
        let why = self.bar.as_ref()?.stops(m.epoch, self.best_so_far)?;
        self.stopped = Some(why.clone());
        Some(why)
    }
}

/// Macro-F1 of the run's kept epoch on the validation data (for multi-task runs, the
/// mean of the tasks').
fn validation_macro_f1(model: &TrainedModel) -> Option<f64> {
    model.evaluation().map(|e| e.validation.macro_f1())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use hone_train::EvalMetrics;
    use tokio::sync::mpsc;

    use super::*;
    use crate::StopFlags;

    fn epoch(epoch: u32, macro_f1: f64) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 0.5,
            validation: Some(EvalMetrics {
                loss: 0.5,
                accuracy: macro_f1,
                macro_f1,
                examples: 100,
                threshold: None,
            }),
        }
    }

    /// A 4-epoch trial's observer, against a head that scored 0.8 on 100 validation
    /// examples (a margin of 0.04: behind means below 0.76).
    fn observer() -> TrialObserver {
        let (tx, _rx) = mpsc::unbounded_channel();
        let floor = CandidateTrial {
            candidate: Candidate::HEAD_ONLY,
            epochs: Some(1),
            validation_macro_f1: Some(0.8),
            seconds: Some(0.1),
            cost: 0.0,
            skipped: None,
            stopped: None,
        };
        TrialObserver {
            inner: Observer {
                tx,
                flags: Arc::new(StopFlags::default()),
                quiet: true,
                pausing: false,
            },
            bar: TrialBar::new(&[floor], 100, 6, 4),
            best_so_far: f64::NEG_INFINITY,
            stopped: None,
        }
    }

    /// The observer judges a trial by its best epoch so far, not its latest, and
    /// keeps the reason it stopped it for the job's record.
    #[test]
    fn a_trial_is_judged_by_its_best_epoch_so_far() {
        let mut keeping_up = observer();
        let mut judge = |m: EpochMetrics| {
            keeping_up.on_epoch(&m);
            keeping_up.stop_after(&m)
        };
        assert_eq!(judge(epoch(1, 0.5)), None, "before half its epochs");
        assert_eq!(judge(epoch(2, 0.78)), None, "within the margin");
        assert_eq!(judge(epoch(3, 0.6)), None, "its best (0.78) keeps it in");
        assert_eq!(keeping_up.stopped, None);

        let mut behind = observer();
        behind.on_epoch(&epoch(1, 0.7));
        behind.on_epoch(&epoch(2, 0.65));
        let why = behind.stop_after(&epoch(2, 0.65)).expect("behind at half");
        assert!(why.contains("in 2 of 4 epochs, 0.700,"), "{why}");
        assert_eq!(behind.stopped.as_deref(), Some(why.as_str()));
    }
}
