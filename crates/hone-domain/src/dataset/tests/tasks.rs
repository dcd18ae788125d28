//! Multi-label, text-pair and multi-task files; the helpers are the parent module's.

use super::*;

use TaskType::{Classification, MultiLabel, MultiTask};

/// As `check`, for a validator that was told the task type.
fn check_expecting(format: DatasetFormat, task_type: TaskType, data: &str) -> Outcome {
    let run = |chunks: &mut dyn Iterator<Item = &[u8]>| {
        let mut validator =
            DatasetValidator::new(format, DatasetLimits::default()).expecting(task_type);
        for chunk in chunks {
            validator.push(chunk)?;
        }
        validator.finish()
    };
    let data = data.as_bytes();
    let whole = run(&mut std::iter::once(data));
    for size in [1, 3, 7] {
        assert_eq!(run(&mut data.chunks(size)), whole, "chunks of {size} bytes");
    }
    for seed in 1..4 {
        let chunked = run(&mut irregular(data, seed, 13).into_iter());
        assert_eq!(chunked, whole, "irregular chunks, seed {seed}");
    }
    // A file that passed yields, without being told, the same type and examples.
    if let Ok(summary) = &whole {
        assert_eq!(&check(format, data).unwrap(), summary);
    }
    whole
}

fn examples(format: DatasetFormat, data: &str) -> Vec<Example> {
    parse_examples(format, data.as_bytes()).unwrap()
}

fn multi(labels: &[&str]) -> Target {
    Target::Multi(labels.iter().map(|l| l.to_string()).collect())
}

fn tasks(pairs: &[(&str, &str)]) -> Target {
    Target::Tasks(
        pairs
            .iter()
            .map(|(t, l)| (t.to_string(), l.to_string()))
            .collect(),
    )
}

fn example(text: &str, text_pair: Option<&str>, target: Target) -> Example {
    Example {
        text: text.into(),
        text_pair: text_pair.map(str::to_owned),
        target,
    }
}

fn task_counts(tasks: &[(&str, &[(&str, u64)])]) -> BTreeMap<String, BTreeMap<String, u64>> {
    tasks
        .iter()
        .map(|(t, labels)| (t.to_string(), counts(labels)))
        .collect()
}

// --- names ----------------------------------------------------------------------------

#[test]
fn task_type_names() {
    for t in TaskType::ALL {
        assert_eq!(TaskType::parse(t.as_str()), Some(t));
        assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
    }
    assert_eq!(MultiLabel.as_str(), "multi_label");
    assert_eq!(MultiTask.as_str(), "multi_task");
    assert_eq!(TaskType::parse("multi-label"), None);
    assert!(JSONL.supports(MultiTask));
    assert!(CSV.supports(Classification));
    assert!(!CSV.supports(MultiLabel));
}

#[test]
fn targets_serialize_as_in_the_upload() {
    for (target, json) in [
        (Target::Single("pos".into()), "\"pos\""),
        (multi(&["a", "b"]), "[\"a\",\"b\"]"),
        (multi(&[]), "[]"),
        (
            tasks(&[("topic", "x"), ("mood", "y")]),
            "{\"mood\":\"y\",\"topic\":\"x\"}",
        ),
    ] {
        assert_eq!(serde_json::to_string(&target).unwrap(), json);
        assert_eq!(serde_json::from_str::<Target>(json).unwrap(), target);
    }
    let e = example("a", None, Target::Single("x".into()));
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        "{\"text\":\"a\",\"target\":\"x\"}"
    );
}

#[test]
fn summaries_recorded_before_task_types_still_read() {
    let old = "{\"format\": \"csv\", \"bytes\": 3, \"sha256\": \"00\", \"examples\": 2, \
               \"label_counts\": {\"a\": 1, \"b\": 1}}";
    let summary: DatasetSummary = serde_json::from_str(old).unwrap();
    assert_eq!(summary.task_type, Classification);
    assert!(!summary.text_pairs);
    assert!(summary.task_label_counts.is_empty());
}

// --- single-label ---------------------------------------------------------------------

#[test]
fn single_label_files_are_classification_without_pairs() {
    let summary = jsonl(TWO).unwrap();
    assert_eq!(
        (summary.task_type, summary.text_pairs),
        (Classification, false)
    );
    assert!(summary.task_label_counts.is_empty());
    let summary = csv("text,label\na,x\nb,y\n").unwrap();
    assert_eq!(
        (summary.task_type, summary.text_pairs),
        (Classification, false)
    );
}

// --- multi-label ----------------------------------------------------------------------

const MULTI: &str = "{\"text\": \"goal and rain\", \"labels\": [\"sports\", \"weather\"]}\n\
                     {\"text\": \"nothing much\", \"labels\": []}\n\
                     {\"labels\": [\" sports \", 3, true], \"text\": \"a match\"}\n";

#[test]
fn multi_label_summary_and_examples() {
    let summary = jsonl(MULTI).unwrap();
    assert_eq!(summary.task_type, MultiLabel);
    assert!(!summary.text_pairs);
    assert_eq!(summary.examples, 3);
    // Examples carrying each label; the one with none counts as an example only.
    assert_eq!(
        summary.label_counts,
        counts(&[("3", 1), ("sports", 2), ("true", 1), ("weather", 1)])
    );
    assert!(summary.task_label_counts.is_empty());
    assert_eq!(
        examples(JSONL, MULTI),
        vec![
            example("goal and rain", None, multi(&["sports", "weather"])),
            example("nothing much", None, multi(&[])),
            example("a match", None, multi(&["sports", "3", "true"])),
        ]
    );
}

#[test]
fn multi_label_duplicates_in_a_row_are_refused() {
    let data = format!("{MULTI}{{\"text\": \"x\", \"labels\": [\"a\", \"b\", \"a\"]}}\n");
    let e = fails(jsonl(&data), Some(4), Some("labels"), K::DuplicateLabel);
    assert_eq!(e.message, "lists the label \"a\" twice");
    // After trimming, and across types: `1` and `"1"` are one label.
    let data = "{\"text\": \"x\", \"labels\": [\"a\", \"a \"]}\n";
    fails(jsonl(data), Some(1), Some("labels"), K::DuplicateLabel);
    let data = "{\"text\": \"x\", \"labels\": [1, \"1\"]}\n";
    fails(jsonl(data), Some(1), Some("labels"), K::DuplicateLabel);
}

#[test]
fn multi_label_labels_must_be_non_empty_scalars() {
    let e = fails(
        jsonl("{\"text\": \"x\", \"labels\": [\"a\", \" \"]}\n"),
        Some(1),
        Some("labels"),
        K::EmptyField,
    );
    assert_eq!(e.message, "the label at index 1 must not be empty");
    for (label, found) in [
        ("null", "null"),
        ("1.5", "a fraction"),
        ("[\"a\"]", "an array"),
    ] {
        let data = format!("{{\"text\": \"x\", \"labels\": [\"a\", {label}]}}\n");
        let e = fails(jsonl(&data), Some(1), Some("labels"), K::WrongType);
        assert!(
            e.message
                .starts_with("the label at index 1 must be a string"),
            "{e}"
        );
        assert!(e.message.contains(found), "{e}");
    }
}

#[test]
fn multi_label_needs_two_labels_over_the_file() {
    let none = "{\"text\": \"a\", \"labels\": []}\n{\"text\": \"b\", \"labels\": []}\n";
    let e = fails(jsonl(none), None, Some("labels"), K::TooFewClasses);
    assert!(e.message.contains("no example has a label"), "{e}");
    let one = "{\"text\": \"a\", \"labels\": [\"x\"]}\n{\"text\": \"b\", \"labels\": []}\n";
    let e = fails(jsonl(one), None, Some("labels"), K::TooFewClasses);
    assert!(e.message.contains("\"x\""), "{e}");
    // Two labels in one example are enough.
    let two = "{\"text\": \"a\", \"labels\": [\"x\", \"y\"]}\n";
    assert_eq!(
        jsonl(two).unwrap().label_counts,
        counts(&[("x", 1), ("y", 1)])
    );
}

#[test]
fn multi_label_limits() {
    let limits = limited(|l| l.max_classes = 2);
    let data = "{\"text\": \"a\", \"labels\": [\"x\", \"y\"]}\n{\"text\": \"b\", \"labels\": [\"y\", \"z\"]}\n";
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(2),
        Some("labels"),
        K::TooManyClasses,
    );
    assert!(e.message.contains("\"z\""), "{e}");
    let limits = limited(|l| l.max_label_chars = 3);
    let data = "{\"text\": \"a\", \"labels\": [\"x\", \"long\"]}\n";
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(1),
        Some("labels"),
        K::LabelTooLong,
    );
    assert_eq!(
        e.message,
        "the label at index 1 is 4 characters long; the limit is 3"
    );
}

// --- text pairs -----------------------------------------------------------------------

#[test]
fn jsonl_text_pairs() {
    let data = "{\"text\": \"A man sleeps.\", \"text_pair\": \"Someone rests.\", \"label\": \"entailment\"}\n\
                {\"text_pair\": \"  b \", \"text\": \"a\", \"label\": \"contradiction\"}\n";
    let summary = jsonl(data).unwrap();
    assert_eq!(
        (summary.task_type, summary.text_pairs),
        (Classification, true)
    );
    assert_eq!(
        examples(JSONL, data)[1],
        // Texts are kept as they are; only labels are trimmed.
        example("a", Some("  b "), Target::Single("contradiction".into()))
    );
    // Any task type can come in pairs.
    let data = "{\"text\": \"a\", \"text_pair\": \"b\", \"labels\": [\"x\", \"y\"]}\n";
    let summary = jsonl(data).unwrap();
    assert_eq!((summary.task_type, summary.text_pairs), (MultiLabel, true));
    let data = "{\"text\": \"a\", \"text_pair\": \"b\", \"labels\": {\"t\": \"x\"}}\n\
                {\"text\": \"c\", \"text_pair\": \"d\", \"labels\": {\"t\": \"y\"}}\n";
    let summary = jsonl(data).unwrap();
    assert_eq!((summary.task_type, summary.text_pairs), (MultiTask, true));
}

const PAIRS: &str = "{\"text\": \"a\", \"text_pair\": \"b\", \"label\": \"same\"}\n\
                     {\"text\": \"c\", \"text_pair\": \"d\", \"label\": \"different\"}\n";

#[test]
fn text_pairs_are_in_every_example_or_in_none() {
    let data = format!("{PAIRS}{{\"text\": \"e\", \"label\": \"same\"}}\n");
    let e = fails(jsonl(&data), Some(3), Some("text_pair"), K::TaskMismatch);
    assert_eq!(
        e.to_string(),
        "line 3: field `text_pair`: missing; the first example (line 1) has a `text_pair`, \
         so every example needs one"
    );
    let data = format!("{TWO}{{\"text\": \"e\", \"text_pair\": \"f\", \"label\": \"pos\"}}\n");
    let e = fails(jsonl(&data), Some(3), Some("text_pair"), K::TaskMismatch);
    assert!(e.message.contains("in every example or in none"), "{e}");
}

#[test]
fn text_pair_checks() {
    fails(
        jsonl(&format!(
            "{PAIRS}{{\"text\": \"e\", \"text_pair\": \" \", \"label\": \"x\"}}\n"
        )),
        Some(3),
        Some("text_pair"),
        K::EmptyField,
    );
    let e = fails(
        jsonl("{\"text\": \"e\", \"text_pair\": null, \"label\": \"x\"}\n"),
        Some(1),
        Some("text_pair"),
        K::WrongType,
    );
    assert_eq!(e.message, "must be a string, found null");
    fails(
        jsonl("{\"text\": \"e\", \"text_pair\": \"a\", \"text_pair\": \"b\", \"label\": \"x\"}\n"),
        Some(1),
        Some("text_pair"),
        K::InvalidJson,
    );
    let limits = limited(|l| l.max_text_chars = 3);
    let data = "{\"text\": \"abc\", \"text_pair\": \"abcd\", \"label\": \"x\"}\n";
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(1),
        Some("text_pair"),
        K::TextTooLong,
    );
    assert_eq!(e.message, "is 4 characters long; the limit is 3");
}

#[test]
fn csv_text_pairs() {
    let data =
        "text,text_pair,label\nA man sleeps.,Someone rests.,entailment\n\"a, b\",c,contradiction\n";
    let summary = csv(data).unwrap();
    assert_eq!(
        (summary.task_type, summary.text_pairs),
        (Classification, true)
    );
    assert_eq!(
        summary.label_counts,
        counts(&[("contradiction", 1), ("entailment", 1)])
    );
    assert_eq!(
        examples(CSV, data)[1],
        example("a, b", Some("c"), Target::Single("contradiction".into()))
    );
    // Any order, other columns ignored.
    let data = "label,id,text_pair,text\nx,1,b,a\ny,2,d,c\n";
    assert_eq!(
        examples(CSV, data)[0],
        example("a", Some("b"), Target::Single("x".into()))
    );
    assert!(csv(data).unwrap().text_pairs);
    fails(
        csv("text,text_pair,label\na,b,x\nc,,y\n"),
        Some(3),
        Some("text_pair"),
        K::EmptyField,
    );
    fails(
        csv("text_pair,text,text_pair,label\na,b,c,d\n"),
        Some(1),
        Some("text_pair"),
        K::InvalidCsv,
    );
}

// --- multi-task -----------------------------------------------------------------------

const TASKS: &str = "{\"text\": \"great goal\", \"labels\": {\"sentiment\": \"pos\", \"topic\": \"sports\"}}\n\
                     {\"text\": \"sad rain\", \"labels\": {\"sentiment\": \"neg\"}}\n\
                     {\"text\": \"vote\", \"labels\": {\" topic\": \"politics \", \"sentiment\": 0}}\n";

#[test]
fn multi_task_summary_and_examples() {
    let summary = jsonl(TASKS).unwrap();
    assert_eq!(summary.task_type, MultiTask);
    assert!(!summary.text_pairs);
    assert_eq!(summary.examples, 3);
    assert!(summary.label_counts.is_empty());
    assert_eq!(
        summary.task_label_counts,
        task_counts(&[
            ("sentiment", &[("0", 1), ("neg", 1), ("pos", 1)]),
            ("topic", &[("politics", 1), ("sports", 1)]),
        ])
    );
    assert_eq!(
        examples(JSONL, TASKS),
        vec![
            example(
                "great goal",
                None,
                tasks(&[("sentiment", "pos"), ("topic", "sports")])
            ),
            example("sad rain", None, tasks(&[("sentiment", "neg")])),
            example(
                "vote",
                None,
                tasks(&[("sentiment", "0"), ("topic", "politics")])
            ),
        ]
    );
}

#[test]
fn multi_task_example_must_label_a_task() {
    let data = format!("{TASKS}{{\"text\": \"x\", \"labels\": {{}}}}\n");
    let e = fails(jsonl(&data), Some(4), Some("labels"), K::EmptyField);
    assert!(e.message.starts_with("must label at least one task"), "{e}");
}

#[test]
fn multi_task_each_task_needs_two_classes() {
    // `topic` has one class; `sentiment` is fine.
    let data = "{\"text\": \"a\", \"labels\": {\"sentiment\": \"pos\", \"topic\": \"x\"}}\n\
                {\"text\": \"b\", \"labels\": {\"sentiment\": \"neg\"}}\n\
                {\"text\": \"c\", \"labels\": {\"topic\": \"x\"}}\n";
    let e = fails(jsonl(data), None, Some("labels"), K::TooFewClasses);
    assert!(e.message.starts_with("task \"topic\": "), "{e}");
    assert!(e.message.contains("\"x\""), "{e}");
    // The same labels in two tasks are two tasks' classes, not one pool.
    let data = "{\"text\": \"a\", \"labels\": {\"t1\": \"yes\", \"t2\": \"no\"}}\n\
                {\"text\": \"b\", \"labels\": {\"t1\": \"no\", \"t2\": \"no\"}}\n";
    let e = fails(jsonl(data), None, Some("labels"), K::TooFewClasses);
    assert!(e.message.starts_with("task \"t2\": "), "{e}");
}

#[test]
fn multi_task_names_and_labels() {
    let row = |labels: &str| format!("{{\"text\": \"x\", \"labels\": {labels}}}\n");
    let e = fails(
        jsonl(&row("{\"a\": \"x\", \" \": \"y\"}")),
        Some(1),
        Some("labels"),
        K::EmptyField,
    );
    assert_eq!(e.message, "a task name must not be empty");
    let e = fails(
        jsonl(&row("{\"a\": \"\"}")),
        Some(1),
        Some("labels"),
        K::EmptyField,
    );
    assert_eq!(e.message, "task \"a\": the label must not be empty");
    for labels in [
        "{\"a\": \"x\", \"a\": \"y\"}",
        "{\"a\": \"x\", \" a \": \"y\"}",
    ] {
        let e = fails(
            jsonl(&row(labels)),
            Some(1),
            Some("labels"),
            K::DuplicateTask,
        );
        assert_eq!(e.message, "names the task \"a\" twice");
    }
    let e = fails(
        jsonl(&row("{\"a\": null}")),
        Some(1),
        Some("labels"),
        K::WrongType,
    );
    assert_eq!(
        e.message,
        "task \"a\": the label must be a string, an integer or a boolean, found null; \
         leave a task out to not label it"
    );
    fails(
        jsonl(&row("{\"a\": [\"x\"]}")),
        Some(1),
        Some("labels"),
        K::WrongType,
    );
}

#[test]
fn multi_task_limits() {
    let limits = limited(|l| l.max_label_chars = 5);
    let data = "{\"text\": \"x\", \"labels\": {\"sentiment\": \"a\"}}\n";
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(1),
        Some("labels"),
        K::TaskNameTooLong,
    );
    assert!(
        e.message.contains("9 characters long; the limit is 5"),
        "{e}"
    );
    let data = "{\"text\": \"x\", \"labels\": {\"t\": \"abcdef\"}}\n";
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(1),
        Some("labels"),
        K::LabelTooLong,
    );
    assert_eq!(
        e.message,
        "the label of task \"t\" is 6 characters long; the limit is 5"
    );

    let limits = limited(|l| l.max_tasks = 2);
    let data = "{\"text\": \"a\", \"labels\": {\"t1\": \"x\", \"t2\": \"x\"}}\n\
                {\"text\": \"b\", \"labels\": {\"t1\": \"y\", \"t2\": \"y\"}}\n";
    check_with(JSONL, &limits, data.as_bytes()).unwrap();
    let data = format!("{data}{{\"text\": \"c\", \"labels\": {{\"t3\": \"x\"}}}}\n");
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(3),
        Some("labels"),
        K::TooManyTasks,
    );
    assert!(e.message.contains("\"t3\""), "{e}");

    // Classes are limited per task.
    let limits = limited(|l| l.max_classes = 2);
    let data = "{\"text\": \"a\", \"labels\": {\"t1\": \"x\", \"t2\": \"u\"}}\n\
                {\"text\": \"b\", \"labels\": {\"t1\": \"y\", \"t2\": \"v\"}}\n";
    check_with(JSONL, &limits, data.as_bytes()).unwrap();
    let data = format!("{data}{{\"text\": \"c\", \"labels\": {{\"t2\": \"w\"}}}}\n");
    let e = fails(
        check_with(JSONL, &limits, data.as_bytes()),
        Some(3),
        Some("labels"),
        K::TooManyClasses,
    );
    assert!(e.message.starts_with("task \"t2\": the label \"w\""), "{e}");
}

// --- inference and agreement ----------------------------------------------------------

#[test]
fn the_first_example_sets_the_task_type() {
    let single = "{\"text\": \"s\", \"label\": \"x\"}\n";
    let list = "{\"text\": \"m\", \"labels\": [\"x\"]}\n";
    let object = "{\"text\": \"t\", \"labels\": {\"task\": \"x\"}}\n";
    for (first, file, later, field, expected, found) in [
        (single, TWO, list, "labels", "single-label", "multi-label"),
        (single, TWO, object, "labels", "single-label", "multi-task"),
        (list, MULTI, single, "label", "multi-label", "single-label"),
        (list, MULTI, object, "labels", "multi-label", "multi-task"),
        (object, TASKS, single, "label", "multi-task", "single-label"),
        (object, TASKS, list, "labels", "multi-task", "multi-label"),
    ] {
        let lines = file.lines().count() as u64;
        let data = format!("{file}{first}{later}");
        let e = fails(jsonl(&data), Some(lines + 2), Some(field), K::TaskMismatch);
        assert!(
            e.message
                .starts_with(&format!("expected {expected} examples")),
            "{e}"
        );
        assert!(e.message.contains("like the first example (line 1)"), "{e}");
        assert!(
            e.message.contains(&format!("but found {found} examples")),
            "{e}"
        );
    }
    let e = fails(
        jsonl(&format!(
            "{TWO}{{\"text\": \"m\", \"labels\": [\"pos\", \"neg\"]}}\n"
        )),
        Some(3),
        Some("labels"),
        K::TaskMismatch,
    );
    assert_eq!(
        e.to_string(),
        "line 3: field `labels`: expected single-label examples (one label in `label`) like \
         the first example (line 1), but found multi-label examples (a list of labels in \
         `labels`)"
    );
}

#[test]
fn a_byte_order_mark_does_not_hide_the_first_example() {
    let data = format!("\u{FEFF}{MULTI}\n\n");
    assert_eq!(jsonl(&data).unwrap().task_type, MultiLabel);
}

#[test]
fn a_mismatch_is_found_before_what_else_is_wrong_with_the_row() {
    // The label's type and the empty text would be refused too; the type comes first.
    let data = format!("{TWO}{{\"text\": \"\", \"labels\": [null]}}\n");
    fails(jsonl(&data), Some(3), Some("labels"), K::TaskMismatch);
    // But a row that cannot be read at all says so.
    let data = format!("{TWO}{{\"labels\": [\"a\"]}}\n");
    fails(jsonl(&data), Some(3), Some("text"), K::MissingField);
}

#[test]
fn label_and_labels_together_are_refused() {
    let e = fails(
        jsonl("{\"text\": \"a\", \"label\": \"x\", \"labels\": [\"x\"]}\n"),
        Some(1),
        Some("labels"),
        K::ConflictingFields,
    );
    assert!(e.message.contains("`label` and `labels`"), "{e}");
}

#[test]
fn a_missing_target_names_the_field_the_file_uses() {
    let e = fails(
        jsonl("{\"text\": \"a\"}\n"),
        Some(1),
        Some("label"),
        K::MissingField,
    );
    assert!(e.message.contains("`labels`"), "{e}");
    let e = fails(
        jsonl(&format!("{MULTI}{{\"text\": \"a\"}}\n")),
        Some(4),
        Some("labels"),
        K::MissingField,
    );
    assert_eq!(e.message, "missing");
    let e = fails(
        check_expecting(JSONL, MultiTask, "{\"text\": \"a\"}\n"),
        Some(1),
        Some("labels"),
        K::MissingField,
    );
    assert_eq!(e.message, "missing");
}

#[test]
fn labels_must_be_a_list_or_an_object() {
    for (labels, found) in [
        ("\"pos\"", "a string; for one label per example use `label`"),
        ("null", "null"),
        ("3", "an integer"),
    ] {
        let data = format!("{{\"text\": \"a\", \"labels\": {labels}}}\n");
        let e = fails(jsonl(&data), Some(1), Some("labels"), K::WrongType);
        assert_eq!(
            e.message,
            format!("must be a list of labels or an object of task → label, found {found}")
        );
    }
    let e = fails(
        jsonl("{\"text\": \"a\", \"label\": [\"x\", \"y\"]}\n"),
        Some(1),
        Some("label"),
        K::WrongType,
    );
    assert!(
        e.message
            .ends_with("for several labels per example use `labels`"),
        "{e}"
    );
}

// --- an explicit task type ------------------------------------------------------------

#[test]
fn an_expected_task_type_must_match_the_first_example() {
    for (task_type, data) in [
        (Classification, TWO),
        (MultiLabel, MULTI),
        (MultiTask, TASKS),
        (Classification, PAIRS),
    ] {
        let summary = check_expecting(JSONL, task_type, data).unwrap();
        assert_eq!(summary.task_type, task_type);
    }
    for (task_type, data, field, found) in [
        (MultiLabel, TWO, "label", "single-label"),
        (MultiTask, MULTI, "labels", "multi-label"),
        (Classification, TASKS, "labels", "multi-task"),
    ] {
        let e = fails(
            check_expecting(JSONL, task_type, data),
            Some(1),
            Some(field),
            K::TaskMismatch,
        );
        assert!(
            e.message.contains("the task type requested for this file"),
            "{e}"
        );
        assert!(
            e.message.contains(&format!("but found {found} examples")),
            "{e}"
        );
    }
    fails(
        check_expecting(JSONL, MultiLabel, &format!("\u{FEFF}{TWO}")),
        Some(1),
        Some("label"),
        K::TaskMismatch,
    );
    // Text pairs are not part of the task type: both are fine.
    check_expecting(JSONL, Classification, PAIRS).unwrap();
    fails(check_expecting(JSONL, MultiLabel, ""), None, None, K::Empty);
}

#[test]
fn csv_cannot_hold_multi_label_or_multi_task_data() {
    for task_type in [MultiLabel, MultiTask] {
        for data in ["", "text,label\na,x\nb,y\n"] {
            let e = fails(
                check_expecting(CSV, task_type, data),
                None,
                None,
                K::UnsupportedTaskType,
            );
            assert!(e.message.contains("JSON Lines"), "{e}");
            assert!(e.message.contains(task_type.as_str()), "{e}");
        }
    }
    // Refused at once, before any byte.
    let mut validator = DatasetValidator::new(CSV, DatasetLimits::default()).expecting(MultiLabel);
    assert_eq!(
        validator.push(b"").unwrap_err().kind,
        K::UnsupportedTaskType
    );
    let summary = check_expecting(CSV, Classification, "text,text_pair,label\na,b,x\nc,d,y\n");
    assert!(summary.unwrap().text_pairs);
    let e = fails(
        csv("text,labels\na,x\n"),
        Some(1),
        Some("label"),
        K::MissingColumn,
    );
    assert!(e.message.contains("JSON Lines"), "{e}");
}

// --- any chunking, any task type -------------------------------------------------------

/// Valid lines of each shape, then lines of other shapes or broken ones.
const SHAPED: &[(&[u8], Option<TaskType>, bool)] = &[
    (
        b"{\"text\": \"a b\", \"label\": \"pos\"}",
        Some(Classification),
        false,
    ),
    (
        b"{\"label\": 1, \"text\": \"\xC3\xA9t\xC3\xA9\"}",
        Some(Classification),
        false,
    ),
    (
        b"{\"text\": \"p\", \"text_pair\": \"q\\\"\", \"label\": \"neg\"}",
        Some(Classification),
        true,
    ),
    (
        b"{\"text_pair\": \"\xF0\x9F\x99\x82\", \"label\": true, \"text\": \"r\"}",
        Some(Classification),
        true,
    ),
    (
        b"{\"text\": \"m\", \"labels\": [\"x\", \"y\"]}",
        Some(MultiLabel),
        false,
    ),
    (
        b"{\"text\": \"\\u00e9\", \"labels\": [ ], \"id\": [1]}",
        Some(MultiLabel),
        false,
    ),
    (
        b"{\"text\": \"m\", \"labels\": [\"z\", 2], \"text_pair\": \"n\"}",
        Some(MultiLabel),
        true,
    ),
    (
        b"{\"text\": \"m\", \"labels\": [\"y\"], \"text_pair\": \"o\"}",
        Some(MultiLabel),
        true,
    ),
    (
        b"{\"text\": \"t\", \"labels\": {\"s\": \"pos\", \"k\": \"a\"}}",
        Some(MultiTask),
        false,
    ),
    (
        b"{\"text\": \"t\", \"labels\": {\"s\": \"neg\"}}",
        Some(MultiTask),
        false,
    ),
    (
        b"{\"labels\": {\"k\": \"b\", \"s\": \"neg\"}, \"text\": \"t\"}",
        Some(MultiTask),
        false,
    ),
    (
        b"{\"text\": \"t\", \"labels\": {\"k\": \"b\", \"s\": 1}, \"text_pair\": \"u\"}",
        Some(MultiTask),
        true,
    ),
    (
        b"{\"text\": \"t\", \"labels\": {\"s\": \"neg\", \"k\": \"a\"}, \"text_pair\": \"v\"}",
        Some(MultiTask),
        true,
    ),
    // Broken whatever the file.
    (
        b"{\"text\": \"m\", \"labels\": [\"x\", \"x\"]}",
        None,
        false,
    ),
    (b"{\"text\": \"t\", \"labels\": {}}", None, false),
    (
        b"{\"text\": \"t\", \"label\": \"x\", \"labels\": []}",
        None,
        false,
    ),
    (b"{\"text\": \"t\", \"labels\": {\"s\": null}}", None, false),
];

fn random_shaped_file(rng: &mut Rng) -> Vec<u8> {
    let task_type = TaskType::ALL[rng.below(3)];
    let pairs = rng.below(2) == 0;
    let fitting: Vec<&[u8]> = SHAPED
        .iter()
        .filter(|(_, t, p)| *t == Some(task_type) && *p == pairs)
        .map(|(line, _, _)| *line)
        .collect();
    let mut data = Vec::new();
    if rng.below(4) == 0 {
        data.extend_from_slice(BOM);
    }
    for _ in 0..rng.below(10) {
        let line = if rng.below(20) == 0 {
            SHAPED[rng.below(SHAPED.len())].0
        } else {
            fitting[rng.below(fitting.len())]
        };
        data.extend_from_slice(line);
        data.extend_from_slice(if rng.below(3) == 0 { b"\r\n" } else { b"\n" });
    }
    if rng.below(3) == 0 {
        data.pop();
    }
    data
}

#[test]
fn any_chunking_gives_the_same_outcome_for_every_task_type() {
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut valid = BTreeMap::new();
    for _ in 0..300 {
        let data = random_shaped_file(&mut rng);
        if let Ok(summary) = check(JSONL, &data) {
            *valid
                .entry((summary.task_type, summary.text_pairs))
                .or_insert(0) += 1;
        }
    }
    // Every shape passes sometimes, and not everything passes.
    assert_eq!(valid.len(), 6, "{valid:?}");
    let total: i32 = valid.values().sum();
    assert!((100..290).contains(&total), "{total} of 300 valid");
}

#[test]
fn csv_pairs_in_any_chunking() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    let rows: &[&[u8]] = &[
        b"a,b,x",
        b"\"multi\nline\",\"with, comma\",y",
        b"\xC3\xA9,\"\"\"q\"\"\", z ",
        b"",
        b"a,,x",
    ];
    let mut valid = 0;
    for _ in 0..100 {
        let mut data = b"text,text_pair,label\n".to_vec();
        for _ in 0..rng.below(8) {
            let pick = if rng.below(15) == 0 { 4 } else { rng.below(4) };
            data.extend_from_slice(rows[pick]);
            data.extend_from_slice(if rng.below(3) == 0 { b"\r\n" } else { b"\n" });
        }
        if let Ok(summary) = check(CSV, &data) {
            assert!(summary.text_pairs);
            valid += 1;
        }
    }
    assert!((20..95).contains(&valid), "{valid} of 100 valid");
}
