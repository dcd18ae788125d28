//! The `auto` method's prior: what the data decide before any trial. Too few examples
//! a class keeps the encoder frozen without trying anything else; without validation
//! data there is nothing to score a trial on, and rules of thumb decide. Otherwise
//! the search by trial decides (`auto_search.rs`). What it decides,
//! [`super::ChosenMethod`], stays with [`super::Method`], which stores it.

use super::{ChosenMethod, MethodType};

/// What `auto` decides from: the training data and a quick probe.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoEvidence {
    pub examples: usize,
    pub classes: usize,
    pub smallest_class: usize,
    /// Mean tokens per input under the base model's tokenizer.
    pub mean_tokens: f64,
    /// Macro-F1 on the validation data of a linear head trained on the frozen
    /// encoder's features (the `feature_extraction` recipe), when there was validation data.
    pub probe_macro_f1: Option<f64>,
    pub model_layers: u32,
    /// Examples the trials are scored on (0 without validation data).
    pub validation_examples: usize,
}

/// Below this many examples in the smallest class, updating the encoder overfits more
/// than it adapts (the usual advice for BERT fine-tuning on tiny data).
pub const AUTO_MIN_CLASS_EXAMPLES: usize = 16;
/// A probe this good leaves little for fine-tuning to add.
pub const AUTO_PROBE_GOOD_ENOUGH: f64 = 0.95;
/// Below this many examples, adapt only the top half of the encoder.
pub const AUTO_PARTIAL_BELOW: usize = 2000;
/// Inputs this long make every step of full fine-tuning expensive.
pub const AUTO_LONG_TOKENS: f64 = 256.0;

/// The training data and the probe in words, the start of every reason.
pub fn data_summary(e: &AutoEvidence) -> String {
    let probe = e.probe_macro_f1.map_or(String::new(), |f| {
        format!("; a linear probe on frozen features reaches macro-F1 {f:.3}")
    });
    // Images have no tokens (the worker passes 0): their evidence leaves them out.
    let tokens = if e.mean_tokens > 0.0 {
        format!(", {:.0} tokens on average", e.mean_tokens)
    } else {
        String::new()
    };
    format!(
        "{} training examples in {} classes, {} in the smallest{tokens}{probe}",
        e.examples, e.classes, e.smallest_class
    )
}

/// The choice the data make before any trial, if they make one: too few examples in
/// the smallest class (only a head trains), or no validation data to score trials on
/// (the rules of [`choose_method`]). `None`: the search by trial decides.
pub fn prior_choice(e: &AutoEvidence, has_validation: bool) -> Option<ChosenMethod> {
    if e.smallest_class < AUTO_MIN_CLASS_EXAMPLES {
        return Some(choose_method(e));
    }
    if !has_validation {
        let mut chosen = choose_method(e);
        chosen.reason = format!(
            "{} (no validation data to try candidates on, so rules of thumb decide)",
            chosen.reason
        );
        return Some(chosen);
    }
    None
}

/// The strategy `auto` runs by rules of thumb alone, with its reason in words and
/// numbers: the prior when trials cannot decide.
pub fn choose_method(e: &AutoEvidence) -> ChosenMethod {
    let data = data_summary(e);
    let half = e.model_layers / 2;
    let (kind, frozen_layers, why) = if e.smallest_class < AUTO_MIN_CLASS_EXAMPLES {
        (
            MethodType::FeatureExtraction,
            None,
            format!("too few examples per class (< {AUTO_MIN_CLASS_EXAMPLES}) to update the encoder without overfitting, so only a head trains on its frozen features"),
        )
    } else if e
        .probe_macro_f1
        .is_some_and(|f| f >= AUTO_PROBE_GOOD_ENOUGH)
    {
        (
            MethodType::FeatureExtraction,
            None,
            format!("the frozen features already separate the classes (probe ≥ {AUTO_PROBE_GOOD_ENOUGH}), so only a head trains"),
        )
    } else if e.examples < AUTO_PARTIAL_BELOW {
        (
            MethodType::Partial,
            Some(half),
            format!("with fewer than {AUTO_PARTIAL_BELOW} examples the lower {half} of {} layers stay frozen and the top ones adapt", e.model_layers),
        )
    } else if e.mean_tokens > AUTO_LONG_TOKENS {
        (
            MethodType::Partial,
            Some(half),
            format!("inputs are long (> {AUTO_LONG_TOKENS:.0} tokens on average), so freezing the lower {half} layers halves the cost of each step"),
        )
    } else {
        (
            MethodType::Full,
            None,
            "there is enough data to fine-tune every layer".to_owned(),
        )
    };
    ChosenMethod {
        kind,
        frozen_layers,
        reason: format!("{}: {data}; {why}", kind.as_str()),
        candidates: Vec::new(),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// 500 examples of a 2-class text task, a probe at 0.8, a 6-layer model.
    pub(in crate::job) fn evidence() -> AutoEvidence {
        AutoEvidence {
            examples: 500,
            classes: 2,
            smallest_class: 200,
            mean_tokens: 30.0,
            probe_macro_f1: Some(0.8),
            model_layers: 6,
            validation_examples: 100_000,
        }
    }

    #[test]
    fn auto_follows_the_data() {
        let base = evidence();
        let choose = |e: AutoEvidence| {
            let c = choose_method(&e);
            (c.kind, c.frozen_layers)
        };
        assert_eq!(choose(base.clone()), (MethodType::Partial, Some(3)));
        let tiny = AutoEvidence {
            smallest_class: 10,
            ..base.clone()
        };
        assert_eq!(choose(tiny), (MethodType::FeatureExtraction, None));
        let easy = AutoEvidence {
            probe_macro_f1: Some(0.97),
            ..base.clone()
        };
        assert_eq!(choose(easy), (MethodType::FeatureExtraction, None));
        let big = AutoEvidence {
            examples: 5000,
            ..base.clone()
        };
        assert_eq!(choose(big.clone()), (MethodType::Full, None));
        let long = AutoEvidence {
            mean_tokens: 300.0,
            ..big
        };
        assert_eq!(choose(long), (MethodType::Partial, Some(3)));
        let reason = choose_method(&base).reason;
        assert!(
            reason.contains("500 training examples") && reason.contains("0.800"),
            "{reason}"
        );
    }

    #[test]
    fn the_prior_decides_only_without_evidence_to_try() {
        let base = AutoEvidence {
            probe_macro_f1: None,
            ..evidence()
        };
        assert_eq!(prior_choice(&base, true), None);
        let blind = prior_choice(&base, false).expect("no validation data");
        assert_eq!(blind.kind, MethodType::Partial);
        assert!(
            blind.reason.contains("no validation data"),
            "{}",
            blind.reason
        );
        let tiny = AutoEvidence {
            smallest_class: 10,
            ..base
        };
        let head = prior_choice(&tiny, true).expect("too few a class");
        assert_eq!(head.kind, MethodType::FeatureExtraction);
        assert!(head.candidates.is_empty());
    }
}
