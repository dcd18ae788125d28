//! `auto` by evidence: which strategies it tries, within what budget, and which one
//! wins. The head alone on the frozen features (`feature_extraction`) is the floor:
//! the features are computed anyway and a head fits in seconds. Costlier candidates
//! (`partial` at one or two depths, then `full`) each get a short trial, a fraction
//! of their epochs, while the budget allows; the best validation score wins, and a
//! score within [`tie_margin`] of the best (one standard error of it on the validation
//! data, at least [`AUTO_TIE_MARGIN`]) goes to the cheaper strategy. A trial that
//! falls far behind the best candidate before it ends at half its epochs
//! ([`TrialBar`]). Pure:
//! the worker runs the trials and hands their scores in; what is decided here, and
//! why, is stored with the job as [`ChosenMethod::candidates`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auto::{data_summary, AutoEvidence};
use super::{ChosenMethod, MethodType};

/// Validation macro-F1 within this much of the best counts as a tie, which the
/// cheaper strategy wins: the trials are short, and a smaller gap is within their noise.
pub const AUTO_TIE_MARGIN: f64 = 0.01;
/// What the search may spend by default, as a multiple of the training of the
/// candidate being considered: `auto` then costs at most about twice the training of
/// the strategy it chooses when that is the costliest one tried.
pub const AUTO_DEFAULT_BUDGET: f64 = 1.0;
/// The most a user may ask the search to spend.
pub const AUTO_MAX_BUDGET: f64 = 10.0;

/// A strategy `auto` may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Candidate {
    #[serde(rename = "type")]
    pub kind: MethodType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_layers: Option<u32>,
}

impl Candidate {
    pub const HEAD_ONLY: Candidate = Candidate {
        kind: MethodType::FeatureExtraction,
        frozen_layers: None,
    };

    /// The cost of an epoch over the training data, relative to an epoch of `full`:
    /// the forward pass runs through every layer (a third of a step), the backward
    /// pass only through the layers that train (two thirds, scaled by their share).
    /// The head alone trains on features computed once, which the floor needs anyway,
    /// so it counts as free.
    pub fn relative_cost(&self, model_layers: u32) -> f64 {
        match self.kind {
            MethodType::FeatureExtraction => 0.0,
            MethodType::Partial => {
                let layers = f64::from(model_layers.max(1));
                let trained = (layers - f64::from(self.frozen_layers.unwrap_or(0))) / layers;
                (1.0 + 2.0 * trained.clamp(0.0, 1.0)) / 3.0
            }
            MethodType::Full | MethodType::Auto => 1.0,
        }
    }

    /// The strategy in words, e.g. `partial (3 of 6 layers frozen)`.
    pub fn describe(&self, model_layers: u32) -> String {
        match (self.kind, self.frozen_layers) {
            (MethodType::Partial, Some(k)) => {
                format!("partial ({k} of {model_layers} layers frozen)")
            }
            (kind, _) => kind.as_str().to_owned(),
        }
    }
}

/// One candidate as the job records it: the trial's validation score and time, or
/// why it was not tried.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CandidateTrial {
    #[serde(flatten)]
    pub candidate: Candidate,
    /// Epochs the trial trained (a fitted head counts one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<u32>,
    /// Macro-F1 on the validation data of the trial's best epoch; absent when it was
    /// not tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_macro_f1: Option<f64>,
    /// Wall-clock seconds the trial took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// The trial's estimated cost, in epochs of `full` over the training data.
    pub cost: f64,
    /// Why it was not tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Why the trial ended before its planned epochs (see [`TrialBar`]); `epochs` is
    /// then what it trained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// What the search is allowed: its budget, and the epochs the costlier strategies
/// would train for (the job's `epochs` under their defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SearchSettings {
    /// A multiple of the candidate's own training cost (see [`plan_trials`]).
    pub budget: f64,
    pub epochs: u32,
    pub model_layers: u32,
}

impl SearchSettings {
    /// Epochs of a trial: half of the training's, at least one.
    pub fn trial_epochs(&self) -> u32 {
        (self.epochs / 2).max(1)
    }
}

/// The candidates costlier than the floor, cheapest first: `partial` with the lower
/// three quarters frozen (models of 8 layers or more), with the lower half frozen,
/// and `full`.
pub fn costlier_candidates(model_layers: u32) -> Vec<Candidate> {
    let mut depths = Vec::new();
    if model_layers >= 8 {
        depths.push(model_layers * 3 / 4);
    }
    depths.push(model_layers / 2);
    depths.dedup();
    let partial = depths
        .into_iter()
        .filter(|&k| k > 0 && k < model_layers)
        .map(|k| Candidate {
            kind: MethodType::Partial,
            frozen_layers: Some(k),
        });
    partial
        .chain(std::iter::once(Candidate {
            kind: MethodType::Full,
            frozen_layers: None,
        }))
        .collect()
}

/// Which costlier candidates get a trial, given the floor's score: each one whose
/// trial, added to what the trials before it cost, stays within `budget` times its own
/// training, cheapest first; none when the floor is already within the tie margin of
/// a perfect score, which no trial could then beat. Every candidate is returned, the
/// ones not to try with the reason.
pub fn plan_trials(settings: &SearchSettings, floor_score: f64) -> Vec<CandidateTrial> {
    let trial_epochs = settings.trial_epochs();
    let mut spent = 0.0;
    costlier_candidates(settings.model_layers)
        .into_iter()
        .map(|candidate| {
            let per_epoch = candidate.relative_cost(settings.model_layers);
            let cost = per_epoch * f64::from(trial_epochs);
            let training = per_epoch * f64::from(settings.epochs);
            let skipped = if floor_score >= 1.0 - AUTO_TIE_MARGIN {
                Some(format!(
                    "the head alone scores {floor_score:.3}, within {AUTO_TIE_MARGIN} of a \
                     perfect score"
                ))
            } else if spent + cost > settings.budget * training + 1e-9 {
                Some(format!(
                    "its trial ({cost:.2} full epochs) after {spent:.2} spent would pass the \
                     budget of {} × its training ({training:.2})",
                    settings.budget
                ))
            } else {
                spent += cost;
                None
            };
            CandidateTrial {
                candidate,
                epochs: skipped.is_none().then_some(trial_epochs),
                validation_macro_f1: None,
                seconds: None,
                cost,
                skipped,
                stopped: None,
            }
        })
        .collect()
}

/// How close to the best validation score counts as a tie: [`AUTO_TIE_MARGIN`], or one
/// standard error of the best score on `validation_examples` (`√(s(1−s)/n)`, as of an
/// accuracy) when that is wider — the one-standard-error rule of model selection: the
/// simplest model within one standard error of the best. On a few dozen validation
/// examples one or two of them decide a gap of several points: on the quality
/// benchmark's conventions at 64 a class, `full` led the head by 0.077 on 26
/// validation paragraphs (two of them) and then scored 2.7 points below it on the test
/// set (BENCHMARKS.md, "Transfer quality").
pub fn tie_margin(best: f64, validation_examples: usize) -> f64 {
    let s = best.clamp(0.0, 1.0);
    let standard_error = (s * (1.0 - s) / validation_examples.max(1) as f64).sqrt();
    AUTO_TIE_MARGIN.max(standard_error)
}

/// What a trial must keep up with: the best validation score of the cheaper
/// candidates already scored (the floor first). A costlier candidate wins only by more
/// than the [`tie_margin`] over it, so a trial that, from half its epochs on, still
/// scores more than the margin *below* it would have to gain over twice the margin in
/// what is left of a run whose learning rate is already decaying; it ends there, as
/// early stopping does, and keeps its best epoch and score. The trials that lose cost
/// about half of what they did; the ones that keep up run to the end.
#[derive(Clone, Debug, PartialEq)]
pub struct TrialBar {
    /// The score to keep up with.
    pub best: f64,
    /// Who scored it, in words.
    pub by: String,
    /// The tie margin at that score on the validation data.
    pub margin: f64,
    /// The trial's planned epochs.
    pub trial_epochs: u32,
}

impl TrialBar {
    /// The bar for the next trial: the best of `scored` (the floor and the trials done,
    /// cheapest first), on `validation_examples`.
    pub fn new<'a>(
        scored: impl IntoIterator<Item = &'a CandidateTrial>,
        validation_examples: usize,
        model_layers: u32,
        trial_epochs: u32,
    ) -> Option<Self> {
        let scores = scored
            .into_iter()
            .filter_map(|c| Some((c.validation_macro_f1?, c.candidate.describe(model_layers))));
        Self::best_of(scores, validation_examples, trial_epochs)
    }

    /// The bar of the best of `scored` (a score and who scored it, in words), the
    /// first of equals; `None` when nothing was scored.
    pub fn best_of(
        scored: impl IntoIterator<Item = (f64, String)>,
        validation_examples: usize,
        trial_epochs: u32,
    ) -> Option<Self> {
        let (best, by) = scored.into_iter().fold(None, |acc, (s, by)| match acc {
            Some((b, _)) if b >= s => acc,
            _ => Some((s, by)),
        })?;
        Some(Self {
            best,
            by,
            margin: tie_margin(best, validation_examples),
            trial_epochs,
        })
    }

    /// Why the trial stops after `epoch`, its best validation score so far being
    /// `best_so_far`; `None` to go on. Never before half its epochs, nor after its last.
    pub fn stops(&self, epoch: u32, best_so_far: f64) -> Option<String> {
        let halfway = epoch * 2 >= self.trial_epochs;
        let behind = best_so_far < self.best - self.margin;
        (halfway && epoch < self.trial_epochs && behind).then(|| {
            format!(
                "its best validation macro-F1 in {epoch} of {} epochs, {best_so_far:.3}, is \
                 more than {} below the best before it ({} {:.3})",
                self.trial_epochs,
                round3(self.margin),
                self.by,
                self.best
            )
        })
    }
}

/// The winner of the search: `floor` (the head alone, scored) and the costlier
/// candidates as [`plan_trials`] planned them, with the scores of those tried. The
/// best validation score wins; a candidate within [`tie_margin`] of it that is
/// cheaper wins instead. The reason names every score and says why the winner won.
pub fn choose_by_trials(
    e: &AutoEvidence,
    floor: CandidateTrial,
    costlier: Vec<CandidateTrial>,
) -> ChosenMethod {
    let layers = e.model_layers;
    let mut candidates = vec![floor];
    candidates.extend(costlier);
    // Cheapest first, so the first within the margin of the best is the cheapest.
    let scored: Vec<(&CandidateTrial, f64)> = candidates
        .iter()
        .filter_map(|c| c.validation_macro_f1.map(|s| (c, s)))
        .collect();
    let best = scored
        .iter()
        .map(|(_, s)| *s)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = tie_margin(best, e.validation_examples);
    let winner = scored
        .iter()
        .find(|(_, s)| *s >= best - margin)
        .map(|(c, s)| (c.candidate, *s));
    let others: Vec<String> = scored
        .iter()
        .filter(|(c, _)| Some(c.candidate) != winner.map(|w| w.0))
        .map(|(c, s)| {
            let stopped = if c.stopped.is_some() {
                " (stopped early)"
            } else {
                ""
            };
            format!("{} {s:.3}{stopped}", c.candidate.describe(layers))
        })
        .collect();
    let against = if others.is_empty() {
        "no other candidate was tried".to_owned()
    } else {
        format!("against {}", others.join(", "))
    };
    let (winner, why) = match winner {
        None => (
            Candidate::HEAD_ONLY,
            "no candidate could be scored, so only the head trains".to_owned(),
        ),
        Some((w, score)) if score < best => (
            w,
            format!(
                "validation macro-F1 {score:.3}, within {} of the best ({best:.3}) on {} \
                 validation examples, and the cheapest there ({against})",
                round3(margin),
                e.validation_examples
            ),
        ),
        Some((w, score)) => (
            w,
            format!("the best validation macro-F1, {score:.3} ({against})"),
        ),
    };
    let skipped: Vec<String> = candidates
        .iter()
        .filter_map(|c| {
            c.skipped
                .as_ref()
                .map(|s| format!("{}: {s}", c.candidate.describe(layers)))
        })
        .collect();
    let skipped = if skipped.is_empty() {
        String::new()
    } else {
        format!("; not tried: {}", skipped.join("; "))
    };
    ChosenMethod {
        kind: winner.kind,
        frozen_layers: winner.frozen_layers,
        reason: format!(
            "{}: {}; by trial: {why}{skipped}",
            winner.describe(layers),
            data_summary(e)
        ),
        candidates,
    }
}

/// `x` to three decimals, for a reason's text.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests {
    use super::super::auto::tests::evidence;
    use super::*;

    fn settings(budget: f64) -> SearchSettings {
        SearchSettings {
            budget,
            epochs: 3,
            model_layers: 6,
        }
    }

    fn floor(score: f64) -> CandidateTrial {
        CandidateTrial {
            candidate: Candidate::HEAD_ONLY,
            epochs: Some(1),
            validation_macro_f1: Some(score),
            seconds: Some(0.5),
            cost: 0.0,
            skipped: None,
            stopped: None,
        }
    }

    /// The planned trials with these scores, in order, for the ones tried.
    fn scored(mut plan: Vec<CandidateTrial>, scores: &[f64]) -> Vec<CandidateTrial> {
        let mut scores = scores.iter();
        for c in plan.iter_mut().filter(|c| c.skipped.is_none()) {
            c.validation_macro_f1 = scores.next().copied();
            c.seconds = Some(3.0);
        }
        plan
    }

    #[test]
    fn candidates_go_from_cheap_to_costly() {
        let six = costlier_candidates(6);
        assert_eq!(
            six.iter()
                .map(|c| (c.kind, c.frozen_layers))
                .collect::<Vec<_>>(),
            [(MethodType::Partial, Some(3)), (MethodType::Full, None)]
        );
        let seventeen = costlier_candidates(17);
        assert_eq!(
            seventeen
                .iter()
                .map(|c| c.frozen_layers)
                .collect::<Vec<_>>(),
            [Some(12), Some(8), None]
        );
        let costs: Vec<f64> = seventeen.iter().map(|c| c.relative_cost(17)).collect();
        assert!(costs.windows(2).all(|w| w[0] < w[1]), "{costs:?}");
        assert_eq!(Candidate::HEAD_ONLY.relative_cost(17), 0.0);
        assert_eq!(
            costlier_candidates(1).len(),
            1,
            "only full: no layer to split"
        );
    }

    #[test]
    fn the_default_budget_tries_every_candidate_and_records_each() {
        let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.8);
        assert!(plan.iter().all(|c| c.skipped.is_none()), "{plan:#?}");
        assert!(plan.iter().all(|c| c.epochs == Some(1)), "{plan:#?}");
        let chosen = choose_by_trials(&evidence(), floor(0.80), scored(plan, &[0.90, 0.86]));
        assert_eq!(
            (chosen.kind, chosen.frozen_layers),
            (MethodType::Partial, Some(3))
        );
        assert_eq!(chosen.candidates.len(), 3);
        assert_eq!(chosen.candidates[0].candidate, Candidate::HEAD_ONLY);
        assert!(chosen
            .candidates
            .iter()
            .all(|c| c.validation_macro_f1.is_some() && c.seconds.is_some()));
        let reason = &chosen.reason;
        assert!(
            reason.starts_with("partial (3 of 6 layers frozen): 500 training examples")
                && reason.contains("the best validation macro-F1, 0.900")
                && reason.contains("feature_extraction 0.800")
                && reason.contains("full 0.860"),
            "{reason}"
        );
    }

    #[test]
    fn a_tie_goes_to_the_cheaper_candidate() {
        let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.855);
        let chosen = choose_by_trials(&evidence(), floor(0.855), scored(plan, &[0.86, 0.864]));
        assert_eq!(chosen.kind, MethodType::FeatureExtraction, "{chosen:?}");
        assert!(
            chosen.reason.contains("within 0.01 of the best (0.864)"),
            "{}",
            chosen.reason
        );
        // Beyond the margin, the costlier one wins.
        let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.85);
        let chosen = choose_by_trials(&evidence(), floor(0.85), scored(plan, &[0.855, 0.87]));
        assert_eq!(chosen.kind, MethodType::Full, "{chosen:?}");
    }

    #[test]
    fn on_a_small_validation_set_a_lead_within_one_standard_error_is_a_tie() {
        // The conventions at 64 a class: 26 validation examples, full ahead by 0.077.
        let margin = tie_margin(0.769, 26);
        assert!((margin - (0.769f64 * 0.231 / 26.0).sqrt()).abs() < 1e-12);
        let choose_on = |validation_examples| {
            let e = AutoEvidence {
                validation_examples,
                ..evidence()
            };
            let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.692);
            choose_by_trials(&e, floor(0.692), scored(plan, &[0.432, 0.769]))
        };
        let chosen = choose_on(26);
        assert_eq!(chosen.kind, MethodType::FeatureExtraction, "{chosen:?}");
        assert!(
            chosen
                .reason
                .contains("within 0.083 of the best (0.769) on 26 validation examples"),
            "{}",
            chosen.reason
        );
        // The same lead on 2,000 examples is beyond one standard error (0.009), and
        // past the fixed margin too.
        let chosen = choose_on(2_000);
        assert_eq!(chosen.kind, MethodType::Full, "{chosen:?}");
        // Never narrower than the fixed margin, whatever the count or score.
        assert_eq!(tie_margin(1.0, 26), AUTO_TIE_MARGIN);
        assert_eq!(tie_margin(0.5, 1_000_000), AUTO_TIE_MARGIN);
    }

    #[test]
    fn a_budget_stops_the_search() {
        // A trial is 1 of 3 epochs: a budget below a third of a training tries nothing.
        let none = plan_trials(&settings(0.3), 0.7);
        assert!(none.iter().all(|c| c.skipped.is_some()), "{none:#?}");
        assert!(
            none[0]
                .skipped
                .as_deref()
                .is_some_and(|s| s.contains("budget of 0.3")),
            "{none:#?}"
        );
        let chosen = choose_by_trials(&evidence(), floor(0.7), none);
        assert_eq!(chosen.kind, MethodType::FeatureExtraction);
        assert!(
            chosen
                .reason
                .contains("not tried: partial (3 of 6 layers frozen)"),
            "{}",
            chosen.reason
        );
        // 0.4 affords partial's trial (0.67 full epochs, within 0.4 × its 2.0), not
        // full's after it (0.67 + 1 > 0.4 × 3).
        let some = plan_trials(&settings(0.4), 0.7);
        assert_eq!(
            some.iter().map(|c| c.skipped.is_none()).collect::<Vec<_>>(),
            [true, false]
        );
        // A floor at the top leaves nothing to gain.
        let perfect = plan_trials(&settings(AUTO_MAX_BUDGET), 0.995);
        assert!(perfect.iter().all(|c| c.skipped.is_some()));
    }

    #[test]
    fn a_trial_far_behind_the_best_so_far_stops_from_half_its_epochs() {
        // The head scored 0.805 on 26 validation examples: a margin of 0.078.
        let bar = TrialBar::new(&[floor(0.805)], 26, 6, 7).expect("a scored floor");
        assert_eq!(bar.by, "feature_extraction");
        assert!((bar.margin - tie_margin(0.805, 26)).abs() < 1e-12);
        // Far behind, but before half of its 7 epochs: it goes on.
        assert_eq!(bar.stops(3, 0.5), None);
        // From half on, more than the margin behind: it stops, and says why.
        let why = bar.stops(4, 0.70).expect("behind by 0.105");
        assert_eq!(
            why,
            "its best validation macro-F1 in 4 of 7 epochs, 0.700, is more than 0.078 below \
             the best before it (feature_extraction 0.805)"
        );
        // Within the margin it may still win: it goes on.
        assert_eq!(bar.stops(4, 0.73), None);
        // Its last epoch is never cut short.
        assert_eq!(bar.stops(7, 0.1), None);
        // Two epochs: judged after the first.
        let two = TrialBar::new(&[floor(0.9)], 100, 17, 2).expect("scored");
        assert!(two.stops(1, 0.6).is_some());
        // A one-epoch trial always runs its epoch.
        let one = TrialBar::new(&[floor(0.9)], 100, 17, 1).expect("scored");
        assert_eq!(one.stops(1, 0.0), None);
    }

    #[test]
    fn the_bar_is_the_best_candidate_scored_before() {
        let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.7);
        let done = [floor(0.7), scored(plan, &[0.85]).remove(0)];
        let bar = TrialBar::new(&done, 1_000, 6, 3).expect("scored");
        assert_eq!(
            (bar.best, bar.by.as_str()),
            (0.85, "partial (3 of 6 layers frozen)")
        );
        // The learning-rate search's bar: the best rate so far, the first of equals.
        let rates = [(0.4, "1.7e-5"), (0.7, "5.0e-5"), (0.7, "1.5e-4")];
        let bar = TrialBar::best_of(rates.map(|(s, r)| (s, r.to_owned())), 26, 4).expect("scored");
        assert_eq!((bar.best, bar.by.as_str()), (0.7, "5.0e-5"));
        assert!(bar.stops(2, 0.5).is_some() && bar.stops(2, 0.65).is_none());
        // Nothing scored (no validation data): no bar, nothing stops.
        let unscored = CandidateTrial {
            validation_macro_f1: None,
            ..floor(0.0)
        };
        assert_eq!(TrialBar::new(&[unscored], 0, 6, 3), None);
    }

    #[test]
    fn a_stopped_trial_loses_and_is_recorded_as_stopped() {
        let mut trials = scored(
            plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.8),
            &[0.6, 0.805],
        );
        trials[0].stopped = Some("its best validation macro-F1 in 1 of 2 epochs, 0.600, …".into());
        trials[0].epochs = Some(1);
        let chosen = choose_by_trials(&evidence(), floor(0.8), trials);
        assert_eq!(chosen.kind, MethodType::FeatureExtraction, "{chosen:?}");
        assert!(
            chosen
                .reason
                .contains("partial (3 of 6 layers frozen) 0.600 (stopped early)"),
            "{}",
            chosen.reason
        );
        let json = serde_json::to_value(&chosen.candidates).expect("json");
        assert_eq!(json[1]["epochs"], 1);
        assert!(json[1]["stopped"].is_string(), "{json}");
        assert!(json[2].get("stopped").is_none(), "{json}");
        let back: Vec<CandidateTrial> = serde_json::from_value(json).expect("read back");
        assert_eq!(back, chosen.candidates);
    }

    #[test]
    fn the_choice_is_a_function_of_the_scores() {
        let run = || {
            let plan = plan_trials(&settings(AUTO_DEFAULT_BUDGET), 0.8);
            choose_by_trials(&evidence(), floor(0.8), scored(plan, &[0.84, 0.9]))
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn candidates_read_back() {
        let plan = plan_trials(&settings(0.4), 0.7);
        let json = serde_json::to_value(&plan).expect("json");
        assert_eq!(json[0]["type"], "partial");
        assert_eq!(json[0]["frozen_layers"], 3);
        assert!(json[1]["skipped"].is_string(), "{json}");
        let back: Vec<CandidateTrial> = serde_json::from_value(json).expect("read back");
        assert_eq!(back, plan);
    }
}
