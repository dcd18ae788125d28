//! Training datasets for classification, checked while they stream in: one label per
//! example, several labels per example, or one label per task of a multi-task model,
//! each on single texts, on text pairs or on images ([`images`]).
//!
//! An upload is validated chunk by chunk as it arrives, so that a bad file is refused
//! with its line and reason before anything is kept, and memory stays bounded by the
//! longest record rather than by the file. The trainer reads stored files back through
//! [`parse_examples`], which drives the very same parser: a file that passed at upload
//! cannot fail, or mean something else, at training time.
//!
//! What a file trains is stated by its first example (or by the caller, see
//! [`DatasetValidator::expecting`]) and every later example must agree: a file that
//! mixes task types nearly always means two files were concatenated, and a trainer
//! could only guess which rows to drop.
//!
//! The modules import downwards only, so that a stage can change without the ones
//! below it noticing: `types` and `error` are the words every stage uses; `row` is an
//! example on its way from a syntax to a sink; `rules` are the content rules all
//! formats share; `csv`, `jsonl` and [`images`] (with `images::check` for one image)
//! cut their syntax into rows; `parser` drives a syntax over a stream; on top sit the
//! entry points, [`DatasetValidator`], [`parse_examples`] and
//! [`images::read_image_examples`].

use std::io::{Read, Seek};

use sha2::{Digest, Sha256};

mod csv;
mod error;
pub mod images;
mod jsonl;
mod parser;
mod row;
mod rules;
mod types;

pub use error::{DatasetError, DatasetErrorKind};
pub use types::{
    DatasetFormat, DatasetLimits, DatasetSummary, Example, Modality, Target, TaskType,
};

use parser::Parser;
use row::Row;

/// Checks an upload as it streams in, without keeping more than one record of it.
///
/// After the first error every later call returns that error again, so a caller that
/// keeps pushing cannot get a file half-validated.
pub struct DatasetValidator {
    format: DatasetFormat,
    max_bytes: u64,
    parser: Parser,
    hasher: Sha256,
    bytes: u64,
    failed: Option<DatasetError>,
}

impl DatasetValidator {
    /// Takes the task type from the first example.
    pub fn new(format: DatasetFormat, limits: DatasetLimits) -> Self {
        Self {
            format,
            max_bytes: limits.max_bytes,
            parser: Parser::new(format, limits),
            hasher: Sha256::new(),
            bytes: 0,
            failed: None,
        }
    }

    /// Requires `task_type` of the first example too, for a caller who knows what the
    /// file is for: a wrong file is then refused at its first line rather than
    /// accepted as another task. Call it before the first [`DatasetValidator::push`].
    /// A type the format cannot hold fails every later call.
    pub fn expecting(mut self, task_type: TaskType) -> Self {
        self.parser.rules.expected = Some(task_type);
        if !self.format.supports(task_type) {
            self.failed.get_or_insert(DatasetError::new(
                DatasetErrorKind::UnsupportedTaskType,
                match self.format {
                    DatasetFormat::Zip => format!(
                        "a zip of class folders holds single-label classification data \
                         (one folder per class); upload {task_type} images as JSON Lines \
                         with an `image` field"
                    ),
                    _ => format!(
                        "{} files hold one label per example (optionally with a text pair); \
                         upload {task_type} data as JSON Lines",
                        self.format.as_str().to_ascii_uppercase()
                    ),
                },
            ));
        }
        self
    }

    /// Validates every record the chunk completes; an incomplete last record waits for
    /// the next chunk or for [`DatasetValidator::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), DatasetError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.push_inner(chunk);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
        }
        result
    }

    fn push_inner(&mut self, chunk: &[u8]) -> Result<(), DatasetError> {
        let room = self.max_bytes.saturating_sub(self.bytes);
        if chunk.len() as u64 > room {
            // Records that fit are checked first, so the error a file gets does not
            // depend on how the upload happened to be chunked.
            let fits = chunk
                .get(..usize::try_from(room).unwrap_or(chunk.len()))
                .unwrap_or(chunk);
            self.parser.feed(fits, &mut ignore)?;
            return Err(DatasetError::new(
                DatasetErrorKind::TooLarge,
                format!(
                    "the file is larger than the limit of {} bytes",
                    self.max_bytes
                ),
            ));
        }
        self.hasher.update(chunk);
        self.bytes += chunk.len() as u64;
        self.parser.feed(chunk, &mut ignore)
    }

    /// Validates the last record, which needs no final newline, then the rules about
    /// the whole file.
    pub fn finish(mut self) -> Result<DatasetSummary, DatasetError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if self.format.is_archive() {
            return Err(DatasetError::new(
                DatasetErrorKind::InvalidArchive,
                "a zip archive is checked from the whole stored file (finish_archive)",
            ));
        }
        self.parser.finish(&mut ignore)?;
        Ok(self.summary())
    }

    /// Checks a zip whose bytes went through [`DatasetValidator::push`] (which counted
    /// and hashed them), read back from where they were stored: its directory is at
    /// its end, so it cannot be checked while it streams.
    pub fn finish_archive<R: Read + Seek>(
        mut self,
        stored: R,
    ) -> Result<DatasetSummary, DatasetError> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        if !self.format.is_archive() {
            return self.finish();
        }
        images::read_archive(stored, &mut self.parser.rules, &mut ignore)?;
        self.parser.rules.finish()?;
        Ok(self.summary())
    }

    fn summary(self) -> DatasetSummary {
        let rules = self.parser.rules;
        let (task_type, text_pairs, modality) = rules
            .shape
            .map_or((TaskType::Classification, false, Modality::Text), |s| {
                (s.task_type, s.text_pairs, s.modality)
            });
        DatasetSummary {
            format: self.format,
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
            examples: rules.examples,
            task_type,
            modality,
            text_pairs,
            label_counts: rules.label_counts,
            task_label_counts: rules.task_label_counts,
        }
    }
}

/// Reads a stored file with the upload's rules but without its limits (see
/// [`DatasetLimits`]): a file that passed [`DatasetValidator`] yields its examples here,
/// of the task type the validator reported.
/// Image files are read by [`images::read_image_examples`] instead.
pub fn parse_examples(format: DatasetFormat, bytes: &[u8]) -> Result<Vec<Example>, DatasetError> {
    if format.is_archive() {
        return Err(images::holds_images());
    }
    let mut parser = Parser::new(format, DatasetLimits::unlimited());
    let mut examples = Vec::new();
    let mut collect = |row: Row<'_>| {
        if let Some(example) = row.into_example() {
            examples.push(example);
        }
    };
    parser.feed(bytes, &mut collect)?;
    parser.finish(&mut collect)?;
    if parser.rules.modality() == Modality::Image {
        return Err(images::holds_images());
    }
    Ok(examples)
}

fn ignore(_row: Row<'_>) {}

#[cfg(test)]
mod tests;
