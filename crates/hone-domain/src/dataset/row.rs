//! The example as it passes from a syntax (CSV, JSON Lines, zip) through the rules to
//! whoever collects it. Its texts are borrowed from the input where they can be, so
//! that validating an upload allocates none; only a caller that keeps examples turns
//! rows into owned [`Example`]s. Every stage names this type, so it sits below them.

use std::borrow::Cow;

use super::types::{Example, Target};

/// An example as the parser hands it on: borrowed from the input where it can be, so
/// that validating allocates no texts.
pub(super) struct Row<'a> {
    pub(super) input: Input<'a>,
    pub(super) target: RowTarget<'a>,
}

pub(super) enum Input<'a> {
    Text {
        text: Cow<'a, str>,
        text_pair: Option<Cow<'a, str>>,
    },
    /// PNG or JPEG bytes as uploaded, decoded and bounds-checked already.
    Image(Vec<u8>),
}

pub(super) enum RowTarget<'a> {
    Single(Cow<'a, str>),
    Multi(Vec<Cow<'a, str>>),
    /// In the file's order; duplicates are refused by [`Rules::accept`](super::rules::Rules::accept).
    Tasks(Vec<(Cow<'a, str>, Cow<'a, str>)>),
}

impl RowTarget<'_> {
    pub(super) fn into_target(self) -> Target {
        match self {
            RowTarget::Single(label) => Target::Single(label.into_owned()),
            RowTarget::Multi(labels) => {
                Target::Multi(labels.into_iter().map(Cow::into_owned).collect())
            }
            RowTarget::Tasks(tasks) => Target::Tasks(
                tasks
                    .into_iter()
                    .map(|(task, label)| (task.into_owned(), label.into_owned()))
                    .collect(),
            ),
        }
    }
}

impl Row<'_> {
    /// `None` for an image row, which [`super::images::ImageExample`] holds instead.
    pub(super) fn into_example(self) -> Option<Example> {
        match self.input {
            Input::Text { text, text_pair } => Some(Example {
                text: text.into_owned(),
                text_pair: text_pair.map(Cow::into_owned),
                target: self.target.into_target(),
            }),
            Input::Image(_) => None,
        }
    }
}
