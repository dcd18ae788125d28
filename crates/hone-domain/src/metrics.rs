//! Evaluation metrics for the classifiers hone fine-tunes, kept free of IO so the trainer
//! can build a job's report from plain model outputs and the numbers can be checked by hand.
//!
//! Conventions follow scikit-learn (a precision, recall or F1 with a zero denominator is 0;
//! a single-label macro average covers the classes seen in the truth or the predictions),
//! because that is what users compare our reports with.
//!
//! Rows that cannot be scored (an out-of-range label, a probability row of the wrong length,
//! a NaN or infinite probability, or the surplus of the longer of `truth` and `probs`) are
//! skipped rather than panicking or poisoning every mean with NaN, which JSON cannot carry;
//! `examples` counts the rows that were scored, so a shortfall stays visible.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Bins of the expected calibration error: Guo et al. 2017 ("On Calibration of Modern
/// Neural Networks") use 15 equal-width bins, and matching them keeps our ECE comparable
/// with published values.
pub const CALIBRATION_BINS: usize = 15;

/// Floor on the probability of the true class in the log loss: one confidently wrong
/// example would otherwise make the mean infinite.
pub const LOG_LOSS_MIN_PROBABILITY: f64 = 1e-12;

/// Train-minus-validation accuracy above which a job is flagged as overfitting: a few
/// points of gap are normal after fine-tuning, ten points mean the model is memorising
/// the training file and more epochs or a lower learning rate will not help.
pub const OVERFITTING_GAP: f64 = 0.10;

/// Slack on [`OVERFITTING_GAP`] for float subtraction: `0.8 - 0.7` is
/// `0.10000000000000009` in f64, and a gap of exactly ten points is not overfitting.
/// Accuracies are ratios of counts, so no real gap lives within this distance of the line.
const GAP_TOLERANCE: f64 = 1e-9;

/// The threshold used when nothing better is known: the natural cut of a sigmoid.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// `tune_threshold` tries `i / THRESHOLD_STEPS` for `i` in `1..THRESHOLD_STEPS`, i.e.
/// 0.05, 0.10, …, 0.95: a coarse grid, because a validation set is too small to make a
/// finer choice anything but noise.
const THRESHOLD_STEPS: u8 = 20;

/// Precision, recall and F1 of one class, so a user can see which labels the model gets
/// wrong, not only how often.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassMetrics {
    #[schema(example = "positive")]
    pub label: String,
    /// 0 when the class was never predicted.
    #[schema(example = 0.91)]
    pub precision: f64,
    /// 0 when the class never occurs in the truth.
    #[schema(example = 0.88)]
    pub recall: f64,
    /// 0 when precision and recall are both 0 or undefined.
    #[schema(example = 0.895)]
    pub f1: f64,
    /// Examples whose true labels include this class: how much to trust the three above.
    #[schema(example = 412)]
    pub support: u64,
}

/// How a single-label classifier did on held-out data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClassificationReport {
    /// Rows scored; fewer than were given when some could not be (see the module docs).
    #[schema(example = 800)]
    pub examples: u64,
    #[schema(example = 0.9)]
    pub accuracy: f64,
    /// Mean F1 over the classes that occur in the truth or the predictions, so a rare class
    /// the model ignores costs as much as a common one.
    #[schema(example = 0.87)]
    pub macro_f1: f64,
    /// F1 weighted by support: the number to compare with accuracy on imbalanced data.
    #[schema(example = 0.9)]
    pub weighted_f1: f64,
    /// In the order of the model's labels, including classes that never occur.
    pub per_class: Vec<ClassMetrics>,
    /// Rows are true labels, columns predicted ones, both in the order of `per_class`: it
    /// shows which classes the model confuses with which.
    #[schema(example = json!([[370, 42], [38, 350]]))]
    pub confusion_matrix: Vec<Vec<u64>>,
    /// How far the top-class probability is from the real hit rate, averaged over 15
    /// equal-width confidence bins (Guo et al. 2017): 0 means a prediction made with 80%
    /// confidence is right 80% of the time, which users who threshold on it rely on.
    #[schema(example = 0.031)]
    pub expected_calibration_error: f64,
    /// Mean `-ln p(true label)`, with `p` clamped to `[1e-12, 1]`: unlike accuracy it
    /// rewards being confidently right and punishes being confidently wrong.
    #[schema(example = 0.27)]
    pub log_loss: f64,
}

impl ClassificationReport {
    /// `truth[i]` indexes `labels`; `probs[i]` holds one probability per label (a softmax
    /// row). The prediction is the most probable label, the first one on ties.
    pub fn compute(labels: &[String], truth: &[usize], probs: &[Vec<f32>]) -> Self {
        let classes = labels.len();
        let mut confusion = vec![vec![0_u64; classes]; classes];
        let mut bins = [CalibrationBin::default(); CALIBRATION_BINS];
        let mut examples = 0_u64;
        let mut correct = 0_u64;
        let mut loss_sum = 0.0_f64;

        for (&true_class, row) in truth.iter().zip(probs) {
            if true_class >= classes || row.len() != classes || !all_finite(row) {
                continue;
            }
            let (predicted, confidence) = argmax(row);
            let hit = predicted == true_class;
            confusion[true_class][predicted] += 1;
            examples += 1;
            correct += u64::from(hit);

            let bin = &mut bins[calibration_bin(confidence)];
            bin.count += 1;
            bin.correct += u64::from(hit);
            bin.confidence_sum += confidence;

            let p_true = f64::from(row[true_class]).clamp(LOG_LOSS_MIN_PROBABILITY, 1.0);
            loss_sum -= p_true.ln();
        }

        let per_class_counts: Vec<Counts> = (0..classes)
            .map(|class| {
                let tp = confusion[class][class];
                let support: u64 = confusion[class].iter().sum();
                let predicted: u64 = confusion.iter().map(|row| row[class]).sum();
                Counts {
                    tp,
                    fp: predicted - tp,
                    fn_: support - tp,
                }
            })
            .collect();

        // sklearn's default `labels` for a macro average: classes present in y_true or y_pred.
        let present: Vec<f64> = per_class_counts
            .iter()
            .filter(|c| c.tp + c.fp + c.fn_ > 0)
            .map(|c| c.f1())
            .collect();
        let weighted_sum: f64 = per_class_counts
            .iter()
            .map(|c| c.f1() * c.support() as f64)
            .sum();
        let calibration_gap: f64 = bins
            .iter()
            .map(|b| (b.correct as f64 - b.confidence_sum).abs())
            .sum();

        Self {
            examples,
            accuracy: ratio(correct, examples),
            macro_f1: mean(&present),
            weighted_f1: divide(weighted_sum, examples),
            per_class: labels
                .iter()
                .zip(&per_class_counts)
                .map(|(label, counts)| counts.metrics(label))
                .collect(),
            confusion_matrix: confusion,
            expected_calibration_error: divide(calibration_gap, examples),
            log_loss: divide(loss_sum, examples),
        }
    }
}

/// How one task of a multi-task model did, on the examples that label that task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TaskReport {
    #[schema(example = "sentiment")]
    pub task: String,
    /// The task's relative weight in the joint training loss.
    #[schema(example = 1.0)]
    pub weight: f64,
    pub report: ClassificationReport,
}

/// How a multi-label classifier (one sigmoid per label) did at one decision threshold.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MultiLabelReport {
    /// Rows scored; fewer than were given when some could not be (see the module docs).
    #[schema(example = 800)]
    pub examples: u64,
    /// A label is predicted when its probability is at least this.
    #[schema(example = 0.35)]
    pub threshold: f64,
    /// Over all (example, label) decisions pooled, so frequent labels dominate.
    #[schema(example = 0.84)]
    pub micro_precision: f64,
    #[schema(example = 0.8)]
    pub micro_recall: f64,
    #[schema(example = 0.82)]
    pub micro_f1: f64,
    /// Mean F1 over every label, present or not, so rare labels count as much as common ones.
    #[schema(example = 0.71)]
    pub macro_f1: f64,
    /// Share of examples whose predicted label set is exactly right: the strictest view.
    #[schema(example = 0.55)]
    pub subset_accuracy: f64,
    /// In the order of the model's labels.
    pub per_label: Vec<ClassMetrics>,
}

impl MultiLabelReport {
    /// `truth[i][j]` says whether example `i` has `labels[j]`; `probs[i][j]` is the model's
    /// probability that it does. A label is predicted iff `p >= threshold`.
    pub fn compute(
        labels: &[String],
        truth: &[Vec<bool>],
        probs: &[Vec<f32>],
        threshold: f32,
    ) -> Self {
        let mut per_label = vec![Counts::default(); labels.len()];
        let mut examples = 0_u64;
        let mut exact = 0_u64;

        // Without labels there is nothing to be right or wrong about: report no examples
        // rather than a vacuous subset accuracy of 1.
        let rows = multi_label_rows(truth, probs)
            .filter(|(t, _)| !labels.is_empty() && t.len() == labels.len());
        for (truth_row, prob_row) in rows {
            let mut all_right = true;
            for ((&actual, &p), counts) in truth_row.iter().zip(prob_row).zip(&mut per_label) {
                let predicted = p >= threshold;
                counts.record(actual, predicted);
                all_right &= actual == predicted;
            }
            examples += 1;
            exact += u64::from(all_right);
        }

        let micro = per_label.iter().fold(Counts::default(), |sum, c| Counts {
            tp: sum.tp + c.tp,
            fp: sum.fp + c.fp,
            fn_: sum.fn_ + c.fn_,
        });
        let f1s: Vec<f64> = per_label.iter().map(|c| c.f1()).collect();

        Self {
            examples,
            threshold: shortest_f64(threshold),
            micro_precision: micro.precision(),
            micro_recall: micro.recall(),
            micro_f1: micro.f1(),
            macro_f1: mean(&f1s),
            subset_accuracy: ratio(exact, examples),
            per_label: labels
                .iter()
                .zip(&per_label)
                .map(|(label, counts)| counts.metrics(label))
                .collect(),
        }
    }
}

/// The multi-label decision threshold with the best micro-F1 on validation data, because
/// 0.5 is rarely best once labels are imbalanced. Candidates are 0.05, 0.10, …, 0.95.
///
/// Ties go to the candidate closest to 0.5 (the lower of two equally close), so that a
/// validation set that cannot tell thresholds apart leaves the default alone; with no
/// data at all the answer is 0.5.
pub fn tune_threshold(truth: &[Vec<bool>], probs: &[Vec<f32>]) -> f32 {
    let candidates: Vec<f32> = (1..THRESHOLD_STEPS)
        .map(|i| f32::from(i) / f32::from(THRESHOLD_STEPS))
        .collect();
    let mut counts = vec![Counts::default(); candidates.len()];
    for (truth_row, prob_row) in multi_label_rows(truth, probs) {
        for (&actual, &p) in truth_row.iter().zip(prob_row) {
            for (&threshold, c) in candidates.iter().zip(&mut counts) {
                c.record(actual, p >= threshold);
            }
        }
    }

    // Visit candidates from the most preferred (0.5) outwards, lower side first, and move
    // only on a strictly better F1: the first best one seen is the one the tie rule wants.
    let middle = usize::from(THRESHOLD_STEPS / 2) - 1;
    let preference = (0..candidates.len()).flat_map(|distance| {
        let lower = middle.checked_sub(distance);
        let upper = Some(middle + distance).filter(|&i| distance > 0 && i < candidates.len());
        lower.into_iter().chain(upper)
    });
    let mut best: Option<usize> = None;
    for i in preference {
        if best.is_none_or(|b| counts[i].f1_exceeds(counts[b])) {
            best = Some(i);
        }
    }
    best.map_or(DEFAULT_THRESHOLD, |i| candidates[i])
}

/// The train/validation accuracy gap, so a job's report can warn that more data or fewer
/// epochs would serve the user better than the model they got.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GeneralizationGap {
    #[schema(example = 0.98)]
    pub train_accuracy: f64,
    #[schema(example = 0.84)]
    pub validation_accuracy: f64,
    /// `train_accuracy - validation_accuracy`; negative when validation is easier.
    #[schema(example = 0.14)]
    pub gap: f64,
    /// Whether `gap` exceeds 0.10 ([`OVERFITTING_GAP`]).
    pub overfitting: bool,
}

impl GeneralizationGap {
    pub fn new(train_accuracy: f64, validation_accuracy: f64) -> Self {
        let gap = train_accuracy - validation_accuracy;
        Self {
            train_accuracy,
            validation_accuracy,
            gap,
            overfitting: gap > OVERFITTING_GAP + GAP_TOLERANCE,
        }
    }
}

/// Decision counts of one class (or of all classes pooled, for micro averages).
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    tp: u64,
    fp: u64,
    fn_: u64,
}

impl Counts {
    fn record(&mut self, actual: bool, predicted: bool) {
        match (actual, predicted) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => {}
        }
    }

    fn support(self) -> u64 {
        self.tp + self.fn_
    }

    fn precision(self) -> f64 {
        ratio(self.tp, self.tp + self.fp)
    }

    fn recall(self) -> f64 {
        ratio(self.tp, self.tp + self.fn_)
    }

    /// `2tp / (2tp + fp + fn)`, as sklearn computes it: equal to the harmonic mean of
    /// precision and recall, and 0 (not NaN) when there is nothing to count.
    fn f1(self) -> f64 {
        let (numerator, denominator) = self.f1_fraction();
        ratio(numerator, denominator)
    }

    fn f1_fraction(self) -> (u64, u64) {
        (2 * self.tp, 2 * self.tp + self.fp + self.fn_)
    }

    /// Compares F1 scores as exact fractions, so that equal scores reached through
    /// different counts (2/4 and 4/8) tie instead of differing in the last bit.
    fn f1_exceeds(self, other: Self) -> bool {
        let (a, b) = self.f1_fraction();
        let (c, d) = other.f1_fraction();
        // A zero denominator means F1 = 0 = 0/1.
        let (b, d) = (b.max(1), d.max(1));
        u128::from(a) * u128::from(d) > u128::from(c) * u128::from(b)
    }

    fn metrics(self, label: &str) -> ClassMetrics {
        ClassMetrics {
            label: label.to_owned(),
            precision: self.precision(),
            recall: self.recall(),
            f1: self.f1(),
            support: self.support(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct CalibrationBin {
    count: u64,
    correct: u64,
    confidence_sum: f64,
}

/// Bin `m` (0-based) holds confidences in `(m/15, (m+1)/15]`, as in Guo et al.; a
/// confidence of exactly 0 joins the first bin instead of being dropped.
fn calibration_bin(confidence: f64) -> usize {
    let upper = (confidence * CALIBRATION_BINS as f64).ceil() as usize;
    upper.saturating_sub(1).min(CALIBRATION_BINS - 1)
}

/// The first most probable class and its probability; `row` must not be empty.
fn argmax(row: &[f32]) -> (usize, f64) {
    let mut best = 0;
    for (i, &p) in row.iter().enumerate() {
        if p > row[best] {
            best = i;
        }
    }
    (best, f64::from(row[best]))
}

fn multi_label_rows<'a>(
    truth: &'a [Vec<bool>],
    probs: &'a [Vec<f32>],
) -> impl Iterator<Item = (&'a [bool], &'a [f32])> {
    truth
        .iter()
        .zip(probs)
        .filter(|(t, p)| t.len() == p.len() && all_finite(p))
        .map(|(t, p)| (t.as_slice(), p.as_slice()))
}

fn all_finite(row: &[f32]) -> bool {
    row.iter().all(|p| p.is_finite())
}

/// `numerator / denominator`, or 0 when the denominator is 0 (sklearn's `zero_division=0`).
fn ratio(numerator: u64, denominator: u64) -> f64 {
    divide(numerator as f64, denominator)
}

fn divide(numerator: f64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator / denominator as f64
    }
}

fn mean(values: &[f64]) -> f64 {
    divide(values.iter().sum(), values.len() as u64)
}

/// The f64 with the same shortest decimal form as `value`, so a threshold of `0.35_f32`
/// reads `0.35` in the report rather than `0.3499999940395355`.
fn shortest_f64(value: f32) -> f64 {
    value
        .to_string()
        .parse()
        .unwrap_or_else(|_| f64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPS: f64 = 1e-9;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|&n| n.to_owned()).collect()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < EPS,
            "{what}: got {actual}, expected {expected}"
        );
    }

    /// Probabilities come in as f32, so values derived from them carry f32 rounding.
    fn assert_close_f32(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() < 1e-6,
            "{what}: got {actual}, expected {expected}"
        );
    }

    fn assert_class(m: &ClassMetrics, label: &str, p: f64, r: f64, f1: f64, support: u64) {
        assert_eq!(m.label, label);
        assert_close(m.precision, p, &format!("{label} precision"));
        assert_close(m.recall, r, &format!("{label} recall"));
        assert_close(m.f1, f1, &format!("{label} f1"));
        assert_eq!(m.support, support, "{label} support");
    }

    fn assert_no_nan(report: &ClassificationReport) {
        let json = serde_json::to_string(report).unwrap_or_default();
        assert!(!json.contains("null"), "NaN serialised as null: {json}");
        let back: Result<ClassificationReport, _> = serde_json::from_str(&json);
        assert_eq!(back.ok().as_ref(), Some(report));
    }

    #[test]
    fn three_class_report_matches_hand_computation() {
        // truth  probs              predicted
        // cat    [.7, .2, .1]       cat
        // cat    [.6, .3, .1]       cat
        // cat    [.3, .6, .1]       dog
        // dog    [.2, .7, .1]       dog
        // dog    [.1, .8, .1]       dog
        // dog    [.2, .5, .3]       dog
        // bird   [.1, .1, .8]       bird
        // bird   [.4, .4, .2]       cat   (tie between cat and dog: the first wins)
        //
        // confusion (rows true, columns predicted):
        //        cat dog bird
        // cat     2   1   0
        // dog     0   3   0
        // bird    1   0   1
        //
        // cat:  tp 2, predicted 3, support 3 → P 2/3, R 2/3, F1 2/3
        // dog:  tp 3, predicted 4, support 3 → P 3/4, R 1,   F1 6/7
        // bird: tp 1, predicted 1, support 2 → P 1,   R 1/2, F1 2/3
        // accuracy 6/8; macro F1 (2/3 + 6/7 + 2/3) / 3 = 46/63;
        // weighted F1 (3·2/3 + 3·6/7 + 2·2/3) / 8 = 31/42.
        let names = labels(&["cat", "dog", "bird"]);
        let truth = [0, 0, 0, 1, 1, 1, 2, 2];
        let probs = vec![
            vec![0.7, 0.2, 0.1],
            vec![0.6, 0.3, 0.1],
            vec![0.3, 0.6, 0.1],
            vec![0.2, 0.7, 0.1],
            vec![0.1, 0.8, 0.1],
            vec![0.2, 0.5, 0.3],
            vec![0.1, 0.1, 0.8],
            vec![0.4, 0.4, 0.2],
        ];
        let report = ClassificationReport::compute(&names, &truth, &probs);

        assert_eq!(report.examples, 8);
        assert_eq!(
            report.confusion_matrix,
            vec![vec![2, 1, 0], vec![0, 3, 0], vec![1, 0, 1]]
        );
        assert_close(report.accuracy, 0.75, "accuracy");
        assert_eq!(report.per_class.len(), 3);
        assert_class(
            &report.per_class[0],
            "cat",
            2.0 / 3.0,
            2.0 / 3.0,
            2.0 / 3.0,
            3,
        );
        assert_class(&report.per_class[1], "dog", 0.75, 1.0, 6.0 / 7.0, 3);
        assert_class(&report.per_class[2], "bird", 1.0, 0.5, 2.0 / 3.0, 2);
        assert_close(report.macro_f1, 46.0 / 63.0, "macro F1");
        assert_close(report.weighted_f1, 31.0 / 42.0, "weighted F1");
        assert_no_nan(&report);
    }

    #[test]
    fn expected_calibration_error_uses_fifteen_bins() {
        // confidence 0.82 → bin (12/15, 13/15] = (0.800, 0.867]: one right, one wrong
        // confidence 0.88 → bin (13/15, 14/15] = (0.867, 0.933]: both right
        // ECE = 2/4 · |1/2 − 0.82| + 2/4 · |1 − 0.88| = 0.16 + 0.06 = 0.22.
        // Ten bins would pool all four in (0.8, 0.9]: |3/4 − 0.85| = 0.10.
        let names = labels(&["no", "yes"]);
        let truth = [0, 1, 1, 1];
        let probs = vec![
            vec![0.82, 0.18],
            vec![0.82, 0.18],
            vec![0.12, 0.88],
            vec![0.12, 0.88],
        ];
        let report = ClassificationReport::compute(&names, &truth, &probs);
        assert_close_f32(report.expected_calibration_error, 0.22, "ECE");
    }

    #[test]
    fn perfectly_calibrated_bins_give_zero_ece() {
        // Confidence 1.0 and always right: |1 − 1| = 0.
        let names = labels(&["a", "b"]);
        let report =
            ClassificationReport::compute(&names, &[0, 1], &[vec![1.0, 0.0], vec![0.0, 1.0]]);
        assert_close(report.expected_calibration_error, 0.0, "ECE");
        assert_close(report.accuracy, 1.0, "accuracy");
    }

    #[test]
    fn log_loss_is_mean_negative_log_of_true_class_probability() {
        // −(ln 0.5 + ln 0.25) / 2 = (ln 2 + 2 ln 2) / 2 = 1.5 ln 2 ≈ 1.0397.
        let names = labels(&["a", "b", "c"]);
        let report = ClassificationReport::compute(
            &names,
            &[0, 2],
            &[vec![0.5, 0.25, 0.25], vec![0.5, 0.25, 0.25]],
        );
        assert_close(report.log_loss, 1.5 * 2.0_f64.ln(), "log loss");
    }

    #[test]
    fn log_loss_clamps_a_zero_probability() {
        // p(true) = 0 → −ln(1e-12) = 12 ln 10 ≈ 27.631, not infinity.
        let names = labels(&["a", "b"]);
        let report = ClassificationReport::compute(&names, &[1], &[vec![1.0, 0.0]]);
        assert_close(report.log_loss, 12.0 * 10.0_f64.ln(), "log loss");
        assert_no_nan(&report);
    }

    #[test]
    fn class_predicted_but_absent_from_truth_counts_in_macro_f1() {
        // truth [a, a, b, b], predicted [a, a, b, c]; d never occurs anywhere.
        // a: tp 2, fp 0, fn 0 → F1 1
        // b: tp 1, fp 0, fn 1 → P 1, R 1/2, F1 2/3
        // c: tp 0, fp 1, fn 0 → P 0, R 0 (undefined → 0), F1 0, support 0
        // d: absent from truth and predictions → left out of the macro average
        // macro F1 = (1 + 2/3 + 0) / 3 = 5/9 (sklearn), not (1 + 2/3) / 2 = 5/6 and not
        // (1 + 2/3 + 0 + 0) / 4 = 5/12.
        // weighted F1 = (2·1 + 2·2/3 + 0·0 + 0·0) / 4 = 5/6.
        let names = labels(&["a", "b", "c", "d"]);
        let probs = vec![
            vec![0.9, 0.05, 0.03, 0.02],
            vec![0.8, 0.1, 0.05, 0.05],
            vec![0.1, 0.7, 0.1, 0.1],
            vec![0.1, 0.2, 0.6, 0.1],
        ];
        let report = ClassificationReport::compute(&names, &[0, 0, 1, 1], &probs);
        assert_class(&report.per_class[2], "c", 0.0, 0.0, 0.0, 0);
        assert_class(&report.per_class[3], "d", 0.0, 0.0, 0.0, 0);
        assert_close(report.macro_f1, 5.0 / 9.0, "macro F1");
        assert_close(report.weighted_f1, 5.0 / 6.0, "weighted F1");
        assert_close(report.accuracy, 0.75, "accuracy");
    }

    #[test]
    fn empty_input_gives_zeros() {
        let report = ClassificationReport::compute(&[], &[], &[]);
        assert_eq!(
            report,
            ClassificationReport {
                examples: 0,
                accuracy: 0.0,
                macro_f1: 0.0,
                weighted_f1: 0.0,
                per_class: vec![],
                confusion_matrix: vec![],
                expected_calibration_error: 0.0,
                log_loss: 0.0,
            }
        );

        // Labels but no rows: every class listed, all zeros.
        let report = ClassificationReport::compute(&labels(&["a", "b"]), &[], &[]);
        assert_eq!(report.examples, 0);
        assert_eq!(report.confusion_matrix, vec![vec![0, 0], vec![0, 0]]);
        assert_class(&report.per_class[1], "b", 0.0, 0.0, 0.0, 0);
        assert_close(report.macro_f1, 0.0, "macro F1");
        assert_no_nan(&report);
    }

    #[test]
    fn unscorable_rows_are_skipped() {
        // Only the first row is valid: label 5 is out of range, the third row is short,
        // the fourth holds a NaN, and the fifth probability row has no truth to go with.
        let names = labels(&["a", "b"]);
        let probs = vec![
            vec![0.25, 0.75],
            vec![0.5, 0.5],
            vec![1.0],
            vec![f32::NAN, 0.5],
            vec![0.5, 0.5],
        ];
        let report = ClassificationReport::compute(&names, &[1, 5, 0, 1], &probs);
        assert_eq!(report.examples, 1);
        assert_eq!(report.confusion_matrix, vec![vec![0, 0], vec![0, 1]]);
        assert_close(report.accuracy, 1.0, "accuracy");
        // −ln 0.75
        assert_close(report.log_loss, -(0.75_f64.ln()), "log loss");
        assert_no_nan(&report);
    }

    /// Labels a, b, c at threshold 0.5:
    ///
    /// truth      probs             predicted
    /// [1, 0, 1]  [.9, .2, .6]      [1, 0, 1]  exact
    /// [0, 1, 0]  [.4, .5, .1]      [0, 1, 0]  exact (0.5 ≥ 0.5 is positive)
    /// [1, 1, 0]  [.7, .3, .8]      [1, 0, 1]
    /// [0, 0, 1]  [.6, .1, .2]      [1, 0, 0]
    /// [1, 0, 0]  [.8, .9, .1]      [1, 1, 0]
    fn multi_label_example() -> (Vec<Vec<bool>>, Vec<Vec<f32>>) {
        let truth = [[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]]
            .iter()
            .map(|row| row.iter().map(|&v| v == 1).collect())
            .collect();
        let probs = vec![
            vec![0.9, 0.2, 0.6],
            vec![0.4, 0.5, 0.1],
            vec![0.7, 0.3, 0.8],
            vec![0.6, 0.1, 0.2],
            vec![0.8, 0.9, 0.1],
        ];
        (truth, probs)
    }

    #[test]
    fn multi_label_micro_and_macro_f1_match_hand_computation() {
        // a: tp 3, fp 1, fn 0 → P 3/4, R 1,   F1 6/7, support 3
        // b: tp 1, fp 1, fn 1 → P 1/2, R 1/2, F1 1/2, support 2
        // c: tp 1, fp 1, fn 1 → P 1/2, R 1/2, F1 1/2, support 2
        // micro: tp 5, fp 3, fn 2 → P 5/8, R 5/7, F1 10/15 = 2/3
        // macro F1 (6/7 + 1/2 + 1/2) / 3 = 13/21; subset accuracy 2/5.
        let (truth, probs) = multi_label_example();
        let report = MultiLabelReport::compute(&labels(&["a", "b", "c"]), &truth, &probs, 0.5);

        assert_eq!(report.examples, 5);
        assert_close(report.threshold, 0.5, "threshold");
        assert_class(&report.per_label[0], "a", 0.75, 1.0, 6.0 / 7.0, 3);
        assert_class(&report.per_label[1], "b", 0.5, 0.5, 0.5, 2);
        assert_class(&report.per_label[2], "c", 0.5, 0.5, 0.5, 2);
        assert_close(report.micro_precision, 5.0 / 8.0, "micro precision");
        assert_close(report.micro_recall, 5.0 / 7.0, "micro recall");
        assert_close(report.micro_f1, 2.0 / 3.0, "micro F1");
        assert_close(report.macro_f1, 13.0 / 21.0, "macro F1");
        assert_close(report.subset_accuracy, 0.4, "subset accuracy");
    }

    #[test]
    fn multi_label_macro_f1_counts_labels_absent_everywhere() {
        // Label b is never true nor predicted: F1 0 still counts (sklearn multilabel
        // average='macro'), so macro F1 = (1 + 0) / 2.
        let truth = vec![vec![true, false]];
        let probs = vec![vec![0.9, 0.1]];
        let report = MultiLabelReport::compute(&labels(&["a", "b"]), &truth, &probs, 0.5);
        assert_close(report.micro_f1, 1.0, "micro F1");
        assert_close(report.macro_f1, 0.5, "macro F1");
        assert_close(report.subset_accuracy, 1.0, "subset accuracy");
    }

    #[test]
    fn multi_label_report_shows_the_threshold_as_written() {
        let report = MultiLabelReport::compute(&labels(&["a"]), &[], &[], 0.35);
        assert_eq!(report.threshold, 0.35);
        assert_eq!(report.examples, 0);
        assert_eq!(report.micro_f1, 0.0);
        assert_eq!(report.macro_f1, 0.0);
        assert_eq!(report.subset_accuracy, 0.0);
        let json = serde_json::to_string(&report).unwrap_or_default();
        assert!(json.contains("\"threshold\":0.35,"), "{json}");
    }

    #[test]
    fn multi_label_skips_rows_of_the_wrong_width() {
        let truth = vec![vec![true, false], vec![true]];
        let probs = vec![vec![0.9, 0.1], vec![0.9]];
        let report = MultiLabelReport::compute(&labels(&["a", "b"]), &truth, &probs, 0.5);
        assert_eq!(report.examples, 1);
        assert_eq!(report.per_label[0].support, 1);
    }

    #[test]
    fn tune_threshold_picks_the_best_candidate_closest_to_one_half() {
        // One label; truth [yes, yes, no], probabilities [0.8, 0.32, 0.2].
        // t ≤ 0.20:        tp 2, fp 1, fn 0 → F1 4/5
        // 0.20 < t ≤ 0.32: tp 2, fp 0, fn 0 → F1 1     (candidates 0.25 and 0.30)
        // 0.32 < t ≤ 0.80: tp 1, fp 0, fn 1 → F1 2/3   (0.5 included)
        // t > 0.80:        tp 0, fp 0, fn 2 → F1 0
        // 0.30 is the best candidate closest to 0.5.
        let truth = vec![vec![true], vec![true], vec![false]];
        let probs = vec![vec![0.8], vec![0.32], vec![0.2]];
        assert_eq!(tune_threshold(&truth, &probs), 0.30);
    }

    #[test]
    fn tune_threshold_prefers_the_lower_of_two_equally_close_ties() {
        // truth yes at 0.9, yes at 0.47, no at 0.52 (twice).
        // t ≤ 0.45: tp 2, fp 2, fn 0 → F1 4/6 = 2/3
        // t = 0.50: tp 1, fp 2, fn 1 → F1 2/5
        // 0.55 ≤ t ≤ 0.90: tp 1, fp 0, fn 1 → F1 2/3
        // Best candidates closest to 0.5: 0.45 and 0.55; the lower wins.
        let truth = vec![vec![true], vec![true], vec![false], vec![false]];
        let probs = vec![vec![0.9], vec![0.47], vec![0.52], vec![0.52]];
        assert_eq!(tune_threshold(&truth, &probs), 0.45);
    }

    #[test]
    fn tune_threshold_on_the_multi_label_example() {
        // Pooled over labels, the 7 positives have p .9 .7 .8 .5 .3 .6 .2 and the 8
        // negatives p .4 .6 .2 .1 .9 .1 .8 .1. With fn = 7 − tp, F1 = 2tp / (tp + fp + 7):
        // t = 0.05, 0.10: tp 7, fp 8 → 14/22
        // t = 0.15, 0.20: tp 7, fp 5 → 14/19 ≈ 0.737  (at 0.20, p = 0.2 is positive)
        // t = 0.25, 0.30: tp 6, fp 4 → 12/17 ≈ 0.706
        // t = 0.35:       tp 5, fp 4 → 10/16
        // t = 0.45, 0.50: tp 5, fp 3 → 10/15
        // higher t only lose true positives faster than false ones.
        // Best: 0.15 and 0.20; 0.20 is closer to 0.5.
        let (truth, probs) = multi_label_example();
        let best = tune_threshold(&truth, &probs);
        assert_eq!(best, 0.20);

        // And no candidate does better by MultiLabelReport's own count.
        let names = labels(&["a", "b", "c"]);
        let best_f1 = MultiLabelReport::compute(&names, &truth, &probs, best).micro_f1;
        assert_close(best_f1, 14.0 / 19.0, "tuned micro F1");
        for i in 1..20_u8 {
            let t = f32::from(i) / 20.0;
            let f1 = MultiLabelReport::compute(&names, &truth, &probs, t).micro_f1;
            assert!(
                f1 <= best_f1 + EPS,
                "{t} beats the tuned {best}: {f1} > {best_f1}"
            );
        }
    }

    #[test]
    fn tune_threshold_without_signal_keeps_one_half() {
        assert_eq!(tune_threshold(&[], &[]), 0.5);
        // No positives anywhere: F1 is 0 at every candidate.
        let truth = vec![vec![false, false]];
        let probs = vec![vec![0.3, 0.9]];
        assert_eq!(tune_threshold(&truth, &probs), 0.5);
    }

    #[test]
    fn generalization_gap_flags_overfitting_above_ten_points() {
        let gap = GeneralizationGap::new(0.95, 0.80);
        assert_close(gap.gap, 0.15, "gap");
        assert!(gap.overfitting);

        // 0.8 − 0.7 is 0.10000000000000009 in f64: exactly ten points is not overfitting.
        assert!(!GeneralizationGap::new(0.8, 0.7).overfitting);
        assert!(GeneralizationGap::new(0.81, 0.7).overfitting);

        let better_on_validation = GeneralizationGap::new(0.7, 0.75);
        assert_close(better_on_validation.gap, -0.05, "gap");
        assert!(!better_on_validation.overfitting);
    }
}
