//! Cutting a byte stream into records, whatever the chunking, and handing each one to
//! its syntax. The validator and the readers of stored files share this one parser, so
//! that a file that passed at upload cannot fail, or mean something else, when it is
//! read back; it sits above the syntaxes and the rules and below those entry points.

use std::collections::BTreeMap;

use super::csv::Csv;
use super::error::{DatasetError, DatasetErrorKind};
use super::jsonl;
use super::row::Row;
use super::rules::Rules;
use super::types::{DatasetFormat, DatasetLimits};

pub(super) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The one parser behind both the validator and [`parse_examples`](super::parse_examples). It cuts the stream
/// into records, keeps only an unfinished record between chunks, and hands each
/// accepted example to a sink, so the validator need not allocate the texts.
pub(super) struct Parser {
    syntax: Syntax,
    pub(super) rules: Rules,
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
    /// stored file ([`DatasetValidator::finish_archive`](super::DatasetValidator::finish_archive)).
    Archive,
}

impl Parser {
    pub(super) fn new(format: DatasetFormat, limits: DatasetLimits) -> Self {
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

    pub(super) fn feed<F: FnMut(Row<'_>)>(
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

    pub(super) fn finish<F: FnMut(Row<'_>)>(&mut self, sink: &mut F) -> Result<(), DatasetError> {
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
