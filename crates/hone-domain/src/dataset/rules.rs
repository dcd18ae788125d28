//! The content rules, the same for every format: what an example must hold, that every
//! example agrees with the first on task type, pairs and modality, and the limits on
//! lengths, counts and classes. The syntaxes (CSV, JSON Lines, zip) only cut their
//! input into rows; keeping the rules in one place is what makes a file mean the same
//! whatever format it came in.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};

use super::error::{DatasetError, DatasetErrorKind};
use super::row::{Input, Row, RowTarget};
use super::types::{DatasetLimits, Modality, TaskType};

/// What the first example (or the caller) set for the whole file.
#[derive(Clone, Copy)]
pub(super) struct Shape {
    pub(super) task_type: TaskType,
    pub(super) text_pairs: bool,
    pub(super) modality: Modality,
    /// Of the first example, to point the user at it.
    line: u64,
}

/// The content rules, the same for both formats.
pub(super) struct Rules {
    pub(super) limits: DatasetLimits,
    /// Stated by the caller; checked against the first example.
    pub(super) expected: Option<TaskType>,
    /// Set by the first example that got as far as its shape.
    pub(super) shape: Option<Shape>,
    pub(super) examples: u64,
    pub(super) label_counts: BTreeMap<String, u64>,
    pub(super) task_label_counts: BTreeMap<String, BTreeMap<String, u64>>,
}

impl Rules {
    /// The task type the next example must have, if that is known yet.
    pub(super) fn task_type(&self) -> Option<TaskType> {
        self.shape.map(|s| s.task_type).or(self.expected)
    }

    /// Of the first example; text until one was seen.
    pub(super) fn modality(&self) -> Modality {
        self.shape.map_or(Modality::Text, |s| s.modality)
    }

    /// Checked before the example's content, because a row of another type is better
    /// explained as such than by whatever its content breaks.
    pub(super) fn check_shape(
        &mut self,
        line: u64,
        task_type: TaskType,
        text_pairs: bool,
        modality: Modality,
    ) -> Result<(), DatasetError> {
        let mismatch = |message: String, field| {
            DatasetError::new(DatasetErrorKind::TaskMismatch, message)
                .at(line)
                .on(field)
        };
        let Some(shape) = self.shape else {
            if let Some(expected) = self.expected.filter(|&e| e != task_type) {
                return Err(mismatch(
                    format!(
                        "expected {}, the task type requested for this file, but found {}",
                        expected.shape(),
                        task_type.shape()
                    ),
                    task_type.field(),
                ));
            }
            self.shape = Some(Shape {
                task_type,
                text_pairs,
                modality,
                line,
            });
            return Ok(());
        };
        if shape.modality != modality {
            let field = match modality {
                Modality::Text => "text",
                Modality::Image => "image",
            };
            return Err(DatasetError::new(
                DatasetErrorKind::ModalityMismatch,
                format!(
                    "the first example (line {}) is {}, so every example must be; a file \
                     holds text or images, not both",
                    shape.line,
                    match shape.modality {
                        Modality::Text => "a text",
                        Modality::Image => "an image",
                    }
                ),
            )
            .at(line)
            .on(field));
        }
        if shape.task_type != task_type {
            return Err(mismatch(
                format!(
                    "expected {} like the first example (line {}), but found {}",
                    shape.task_type.shape(),
                    shape.line,
                    task_type.shape()
                ),
                task_type.field(),
            ));
        }
        match (shape.text_pairs, text_pairs) {
            (true, false) => Err(mismatch(
                format!(
                    "missing; the first example (line {}) has a `text_pair`, so every \
                     example needs one",
                    shape.line
                ),
                "text_pair",
            )),
            (false, true) => Err(mismatch(
                format!(
                    "the first example (line {}) has no `text_pair`; text pairs must be in \
                     every example or in none",
                    shape.line
                ),
                "text_pair",
            )),
            _ => Ok(()),
        }
    }

    pub(super) fn accept<F: FnMut(Row<'_>)>(
        &mut self,
        line: u64,
        row: Row<'_>,
        sink: &mut F,
    ) -> Result<(), DatasetError> {
        let error =
            |kind, message: String, field| DatasetError::new(kind, message).at(line).on(field);
        let Row { input, target } = row;
        if let Input::Text { text, text_pair } = &input {
            let empty = |field| {
                error(
                    DatasetErrorKind::EmptyField,
                    "must not be empty".into(),
                    field,
                )
            };
            if text.trim().is_empty() {
                return Err(empty("text"));
            }
            if text_pair.as_deref().is_some_and(|p| p.trim().is_empty()) {
                return Err(empty("text_pair"));
            }
        }
        let target = clean(target).map_err(|e| e.at(line))?;
        check_nul(&input, &target).map_err(|e| e.at(line))?;
        if let Input::Text { text, text_pair } = &input {
            let max = self.limits.max_text_chars;
            for (field, value) in [("text", Some(text)), ("text_pair", text_pair.as_ref())] {
                if let Some(chars) = value.and_then(|v| over(v, max)) {
                    let message = format!("is {chars} characters long; the limit is {max}");
                    return Err(error(DatasetErrorKind::TextTooLong, message, field));
                }
            }
        }
        self.check_lengths(&target).map_err(|e| e.at(line))?;
        if self.examples >= self.limits.max_examples {
            return Err(DatasetError::new(
                DatasetErrorKind::TooManyExamples,
                format!("more than {} examples", self.limits.max_examples),
            )
            .at(line));
        }
        self.count(&target).map_err(|e| e.at(line))?;
        self.examples += 1;
        sink(Row { input, target });
        Ok(())
    }

    fn check_lengths(&self, target: &RowTarget<'_>) -> Result<(), DatasetError> {
        let max = self.limits.max_label_chars;
        let too_long = |kind, what: String, chars| {
            let message = format!("{what} is {chars} characters long; the limit is {max}");
            Err(DatasetError::new(kind, message))
        };
        match target {
            RowTarget::Single(label) => {
                if let Some(chars) = over(label, max) {
                    let message = format!("is {chars} characters long; the limit is {max}");
                    return Err(
                        DatasetError::new(DatasetErrorKind::LabelTooLong, message).on("label")
                    );
                }
            }
            RowTarget::Multi(labels) => {
                for (i, label) in labels.iter().enumerate() {
                    if let Some(chars) = over(label, max) {
                        let kind = DatasetErrorKind::LabelTooLong;
                        return too_long(kind, format!("the label at index {i}"), chars)
                            .map_err(|e| e.on("labels"));
                    }
                }
            }
            RowTarget::Tasks(tasks) => {
                for (task, label) in tasks {
                    if let Some(chars) = over(task, max) {
                        let kind = DatasetErrorKind::TaskNameTooLong;
                        let prefix: String = task.chars().take(20).collect();
                        return too_long(kind, format!("the task name {prefix:?}…"), chars)
                            .map_err(|e| e.on("labels"));
                    }
                    if let Some(chars) = over(label, max) {
                        let kind = DatasetErrorKind::LabelTooLong;
                        return too_long(kind, format!("the label of task {task:?}"), chars)
                            .map_err(|e| e.on("labels"));
                    }
                }
            }
        }
        Ok(())
    }

    fn count(&mut self, target: &RowTarget<'_>) -> Result<(), DatasetError> {
        let max = self.limits.max_classes;
        let beyond = |what: String, field| {
            DatasetError::new(
                DatasetErrorKind::TooManyClasses,
                format!("{what} beyond the limit of {max} distinct labels"),
            )
            .on(field)
        };
        match target {
            RowTarget::Single(label) => {
                if !add(&mut self.label_counts, label, max) {
                    return Err(beyond("a label".into(), "label"));
                }
            }
            RowTarget::Multi(labels) => {
                for label in labels {
                    if !add(&mut self.label_counts, label, max) {
                        return Err(beyond(format!("the label {label:?} is"), "labels"));
                    }
                }
            }
            RowTarget::Tasks(tasks) => {
                for (task, label) in tasks {
                    if !self.task_label_counts.contains_key(task.as_ref()) {
                        if self.task_label_counts.len() >= self.limits.max_tasks {
                            return Err(DatasetError::new(
                                DatasetErrorKind::TooManyTasks,
                                format!(
                                    "the task {task:?} is beyond the limit of {} distinct tasks",
                                    self.limits.max_tasks
                                ),
                            )
                            .on("labels"));
                        }
                        self.task_label_counts
                            .insert(task.to_string(), BTreeMap::new());
                    }
                    let counts = self.task_label_counts.get_mut(task.as_ref());
                    if !counts.is_some_and(|counts| add(counts, label, max)) {
                        let what = format!("task {task:?}: the label {label:?} is");
                        return Err(beyond(what, "labels"));
                    }
                }
            }
        }
        Ok(())
    }

    pub(super) fn finish(&self) -> Result<(), DatasetError> {
        if self.examples == 0 {
            return Err(DatasetError::new(
                DatasetErrorKind::Empty,
                "the file contains no examples",
            ));
        }
        let too_few = |message: String, field| {
            Err(DatasetError::new(DatasetErrorKind::TooFewClasses, message).on(field))
        };
        let mut labels = self.label_counts.keys();
        match self.task_type() {
            Some(TaskType::Classification) | None => {
                if let (1, Some(only)) = (self.label_counts.len(), labels.next()) {
                    return too_few(
                        format!(
                            "every example has the label {only:?}; a classifier needs at least \
                             two labels"
                        ),
                        "label",
                    );
                }
            }
            Some(TaskType::MultiLabel) => match (self.label_counts.len(), labels.next()) {
                (0, _) => {
                    return too_few(
                        "no example has a label; a multi-label classifier needs at least two"
                            .into(),
                        "labels",
                    )
                }
                (1, Some(only)) => {
                    return too_few(
                        format!(
                            "every label is {only:?}; a multi-label classifier needs at least \
                             two labels"
                        ),
                        "labels",
                    )
                }
                _ => {}
            },
            Some(TaskType::MultiTask) => {
                for (task, counts) in &self.task_label_counts {
                    if let (1, Some(only)) = (counts.len(), counts.keys().next()) {
                        return too_few(
                            format!(
                                "task {task:?}: every example that labels it has the label \
                                 {only:?}; each task needs at least two labels"
                            ),
                            "labels",
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

/// Counts `label`, unless it would be one distinct label more than `max`.
fn add(counts: &mut BTreeMap<String, u64>, label: &str, max: usize) -> bool {
    if let Some(count) = counts.get_mut(label) {
        *count += 1;
    } else if counts.len() >= max {
        return false;
    } else {
        counts.insert(label.to_owned(), 1);
    }
    true
}

/// Trims labels and task names and refuses what trimming leaves empty or repeated.
fn clean(target: RowTarget<'_>) -> Result<RowTarget<'_>, DatasetError> {
    let refuse = |kind, message: String, field| Err(DatasetError::new(kind, message).on(field));
    let empty = DatasetErrorKind::EmptyField;
    Ok(match target {
        RowTarget::Single(label) => {
            let label = trimmed(label);
            if label.is_empty() {
                return refuse(empty, "must not be empty".into(), "label");
            }
            RowTarget::Single(label)
        }
        RowTarget::Multi(labels) => {
            let labels: Vec<_> = labels.into_iter().map(trimmed).collect();
            let mut seen = HashSet::with_capacity(labels.len());
            for (i, label) in labels.iter().enumerate() {
                if label.is_empty() {
                    return refuse(
                        empty,
                        format!("the label at index {i} must not be empty"),
                        "labels",
                    );
                }
                if !seen.insert(label.as_ref()) {
                    return refuse(
                        DatasetErrorKind::DuplicateLabel,
                        format!("lists the label {label:?} twice"),
                        "labels",
                    );
                }
            }
            RowTarget::Multi(labels)
        }
        RowTarget::Tasks(tasks) => {
            if tasks.is_empty() {
                return refuse(
                    empty,
                    "must label at least one task; leave out only the tasks an example has \
                     no label for"
                        .into(),
                    "labels",
                );
            }
            let tasks: Vec<_> = tasks
                .into_iter()
                .map(|(task, label)| (trimmed(task), trimmed(label)))
                .collect();
            let mut seen = HashSet::with_capacity(tasks.len());
            for (task, label) in &tasks {
                if task.is_empty() {
                    return refuse(empty, "a task name must not be empty".into(), "labels");
                }
                if label.is_empty() {
                    let message = format!("task {task:?}: the label must not be empty");
                    return refuse(empty, message, "labels");
                }
                if !seen.insert(task.as_ref()) {
                    return refuse(
                        DatasetErrorKind::DuplicateTask,
                        format!("names the task {task:?} twice"),
                        "labels",
                    );
                }
            }
            RowTarget::Tasks(tasks)
        }
    })
}

/// Trims without copying unless there is something to trim in an owned string.
fn trimmed(s: Cow<'_, str>) -> Cow<'_, str> {
    match s {
        Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
        Cow::Owned(s) if s.trim().len() == s.len() => Cow::Owned(s),
        Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
    }
}

/// The length in characters when it is over `max`; counting only when the byte length
/// says it might be keeps the common case free.
fn over(s: &str, max: usize) -> Option<usize> {
    if s.len() <= max {
        return None;
    }
    let chars = s.chars().count();
    (chars > max).then_some(chars)
}

/// No text, label or task name may hold a NUL character: labels are stored in
/// Postgres, which stores none, and a NUL in a text is no character a model reads.
fn check_nul(input: &Input<'_>, target: &RowTarget<'_>) -> Result<(), DatasetError> {
    let nul = |field, what: &str| {
        Err(DatasetError::new(
            DatasetErrorKind::NulCharacter,
            format!("{what} contains a NUL character (\\u0000)"),
        )
        .on(field))
    };
    if let Input::Text { text, text_pair } = input {
        if text.contains('\0') {
            return nul("text", "the text");
        }
        if text_pair.as_deref().is_some_and(|p| p.contains('\0')) {
            return nul("text_pair", "the text pair");
        }
    }
    match target {
        RowTarget::Single(label) if label.contains('\0') => nul("label", "the label"),
        RowTarget::Multi(labels) => match labels.iter().position(|l| l.contains('\0')) {
            Some(i) => nul("labels", &format!("the label at index {i}")),
            None => Ok(()),
        },
        RowTarget::Tasks(tasks) => {
            match tasks
                .iter()
                .find(|(task, label)| task.contains('\0') || label.contains('\0'))
            {
                Some((task, _)) => nul("labels", &format!("task {task:?} or its label")),
                None => Ok(()),
            }
        }
        _ => Ok(()),
    }
}
