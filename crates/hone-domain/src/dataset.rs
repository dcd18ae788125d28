//! Training datasets for text classification, checked while they stream in: one label
//! per example, several labels per example, or one label per task of a multi-task
//! model, each on single texts or on text pairs.
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

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use sha2::{Digest, Sha256};

mod csv;
mod error;
pub mod images;
mod jsonl;
mod row;
mod rules;
mod types;

pub use error::{DatasetError, DatasetErrorKind};
pub use types::{
    DatasetFormat, DatasetLimits, DatasetSummary, Example, Modality, Target, TaskType,
};

use csv::Csv;
use row::{Input, Row, RowTarget};
use rules::Rules;

const BOM: &[u8] = b"\xEF\xBB\xBF";

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

/// The one parser behind both the validator and [`parse_examples`]. It cuts the stream
/// into records, keeps only an unfinished record between chunks, and hands each
/// accepted example to a sink, so the validator need not allocate the texts.
struct Parser {
    syntax: Syntax,
    rules: Rules,
    /// The unfinished record; its bytes were already scanned for the record's end, so
    /// a record arriving a byte at a time is still scanned once.
    pending: Vec<u8>,
    /// Physical line where the next record starts.
    next_line: u64,
    at_start: bool,
}

enum Syntax {
    Jsonl {
        /// A blank line is only fine if nothing but blank lines follows it, which is
        /// known only later.
        first_blank: Option<u64>,
    },
    Csv(Box<Csv>),
    /// Bytes are only counted and hashed as they stream; entries are read from the
    /// stored file ([`DatasetValidator::finish_archive`]).
    Archive,
}

impl Parser {
    fn new(format: DatasetFormat, limits: DatasetLimits) -> Self {
        let syntax = match format {
            DatasetFormat::Jsonl => Syntax::Jsonl { first_blank: None },
            DatasetFormat::Csv => Syntax::Csv(Box::new(Csv::new())),
            DatasetFormat::Zip => Syntax::Archive,
        };
        Self {
            syntax,
            rules: Rules {
                limits,
                expected: None,
                shape: None,
                examples: 0,
                label_counts: BTreeMap::new(),
                task_label_counts: BTreeMap::new(),
            },
            pending: Vec::new(),
            next_line: 1,
            at_start: true,
        }
    }

    fn feed<F: FnMut(Row<'_>)>(
        &mut self,
        mut chunk: &[u8],
        sink: &mut F,
    ) -> Result<(), DatasetError> {
        while !chunk.is_empty() {
            let end = match &mut self.syntax {
                Syntax::Jsonl { .. } => memchr::memchr(b'\n', chunk),
                Syntax::Csv(csv) => {
                    let line = self.next_line;
                    csv.scanner.find_end(chunk).map_err(|e| e.at(line))?
                }
                Syntax::Archive => return Ok(()),
            };
            let Some(end) = end else {
                self.pending.extend_from_slice(chunk);
                return Ok(());
            };
            let (record, rest) = chunk.split_at(end + 1);
            chunk = rest;
            if self.pending.is_empty() {
                self.record(record, sink)?;
            } else {
                let mut pending = std::mem::take(&mut self.pending);
                pending.extend_from_slice(record);
                let result = self.record(&pending, sink);
                // Kept for its capacity: the next long record reuses it.
                pending.clear();
                self.pending = pending;
                result?;
            }
        }
        Ok(())
    }

    fn finish<F: FnMut(Row<'_>)>(&mut self, sink: &mut F) -> Result<(), DatasetError> {
        if let Syntax::Csv(csv) = &self.syntax {
            csv.scanner.finish().map_err(|e| e.at(self.next_line))?;
        }
        if !self.pending.is_empty() {
            let pending = std::mem::take(&mut self.pending);
            self.record(&pending, sink)?;
        }
        self.rules.finish()
    }

    /// `raw` is one whole record with its line terminator, if it has one.
    fn record<F: FnMut(Row<'_>)>(&mut self, raw: &[u8], sink: &mut F) -> Result<(), DatasetError> {
        let line = self.next_line;
        self.next_line += match self.syntax {
            Syntax::Jsonl { .. } => u64::from(raw.last() == Some(&b'\n')),
            Syntax::Csv(_) => memchr::memchr_iter(b'\n', raw).count() as u64,
            Syntax::Archive => 0,
        };
        let mut body = raw.strip_suffix(b"\n").unwrap_or(raw);
        body = body.strip_suffix(b"\r").unwrap_or(body);
        if std::mem::take(&mut self.at_start) {
            body = body.strip_prefix(BOM).unwrap_or(body);
        }
        let body = std::str::from_utf8(body).map_err(|e| {
            let before = body.get(..e.valid_up_to()).unwrap_or_default();
            let bad = body.get(e.valid_up_to()).copied().unwrap_or_default();
            DatasetError::new(
                DatasetErrorKind::InvalidUtf8,
                format!("byte 0x{bad:02X} is not valid UTF-8; save the file as UTF-8"),
            )
            .at(line + memchr::memchr_iter(b'\n', before).count() as u64)
        })?;
        match &mut self.syntax {
            Syntax::Jsonl { first_blank } => {
                jsonl::record(first_blank, &mut self.rules, line, body, sink)
            }
            Syntax::Csv(csv) => csv.record(&mut self.rules, line, body, sink),
            Syntax::Archive => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
