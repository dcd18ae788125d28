//! `auto` by trial, the worker's half: the head alone on the cached features (the
//! floor), then the trials `hone_domain::job::plan_trials` allows, each a short quiet
//! run scored on the validation data and told to the job as an event; the choice is
//! `choose_by_trials`'s. Every run is seeded as the job is, so a rerun of a seeded
//! job tries the same candidates and gets the same scores.

use std::time::Instant;

use hone_domain::job::{
    choose_by_trials, plan_trials, AutoEvidence, Candidate, CandidateTrial, ChosenMethod,
    Hyperparameters, MethodType, SearchSettings,
};
use hone_domain::resources::EventLevel;
use hone_train::train::{fine_tune, Strategy, TrainError, TrainedModel};
use tch::Tensor;

use super::{strategy_of, Run, Update};

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
        for trial in trials.iter_mut().filter(|t| t.skipped.is_none()) {
            if self.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let c = trial.candidate;
            let mut trial_hp = self.recipe_for(hp, c.kind);
            trial_hp.epochs = trial.epochs.unwrap_or(1);
            let (score, seconds) = self.trial(strategy_of((c.kind, c.frozen_layers)), &trial_hp)?;
            trial.validation_macro_f1 = score;
            trial.seconds = Some(seconds);
            self.tell_trial(trial);
        }
        Ok(choose_by_trials(evidence, floor, trials))
    }

    /// A short quiet run of `strategy` with `hp` (no checkpoints, nothing cached): its
    /// validation macro-F1 and its seconds. What `auto`'s candidates and the
    /// learning-rate search are scored by.
    pub(super) fn trial(
        &self,
        strategy: Strategy,
        hp: &Hyperparameters,
    ) -> Result<(Option<f64>, f64), TrainError> {
        let started = Instant::now();
        let model = fine_tune(
            self.job_for(strategy, hp, None, false, false),
            &mut self.observer(true),
        )?;
        Ok((validation_macro_f1(&model), started.elapsed().as_secs_f64()))
    }

    /// One event per candidate tried, as it ends, so a long search shows its progress.
    fn tell_trial(&self, trial: &CandidateTrial) {
        let score = trial
            .validation_macro_f1
            .map_or("no validation score".to_owned(), |s| {
                format!("validation macro-F1 {s:.3}")
            });
        let epochs = trial.epochs.unwrap_or(0);
        self.send(Update::Notice(
            EventLevel::Info,
            format!(
                "auto tried {} for {epochs} epoch{}: {score}, in {:.1} s",
                trial.candidate.describe(self.base.num_layers as u32),
                if epochs == 1 { "" } else { "s" },
                trial.seconds.unwrap_or(0.0)
            ),
        ));
    }
}

/// Macro-F1 of the run's kept epoch on the validation data (for multi-task runs, the
/// mean of the tasks').
fn validation_macro_f1(model: &TrainedModel) -> Option<f64> {
    model.evaluation().map(|e| e.validation.macro_f1())
}
