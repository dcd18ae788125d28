//! `"learning_rate": "auto"`, the worker's half: before a `partial` or `full` run
//! trains, a short quiet run at each rate of `hone_domain::job::learning_rate_grid`,
//! scored on the validation data and told to the job as an event (a trial far behind
//! the best rate before it stops at half its epochs, `TrialBar`); the rate is
//! `choose_learning_rate`'s. The runs are seeded as the job is, so an attempt that
//! starts again (after a crash) searches to the same rate and resumes its checkpoint.

use hone_domain::job::{
    choose_learning_rate, learning_rate_grid, trial_epochs, Hyperparameters, LearningRateSearch,
    LearningRateTrial, TrialBar, MAX_LEARNING_RATE,
};
use hone_domain::resources::EventLevel;
use hone_train::train::{Strategy, TrainError};

use super::search::stopped_early;
use super::{Run, Update};

impl Run<'_> {
    /// `hp` with the searched rate when the job asked for a search and trains the
    /// encoder, and what the search found; `hp` as it is otherwise.
    pub(super) fn search_learning_rate(
        &self,
        strategy: Strategy,
        mut hp: Hyperparameters,
    ) -> Result<(Hyperparameters, Option<LearningRateSearch>), TrainError> {
        if !hp.learning_rate_search || strategy == Strategy::FeatureExtraction {
            return Ok((hp, None));
        }
        let default = hp.learning_rate;
        if self.validation.is_none() {
            self.send(Update::Notice(
                EventLevel::Warn,
                format!(
                    "learning_rate \"auto\": there is no validation data to compare rates on, so the job trains at the default {default:.1e}"
                ),
            ));
            return Ok((hp, None));
        }
        let epochs = trial_epochs(hp.epochs);
        let validation_examples = self.validation_examples();
        let mut trials = Vec::new();
        for rate in learning_rate_grid(default, MAX_LEARNING_RATE) {
            if self.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let mut trial_hp = hp.clone();
            trial_hp.learning_rate = rate;
            trial_hp.epochs = epochs;
            // The rates tried so far set the bar, as `auto`'s candidates do.
            let bar = TrialBar::best_of(
                trials.iter().filter_map(|t: &LearningRateTrial| {
                    Some((t.validation_macro_f1?, format!("{:.1e}", t.learning_rate)))
                }),
                validation_examples,
                epochs,
            );
            let run = self.trial(strategy, &trial_hp, bar)?;
            let trial = LearningRateTrial {
                learning_rate: rate,
                epochs: run.epochs,
                validation_macro_f1: run.validation_macro_f1,
                seconds: run.seconds,
                stopped: run.stopped,
            };
            let score = trial
                .validation_macro_f1
                .map_or("no validation score".to_owned(), |s| {
                    format!("validation macro-F1 {s:.3}")
                });
            let stopped = stopped_early(trial.stopped.as_deref());
            self.send(Update::Notice(
                EventLevel::Info,
                format!(
                    "learning_rate \"auto\" tried {rate:.1e} for {} epoch{}: {score}, in {:.1} s{stopped}",
                    trial.epochs,
                    if trial.epochs == 1 { "" } else { "s" },
                    trial.seconds
                ),
            ));
            trials.push(trial);
        }
        let search = choose_learning_rate(default, trials, validation_examples);
        self.send(Update::Notice(
            EventLevel::Info,
            format!("learning_rate \"auto\" chose {}", search.reason),
        ));
        hp.learning_rate_multiplier *= search.chosen / default;
        hp.learning_rate = search.chosen;
        Ok((hp, Some(search)))
    }
}
