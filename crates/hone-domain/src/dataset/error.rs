//! Why a dataset was refused. Every stage (the byte stream, CSV, JSON Lines, images,
//! the content rules) refuses in these same terms, and API clients match on
//! [`DatasetErrorKind::code`], so the vocabulary of refusals lives apart from any one
//! stage and depends on none of them.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Why a file was refused, precise enough for the user to fix it without guessing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatasetError {
    /// 1-based physical line: where the bad record starts, or where the first invalid
    /// byte is for [`DatasetErrorKind::InvalidUtf8`] and CSV quoting errors. `None` for
    /// rules about the whole file.
    pub line: Option<u64>,
    /// `"text"`, `"text_pair"`, `"image"`, `"label"` or `"labels"` when one field is
    /// at fault; the message names the task or the label within `labels`.
    pub field: Option<String>,
    /// The path of the zip entry at fault, as stored in the archive.
    pub entry: Option<String>,
    pub kind: DatasetErrorKind,
    /// The reason alone; [`fmt::Display`] prefixes the line and the field.
    pub message: String,
}

impl DatasetError {
    pub(super) fn new(kind: DatasetErrorKind, message: impl Into<String>) -> Self {
        Self {
            line: None,
            field: None,
            entry: None,
            kind,
            message: message.into(),
        }
    }

    pub(super) fn at(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    pub(super) fn on(mut self, field: &str) -> Self {
        self.field = Some(field.to_owned());
        self
    }

    /// Zip entries have no lines: the entry's path replaces the line.
    pub(super) fn in_entry(mut self, entry: &str) -> Self {
        self.line = None;
        self.entry = Some(entry.to_owned());
        self
    }
}

impl fmt::Display for DatasetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if let Some(entry) = &self.entry {
            write!(f, "entry {entry:?}: ")?;
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
    /// A text, label or task name with a NUL character, which no stored text may hold.
    NulCharacter,
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
    /// An example of another task type than the first one or the requested one, or
    /// with a `text_pair` where the first had none (or the other way round).
    TaskMismatch,
    /// Both `label` and `labels`: which one is meant cannot be told.
    ConflictingFields,
    /// A multi-label example lists a label twice, which usually means a typo for
    /// another label.
    DuplicateLabel,
    /// A multi-task example names a task twice, after trimming.
    DuplicateTask,
    TaskNameTooLong,
    TooManyTasks,
    /// The requested task type cannot be written in this format (CSV and zip are
    /// single-label).
    UnsupportedTaskType,
    /// Not a PNG or JPEG image (by its bytes), or one that does not decode.
    InvalidImage,
    /// An image whose width or height is outside the configured bounds.
    ImageSize,
    /// An `image` field that is not base64.
    InvalidBase64,
    /// An image example where the first was text, or the other way round.
    ModalityMismatch,
    /// Not a readable zip, or an entry that does not decompress.
    InvalidArchive,
    /// An absolute path, a `..` component or a symbolic link in a zip.
    UnsafePath,
    /// An archive inside the zip, by name or by its bytes.
    NestedArchive,
    EncryptedEntry,
    TooManyEntries,
    /// More decompressed bytes than `max_uncompressed_bytes`.
    ArchiveTooLarge,
    /// An entry that decompresses to more than `max_compression_ratio` times its size.
    CompressionRatio,
    /// An entry that is not `<class>/<image>` (optionally under one top folder).
    ArchiveLayout,
}

impl DatasetErrorKind {
    pub const ALL: [DatasetErrorKind; 35] = [
        DatasetErrorKind::InvalidUtf8,
        DatasetErrorKind::NulCharacter,
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
        DatasetErrorKind::TaskMismatch,
        DatasetErrorKind::ConflictingFields,
        DatasetErrorKind::DuplicateLabel,
        DatasetErrorKind::DuplicateTask,
        DatasetErrorKind::TaskNameTooLong,
        DatasetErrorKind::TooManyTasks,
        DatasetErrorKind::UnsupportedTaskType,
        DatasetErrorKind::InvalidImage,
        DatasetErrorKind::ImageSize,
        DatasetErrorKind::InvalidBase64,
        DatasetErrorKind::ModalityMismatch,
        DatasetErrorKind::InvalidArchive,
        DatasetErrorKind::UnsafePath,
        DatasetErrorKind::NestedArchive,
        DatasetErrorKind::EncryptedEntry,
        DatasetErrorKind::TooManyEntries,
        DatasetErrorKind::ArchiveTooLarge,
        DatasetErrorKind::CompressionRatio,
        DatasetErrorKind::ArchiveLayout,
    ];

    pub fn code(self) -> &'static str {
        match self {
            DatasetErrorKind::InvalidUtf8 => "invalid_utf8",
            DatasetErrorKind::NulCharacter => "nul_character",
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
            DatasetErrorKind::TaskMismatch => "task_mismatch",
            DatasetErrorKind::ConflictingFields => "conflicting_fields",
            DatasetErrorKind::DuplicateLabel => "duplicate_label",
            DatasetErrorKind::DuplicateTask => "duplicate_task",
            DatasetErrorKind::TaskNameTooLong => "task_name_too_long",
            DatasetErrorKind::TooManyTasks => "too_many_tasks",
            DatasetErrorKind::UnsupportedTaskType => "unsupported_task_type",
            DatasetErrorKind::InvalidImage => "invalid_image",
            DatasetErrorKind::ImageSize => "image_size",
            DatasetErrorKind::InvalidBase64 => "invalid_base64",
            DatasetErrorKind::ModalityMismatch => "modality_mismatch",
            DatasetErrorKind::InvalidArchive => "invalid_archive",
            DatasetErrorKind::UnsafePath => "unsafe_path",
            DatasetErrorKind::NestedArchive => "nested_archive",
            DatasetErrorKind::EncryptedEntry => "encrypted_entry",
            DatasetErrorKind::TooManyEntries => "too_many_entries",
            DatasetErrorKind::ArchiveTooLarge => "archive_too_large",
            DatasetErrorKind::CompressionRatio => "compression_ratio",
            DatasetErrorKind::ArchiveLayout => "archive_layout",
        }
    }
}
