//! The dataset validator's tests, by what they feed it: formats, JSON Lines, whole-file
//! rules and limits; any chunking (`chunking.rs`), CSV (`csv.rs`) and the task types
//! (`tasks.rs`) have files of their own beside it.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use super::parser::BOM;
use super::*;

use DatasetErrorKind as K;
use DatasetFormat::{Csv as CSV, Jsonl as JSONL};

type Outcome = Result<DatasetSummary, DatasetError>;

fn run(
    format: DatasetFormat,
    limits: &DatasetLimits,
    chunks: &mut dyn Iterator<Item = &[u8]>,
) -> Outcome {
    let mut validator = DatasetValidator::new(format, limits.clone());
    for chunk in chunks {
        validator.push(chunk)?;
    }
    validator.finish()
}

/// A tiny deterministic generator, so the "any chunking" tests need no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// Cuts `data` into pieces of 0..=max bytes, empty pushes included.
fn irregular(data: &[u8], seed: u64, max: usize) -> Vec<&[u8]> {
    let mut rng = Rng(seed | 1);
    let mut pieces = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (piece, tail) = rest.split_at(rng.below(max + 1).min(rest.len()));
        pieces.push(piece);
        rest = tail;
    }
    pieces
}

/// The outcome of validating `data`, after checking that every way of cutting it into
/// chunks gives the same one.
fn check_with(format: DatasetFormat, limits: &DatasetLimits, data: &[u8]) -> Outcome {
    let whole = run(format, limits, &mut std::iter::once(data));
    for size in [1, 2, 3, 7, 64] {
        let chunked = run(format, limits, &mut data.chunks(size));
        assert_eq!(
            chunked,
            whole,
            "chunks of {size} bytes, data {:?}",
            String::from_utf8_lossy(data)
        );
    }
    for seed in 1..4 {
        let chunked = run(format, limits, &mut irregular(data, seed, 13).into_iter());
        assert_eq!(chunked, whole, "irregular chunks, seed {seed}");
    }
    whole
}

/// As [`check_with`] with the default limits, and checks that `parse_examples` agrees.
fn check(format: DatasetFormat, data: &[u8]) -> Outcome {
    let outcome = check_with(format, &DatasetLimits::default(), data);
    agree(format, data, &outcome);
    outcome
}

fn agree(format: DatasetFormat, data: &[u8], outcome: &Outcome) {
    match (outcome, parse_examples(format, data)) {
        (Ok(summary), Ok(examples)) => assert_eq!(&summarize(summary, &examples), summary),
        (Err(expected), Err(got)) => assert_eq!(&got, expected),
        (outcome, parsed) => panic!("validator says {outcome:?}, parse_examples says {parsed:?}"),
    }
}

/// What the validator should have said about a file holding `examples`; what is about
/// the bytes is taken from `summary`.
fn summarize(summary: &DatasetSummary, examples: &[Example]) -> DatasetSummary {
    let first = examples.first().expect("a valid file has examples");
    let mut label_counts = BTreeMap::new();
    let mut task_label_counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for e in examples {
        assert_eq!(e.target.task_type(), first.target.task_type(), "{e:?}");
        assert_eq!(e.text_pair.is_some(), first.text_pair.is_some(), "{e:?}");
        match &e.target {
            Target::Single(label) => *label_counts.entry(label.clone()).or_insert(0) += 1,
            Target::Multi(labels) => {
                for label in labels {
                    *label_counts.entry(label.clone()).or_insert(0) += 1;
                }
            }
            Target::Tasks(tasks) => {
                for (task, label) in tasks {
                    *task_label_counts
                        .entry(task.clone())
                        .or_default()
                        .entry(label.clone())
                        .or_insert(0) += 1;
                }
            }
        }
    }
    DatasetSummary {
        examples: examples.len() as u64,
        task_type: first.target.task_type(),
        text_pairs: first.text_pair.is_some(),
        label_counts,
        task_label_counts,
        ..summary.clone()
    }
}

fn jsonl(data: &str) -> Outcome {
    check(JSONL, data.as_bytes())
}

fn csv(data: &str) -> Outcome {
    check(CSV, data.as_bytes())
}

#[track_caller]
fn fails(
    outcome: Outcome,
    line: Option<u64>,
    field: Option<&str>,
    kind: DatasetErrorKind,
) -> DatasetError {
    let e = outcome.expect_err("should be refused");
    assert_eq!(
        (e.line, e.field.as_deref(), e.kind),
        (line, field, kind),
        "unexpected error: {e}"
    );
    e
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(l, n)| (l.to_string(), *n)).collect()
}

const TWO: &str =
    "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n";

// --- formats -------------------------------------------------------------------------

#[test]
fn format_names_and_extensions() {
    assert_eq!(DatasetFormat::from_filename("train.jsonl"), Some(JSONL));
    assert_eq!(DatasetFormat::from_filename("a.b.NDJSON"), Some(JSONL));
    assert_eq!(DatasetFormat::from_filename("data.Csv"), Some(CSV));
    assert_eq!(DatasetFormat::from_filename("data.json"), None);
    assert_eq!(DatasetFormat::from_filename("csv"), None);
    assert_eq!(DatasetFormat::from_filename("data.csv.gz"), None);
    for f in DatasetFormat::ALL {
        assert_eq!(DatasetFormat::parse(f.as_str()), Some(f));
        assert_eq!(serde_json::to_string(&f).unwrap(), format!("\"{f}\""));
    }
    assert_eq!(DatasetFormat::parse("JSONL"), None);
}

#[test]
fn error_codes_are_distinct_snake_case_and_match_serde() {
    let codes: std::collections::BTreeSet<_> =
        DatasetErrorKind::ALL.iter().map(|k| k.code()).collect();
    assert_eq!(codes.len(), DatasetErrorKind::ALL.len());
    for kind in DatasetErrorKind::ALL {
        assert!(kind
            .code()
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        assert_eq!(
            serde_json::to_string(&kind).unwrap(),
            format!("\"{}\"", kind.code())
        );
    }
}

#[test]
fn display_names_line_and_field() {
    let e = fails(
        jsonl("{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \" \"}\n"),
        Some(2),
        Some("label"),
        K::EmptyField,
    );
    assert_eq!(e.to_string(), "line 2: field `label`: must not be empty");
    let e = fails(jsonl(""), None, None, K::Empty);
    assert_eq!(e.to_string(), "the file contains no examples");
}

// --- JSONL ---------------------------------------------------------------------------

#[test]
fn jsonl_summary() {
    let data = "{\"text\": \"good\", \"label\": \"pos\"}\n{\"text\": \"bad\", \"label\": \"neg\"}\n{\"text\": \"great\", \"label\": \"pos\"}\n";
    let summary = jsonl(data).unwrap();
    assert_eq!(
        summary,
        DatasetSummary {
            format: JSONL,
            bytes: data.len() as u64,
            sha256: hex::encode(Sha256::digest(data.as_bytes())),
            examples: 3,
            task_type: TaskType::Classification,
            modality: Modality::Text,
            text_pairs: false,
            label_counts: counts(&[("neg", 1), ("pos", 2)]),
            task_label_counts: BTreeMap::new(),
        }
    );
    assert_eq!(summary.sha256.len(), 64);
    assert!(summary
        .sha256
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
}

#[test]
fn jsonl_parse_examples_returns_texts_and_labels_in_order() {
    let data = "{\"label\": \" pos \", \"text\": \"caf\\u00e9 \\\"ok\\\"\"}\n{\"text\": \"  x\", \"label\": 0}\n";
    let examples = parse_examples(JSONL, data.as_bytes()).unwrap();
    assert_eq!(
        examples,
        vec![
            Example {
                text: "café \"ok\"".into(),
                text_pair: None,
                target: Target::Single("pos".into()),
            },
            Example {
                text: "  x".into(),
                text_pair: None,
                target: Target::Single("0".into()),
            },
        ]
    );
}

#[test]
fn jsonl_labels_may_be_integers_or_booleans() {
    let data = "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": -2}\n{\"text\": \"c\", \"label\": true}\n{\"text\": \"d\", \"label\": \"1\"}\n{\"text\": \"e\", \"label\": false}\n";
    let summary = jsonl(data).unwrap();
    assert_eq!(
        summary.label_counts,
        counts(&[("-2", 1), ("1", 2), ("false", 1), ("true", 1)])
    );
}

#[test]
fn jsonl_other_fields_are_ignored() {
    let data = "{\"id\": 1, \"text\": \"a\", \"meta\": {\"text\": 5, \"label\": [null]}, \"label\": \"x\", \"score\": 0.5}\n{\"text\": \"b\", \"label\": \"y\", \"tags\": [\"u\", {\"v\": null}]}\n";
    assert_eq!(jsonl(data).unwrap().examples, 2);
}

#[test]
fn jsonl_escaped_keys_are_the_same_keys() {
    let data =
        "{\"t\\u0065xt\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"l\\u0061bel\": \"y\"}\n";
    assert_eq!(jsonl(data).unwrap().examples, 2);
}

#[test]
fn jsonl_crlf_and_no_final_newline() {
    let crlf = TWO.replace('\n', "\r\n");
    let summary = jsonl(&crlf).unwrap();
    assert_eq!(summary.examples, 2);
    assert_eq!(summary.bytes, crlf.len() as u64);
    assert_eq!(jsonl(TWO.trim_end()).unwrap().examples, 2);
    assert_eq!(jsonl(crlf.trim_end_matches('\n')).unwrap().examples, 2);
}

#[test]
fn jsonl_trailing_blank_lines_are_fine() {
    for tail in ["\n", "\n\n\n", "  \n\t\n", "\r\n", "   "] {
        assert_eq!(
            jsonl(&format!("{TWO}{tail}")).unwrap().examples,
            2,
            "tail {tail:?}"
        );
    }
}

#[test]
fn jsonl_blank_line_in_the_middle_is_refused_at_that_line() {
    let data = format!("{}\n\n  \n{}", TWO, TWO);
    let e = fails(jsonl(&data), Some(3), None, K::InvalidJson);
    assert!(e.message.contains("blank line"), "{e}");
    fails(jsonl(&format!("\n{TWO}")), Some(1), None, K::InvalidJson);
}

#[test]
fn jsonl_byte_order_mark_is_skipped() {
    let data = format!("\u{FEFF}{TWO}");
    let summary = jsonl(&data).unwrap();
    assert_eq!(summary.examples, 2);
    assert_eq!(summary.bytes, TWO.len() as u64 + 3);
    assert_eq!(summary.sha256, hex::encode(Sha256::digest(data.as_bytes())));
    // Only at the very start of the file.
    fails(
        jsonl(&format!("{TWO}\u{FEFF}{TWO}")),
        Some(3),
        None,
        K::InvalidJson,
    );
}

#[test]
fn jsonl_invalid_utf8_names_its_line() {
    let mut data = TWO.as_bytes().to_vec();
    data.extend_from_slice(b"{\"text\": \"caf\xE9\", \"label\": \"x\"}\n");
    data.extend_from_slice(TWO.as_bytes());
    let e = fails(check(JSONL, &data), Some(3), None, K::InvalidUtf8);
    assert!(e.message.contains("0xE9"), "{e}");
    // A truncated multi-byte character at the end of the file.
    fails(
        check(
            JSONL,
            b"{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"\xC3",
        ),
        Some(2),
        None,
        K::InvalidUtf8,
    );
}

#[test]
fn jsonl_syntax_error_names_line_and_column() {
    let data = format!("{TWO}{{\"text\": \"a\" \"label\": \"x\"}}\n");
    let e = fails(jsonl(&data), Some(3), None, K::InvalidJson);
    assert_eq!(e.message, "invalid JSON at column 14: expected `,` or `}`");
    assert!(!e.message.contains("line 1"), "{e}");
    fails(
        jsonl("{\"text\": \"a\", \"label\": \"x\"} {}\n"),
        Some(1),
        None,
        K::InvalidJson,
    );
    fails(
        jsonl("{\"text\": \"a\tb\", \"label\": \"x\"}\n"),
        Some(1),
        None,
        K::InvalidJson,
    );
    fails(
        jsonl(&format!("{TWO}{{\"text\": \"a\"")),
        Some(3),
        None,
        K::InvalidJson,
    );
}

#[test]
fn jsonl_line_must_be_an_object() {
    for (line, found) in [
        ("[1, 2]", "an array"),
        ("\"text\"", "a string"),
        ("3", "an integer"),
        ("null", "null"),
    ] {
        let e = fails(
            jsonl(&format!("{TWO}{line}\n")),
            Some(3),
            None,
            K::NotAnObject,
        );
        assert!(e.message.ends_with(found), "{e}");
    }
}

#[test]
fn jsonl_missing_fields() {
    fails(
        jsonl(&format!("{TWO}{{\"label\": \"x\"}}\n")),
        Some(3),
        Some("text"),
        K::MissingField,
    );
    let e = fails(
        jsonl(&format!("{TWO}{{\"text\": \"x\"}}\n")),
        Some(3),
        Some("label"),
        K::MissingField,
    );
    assert_eq!(e.to_string(), "line 3: field `label`: missing");
    fails(jsonl("{}\n"), Some(1), Some("text"), K::MissingField);
}

#[test]
fn jsonl_empty_fields() {
    fails(
        jsonl("{\"text\": \"\", \"label\": \"x\"}\n"),
        Some(1),
        Some("text"),
        K::EmptyField,
    );
    fails(
        jsonl("{\"text\": \" \\n\\t \", \"label\": \"x\"}\n"),
        Some(1),
        Some("text"),
        K::EmptyField,
    );
    fails(
        jsonl("{\"text\": \"a\", \"label\": \"\"}\n"),
        Some(1),
        Some("label"),
        K::EmptyField,
    );
    fails(
        jsonl("{\"text\": \"a\", \"label\": \"  \"}\n"),
        Some(1),
        Some("label"),
        K::EmptyField,
    );
}

#[test]
fn jsonl_wrong_types() {
    for text in ["1", "true", "null", "[\"a\"]", "{\"a\": 1}", "1.5"] {
        let line = format!("{{\"text\": {text}, \"label\": \"x\"}}\n");
        fails(jsonl(&line), Some(1), Some("text"), K::WrongType);
    }
    for label in ["null", "1.5", "1e3", "[\"a\"]", "{}"] {
        let line = format!("{{\"text\": \"a\", \"label\": {label}}}\n");
        let e = fails(jsonl(&line), Some(1), Some("label"), K::WrongType);
        assert!(
            e.message
                .starts_with("must be a string, an integer or a boolean, found"),
            "{e}"
        );
    }
}

#[test]
fn jsonl_duplicate_fields_are_refused() {
    let e = fails(
        jsonl("{\"text\": \"a\", \"label\": \"x\", \"label\": \"y\"}\n"),
        Some(1),
        Some("label"),
        K::InvalidJson,
    );
    assert_eq!(e.message, "appears twice");
}

// --- whole-file rules and limits -------------------------------------------------------

#[test]
fn empty_files() {
    for data in ["", "\n", "\u{FEFF}", "\u{FEFF}\r\n\n", "  \n\n"] {
        fails(jsonl(data), None, None, K::Empty);
    }
    for data in ["", "\n", "\u{FEFF}", "\u{FEFF}\r\n\n"] {
        fails(csv(data), None, None, K::Empty);
    }
}

#[test]
fn one_label_is_too_few() {
    let data = "{\"text\": \"a\", \"label\": \"x\"}\n{\"text\": \"b\", \"label\": \"x \"}\n";
    let e = fails(jsonl(data), None, Some("label"), K::TooFewClasses);
    assert!(e.message.contains("\"x\""), "{e}");
    fails(
        csv("text,label\na,1\nb,1\n"),
        None,
        Some("label"),
        K::TooFewClasses,
    );
}

fn limited(f: impl FnOnce(&mut DatasetLimits)) -> DatasetLimits {
    let mut limits = DatasetLimits::default();
    f(&mut limits);
    limits
}

#[test]
fn too_large_fails_while_streaming() {
    let limits = limited(|l| l.max_bytes = TWO.len() as u64);
    assert_eq!(
        check_with(JSONL, &limits, TWO.as_bytes()).unwrap().bytes,
        TWO.len() as u64
    );
    let data = format!("{TWO}\n");
    fails(
        check_with(JSONL, &limits, data.as_bytes()),
        None,
        None,
        K::TooLarge,
    );

    // The push that crosses the limit fails, before the end of the file.
    let mut validator = DatasetValidator::new(JSONL, limits.clone());
    validator.push(TWO.as_bytes()).unwrap();
    let e = validator.push(b"{").unwrap_err();
    assert_eq!(e.kind, K::TooLarge);
    // And the validator stays failed.
    assert_eq!(validator.push(b"").unwrap_err(), e);
    assert_eq!(validator.finish().unwrap_err(), e);

    // Errors in the records that fit come first, however the file is chunked.
    let bad = format!("{{}}\n{TWO}");
    fails(
        check_with(JSONL, &limits, bad.as_bytes()),
        Some(1),
        Some("text"),
        K::MissingField,
    );
}

#[test]
fn too_many_examples_names_the_first_one_over() {
    let limits = limited(|l| l.max_examples = 2);
    assert_eq!(
        check_with(JSONL, &limits, TWO.as_bytes()).unwrap().examples,
        2
    );
    let data = format!("{TWO}\n");
    check_with(JSONL, &limits, data.as_bytes()).unwrap();
    let data = format!("{TWO}{TWO}");
    fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(3),
        None,
        K::TooManyExamples,
    );
    let data = "text,label\na,x\nb,y\nc,z\n";
    fails(
        check_with(CSV, &limits, data.as_bytes()),
        Some(4),
        None,
        K::TooManyExamples,
    );
}

#[test]
fn text_length_is_counted_in_characters() {
    let limits = limited(|l| l.max_text_chars = 3);
    let ok = "{\"text\": \"été\", \"label\": \"x\"}\n{\"text\": \"🙂🙂🙂\", \"label\": \"y\"}\n";
    check_with(JSONL, &limits, ok.as_bytes()).unwrap();
    let long = format!("{ok}{{\"text\": \"abcd\", \"label\": \"x\"}}\n");
    let e = fails(
        check_with(JSONL, &limits, long.as_bytes()),
        Some(3),
        Some("text"),
        K::TextTooLong,
    );
    assert_eq!(e.message, "is 4 characters long; the limit is 3");
}

#[test]
fn label_length_is_limited() {
    let limits = limited(|l| l.max_label_chars = 3);
    let data = "text,label\na,abc\nb,\" abcd \"\n";
    fails(
        check_with(CSV, &limits, data.as_bytes()),
        Some(3),
        Some("label"),
        K::LabelTooLong,
    );
}

#[test]
fn too_many_classes_names_the_first_new_label_over() {
    let limits = limited(|l| l.max_classes = 2);
    let data = "text,label\na,x\nb,y\nc,x\nd,z\n";
    fails(
        check_with(CSV, &limits, data.as_bytes()),
        Some(5),
        Some("label"),
        K::TooManyClasses,
    );
    let data = "text,label\na,x\nb,y\nc,x\n";
    assert_eq!(
        check_with(CSV, &limits, data.as_bytes())
            .unwrap()
            .label_counts
            .len(),
        2
    );
}

#[test]
fn parse_examples_ignores_limits() {
    let limits = limited(|l| {
        l.max_bytes = 10;
        l.max_examples = 1;
        l.max_text_chars = 1;
        l.max_classes = 1;
    });
    assert!(check_with(JSONL, &limits, TWO.as_bytes()).is_err());
    assert_eq!(parse_examples(JSONL, TWO.as_bytes()).unwrap().len(), 2);
}

#[test]
fn limits_deserialize_with_defaults() {
    let limits: DatasetLimits = serde_json::from_str("{\"max_bytes\": 1000}").unwrap();
    assert_eq!(
        limits,
        DatasetLimits {
            max_bytes: 1000,
            ..DatasetLimits::default()
        }
    );
    assert!(serde_json::from_str::<DatasetLimits>("{\"max_byte\": 1}").is_err());
}

// --- task types: multi-label, text pairs, multi-task --------------------------------

mod chunking;
mod csv;
mod tasks;
