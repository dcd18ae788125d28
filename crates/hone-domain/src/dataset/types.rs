//! What a dataset is, in the words every layer uses: its format, modality and task
//! type, the limits an upload is held to, the summary kept with a stored file, and the
//! examples the trainer reads. The store, the trainer and the API name these without
//! parsing anything, so they live in a leaf apart from the parsers that produce them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a dataset file is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DatasetFormat {
    /// JSON Lines: one object per line with a `text`, an optional `text_pair`, and
    /// either a `label` or a `labels` (a list, or an object of task → label).
    Jsonl,
    /// RFC 4180 CSV whose header row names a `text` and a `label` column, and a
    /// `text_pair` column for text pairs. One label per example only: a cell holds one
    /// string, and any separator for lists would collide with some label's text.
    Csv,
    /// A zip archive of images, one folder per class (the ImageFolder convention):
    /// `<class>/<image>`, optionally all inside one common top folder. Single-label only:
    /// a folder is one class.
    Zip,
}

impl DatasetFormat {
    pub const ALL: [DatasetFormat; 3] =
        [DatasetFormat::Jsonl, DatasetFormat::Csv, DatasetFormat::Zip];

    pub fn as_str(self) -> &'static str {
        match self {
            DatasetFormat::Jsonl => "jsonl",
            DatasetFormat::Csv => "csv",
            DatasetFormat::Zip => "zip",
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
            "zip" => Some(DatasetFormat::Zip),
            _ => None,
        }
    }

    /// CSV and zip hold one label per example (see [`DatasetFormat::Csv`],
    /// [`DatasetFormat::Zip`]).
    pub fn supports(self, task_type: TaskType) -> bool {
        self == DatasetFormat::Jsonl || task_type == TaskType::Classification
    }

    /// A zip's directory is at its end, so it can only be checked once it is whole
    /// ([`super::DatasetValidator::finish_archive`]); the other formats are checked as
    /// they stream.
    pub fn is_archive(self) -> bool {
        self == DatasetFormat::Zip
    }
}

/// What the inputs of a file are: it decides which base models can train on it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Modality {
    /// The default because it is what every file was before images existed.
    #[default]
    Text,
    Image,
}

impl Modality {
    pub fn as_str(self) -> &'static str {
        match self {
            Modality::Text => "text",
            Modality::Image => "image",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Modality::Text, Modality::Image]
            .into_iter()
            .find(|m| m.as_str() == raw)
    }
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for DatasetFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the examples of a file teach, which decides the model's heads and loss.
/// Whether inputs are text pairs is separate ([`DatasetSummary::text_pairs`]): any task
/// type can be trained on pairs.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskType {
    /// Exactly one label per example, from `label`. The default because it is what
    /// every file was before the other types existed.
    #[default]
    Classification,
    /// Any number of labels per example, none included, from `labels` as a list.
    MultiLabel,
    /// One label for each of several tasks, from `labels` as an object of task →
    /// label; one shared backbone with a head per task.
    MultiTask,
}

impl TaskType {
    pub const ALL: [TaskType; 3] = [
        TaskType::Classification,
        TaskType::MultiLabel,
        TaskType::MultiTask,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskType::Classification => "classification",
            TaskType::MultiLabel => "multi_label",
            TaskType::MultiTask => "multi_task",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    /// How examples of this type look, for error messages.
    pub(super) fn shape(self) -> &'static str {
        match self {
            TaskType::Classification => "single-label examples (one label in `label`)",
            TaskType::MultiLabel => "multi-label examples (a list of labels in `labels`)",
            TaskType::MultiTask => "multi-task examples (an object of task → label in `labels`)",
        }
    }

    /// The field that holds this type's target.
    pub(super) fn field(self) -> &'static str {
        match self {
            TaskType::Classification => "label",
            TaskType::MultiLabel | TaskType::MultiTask => "labels",
        }
    }
}

impl fmt::Display for TaskType {
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
    /// In Unicode scalar values, which is what a user can count in an editor. For
    /// `text_pair` too.
    pub max_text_chars: usize,
    /// For task names too: they are labels of a sort, and show up in the same places.
    pub max_label_chars: usize,
    /// Distinct labels, per task for multi-task files; a "label" column holding free
    /// text shows up here.
    pub max_classes: usize,
    /// Distinct tasks of a multi-task file; each costs a head, and free text used as a
    /// task name shows up here.
    pub max_tasks: usize,
    /// Entries of a zip, directories and skipped OS junk included: each costs a
    /// directory record before anything is decompressed.
    pub max_archive_entries: u64,
    /// Bytes actually decompressed from a zip, over all entries; declared sizes are
    /// not trusted.
    pub max_uncompressed_bytes: u64,
    /// Decompressed over compressed size of one zip entry. PNG and JPEG are compressed
    /// already and barely shrink, so a high ratio means a zip bomb.
    pub max_compression_ratio: u64,
    /// Shortest side of an image, in pixels; sklearn's digits are 8×8.
    pub min_image_side: u32,
    /// Longest side of an image, in pixels; checked from the header before decoding.
    pub max_image_side: u32,
    /// Width × height of an image, which bounds what decoding it allocates.
    pub max_image_pixels: u64,
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
            max_tasks: 100,
            max_archive_entries: 100_000,
            max_uncompressed_bytes: 2 * 1024 * 1024 * 1024,
            max_compression_ratio: 100,
            min_image_side: 8,
            max_image_side: 8_192,
            max_image_pixels: 40_000_000,
        }
    }
}

impl DatasetLimits {
    /// For files that were admitted already: limits are an upload-time policy, and a
    /// change of configuration must not make stored files unreadable.
    pub(super) fn unlimited() -> Self {
        Self {
            max_bytes: u64::MAX,
            max_examples: u64::MAX,
            max_text_chars: usize::MAX,
            max_label_chars: usize::MAX,
            max_classes: usize::MAX,
            max_tasks: usize::MAX,
            max_archive_entries: u64::MAX,
            max_uncompressed_bytes: u64::MAX,
            max_compression_ratio: u64::MAX,
            min_image_side: 0,
            max_image_side: u32::MAX,
            max_image_pixels: u64::MAX,
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
    /// Defaults when absent, so summaries recorded before task types existed still read.
    #[serde(default)]
    pub task_type: TaskType,
    /// Text or images, from the first example (always images for a zip).
    #[serde(default)]
    pub modality: Modality,
    /// Every example has a `text_pair` (paraphrase, entailment); no example has one
    /// otherwise.
    #[serde(default)]
    pub text_pairs: bool,
    /// For the class-balance report (labels trimmed): examples per label for
    /// single-label files, examples carrying the label for multi-label files. Empty for
    /// multi-task files, whose counts are in `task_label_counts`: a union would merge
    /// unrelated classes that share a name, such as two tasks' `yes`.
    pub label_counts: BTreeMap<String, u64>,
    /// Multi-task files only: task → label → examples with that label for the task.
    /// An example that leaves a task out counts for none of its labels.
    #[serde(default)]
    pub task_label_counts: BTreeMap<String, BTreeMap<String, u64>>,
}

/// What one example should be classified as. Serialized as in the upload: a string, a
/// list of strings, or an object of task → label.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Target {
    /// [`TaskType::Classification`]; trimmed, so that `"pos"` and `"pos "` are one class.
    Single(String),
    /// [`TaskType::MultiLabel`]: distinct, trimmed, in the file's order; may be empty.
    Multi(Vec<String>),
    /// [`TaskType::MultiTask`]: at least one task, names and labels trimmed.
    Tasks(BTreeMap<String, String>),
}

impl Target {
    pub fn task_type(&self) -> TaskType {
        match self {
            Target::Single(_) => TaskType::Classification,
            Target::Multi(_) => TaskType::MultiLabel,
            Target::Tasks(_) => TaskType::MultiTask,
        }
    }
}

/// One labelled input, as the trainer consumes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Example {
    pub text: String,
    /// The second text of a pair; in every example of a file or in none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_pair: Option<String>,
    /// Of the same [`TaskType`] in every example of a file.
    pub target: Target,
}
