//! Training datasets for single-label text classification, checked while they stream in.
//!
//! An upload is validated chunk by chunk as it arrives, so that a bad file is refused
//! with its line and reason before anything is kept, and memory stays bounded by the
//! longest record rather than by the file. The trainer reads stored files back through
//! [`parse_examples`], which drives the very same parser: a file that passed at upload
//! cannot fail, or mean something else, at training time.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// How a dataset file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// JSON Lines: one `{"text": …, "label": …}` object per line.
    Jsonl,
    /// RFC 4180 CSV whose header row names a `text` and a `label` column.
    Csv,
}

impl DatasetFormat {
    pub const ALL: [DatasetFormat; 2] = [DatasetFormat::Jsonl, DatasetFormat::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::Jsonl => "jsonl",
            DatasetFormat::Csv => "csv",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == raw)
    }

    /// Guesses from the extension so that most uploads need no explicit `format`.
    /// `.json` is not taken: it usually holds one array, which is not JSON Lines.
    pub fn from_filename(name: &str) -> Option<Self> {
        let (_, ext) = name.rsplit_once('.')?;
        match ext.to_ascii_lowercase().as_str() {
            "jsonl" | "ndjson" => Some(DatasetFormat::Jsonl),
            "csv" => Some(DatasetFormat::Csv),
            _ => None,
        }
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an upload may contain; an admission policy, so it is configurable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetLimits {
    /// Checked as bytes arrive, so an oversized upload is cut off early.
    pub max_bytes: u64,
    pub max_examples: u64,
    /// In Unicode scalar values, which is what a user can count in an editor.
    pub max_text_chars: usize,
    pub max_label_chars: usize,
    /// Distinct labels; a "label" column holding free text shows up here.
    pub max_classes: usize,
}

impl Default for DatasetLimits {
    /// The size limit follows the OpenAI API's file limit; the others are far above what
    /// a classifier fine-tuned on one machine can use, and only stop mistakes.
    fn default() -> Self {
        Self {
            max_bytes: 512 * 1024 * 1024,
            max_examples: 1_000_000,
            max_text_chars: 100_000,
            max_label_chars: 200,
            max_classes: 1_000,
        }
    }
}

impl DatasetLimits {
    /// For files that were admitted already: limits are an upload-time policy, and a
    /// change of configuration must not make stored files unreadable.
    fn unlimited() -> Self {
        Self {
            max_bytes: u64::MAX,
            max_examples: u64::MAX,
            max_text_chars: usize::MAX,
            max_label_chars: usize::MAX,
            max_classes: usize::MAX,
        }
    }
}

/// What a valid file holds, recorded with it so that listings need not reread it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DatasetSummary {
    pub format: DatasetFormat,
    /// Every byte uploaded, byte order mark and blank lines included.
    pub bytes: u64,
    /// Lowercase hex SHA-256 of exactly those bytes, so a stored copy can be verified.
    pub sha256: String,
    pub examples: u64,
    /// Examples per label (labels trimmed), for the class-balance report.
    pub label_counts: BTreeMap<String, u64>,
}

/// One labelled input, as the trainer consumes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub text: String,
    /// Trimmed, so that `"pos"` and `"pos "` are one class.
    pub label: String,
}

/// Why a file was refused, precise enough for the user to fix it without guessing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetError {
    /// 1-based physical line: where the bad record starts, or where the first invalid
    /// byte is for [`DatasetErrorKind::InvalidUtf8`] and CSV quoting errors. `None` for
    /// rules about the whole file.
    pub line: Option<u64>,
    /// `"text"` or `"label"` when one field is at fault.
    pub field: Option<String>,
    pub kind: DatasetErrorKind,
    /// The reason alone; [`fmt::Display`] prefixes the line and the field.
    pub message: String,
}

impl DatasetError {
    fn new(kind: DatasetErrorKind, message: impl Into<String>) -> Self {
        Self {
            line: None,
            field: None,
            kind,
            message: message.into(),
        }
    }

    fn at(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    fn on(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }
}

impl fmt::Display for DatasetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "field `{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for DatasetError {}

/// Machine-readable reasons; [`DatasetErrorKind::code`] is what API clients match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DatasetErrorKind {
    InvalidUtf8,
    InvalidJson,
    NotAnObject,
    MissingField,
    EmptyField,
    WrongType,
    InvalidCsv,
    MissingColumn,
    /// Over `max_bytes`; the only kind that is about the request rather than the data.
    TooLarge,
    TooManyExamples,
    TextTooLong,
    LabelTooLong,
    TooFewClasses,
    TooManyClasses,
    Empty,
}

impl DatasetErrorKind {
    pub const ALL: [DatasetErrorKind; 15] = [
        DatasetErrorKind::InvalidUtf8,
        DatasetErrorKind::InvalidJson,
        DatasetErrorKind::NotAnObject,
        DatasetErrorKind::MissingField,
        DatasetErrorKind::EmptyField,
        DatasetErrorKind::WrongType,
        DatasetErrorKind::InvalidCsv,
        DatasetErrorKind::MissingColumn,
        DatasetErrorKind::TooLarge,
        DatasetErrorKind::TooManyExamples,
        DatasetErrorKind::TextTooLong,
        DatasetErrorKind::LabelTooLong,
        DatasetErrorKind::TooFewClasses,
        DatasetErrorKind::TooManyClasses,
        DatasetErrorKind::Empty,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DatasetErrorKind::InvalidUtf8 => "invalid_utf8",
            DatasetErrorKind::InvalidJson => "invalid_json",
            DatasetErrorKind::NotAnObject => "not_an_object",
            DatasetErrorKind::MissingField => "missing_field",
            DatasetErrorKind::EmptyField => "empty_field",
            DatasetErrorKind::WrongType => "wrong_type",
            DatasetErrorKind::InvalidCsv => "invalid_csv",
            DatasetErrorKind::MissingColumn => "missing_column",
            DatasetErrorKind::TooLarge => "too_large",
            DatasetErrorKind::TooManyExamples => "too_many_examples",
            DatasetErrorKind::TextTooLong => "text_too_long",
            DatasetErrorKind::LabelTooLong => "label_too_long",
            DatasetErrorKind::TooFewClasses => "too_few_classes",
            DatasetErrorKind::TooManyClasses => "too_many_classes",
            DatasetErrorKind::Empty => "empty",
        }
    }
}

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
        self.parser.finish(&mut ignore)?;
        Ok(DatasetSummary {
            format: self.format,
            bytes: self.bytes,
            sha256: hex::encode(self.hasher.finalize()),
            examples: self.parser.rules.examples,
            label_counts: self.parser.rules.label_counts,
        })
    }
}

/// Reads a stored file with the upload's rules but without its limits (see
/// [`DatasetLimits`]): a file that passed [`DatasetValidator`] yields its examples here.
pub fn parse_examples(format: DatasetFormat, bytes: &[u8]) -> Result<Vec<Example>, DatasetError> {
    let mut parser = Parser::new(format, DatasetLimits::unlimited());
    let mut examples = Vec::new();
    let mut collect = |text: &str, label: &str| {
        examples.push(Example {
            text: text.to_owned(),
            label: label.to_owned(),
        });
    };
    parser.feed(bytes, &mut collect)?;
    parser.finish(&mut collect)?;
    Ok(examples)
}

fn ignore(_text: &str, _label: &str) {}

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
}

impl Parser {
    fn new(format: DatasetFormat, limits: DatasetLimits) -> Self {
        let syntax = match format {
            DatasetFormat::Jsonl => Syntax::Jsonl { first_blank: None },
            DatasetFormat::Csv => Syntax::Csv(Box::new(Csv::new())),
        };
        Self {
            syntax,
            rules: Rules {
                limits,
                examples: 0,
                label_counts: BTreeMap::new(),
            },
            pending: Vec::new(),
            next_line: 1,
            at_start: true,
        }
    }

    fn feed<F: FnMut(&str, &str)>(
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

    fn finish<F: FnMut(&str, &str)>(&mut self, sink: &mut F) -> Result<(), DatasetError> {
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
    fn record<F: FnMut(&str, &str)>(
        &mut self,
        raw: &[u8],
        sink: &mut F,
    ) -> Result<(), DatasetError> {
        let line = self.next_line;
        self.next_line += match self.syntax {
            Syntax::Jsonl { .. } => u64::from(raw.last() == Some(&b'\n')),
            Syntax::Csv(_) => memchr::memchr_iter(b'\n', raw).count() as u64,
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
                jsonl_record(first_blank, &mut self.rules, line, body, sink)
            }
            Syntax::Csv(csv) => csv.record(&mut self.rules, line, body, sink),
        }
    }
}

/// The content rules, the same for both formats.
struct Rules {
    limits: DatasetLimits,
    examples: u64,
    label_counts: BTreeMap<String, u64>,
}

impl Rules {
    fn accept<F: FnMut(&str, &str)>(
        &mut self,
        line: u64,
        text: &str,
        label: &str,
        sink: &mut F,
    ) -> Result<(), DatasetError> {
        let error =
            |kind, message: String, field| DatasetError::new(kind, message).at(line).on(field);
        let label = label.trim();
        if text.trim().is_empty() {
            return Err(error(
                DatasetErrorKind::EmptyField,
                "must not be empty".into(),
                "text",
            ));
        }
        if label.is_empty() {
            return Err(error(
                DatasetErrorKind::EmptyField,
                "must not be empty".into(),
                "label",
            ));
        }
        let max = self.limits.max_text_chars;
        if let Some(chars) = over(text, max) {
            let message = format!("is {chars} characters long; the limit is {max}");
            return Err(error(DatasetErrorKind::TextTooLong, message, "text"));
        }
        let max = self.limits.max_label_chars;
        if let Some(chars) = over(label, max) {
            let message = format!("is {chars} characters long; the limit is {max}");
            return Err(error(DatasetErrorKind::LabelTooLong, message, "label"));
        }
        if self.examples >= self.limits.max_examples {
            return Err(DatasetError::new(
                DatasetErrorKind::TooManyExamples,
                format!("more than {} examples", self.limits.max_examples),
            )
            .at(line));
        }
        if let Some(count) = self.label_counts.get_mut(label) {
            *count += 1;
        } else if self.label_counts.len() >= self.limits.max_classes {
            let message = format!(
                "a label beyond the limit of {} distinct labels",
                self.limits.max_classes
            );
            return Err(error(DatasetErrorKind::TooManyClasses, message, "label"));
        } else {
            self.label_counts.insert(label.to_owned(), 1);
        }
        self.examples += 1;
        sink(text, label);
        Ok(())
    }

    fn finish(&self) -> Result<(), DatasetError> {
        if self.examples == 0 {
            return Err(DatasetError::new(
                DatasetErrorKind::Empty,
                "the file contains no examples",
            ));
        }
        if let (1, Some(only)) = (self.label_counts.len(), self.label_counts.keys().next()) {
            return Err(DatasetError::new(
                DatasetErrorKind::TooFewClasses,
                format!(
                    "every example has the label {only:?}; a classifier needs at least two labels"
                ),
            )
            .on("label"));
        }
        Ok(())
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

fn jsonl_record<F: FnMut(&str, &str)>(
    first_blank: &mut Option<u64>,
    rules: &mut Rules,
    line: u64,
    body: &str,
    sink: &mut F,
) -> Result<(), DatasetError> {
    if body.bytes().all(|b| matches!(b, b' ' | b'\t' | b'\r')) {
        first_blank.get_or_insert(line);
        return Ok(());
    }
    if let Some(blank) = *first_blank {
        return Err(DatasetError::new(
            DatasetErrorKind::InvalidJson,
            "blank line; JSON Lines allows blank lines only at the end of the file",
        )
        .at(blank));
    }
    let value: Value<'_> = serde_json::from_str(body).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = message.strip_suffix(&suffix).unwrap_or(&message);
        DatasetError::new(
            DatasetErrorKind::InvalidJson,
            format!("invalid JSON at column {}: {reason}", e.column()),
        )
        .at(line)
    })?;
    let Value::Object(object) = value else {
        return Err(DatasetError::new(
            DatasetErrorKind::NotAnObject,
            format!(
                "expected a JSON object like {{\"text\": …, \"label\": …}}, found {}",
                value.kind()
            ),
        )
        .at(line));
    };
    let Object {
        text,
        label,
        duplicate,
    } = *object;
    let error = |kind, message: String, field| DatasetError::new(kind, message).at(line).on(field);
    if let Some(field) = duplicate {
        return Err(error(
            DatasetErrorKind::InvalidJson,
            "appears twice".into(),
            field,
        ));
    }
    let text = match text {
        None => {
            return Err(error(
                DatasetErrorKind::MissingField,
                "missing".into(),
                "text",
            ))
        }
        Some(Value::Str(text)) => text,
        Some(other) => {
            let message = format!("must be a string, found {}", other.kind());
            return Err(error(DatasetErrorKind::WrongType, message, "text"));
        }
    };
    let label = match label {
        None => {
            return Err(error(
                DatasetErrorKind::MissingField,
                "missing".into(),
                "label",
            ))
        }
        Some(Value::Str(label)) => label,
        Some(Value::Integer(label)) => Cow::Owned(label),
        Some(Value::Bool(label)) => Cow::Borrowed(if label { "true" } else { "false" }),
        Some(other) => {
            let message = format!(
                "must be a string, an integer or a boolean, found {}",
                other.kind()
            );
            return Err(error(DatasetErrorKind::WrongType, message, "label"));
        }
    };
    rules.accept(line, &text, &label, sink)
}

/// A JSON value reduced to what the rules look at: strings borrowed from the line when
/// they have no escapes, and of an object only `text` and `label`, so that other fields
/// cost no allocation.
enum Value<'a> {
    Str(Cow<'a, str>),
    Integer(String),
    Bool(bool),
    Object(Box<Object<'a>>),
    Other(&'static str),
}

struct Object<'a> {
    text: Option<Value<'a>>,
    label: Option<Value<'a>>,
    /// JSON leaves duplicate names undefined and parsers disagree on which one wins.
    duplicate: Option<&'static str>,
}

impl Value<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Value::Str(_) => "a string",
            Value::Integer(_) => "an integer",
            Value::Bool(_) => "a boolean",
            Value::Object(_) => "an object",
            Value::Other(kind) => kind,
        }
    }
}

impl<'de> Deserialize<'de> for Value<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Value::Str(Cow::Owned(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Value::Integer(v.to_string()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Value::Integer(v.to_string()))
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Value::Other("a number with a fraction or an exponent"))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Value::Other("null"))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Other("an array"))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut object = Object {
            text: None,
            label: None,
            duplicate: None,
        };
        while let Some(key) = map.next_key::<Key>()? {
            let (slot, name) = match key {
                Key::Text => (&mut object.text, "text"),
                Key::Label => (&mut object.label, "label"),
                Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            if slot.is_some() {
                object.duplicate.get_or_insert(name);
                map.next_value::<IgnoredAny>()?;
            } else {
                *slot = Some(map.next_value()?);
            }
        }
        Ok(Value::Object(Box::new(object)))
    }
}

enum Key {
    Text,
    Label,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "text" => Key::Text,
                    "label" => Key::Label,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// CSV state across records. Record boundaries are found by [`CsvScanner`]; the fields
/// of a whole record are then split and unescaped by `csv_core`.
struct Csv {
    scanner: CsvScanner,
    reader: csv_core::Reader,
    header: Option<Header>,
    fields: Vec<u8>,
    ends: Vec<usize>,
}

struct Header {
    width: usize,
    text: usize,
    label: usize,
}

impl Csv {
    fn new() -> Self {
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

    fn record<F: FnMut(&str, &str)>(
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
        let label = self.field(header.label, line)?;
        rules.accept(line, text, label, sink)
    }

    fn header(&self, line: u64, width: usize) -> Result<Header, DatasetError> {
        let (mut text, mut label) = (None, None);
        for i in 0..width {
            let (slot, name) = match self.field(i, line)?.trim() {
                "text" => (&mut text, "text"),
                "label" => (&mut label, "label"),
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
            DatasetError::new(
                DatasetErrorKind::MissingColumn,
                "the header row has no such column (names are case-sensitive)",
            )
            .at(line)
            .on(name)
        };
        Ok(Header {
            width,
            text: text.ok_or_else(|| missing("text"))?,
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
struct CsvScanner {
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
struct CsvSyntaxError {
    newlines: u64,
    message: String,
}

impl CsvSyntaxError {
    fn at(self, record_line: u64) -> DatasetError {
        DatasetError::new(DatasetErrorKind::InvalidCsv, self.message)
            .at(record_line + self.newlines)
    }
}

impl CsvScanner {
    /// The offset of the newline that ends the current record, if `bytes` has it.
    fn find_end(&mut self, bytes: &[u8]) -> Result<Option<usize>, CsvSyntaxError> {
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
    fn finish(&self) -> Result<(), CsvSyntaxError> {
        if self.state == ScanState::Quoted {
            return Err(CsvSyntaxError {
                newlines: self.quote_opened,
                message: "a quoted field starts here and is never closed".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
