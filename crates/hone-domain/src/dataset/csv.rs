//! CSV records. A newline ends a record only outside quotes, so the record's end is
//! found by a scanner whose state survives between chunks, and only then is the whole
//! record split into fields. Kept apart from JSON Lines because nothing but the rules
//! it hands rows to is shared between the two syntaxes.

use std::borrow::Cow;

use super::error::{DatasetError, DatasetErrorKind};
use super::row::{Input, Row, RowTarget};
use super::rules::Rules;
use super::types::{Modality, TaskType};

/// CSV state across records. Record boundaries are found by [`CsvScanner`]; the fields
/// of a whole record are then split and unescaped by `csv_core`.
pub(super) struct Csv {
    pub(super) scanner: CsvScanner,
    reader: csv_core::Reader,
    header: Option<Header>,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

struct Header {
    width: usize,
    text: usize,
    text_pair: Option<usize>,
    label: usize,
}

impl Csv {
    pub(super) fn new() -> Self {
        Self {
            scanner: CsvScanner::default(),
            // A lone `\r` is data, as for the scanner; `\r\n` never reaches the reader.
            reader: csv_core::ReaderBuilder::new()
                .terminator(csv_core::Terminator::Any(b'\n'))
                .build(),
            header: None,
            fields: Vec::new(),
            ends: vec![0; 16],
        }
    }

    pub(super) fn record<F: FnMut(Row<'_>)>(
        &mut self,
        rules: &mut Rules,
        line: u64,
        body: &str,
        sink: &mut F,
    ) -> Result<(), DatasetError> {
        // Skipped, as every CSV reader does, including the `csv` crate.
        if body.is_empty() {
            return Ok(());
        }
        let width = self.split(body.as_bytes()).map_err(|()| {
            DatasetError::new(
                DatasetErrorKind::InvalidCsv,
                "cannot split this record into fields",
            )
            .at(line)
        })?;
        let Some(header) = &self.header else {
            self.header = Some(self.header(line, width)?);
            return Ok(());
        };
        if width != header.width {
            return Err(DatasetError::new(
                DatasetErrorKind::InvalidCsv,
                format!("has {width} fields but the header has {}", header.width),
            )
            .at(line));
        }
        let text = self.field(header.text, line)?;
        let text_pair = match header.text_pair {
            Some(i) => Some(Cow::Borrowed(self.field(i, line)?)),
            None => None,
        };
        let label = self.field(header.label, line)?;
        rules.check_shape(
            line,
            TaskType::Classification,
            text_pair.is_some(),
            Modality::Text,
        )?;
        let row = Row {
            input: Input::Text {
                text: Cow::Borrowed(text),
                text_pair,
            },
            target: RowTarget::Single(Cow::Borrowed(label)),
        };
        rules.accept(line, row, sink)
    }

    fn header(&self, line: u64, width: usize) -> Result<Header, DatasetError> {
        let (mut text, mut text_pair, mut label) = (None, None, None);
        let mut labels = false;
        for i in 0..width {
            let (slot, name) = match self.field(i, line)?.trim() {
                "text" => (&mut text, "text"),
                "text_pair" => (&mut text_pair, "text_pair"),
                "label" => (&mut label, "label"),
                "labels" => {
                    labels = true;
                    continue;
                }
                _ => continue,
            };
            if slot.replace(i).is_some() {
                return Err(DatasetError::new(
                    DatasetErrorKind::InvalidCsv,
                    "the header names this column twice",
                )
                .at(line)
                .on(name));
            }
        }
        let missing = |name: &str| {
            let mut message =
                "the header row has no such column (names are case-sensitive)".to_owned();
            if name == "label" && labels {
                message += "; a CSV file holds one label per example: upload multi-label \
                            or multi-task data as JSON Lines";
            }
            DatasetError::new(DatasetErrorKind::MissingColumn, message)
                .at(line)
                .on(name)
        };
        Ok(Header {
            width,
            text: text.ok_or_else(|| missing("text"))?,
            text_pair,
            label: label.ok_or_else(|| missing("label"))?,
        })
    }

    /// Fills `fields` and `ends` from one record without its terminator; returns the
    /// number of fields. `Err` means the scanner and `csv_core` disagree on where the
    /// record ends, which their identical quoting rules should rule out.
    fn split(&mut self, body: &[u8]) -> Result<usize, ()> {
        self.fields.clear();
        self.fields.resize(body.len() + 1, 0);
        let (mut input, mut terminated) = (body, false);
        let (mut nout, mut nend) = (0, 0);
        loop {
            let out = self.fields.get_mut(nout..).ok_or(())?;
            let ends = self.ends.get_mut(nend..).ok_or(())?;
            let (result, i, o, e) = self.reader.read_record(input, out, ends);
            input = input.get(i..).ok_or(())?;
            nout += o;
            nend += e;
            match result {
                csv_core::ReadRecordResult::InputEmpty if !terminated => {
                    input = b"\n";
                    terminated = true;
                }
                csv_core::ReadRecordResult::OutputFull => {
                    self.fields.resize(self.fields.len() * 2 + 1, 0);
                }
                csv_core::ReadRecordResult::OutputEndsFull => {
                    self.ends.resize(self.ends.len() * 2 + 1, 0);
                }
                csv_core::ReadRecordResult::Record if terminated && input.is_empty() => break,
                _ => return Err(()),
            }
        }
        self.fields.truncate(nout);
        self.ends.truncate(nend);
        Ok(nend)
    }

    fn field(&self, i: usize, line: u64) -> Result<&str, DatasetError> {
        let start = match i {
            0 => 0,
            _ => self.ends.get(i - 1).copied().unwrap_or_default(),
        };
        let end = self.ends.get(i).copied().unwrap_or_default();
        // Already valid: the record was, and unquoting removes only ASCII quotes.
        self.fields
            .get(start..end)
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .ok_or_else(|| {
                DatasetError::new(
                    DatasetErrorKind::InvalidUtf8,
                    "this record is not valid UTF-8",
                )
                .at(line)
            })
    }
}

/// Finds where CSV records end, which a newline alone does not tell: inside quotes it
/// is data. Its state survives between chunks, so each byte is looked at once.
///
/// It follows RFC 4180 and `csv_core`: a quote opens a quoted field only at the start
/// of a field and is data elsewhere. It is stricter in one place: after a closing quote
/// only a delimiter or the end of the line may follow, because anything else nearly
/// always means an unescaped quote inside a quoted field, which would otherwise
/// silently swallow the lines after it.
#[derive(Default)]
pub(super) struct CsvScanner {
    state: ScanState,
    /// Newlines inside the record so far, to place errors on their physical line.
    newlines: u64,
    /// `newlines` when the open quoted field started.
    quote_opened: u64,
}

#[derive(Clone, Copy, Default, PartialEq, Eq)]
enum ScanState {
    #[default]
    FieldStart,
    Unquoted,
    Quoted,
    AfterQuote,
    AfterQuoteCr,
}

/// A CSV syntax error, `newlines` lines below the start of its record.
pub(super) struct CsvSyntaxError {
    newlines: u64,
    message: String,
}

impl CsvSyntaxError {
    pub(super) fn at(self, record_line: u64) -> DatasetError {
        DatasetError::new(DatasetErrorKind::InvalidCsv, self.message)
            .at(record_line + self.newlines)
    }
}

impl CsvScanner {
    /// The offset of the newline that ends the current record, if `bytes` has it.
    pub(super) fn find_end(&mut self, bytes: &[u8]) -> Result<Option<usize>, CsvSyntaxError> {
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            match self.state {
                ScanState::FieldStart => match byte {
                    b'"' => {
                        self.state = ScanState::Quoted;
                        self.quote_opened = self.newlines;
                    }
                    b',' => {}
                    b'\n' => return Ok(Some(self.end(i))),
                    _ => self.state = ScanState::Unquoted,
                },
                ScanState::Unquoted => {
                    let rest = bytes.get(i..).unwrap_or_default();
                    let Some(j) = memchr::memchr2(b',', b'\n', rest) else {
                        return Ok(None);
                    };
                    i += j;
                    if bytes.get(i) == Some(&b'\n') {
                        return Ok(Some(self.end(i)));
                    }
                    self.state = ScanState::FieldStart;
                }
                ScanState::Quoted => {
                    let rest = bytes.get(i..).unwrap_or_default();
                    let Some(j) = memchr::memchr2(b'"', b'\n', rest) else {
                        return Ok(None);
                    };
                    i += j;
                    if bytes.get(i) == Some(&b'\n') {
                        self.newlines += 1;
                    } else {
                        self.state = ScanState::AfterQuote;
                    }
                }
                ScanState::AfterQuote => match byte {
                    b'"' => self.state = ScanState::Quoted,
                    b',' => self.state = ScanState::FieldStart,
                    b'\n' => return Ok(Some(self.end(i))),
                    b'\r' => self.state = ScanState::AfterQuoteCr,
                    _ => return Err(self.stray(byte)),
                },
                ScanState::AfterQuoteCr => match byte {
                    b'\n' => return Ok(Some(self.end(i))),
                    _ => return Err(self.stray(b'\r')),
                },
            }
            i += 1;
        }
        Ok(None)
    }

    fn end(&mut self, i: usize) -> usize {
        self.state = ScanState::FieldStart;
        self.newlines = 0;
        i
    }

    fn stray(&self, byte: u8) -> CsvSyntaxError {
        let shown = match byte {
            b'\r' => "\\r".to_owned(),
            b if b.is_ascii_graphic() || b == b' ' => (b as char).to_string(),
            b => format!("\\x{b:02X}"),
        };
        CsvSyntaxError {
            newlines: self.newlines,
            message: format!(
                "unexpected `{shown}` after the closing quote of a field; \
                 a quote inside a quoted field must be doubled (`\"\"`)"
            ),
        }
    }

    /// At the end of the input, where a still-open quote can no longer close.
    pub(super) fn finish(&self) -> Result<(), CsvSyntaxError> {
        if self.state == ScanState::Quoted {
            return Err(CsvSyntaxError {
                newlines: self.quote_opened,
                message: "a quoted field starts here and is never closed".into(),
            });
        }
        Ok(())
    }
}
