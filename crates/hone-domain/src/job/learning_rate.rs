//! `"learning_rate": "auto"`: which rates a job tries before it trains, how long each
//! trial runs, and which rate it keeps. The trials themselves run in the worker; this is
//! the policy, pure so that it is tested on its own.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::tie_margin;

/// The factors on the method's default rate that the search tries, cheapest first.
pub const LEARNING_RATE_FACTORS: [f64; 4] = [1.0 / 3.0, 1.0, 3.0, 10.0];

/// One rate tried: its validation macro-F1 (none when the run had no validation score)
/// and how long it took.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LearningRateTrial {
    pub learning_rate: f64,
    /// Epochs the trial trained.
    pub epochs: u32,
    pub validation_macro_f1: Option<f64>,
    pub seconds: f64,
    /// Why it ended before its planned epochs: from half of them on, its best score
    /// was more than the tie margin below the best rate tried before it
    /// ([`super::TrialBar`], as `auto`'s trials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// What the search tried and kept, as `result.learning_rate_search` reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LearningRateSearch {
    /// The rate the job trained with.
    pub chosen: f64,
    /// Why, in words and numbers.
    pub reason: String,
    pub trials: Vec<LearningRateTrial>,
}

/// The rates to try around `default` (each at most `max`, the highest rate a job may
/// have, and each once).
pub fn learning_rate_grid(default: f64, max: f64) -> Vec<f64> {
    let mut rates: Vec<f64> = Vec::new();
    for rate in LEARNING_RATE_FACTORS.map(|f| (default * f).min(max)) {
        if !rates.iter().any(|r| (r - rate).abs() <= 1e-12 * rate) {
            rates.push(rate);
        }
    }
    rates
}

/// Epochs of one trial: a third of the job's, at least one.
pub fn trial_epochs(epochs: u32) -> u32 {
    (epochs / 3).max(1)
}

/// The rate to train with: the best validation macro-F1, a score within the
/// [`tie_margin`] of the best on `validation_examples` (one standard error, at least
/// [`super::AUTO_TIE_MARGIN`], as `auto` uses) going to the rate nearest `default` (on a
/// log scale); `default` when no trial has a score. On a few dozen validation examples
/// a lead of a few points is one or two of them: on the conventions at 64 a class the
/// fixed 0.01 kept 5e-4 for a 0.07 lead on 26 paragraphs, 10 test points below the
/// default rate (BENCHMARKS.md, "trials that fall behind").
pub fn choose_learning_rate(
    default: f64,
    trials: Vec<LearningRateTrial>,
    validation_examples: usize,
) -> LearningRateSearch {
    let best = trials
        .iter()
        .filter_map(|t| t.validation_macro_f1)
        .fold(f64::NEG_INFINITY, f64::max);
    let margin = tie_margin(best, validation_examples);
    let distance = |rate: f64| (rate / default).ln().abs();
    let chosen = trials
        .iter()
        .filter(|t| t.validation_macro_f1.is_some_and(|s| s >= best - margin))
        .min_by(|a, b| distance(a.learning_rate).total_cmp(&distance(b.learning_rate)));
    let tried = trials
        .iter()
        .map(|t| match t.validation_macro_f1 {
            Some(s) => format!("{:.1e}: {s:.3}", t.learning_rate),
            None => format!("{:.1e}: no score", t.learning_rate),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let (rate, reason) = match chosen {
        Some(t) => (
            t.learning_rate,
            format!(
                "learning rate {:.1e} (validation macro-F1 by rate: {tried}; within {:.3} of the best on {validation_examples} validation examples, the rate nearest the default {default:.1e} wins)",
                t.learning_rate,
                margin
            ),
        ),
        None => (
            default,
            format!("the default learning rate {default:.1e}: no trial had a validation score"),
        ),
    };
    LearningRateSearch {
        chosen: rate,
        reason,
        trials,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial(rate: f64, score: Option<f64>) -> LearningRateTrial {
        LearningRateTrial {
            learning_rate: rate,
            epochs: 1,
            validation_macro_f1: score,
            seconds: 1.0,
            stopped: None,
        }
    }

    #[test]
    fn the_grid_surrounds_the_default_and_stays_under_the_maximum() {
        let grid = learning_rate_grid(5e-5, 0.1);
        assert_eq!(grid.len(), 4);
        assert!((grid[0] - 5e-5 / 3.0).abs() < 1e-15 && (grid[3] - 5e-4).abs() < 1e-15);
        // Clipped rates are tried once.
        assert_eq!(learning_rate_grid(0.05, 0.1), [0.05 / 3.0, 0.05, 0.1]);
        assert_eq!(
            (trial_epochs(3), trial_epochs(10), trial_epochs(1)),
            (1, 3, 1)
        );
    }

    #[test]
    fn the_best_score_wins_and_a_tie_goes_to_the_rate_nearest_the_default() {
        let d = 5e-5;
        let clear = choose_learning_rate(
            d,
            vec![
                trial(d / 3.0, Some(0.5)),
                trial(d, Some(0.6)),
                trial(3.0 * d, Some(0.8)),
                trial(10.0 * d, Some(0.4)),
            ],
            1_000,
        );
        assert!((clear.chosen - 3.0 * d).abs() < 1e-15, "{clear:?}");
        assert!(clear.reason.contains("0.800"), "{}", clear.reason);
        let tie = choose_learning_rate(
            d,
            vec![trial(d, Some(0.795)), trial(10.0 * d, Some(0.8))],
            1_000,
        );
        assert!((tie.chosen - d).abs() < 1e-15, "{tie:?}");
        let none = choose_learning_rate(d, vec![trial(d, None), trial(3.0 * d, None)], 26);
        assert_eq!(none.chosen, d);
        assert_eq!(none.trials.len(), 2);
    }

    #[test]
    fn on_a_small_validation_set_a_lead_within_one_standard_error_is_a_tie() {
        // The conventions at 64 a class, 26 validation paragraphs: 5e-4 led 1.5e-4 by
        // 0.07, inside one standard error (0.089), so the rate nearer the default wins.
        let d = 5e-5;
        let trials = || {
            vec![
                trial(d / 3.0, Some(0.490)),
                trial(d, Some(0.432)),
                trial(3.0 * d, Some(0.641)),
                trial(10.0 * d, Some(0.710)),
            ]
        };
        let small = choose_learning_rate(d, trials(), 26);
        assert!((small.chosen - 3.0 * d).abs() < 1e-15, "{small:?}");
        assert!(
            small
                .reason
                .contains("within 0.089 of the best on 26 validation examples"),
            "{}",
            small.reason
        );
        // On 2,000 examples the same lead is beyond the margin: the best rate wins.
        let large = choose_learning_rate(d, trials(), 2_000);
        assert!((large.chosen - 10.0 * d).abs() < 1e-15, "{large:?}");
    }
}
