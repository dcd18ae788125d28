//! A data-quality report for every uploaded file and every fine-tuning job.
//!
//! Fine-tuning a pretrained encoder on a few hundred or thousand examples works until the
//! data is the problem: a majority class the model learns to always predict, a class with
//! too few examples to learn at all, duplicates that weigh some inputs more than others,
//! one input labelled two ways, validation examples that also sit in the training data (so
//! the validation score flatters the model), inputs too short to carry a signal, and
//! inputs longer than `max_seq_len` whose ends the model never sees. None of these stop a
//! job, so they are reported with numbers, before the user spends hours of accelerator time
//! finding out from a disappointing score.
//!
//! The builder takes examples one at a time, as plain strings, so that the same report
//! serves an upload being parsed and a job reading its files back, without depending on
//! the parser's types. It does no IO: the tokenizer's measurements come in as numbers.
//!
//! # Duplicates and leakage
//!
//! Inputs are compared after normalisation: whitespace trimmed, every run of Unicode
//! whitespace collapsed to one space, and each character lowercased by Unicode's default
//! mapping (so `"Great  movie!"` and `"great movie!"` are one input). A text with a pair is
//! one input; it never equals the same words without a pair.
//!
//! Inputs are kept as 64-bit hashes of their normalised form rather than as strings, so a
//! million examples cost tens of megabytes instead of a second copy of the dataset. Two
//! different inputs share a hash with probability about n²/2⁶⁵, under 3 in 100 million for
//! a million examples; if it happens they are counted as a duplicate (or a leak).
//!
//! # Warnings
//!
//! Each [`DataWarning`] carries one of these stable codes, in this order; a code that
//! concerns labels appears once per task it applies to:
//!
//! | code                 | when                                                             |
//! |----------------------|------------------------------------------------------------------|
//! | `class_imbalance`    | a task's largest class has ≥ [`CLASS_IMBALANCE_RATIO`] × the examples of its smallest |
//! | `rare_class`         | a class has fewer than [`RARE_CLASS_EXAMPLES`] examples           |
//! | `duplicate_texts`    | any training input repeats an earlier one                        |
//! | `conflicting_labels` | any training input appears with two different label sets         |
//! | `validation_leakage` | any validation input also appears in the training data           |
//! | `short_texts`        | any training input has fewer than [`SHORT_TEXT_WORDS`] words      |
//! | `long_texts`         | any training input has more than [`LONG_TEXT_CHARS`] characters   |
//! | `truncation`         | more than [`TRUNCATION_WARNING_PERCENT`]% of inputs exceed `max_seq_len` |

use std::collections::hash_map::{DefaultHasher, Entry};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hasher;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Below this many words (text and pair together) an input says too little for the model
/// to learn from. Characters of scripts written without spaces (Chinese, Japanese, Thai,
/// Lao, Khmer, Myanmar) each count as a word, so a sentence in them is not called short.
pub const SHORT_TEXT_WORDS: usize = 3;

/// Above this many characters (text and pair together) an input almost surely exceeds a
/// BERT-family model's 512 tokens, so its end is cut off whatever `max_seq_len` is.
pub const LONG_TEXT_CHARS: usize = 2000;

/// A task whose largest class has at least this many times the examples of its smallest
/// trains a model that leans towards the large class, and accuracy hides it.
pub const CLASS_IMBALANCE_RATIO: u64 = 3;

/// A class with fewer examples than this is rarely learnt by fine-tuning, and one
/// mislabelled example is a large share of it.
pub const RARE_CLASS_EXAMPLES: u64 = 8;

/// Truncating a few outliers costs little; above this percentage of the training inputs,
/// the model is trained on a visibly different text than the user wrote.
pub const TRUNCATION_WARNING_PERCENT: u64 = 5;

/// A task with hundreds of labels would otherwise get a `rare_class` message nobody reads.
const RARE_CLASSES_LISTED: usize = 10;

/// Hashed between a text and its pair; never a byte of UTF-8, so no text can imitate it.
const PAIR_MARK: u8 = 0xFE;
/// Hashed after each string; never a byte of UTF-8 either.
const END_MARK: u8 = 0xFF;

/// What a training file (with its validation file, for a job) looks like to a model that
/// will be fine-tuned on it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DataReport {
    pub training_examples: u64,
    /// `None` when there is no validation data.
    pub validation_examples: Option<u64>,
    /// One per task: the unnamed task (single-task or multi-label data) first, then named
    /// tasks in byte order. Empty when no example had a label.
    pub labels: Vec<LabelDistribution>,
    /// Training examples whose normalised input already appeared earlier in the data: a
    /// text present three times counts two.
    pub duplicate_texts: u64,
    /// Distinct normalised inputs that appear with more than one label set.
    pub conflicting_duplicates: u64,
    /// Validation examples whose normalised input is also a training input; `None` when
    /// there is no validation data.
    pub leaked_validation_examples: Option<u64>,
    /// Training input lengths in characters (text and pair together).
    pub text_length: LengthStats,
    /// Training inputs with fewer than [`SHORT_TEXT_WORDS`] words.
    pub short_texts: u64,
    /// Training inputs with more than [`LONG_TEXT_CHARS`] characters.
    pub long_texts: u64,
    /// `None` until the training inputs have been tokenized at the job's `max_seq_len`.
    pub truncation: Option<TruncationStats>,
    /// What the numbers above mean for the fine-tuned model, worst first by kind.
    pub warnings: Vec<DataWarning>,
}

/// How the examples of one task spread over its labels.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LabelDistribution {
    /// `None` for single-task and multi-label data.
    #[schema(example = "sentiment")]
    pub task: Option<String>,
    /// Examples per label, in label order; a multi-label example counts once for each of
    /// its labels.
    pub counts: BTreeMap<String, u64>,
    /// Largest count over smallest; 1.0 for a single label.
    #[schema(example = 3.5)]
    pub imbalance_ratio: f64,
    /// The label with the most examples (the first in label order on a tie).
    pub majority: Option<String>,
    /// The label with the fewest examples (the first in label order on a tie).
    pub minority: Option<String>,
}

/// Lengths summarised by nearest rank: the p-th percentile of n sorted values is the one
/// at 1-based rank ⌈p·n/100⌉, always a length that occurs in the data. All zero when there
/// are no examples.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LengthStats {
    pub min: u64,
    /// The 50th percentile by nearest rank: the lower middle value for an even count.
    pub median: u64,
    pub p95: u64,
    pub max: u64,
    pub mean: f64,
}

/// How many training inputs lose their end at the job's `max_seq_len`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TruncationStats {
    #[schema(example = 128)]
    pub max_seq_len: u64,
    /// Inputs measured.
    pub examples: u64,
    /// Inputs longer than `max_seq_len` tokens, special tokens included.
    pub truncated: u64,
    /// `truncated / examples`; 0.0 when nothing was measured.
    #[schema(example = 0.02)]
    pub rate: f64,
}

/// A finding that may cost the fine-tuned model quality, worded for the user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DataWarning {
    /// Stable, for clients to act on; see the `DataWarning` constants.
    #[schema(example = "class_imbalance")]
    pub code: String,
    /// Human-readable, with the numbers behind it; its wording may change.
    #[schema(
        example = "the most common label \"pos\" has 300 examples, 6.0 times the 50 of \"neg\"; \
                   the model will lean towards \"pos\": collect more examples of the rarer \
                   labels, and judge the model by macro F1 rather than accuracy"
    )]
    pub message: String,
}

impl DataWarning {
    pub const CLASS_IMBALANCE: &'static str = "class_imbalance";
    pub const RARE_CLASS: &'static str = "rare_class";
    pub const DUPLICATE_TEXTS: &'static str = "duplicate_texts";
    pub const CONFLICTING_LABELS: &'static str = "conflicting_labels";
    pub const VALIDATION_LEAKAGE: &'static str = "validation_leakage";
    pub const SHORT_TEXTS: &'static str = "short_texts";
    pub const LONG_TEXTS: &'static str = "long_texts";
    pub const TRUNCATION: &'static str = "truncation";

    fn new(code: &str, message: String) -> Self {
        DataWarning {
            code: code.to_owned(),
            message,
        }
    }
}

/// Gathers a [`DataReport`] while the examples stream past, keeping per example only a
/// hash and a length, so that it can follow a parser through a million-example file.
#[derive(Debug, Default)]
pub struct DataReportBuilder {
    training_examples: u64,
    /// Hash of each distinct training input → hash of the label set it first came with.
    inputs: HashMap<u64, u64>,
    duplicate_texts: u64,
    /// Inputs already seen with a second label set, so each is counted once.
    conflicting: HashSet<u64>,
    /// Kept until `build`, so validation may be added before or after training.
    validation_inputs: Vec<u64>,
    untasked_labels: BTreeMap<String, u64>,
    task_labels: BTreeMap<String, BTreeMap<String, u64>>,
    /// Characters per training input; `u32` halves the memory of a million lengths, and an
    /// input of 4 billion characters cannot be uploaded.
    char_lengths: Vec<u32>,
    short_texts: u64,
    long_texts: u64,
    truncation: Option<TruncationStats>,
    /// Reused for each normalised string, so hashing allocates once, not per example.
    scratch: String,
}

impl DataReportBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// One training example; `labels` are (task, label) pairs: task `None` for single-task
    /// data; a multi-label example passes several pairs with task `None`; a multi-task
    /// example one pair per task it labels. Labels are taken verbatim (the parser has
    /// trimmed them), and a pair repeated within one example counts once.
    pub fn add_training(
        &mut self,
        text: &str,
        text_pair: Option<&str>,
        labels: &[(Option<&str>, &str)],
    ) {
        self.training_examples += 1;

        let mut label_set = labels.to_vec();
        label_set.sort_unstable();
        label_set.dedup();
        for &(task, label) in &label_set {
            match task {
                None => bump(&mut self.untasked_labels, label),
                Some(task) => match self.task_labels.get_mut(task) {
                    Some(counts) => bump(counts, label),
                    None => {
                        self.task_labels
                            .insert(task.to_owned(), BTreeMap::from([(label.to_owned(), 1)]));
                    }
                },
            }
        }

        let labels_hash = hash_label_set(&label_set);
        let input = hash_input(&mut self.scratch, text, text_pair);
        match self.inputs.entry(input) {
            Entry::Vacant(first) => {
                first.insert(labels_hash);
            }
            Entry::Occupied(first) => {
                self.duplicate_texts += 1;
                // Comparing with the first occurrence finds every input whose label sets
                // are not all equal: if some differ from each other, one differs from it.
                if *first.get() != labels_hash {
                    self.conflicting.insert(input);
                }
            }
        }

        let chars = text.chars().count() + text_pair.map_or(0, |p| p.chars().count());
        let words = count_words(text) + text_pair.map_or(0, count_words);
        self.char_lengths
            .push(u32::try_from(chars).unwrap_or(u32::MAX));
        if words < SHORT_TEXT_WORDS {
            self.short_texts += 1;
        }
        if chars > LONG_TEXT_CHARS {
            self.long_texts += 1;
        }
    }

    /// One validation example; only its input matters here, to find leaks into training.
    pub fn add_validation(&mut self, text: &str, text_pair: Option<&str>) {
        let input = hash_input(&mut self.scratch, text, text_pair);
        self.validation_inputs.push(input);
    }

    /// Token counts of the training inputs (with special tokens) at the job's
    /// `max_seq_len`, measured by the caller's tokenizer. A later call replaces an earlier
    /// one, so the report describes one `max_seq_len`.
    pub fn token_lengths(&mut self, lengths: &[usize], max_seq_len: usize) {
        let examples = lengths.len() as u64;
        let truncated = lengths.iter().filter(|&&n| n > max_seq_len).count() as u64;
        self.truncation = Some(TruncationStats {
            max_seq_len: max_seq_len as u64,
            examples,
            truncated,
            rate: fraction(truncated, examples),
        });
    }

    pub fn build(self) -> DataReport {
        let mut labels = Vec::with_capacity(
            usize::from(!self.untasked_labels.is_empty()) + self.task_labels.len(),
        );
        if !self.untasked_labels.is_empty() {
            labels.push(LabelDistribution::new(None, self.untasked_labels));
        }
        for (task, counts) in self.task_labels {
            labels.push(LabelDistribution::new(Some(task), counts));
        }

        let (validation_examples, leaked_validation_examples) = if self.validation_inputs.is_empty()
        {
            (None, None)
        } else {
            let leaked = self
                .validation_inputs
                .iter()
                .filter(|input| self.inputs.contains_key(input))
                .count();
            (
                Some(self.validation_inputs.len() as u64),
                Some(leaked as u64),
            )
        };

        let mut report = DataReport {
            training_examples: self.training_examples,
            validation_examples,
            labels,
            duplicate_texts: self.duplicate_texts,
            conflicting_duplicates: self.conflicting.len() as u64,
            leaked_validation_examples,
            text_length: LengthStats::of(self.char_lengths),
            short_texts: self.short_texts,
            long_texts: self.long_texts,
            truncation: self.truncation,
            warnings: Vec::new(),
        };
        report.warnings = warnings(&report);
        report
    }
}

impl LabelDistribution {
    fn new(task: Option<String>, counts: BTreeMap<String, u64>) -> Self {
        let mut majority: Option<(&String, u64)> = None;
        let mut minority: Option<(&String, u64)> = None;
        for (label, &count) in &counts {
            // Strict comparisons keep the first label in order on a tie.
            if majority.is_none_or(|(_, most)| count > most) {
                majority = Some((label, count));
            }
            if minority.is_none_or(|(_, least)| count < least) {
                minority = Some((label, count));
            }
        }
        let imbalance_ratio = match (majority, minority) {
            (Some((_, most)), Some((_, least))) if least > 0 => most as f64 / least as f64,
            _ => 1.0,
        };
        let majority = majority.map(|(label, _)| label.clone());
        let minority = minority.map(|(label, _)| label.clone());
        LabelDistribution {
            task,
            counts,
            imbalance_ratio,
            majority,
            minority,
        }
    }
}

impl LengthStats {
    fn of(mut lengths: Vec<u32>) -> Self {
        lengths.sort_unstable();
        let (Some(&min), Some(&max)) = (lengths.first(), lengths.last()) else {
            return LengthStats::default();
        };
        let sum: u64 = lengths.iter().map(|&n| u64::from(n)).sum();
        LengthStats {
            min: u64::from(min),
            median: nearest_rank(&lengths, 50),
            p95: nearest_rank(&lengths, 95),
            max: u64::from(max),
            mean: sum as f64 / lengths.len() as f64,
        }
    }
}

/// The `percent`-th percentile of non-empty `sorted`, by nearest rank.
fn nearest_rank(sorted: &[u32], percent: usize) -> u64 {
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).map_or(0, |&n| u64::from(n))
}

fn bump(counts: &mut BTreeMap<String, u64>, label: &str) {
    match counts.get_mut(label) {
        Some(count) => *count += 1,
        None => {
            counts.insert(label.to_owned(), 1);
        }
    }
}

/// Writes into `out` the form under which two inputs count as the same; see the module
/// documentation.
fn normalise_into(text: &str, out: &mut String) {
    out.clear();
    for (i, word) in text.split_whitespace().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for c in word.chars() {
            out.extend(c.to_lowercase());
        }
    }
}

fn hash_input(scratch: &mut String, text: &str, text_pair: Option<&str>) -> u64 {
    let mut hasher = DefaultHasher::new();
    normalise_into(text, scratch);
    hasher.write(scratch.as_bytes());
    if let Some(pair) = text_pair {
        hasher.write_u8(PAIR_MARK);
        normalise_into(pair, scratch);
        hasher.write(scratch.as_bytes());
    }
    hasher.write_u8(END_MARK);
    hasher.finish()
}

/// Hashes a sorted, deduplicated label set, so that one set in any order is one hash.
fn hash_label_set(labels: &[(Option<&str>, &str)]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for &(task, label) in labels {
        match task {
            None => hasher.write_u8(0),
            Some(task) => {
                hasher.write_u8(1);
                hasher.write(task.as_bytes());
                hasher.write_u8(END_MARK);
            }
        }
        hasher.write(label.as_bytes());
        hasher.write_u8(END_MARK);
    }
    hasher.finish()
}

fn count_words(text: &str) -> usize {
    let mut words = 0;
    let mut in_word = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_word = false;
        } else if is_unspaced_script(c) {
            words += 1;
            in_word = false;
        } else if !in_word {
            words += 1;
            in_word = true;
        }
    }
    words
}

/// Scripts written without spaces between words, where whitespace cannot count words.
fn is_unspaced_script(c: char) -> bool {
    matches!(
        c,
        '\u{0E00}'..='\u{0EFF}' // Thai, Lao
            | '\u{1000}'..='\u{109F}' // Myanmar
            | '\u{1780}'..='\u{17FF}' // Khmer
            | '\u{3040}'..='\u{30FF}' // Hiragana, Katakana
            | '\u{3400}'..='\u{4DBF}' // CJK Extension A
            | '\u{4E00}'..='\u{9FFF}' // CJK Unified Ideographs
            | '\u{F900}'..='\u{FAFF}' // CJK Compatibility Ideographs
            | '\u{20000}'..='\u{3FFFF}' // CJK Extensions B and later
    )
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    fraction(part, whole) * 100.0
}

fn plural(n: u64, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 {
        one
    } else {
        many
    }
}

fn task_prefix(task: Option<&str>) -> String {
    task.map_or_else(String::new, |task| format!("task {task:?}: "))
}

/// Derived from the report's own numbers, so a stored report can be checked against them.
fn warnings(report: &DataReport) -> Vec<DataWarning> {
    let mut out = Vec::new();
    let training = report.training_examples;

    for dist in &report.labels {
        let (Some(most), Some(least)) = (dist.counts.values().max(), dist.counts.values().min())
        else {
            continue;
        };
        if let (Some(majority), Some(minority)) = (&dist.majority, &dist.minority) {
            if *most >= least.saturating_mul(CLASS_IMBALANCE_RATIO) {
                out.push(DataWarning::new(
                    DataWarning::CLASS_IMBALANCE,
                    format!(
                        "{}the most common label {majority:?} has {most} examples, {:.1} times \
                         the {least} of {minority:?}; the model will lean towards {majority:?}: \
                         collect more examples of the rarer labels, and judge the model by \
                         macro F1 rather than accuracy",
                        task_prefix(dist.task.as_deref()),
                        dist.imbalance_ratio,
                    ),
                ));
            }
        }
    }

    for dist in &report.labels {
        let mut rare: Vec<(&String, u64)> = dist
            .counts
            .iter()
            .filter(|&(_, &count)| count < RARE_CLASS_EXAMPLES)
            .map(|(label, &count)| (label, count))
            .collect();
        if rare.is_empty() {
            continue;
        }
        rare.sort_by_key(|&(label, count)| (count, label));
        let mut listed = rare
            .iter()
            .take(RARE_CLASSES_LISTED)
            .map(|(label, count)| format!("{label:?} ({count})"))
            .collect::<Vec<_>>()
            .join(", ");
        if rare.len() > RARE_CLASSES_LISTED {
            listed.push_str(&format!(" and {} more", rare.len() - RARE_CLASSES_LISTED));
        }
        let n = rare.len() as u64;
        out.push(DataWarning::new(
            DataWarning::RARE_CLASS,
            format!(
                "{}{n} {} fewer than {RARE_CLASS_EXAMPLES} training examples: {listed}; \
                 a fine-tuned model rarely learns a class from so few",
                task_prefix(dist.task.as_deref()),
                plural(n, "label has", "labels have"),
            ),
        ));
    }

    if report.duplicate_texts > 0 {
        let n = report.duplicate_texts;
        out.push(DataWarning::new(
            DataWarning::DUPLICATE_TEXTS,
            format!(
                "{n} of {training} training examples ({:.1}%) {} an earlier input, ignoring \
                 case and whitespace; duplicates weigh those inputs more in training",
                percent(n, training),
                plural(n, "repeats", "repeat"),
            ),
        ));
    }

    if report.conflicting_duplicates > 0 {
        let n = report.conflicting_duplicates;
        out.push(DataWarning::new(
            DataWarning::CONFLICTING_LABELS,
            format!(
                "{n} distinct {} more than once with different labels, ignoring case and \
                 whitespace; the model cannot fit both, so check them for labelling mistakes",
                plural(n, "input appears", "inputs appear"),
            ),
        ));
    }

    if let (Some(leaked @ 1..), Some(validation)) = (
        report.leaked_validation_examples,
        report.validation_examples,
    ) {
        out.push(DataWarning::new(
            DataWarning::VALIDATION_LEAKAGE,
            format!(
                "{leaked} of {validation} validation examples ({:.1}%) also {} in the training \
                 data, ignoring case and whitespace; validation metrics will overstate how the \
                 model does on new text",
                percent(leaked, validation),
                plural(leaked, "appears", "appear"),
            ),
        ));
    }

    if report.short_texts > 0 {
        let n = report.short_texts;
        out.push(DataWarning::new(
            DataWarning::SHORT_TEXTS,
            format!(
                "{n} of {training} training examples ({:.1}%) {} fewer than {SHORT_TEXT_WORDS} \
                 words; inputs this short carry little for the model to learn from",
                percent(n, training),
                plural(n, "has", "have"),
            ),
        ));
    }

    if report.long_texts > 0 {
        let n = report.long_texts;
        out.push(DataWarning::new(
            DataWarning::LONG_TEXTS,
            format!(
                "{n} of {training} training examples ({:.1}%) {} longer than {LONG_TEXT_CHARS} \
                 characters; inputs this long usually exceed max_seq_len, and the model never \
                 sees their end",
                percent(n, training),
                plural(n, "is", "are"),
            ),
        ));
    }

    if let Some(t) = &report.truncation {
        // Integer comparison, so that exactly the threshold never warns by rounding.
        if t.truncated * 100 > TRUNCATION_WARNING_PERCENT * t.examples {
            out.push(DataWarning::new(
                DataWarning::TRUNCATION,
                format!(
                    "{} of {} training inputs ({:.1}%) {} longer than max_seq_len = {} tokens \
                     and will be truncated; raise max_seq_len (up to the base model's limit) \
                     or shorten the texts",
                    t.truncated,
                    t.examples,
                    t.rate * 100.0,
                    plural(t.truncated, "is", "are"),
                    t.max_seq_len,
                ),
            ));
        }
    }

    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codes(report: &DataReport) -> Vec<&str> {
        report.warnings.iter().map(|w| w.code.as_str()).collect()
    }

    /// `n` distinct, three-word-plus training examples labelled `label`.
    fn add_many(b: &mut DataReportBuilder, label: &str, n: usize) {
        for i in 0..n {
            b.add_training(
                &format!("example number {i} of {label}"),
                None,
                &[(None, label)],
            );
        }
    }

    /// Eight examples each of two labels: crosses no threshold.
    fn clean() -> DataReportBuilder {
        let mut b = DataReportBuilder::new();
        add_many(&mut b, "a", 8);
        add_many(&mut b, "b", 8);
        b
    }

    #[test]
    fn clean_data_has_no_warnings() {
        let report = clean().build();
        assert_eq!(report.training_examples, 16);
        assert_eq!(report.duplicate_texts, 0);
        assert_eq!(report.short_texts, 0);
        assert_eq!(report.warnings, vec![]);
    }

    #[test]
    fn imbalance_ratio_majority_and_minority() {
        let mut b = DataReportBuilder::new();
        add_many(&mut b, "neg", 10);
        add_many(&mut b, "neutral", 25);
        add_many(&mut b, "pos", 40);
        add_many(&mut b, "zzz", 10);
        let report = b.build();
        assert_eq!(report.labels.len(), 1);
        let dist = &report.labels[0];
        assert_eq!(dist.task, None);
        assert_eq!(
            dist.counts,
            BTreeMap::from([
                ("neg".to_owned(), 10),
                ("neutral".to_owned(), 25),
                ("pos".to_owned(), 40),
                ("zzz".to_owned(), 10),
            ])
        );
        assert_eq!(dist.imbalance_ratio, 4.0);
        assert_eq!(dist.majority.as_deref(), Some("pos"));
        // "neg" and "zzz" tie; the first in label order wins.
        assert_eq!(dist.minority.as_deref(), Some("neg"));
        assert_eq!(codes(&report), vec!["class_imbalance"]);
        assert!(report.warnings[0]
            .message
            .contains("\"pos\" has 40 examples, 4.0 times"));
    }

    #[test]
    fn class_imbalance_warns_from_the_ratio_on() {
        let mut b = DataReportBuilder::new();
        add_many(&mut b, "a", 24);
        add_many(&mut b, "b", 8);
        let report = b.build();
        assert_eq!(report.labels[0].imbalance_ratio, 3.0);
        assert_eq!(codes(&report), vec!["class_imbalance"]);

        let mut b = DataReportBuilder::new();
        add_many(&mut b, "a", 23);
        add_many(&mut b, "b", 8);
        assert_eq!(codes(&b.build()), Vec::<&str>::new());
    }

    #[test]
    fn rare_class_warns_below_the_threshold_only() {
        let mut b = DataReportBuilder::new();
        add_many(&mut b, "a", 8);
        add_many(&mut b, "b", 7);
        let report = b.build();
        assert_eq!(codes(&report), vec!["rare_class"]);
        assert!(report.warnings[0]
            .message
            .contains("1 label has fewer than 8"));
        assert!(report.warnings[0].message.contains("\"b\" (7)"));
    }

    #[test]
    fn rare_class_lists_the_rarest_first_and_caps_the_list() {
        let mut b = DataReportBuilder::new();
        for i in 0..12 {
            add_many(&mut b, &format!("l{i:02}"), 2);
        }
        add_many(&mut b, "one", 1);
        let report = b.build();
        let rare = report
            .warnings
            .iter()
            .find(|w| w.code == DataWarning::RARE_CLASS)
            .expect("rare_class warning");
        assert!(rare.message.contains("13 labels have"), "{}", rare.message);
        assert!(
            rare.message.contains(": \"one\" (1), \"l00\" (2)"),
            "{}",
            rare.message
        );
        assert!(rare.message.contains("and 3 more"), "{}", rare.message);
    }

    #[test]
    fn duplicates_ignore_case_and_whitespace_and_conflicts_count_once() {
        let mut b = DataReportBuilder::new();
        b.add_training("Hello   World", None, &[(None, "a")]);
        b.add_training("hello world", None, &[(None, "a")]); // duplicate
        b.add_training("  HELLO\tworld\n", None, &[(None, "b")]); // duplicate, conflict
        b.add_training("hello world", Some("x"), &[(None, "a")]); // has a pair: distinct
        b.add_training("hello", Some("world"), &[(None, "a")]); // split differently: distinct
        b.add_training("third one here", None, &[(None, "a")]);
        b.add_training("Third One Here", None, &[(None, "b")]); // duplicate, conflict
        b.add_training("THIRD ONE HERE", None, &[(None, "b")]); // duplicate, same conflict
        b.add_training("ÉCOLE", None, &[(None, "a")]);
        b.add_training("école", None, &[(None, "a")]); // duplicate
        b.add_training("a\u{3000}b\u{a0} c", None, &[(None, "a")]);
        b.add_training("A B C", None, &[(None, "a")]); // duplicate
        b.add_training("one two", Some("three"), &[(None, "a")]);
        b.add_training("one", Some("two three"), &[(None, "a")]); // split elsewhere: distinct
        b.add_training("one twothree", None, &[(None, "a")]); // same characters, no pair: distinct
        let report = b.build();
        assert_eq!(report.training_examples, 15);
        assert_eq!(report.duplicate_texts, 6);
        assert_eq!(report.conflicting_duplicates, 2);
        let codes = codes(&report);
        assert!(codes.contains(&"duplicate_texts"));
        assert!(codes.contains(&"conflicting_labels"));
    }

    #[test]
    fn duplicates_and_conflicts_warn_only_when_present() {
        let mut b = clean();
        b.add_training("  Example Number 0 OF a", None, &[(None, "a")]);
        let report = b.build();
        assert_eq!(report.duplicate_texts, 1);
        assert_eq!(report.conflicting_duplicates, 0);
        assert_eq!(codes(&report), vec!["duplicate_texts"]);
        assert!(report.warnings[0]
            .message
            .starts_with("1 of 17 training examples (5.9%) repeats"));

        let mut b = clean();
        b.add_training("example number 0 of a", None, &[(None, "b")]);
        let report = b.build();
        assert_eq!(report.conflicting_duplicates, 1);
        assert_eq!(
            codes(&report),
            vec!["duplicate_texts", "conflicting_labels"]
        );
    }

    #[test]
    fn label_sets_compare_regardless_of_order_and_repeats() {
        let mut b = DataReportBuilder::new();
        b.add_training("one two three", None, &[(None, "x"), (None, "y")]);
        b.add_training(
            "one two three",
            None,
            &[(None, "y"), (None, "x"), (None, "y")],
        );
        b.add_training("four five six", None, &[(None, "x")]);
        b.add_training("four five six", None, &[(None, "x"), (None, "y")]);
        b.add_training("seven eight nine", None, &[(Some("t"), "x")]);
        b.add_training("seven eight nine", None, &[(None, "x")]); // another task: conflict
        let report = b.build();
        assert_eq!(report.duplicate_texts, 3);
        assert_eq!(report.conflicting_duplicates, 2);
        // Multi-label counts: each example counts once per label it carries.
        assert_eq!(
            report.labels[0].counts,
            BTreeMap::from([("x".to_owned(), 5), ("y".to_owned(), 3)])
        );
    }

    #[test]
    fn leakage_counts_normalised_validation_inputs_in_training() {
        let mut b = clean();
        // Validation may come first: leaks are found at build.
        b.add_validation("EXAMPLE number 3 of b ", None);
        b.add_validation("never seen in training", None);
        b.add_validation("example number 3", Some("of b")); // a pair: not the same input
        b.add_validation("example number 5 of a", None);
        b.add_validation("example number 5 of a", None); // each validation example counts
        let report = b.build();
        assert_eq!(report.validation_examples, Some(5));
        assert_eq!(report.leaked_validation_examples, Some(3));
        assert_eq!(codes(&report), vec!["validation_leakage"]);
        assert!(report.warnings[0]
            .message
            .starts_with("3 of 5 validation examples (60.0%) also appear"));

        let mut b = clean();
        b.add_validation("never seen in training", None);
        let report = b.build();
        assert_eq!(report.validation_examples, Some(1));
        assert_eq!(report.leaked_validation_examples, Some(0));
        assert_eq!(codes(&report), Vec::<&str>::new());

        let report = clean().build();
        assert_eq!(report.validation_examples, None);
        assert_eq!(report.leaked_validation_examples, None);
    }

    #[test]
    fn multi_task_distributions_per_task_in_order() {
        let mut b = DataReportBuilder::new();
        b.add_training(
            "t1",
            None,
            &[(Some("topic"), "sports"), (Some("sentiment"), "pos")],
        );
        b.add_training(
            "t2",
            None,
            &[(Some("topic"), "politics"), (Some("sentiment"), "neg")],
        );
        b.add_training("t3", None, &[(Some("topic"), "sports")]);
        b.add_training(
            "t4",
            None,
            &[(Some("sentiment"), "pos"), (Some("sentiment"), "pos")],
        );
        b.add_training("t5", None, &[(Some("topic"), "sports")]);
        b.add_training("t6", None, &[(None, "untasked")]);
        let report = b.build();
        let tasks: Vec<Option<&str>> = report.labels.iter().map(|d| d.task.as_deref()).collect();
        assert_eq!(tasks, vec![None, Some("sentiment"), Some("topic")]);

        assert_eq!(
            report.labels[0].counts,
            BTreeMap::from([("untasked".to_owned(), 1)])
        );
        assert_eq!(report.labels[0].imbalance_ratio, 1.0);

        let sentiment = &report.labels[1];
        assert_eq!(
            sentiment.counts,
            BTreeMap::from([("neg".to_owned(), 1), ("pos".to_owned(), 2)])
        );
        assert_eq!(sentiment.imbalance_ratio, 2.0);
        assert_eq!(sentiment.majority.as_deref(), Some("pos"));
        assert_eq!(sentiment.minority.as_deref(), Some("neg"));

        let topic = &report.labels[2];
        assert_eq!(
            topic.counts,
            BTreeMap::from([("politics".to_owned(), 1), ("sports".to_owned(), 3)])
        );
        assert_eq!(topic.imbalance_ratio, 3.0);

        let imbalance: Vec<&str> = report
            .warnings
            .iter()
            .filter(|w| w.code == DataWarning::CLASS_IMBALANCE)
            .map(|w| w.message.as_str())
            .collect();
        assert_eq!(imbalance.len(), 1);
        assert!(imbalance[0].starts_with("task \"topic\": "));
        // Every label of every task is rare here.
        let rare = report
            .warnings
            .iter()
            .filter(|w| w.code == DataWarning::RARE_CLASS)
            .count();
        assert_eq!(rare, 3);
    }

    #[test]
    fn length_stats_by_nearest_rank() {
        let mut b = DataReportBuilder::new();
        for text in ["aaaa", "a", "aaa", "aa"] {
            b.add_training(text, None, &[(None, "x")]);
        }
        let stats = b.build().text_length;
        // Sorted 1, 2, 3, 4: median rank ⌈2⌉ = 2, p95 rank ⌈3.8⌉ = 4.
        assert_eq!(
            stats,
            LengthStats {
                min: 1,
                median: 2,
                p95: 4,
                max: 4,
                mean: 2.5,
            }
        );

        let mut b = DataReportBuilder::new();
        for n in (1..=20).rev() {
            b.add_training(&"é".repeat(n), None, &[(None, "x")]);
        }
        let stats = b.build().text_length;
        // Median rank ⌈10⌉ = 10, p95 rank ⌈19⌉ = 19; characters, not bytes.
        assert_eq!(
            stats,
            LengthStats {
                min: 1,
                median: 10,
                p95: 19,
                max: 20,
                mean: 10.5,
            }
        );

        let mut b = DataReportBuilder::new();
        b.add_training("abc", Some("de"), &[(None, "x")]);
        assert_eq!(b.build().text_length.max, 5);
    }

    #[test]
    fn short_texts_warn_below_three_words() {
        let mut b = clean();
        b.add_training("two words", None, &[(None, "a")]);
        let report = b.build();
        assert_eq!(report.short_texts, 1);
        assert_eq!(codes(&report), vec!["short_texts"]);

        let mut b = clean();
        b.add_training("exactly three words", None, &[(None, "a")]);
        b.add_training("yes", Some("no way"), &[(None, "a")]); // pair words count
        b.add_training("这部电影", None, &[(None, "b")]); // unspaced script: 4 words
        let report = b.build();
        assert_eq!(report.short_texts, 0);
        assert_eq!(codes(&report), Vec::<&str>::new());
    }

    #[test]
    fn word_counting() {
        assert_eq!(count_words(""), 0);
        assert_eq!(count_words("  one\t two\n"), 2);
        assert_eq!(count_words("日本語abc def"), 5);
        assert_eq!(count_words("สวัสดี"), 6);
    }

    #[test]
    fn long_texts_warn_above_the_character_limit() {
        let at_limit = "word ".repeat(400);
        assert_eq!(at_limit.chars().count(), LONG_TEXT_CHARS);
        let mut b = clean();
        b.add_training(&at_limit, None, &[(None, "a")]);
        let report = b.build();
        assert_eq!(report.long_texts, 0);
        assert_eq!(codes(&report), Vec::<&str>::new());

        let mut b = clean();
        b.add_training(&format!("{at_limit}x"), None, &[(None, "a")]);
        let report = b.build();
        assert_eq!(report.long_texts, 1);
        assert_eq!(codes(&report), vec!["long_texts"]);

        // Text and pair together.
        let mut b = clean();
        b.add_training(&at_limit, Some("x"), &[(None, "a")]);
        assert_eq!(b.build().long_texts, 1);
    }

    #[test]
    fn truncation_rate_and_threshold() {
        let mut b = clean();
        b.token_lengths(&[10, 128, 129, 300], 128);
        let report = b.build();
        assert_eq!(
            report.truncation,
            Some(TruncationStats {
                max_seq_len: 128,
                examples: 4,
                truncated: 2,
                rate: 0.5,
            })
        );
        assert_eq!(codes(&report), vec!["truncation"]);
        assert!(report.warnings[0]
            .message
            .starts_with("2 of 4 training inputs (50.0%) are longer than max_seq_len = 128"));

        let mut lengths = vec![64; 100];
        lengths[..5].fill(65);
        let mut b = clean();
        b.token_lengths(&lengths, 64);
        let report = b.build();
        assert_eq!(report.truncation.as_ref().map(|t| t.rate), Some(0.05));
        assert_eq!(codes(&report), Vec::<&str>::new());

        lengths[5] = 65;
        let mut b = clean();
        b.token_lengths(&lengths, 64);
        let report = b.build();
        assert_eq!(report.truncation.as_ref().map(|t| t.truncated), Some(6));
        assert_eq!(codes(&report), vec!["truncation"]);

        // A later measurement replaces an earlier one.
        let mut b = clean();
        b.token_lengths(&[1000], 64);
        b.token_lengths(&[10, 20], 512);
        let report = b.build();
        assert_eq!(report.truncation.as_ref().map(|t| t.truncated), Some(0));
        assert_eq!(codes(&report), Vec::<&str>::new());
    }

    #[test]
    fn warnings_come_in_documented_order() {
        let mut b = DataReportBuilder::new();
        add_many(&mut b, "a", 30);
        add_many(&mut b, "b", 2);
        b.add_training("example number 0 of a", None, &[(None, "b")]);
        b.add_training("ok", None, &[(None, "a")]);
        b.add_training(&"x ".repeat(1001), None, &[(None, "a")]);
        b.add_validation("example number 1 of b", None);
        b.token_lengths(&[600; 35], 512);
        let report = b.build();
        assert_eq!(
            codes(&report),
            vec![
                "class_imbalance",
                "rare_class",
                "duplicate_texts",
                "conflicting_labels",
                "validation_leakage",
                "short_texts",
                "long_texts",
                "truncation",
            ]
        );
    }

    #[test]
    fn empty_input_is_all_zero() {
        let report = DataReportBuilder::new().build();
        assert_eq!(
            report,
            DataReport {
                training_examples: 0,
                validation_examples: None,
                labels: vec![],
                duplicate_texts: 0,
                conflicting_duplicates: 0,
                leaked_validation_examples: None,
                text_length: LengthStats::default(),
                short_texts: 0,
                long_texts: 0,
                truncation: None,
                warnings: vec![],
            }
        );
        assert_eq!(report.text_length.mean, 0.0);

        let mut b = DataReportBuilder::new();
        b.token_lengths(&[], 128);
        b.add_training("", None, &[]); // no labels at all
        let report = b.build();
        let truncation = report.truncation.clone().expect("measured");
        assert_eq!(truncation.rate, 0.0);
        assert_eq!(report.labels, vec![]);
        assert_eq!(report.short_texts, 1);
        assert_eq!(codes(&report), vec!["short_texts"]);
    }

    #[test]
    fn serde_round_trip() {
        // Every float here is exact in binary, so equality after the trip is meaningful.
        let mut b = clean();
        b.add_training("example number 9x", Some("of c"), &[(Some("t"), "z")]);
        b.add_validation("example number 0 of a", None);
        b.token_lengths(&[1, 2, 3, 4], 2);
        let report = b.build();
        let json = serde_json::to_string(&report).expect("serialises");
        let back: DataReport = serde_json::from_str(&json).expect("deserialises");
        assert_eq!(back, report);
    }
}
