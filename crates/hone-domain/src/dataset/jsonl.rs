//! JSON Lines records: each line is read into only the fields the rules look at, with
//! strings borrowed from the line where they have no escapes.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use super::error::{DatasetError, DatasetErrorKind};
use super::row::{Input, Row, RowTarget};
use super::rules::Rules;
use super::types::{Modality, TaskType};

/// Checks one line and hands its example on.
pub(super) fn record<F: FnMut(Row<'_>)>(
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
    let Record {
        text,
        text_pair,
        image,
        label,
        labels,
        duplicate,
    } = *parse(line, body)?;
    let error = |kind, message: String, field| DatasetError::new(kind, message).at(line).on(field);
    if let Some(field) = duplicate {
        return Err(error(
            DatasetErrorKind::InvalidJson,
            "appears twice".into(),
            field,
        ));
    }
    let input = match (text, image) {
        (Some(_), Some(_)) => {
            return Err(error(
                DatasetErrorKind::ConflictingFields,
                "`text` and `image` are both present; an example is a text or an image".into(),
                "image",
            ))
        }
        (None, None) => {
            let field = match rules.modality() {
                Modality::Text => "text",
                Modality::Image => "image",
            };
            return Err(error(
                DatasetErrorKind::MissingField,
                "missing".into(),
                field,
            ));
        }
        (Some(text), None) => PendingInput::Text(
            string(text).map_err(|m| error(DatasetErrorKind::WrongType, m, "text"))?,
        ),
        (None, Some(image)) => PendingInput::Image(
            string(image).map_err(|m| error(DatasetErrorKind::WrongType, m, "image"))?,
        ),
    };
    let text_pair = match text_pair {
        None => None,
        Some(_) if matches!(input, PendingInput::Image(_)) => {
            return Err(error(
                DatasetErrorKind::ConflictingFields,
                "an image example takes no text pair".into(),
                "text_pair",
            ))
        }
        Some(pair) => {
            Some(string(pair).map_err(|m| error(DatasetErrorKind::WrongType, m, "text_pair"))?)
        }
    };
    let target = pending_target(rules, line, label, labels)?;
    let modality = match input {
        PendingInput::Text(_) => Modality::Text,
        PendingInput::Image(_) => Modality::Image,
    };
    rules.check_shape(line, target.task_type(), text_pair.is_some(), modality)?;
    // Decoded only once the example's shape is known to fit the file: a text file
    // with one stray image line is better told so than why the image is bad.
    let input = match input {
        PendingInput::Text(text) => Input::Text { text, text_pair },
        PendingInput::Image(encoded) => Input::Image(
            super::images::check::decode_base64(&encoded, &rules.limits)
                .map_err(|(kind, message)| error(kind, message, "image"))?,
        ),
    };
    let target = checked_target(target, line)?;
    rules.accept(line, Row { input, target }, sink)
}

/// The line as JSON, reduced to the fields the rules look at; anything but an object
/// is refused.
fn parse(line: u64, body: &str) -> Result<Box<Record<'_>>, DatasetError> {
    let value: Line<'_> = serde_json::from_str(body).map_err(|e| {
        let message = e.to_string();
        let suffix = format!(" at line {} column {}", e.line(), e.column());
        let reason = message.strip_suffix(&suffix).unwrap_or(&message);
        DatasetError::new(
            DatasetErrorKind::InvalidJson,
            format!("invalid JSON at column {}: {reason}", e.column()),
        )
        .at(line)
    })?;
    match value {
        Line::Object(record) => Ok(record),
        Line::Other(kind) => Err(DatasetError::new(
            DatasetErrorKind::NotAnObject,
            format!("expected a JSON object like {{\"text\": …, \"label\": …}}, found {kind}"),
        )
        .at(line)),
    }
}

/// The target's shape, from whichever of `label` and `labels` the example has.
fn pending_target<'a>(
    rules: &Rules,
    line: u64,
    label: Option<Scalar<'a>>,
    labels: Option<Labels<'a>>,
) -> Result<Pending<'a>, DatasetError> {
    let error = |kind, message: String, field| DatasetError::new(kind, message).at(line).on(field);
    Ok(match (label, labels) {
        (Some(_), Some(_)) => {
            return Err(error(
                DatasetErrorKind::ConflictingFields,
                "`label` and `labels` are both present; use `label` for one label per \
                 example, or `labels` for several"
                    .into(),
                "labels",
            ))
        }
        (None, None) => {
            let (field, message) = match rules.task_type() {
                Some(task_type) => (task_type.field(), "missing"),
                None => (
                    "label",
                    "missing; give one label in `label`, or in `labels` a list of labels \
                     or an object of task → label",
                ),
            };
            return Err(error(DatasetErrorKind::MissingField, message.into(), field));
        }
        (Some(label), None) => Pending::Single(label),
        (None, Some(Labels::List(labels))) => Pending::Multi(labels),
        (None, Some(Labels::Tasks(tasks))) => Pending::Tasks(tasks),
        (None, Some(Labels::Other(kind))) => {
            let message = format!(
                "must be a list of labels or an object of task → label, found {kind}{}",
                if kind == "a string" {
                    "; for one label per example use `label`"
                } else {
                    ""
                }
            );
            return Err(error(DatasetErrorKind::WrongType, message, "labels"));
        }
    })
}

/// The target's values as labels: strings, or integers and booleans as their JSON text.
fn checked_target(target: Pending<'_>, line: u64) -> Result<RowTarget<'_>, DatasetError> {
    let wrong_type = |what: &str, found: &Scalar<'_>, field| {
        let message = format!(
            "{what} be a string, an integer or a boolean, found {}",
            found.kind()
        );
        DatasetError::new(DatasetErrorKind::WrongType, message)
            .at(line)
            .on(field)
    };
    Ok(match target {
        Pending::Single(label) => RowTarget::Single(label.into_label().map_err(|found| {
            let mut e = wrong_type("must", &found, "label");
            if matches!(found, Scalar::Other("an array")) {
                e.message += "; for several labels per example use `labels`";
            }
            e
        })?),
        Pending::Multi(labels) => RowTarget::Multi(
            labels
                .into_iter()
                .enumerate()
                .map(|(i, label)| {
                    label.into_label().map_err(|found| {
                        wrong_type(&format!("the label at index {i} must"), &found, "labels")
                    })
                })
                .collect::<Result<_, _>>()?,
        ),
        Pending::Tasks(tasks) => RowTarget::Tasks(
            tasks
                .into_iter()
                .map(|(task, label)| {
                    let label = label.into_label().map_err(|found| {
                        let mut e =
                            wrong_type(&format!("task {task:?}: the label must"), &found, "labels");
                        if matches!(found, Scalar::Other("null")) {
                            e.message += "; leave a task out to not label it";
                        }
                        e
                    })?;
                    Ok((task, label))
                })
                .collect::<Result<_, _>>()?,
        ),
    })
}

/// An example's input before its content is checked.
enum PendingInput<'a> {
    Text(Cow<'a, str>),
    /// Base64, maybe in a `data:` URL.
    Image(Cow<'a, str>),
}

/// A text field's string, or why it is none.
fn string(value: Scalar<'_>) -> Result<Cow<'_, str>, String> {
    match value {
        Scalar::Str(s) => Ok(s),
        other => Err(format!("must be a string, found {}", other.kind())),
    }
}

/// A target whose shape is known but whose values are not checked yet.
enum Pending<'a> {
    Single(Scalar<'a>),
    Multi(Vec<Scalar<'a>>),
    Tasks(Vec<(Cow<'a, str>, Scalar<'a>)>),
}

impl Pending<'_> {
    fn task_type(&self) -> TaskType {
        match self {
            Pending::Single(_) => TaskType::Classification,
            Pending::Multi(_) => TaskType::MultiLabel,
            Pending::Tasks(_) => TaskType::MultiTask,
        }
    }
}

/// A JSON line: an object reduced to what the rules look at, or the kind of whatever
/// else it is.
enum Line<'a> {
    Object(Box<Record<'a>>),
    Other(&'static str),
}

/// Of an object only the fields the rules look at, so that other fields cost no
/// allocation.
struct Record<'a> {
    text: Option<Scalar<'a>>,
    text_pair: Option<Scalar<'a>>,
    image: Option<Scalar<'a>>,
    label: Option<Scalar<'a>>,
    labels: Option<Labels<'a>>,
    /// JSON leaves duplicate names undefined and parsers disagree on which one wins.
    duplicate: Option<&'static str>,
}

/// A JSON value where one string is expected: strings borrowed from the line when they
/// have no escapes, and of anything nested only its kind.
enum Scalar<'a> {
    Str(Cow<'a, str>),
    Integer(String),
    Bool(bool),
    Other(&'static str),
}

impl<'a> Scalar<'a> {
    fn kind(&self) -> &'static str {
        match self {
            Scalar::Str(_) => "a string",
            Scalar::Integer(_) => "an integer",
            Scalar::Bool(_) => "a boolean",
            Scalar::Other(kind) => kind,
        }
    }

    /// Integers and booleans are taken as their JSON text, since class ids and yes/no
    /// flags are common labels; numbers with fractions are not, since `1.0` and `1`
    /// would be two classes.
    fn into_label(self) -> Result<Cow<'a, str>, Self> {
        match self {
            Scalar::Str(label) => Ok(label),
            Scalar::Integer(label) => Ok(Cow::Owned(label)),
            Scalar::Bool(label) => Ok(Cow::Borrowed(if label { "true" } else { "false" })),
            other => Err(other),
        }
    }
}

/// The value of `labels`: its shape tells multi-label from multi-task.
enum Labels<'a> {
    List(Vec<Scalar<'a>>),
    Tasks(Vec<(Cow<'a, str>, Scalar<'a>)>),
    Other(&'static str),
}

/// The kinds of JSON values that are neither objects nor strings, for every visitor.
macro_rules! visit_other_kinds {
    ($other:path) => {
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok($other("an integer"))
        }

        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok($other("an integer"))
        }

        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok($other("a number with a fraction or an exponent"))
        }

        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok($other("a boolean"))
        }

        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($other("null"))
        }
    };
}

impl<'de> Deserialize<'de> for Line<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LineVisitor;

        impl<'de> Visitor<'de> for LineVisitor {
            type Value = Line<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }

            visit_other_kinds!(Line::Other);

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Line::Other("a string"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Line::Other("an array"))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut record = Record {
                    text: None,
                    text_pair: None,
                    image: None,
                    label: None,
                    labels: None,
                    duplicate: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    let seen = match key {
                        Key::Text => fill(&mut map, &mut record.text)?,
                        Key::TextPair => fill(&mut map, &mut record.text_pair)?,
                        Key::Image => fill(&mut map, &mut record.image)?,
                        Key::Label => fill(&mut map, &mut record.label)?,
                        Key::Labels => fill(&mut map, &mut record.labels)?,
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    if seen {
                        record.duplicate.get_or_insert(key.name());
                    }
                }
                Ok(Line::Object(Box::new(record)))
            }
        }

        /// Reads the value into an empty slot; says whether the slot was taken.
        fn fill<'de, A: MapAccess<'de>, T: Deserialize<'de>>(
            map: &mut A,
            slot: &mut Option<T>,
        ) -> Result<bool, A::Error> {
            if slot.is_some() {
                map.next_value::<IgnoredAny>()?;
                return Ok(true);
            }
            *slot = Some(map.next_value()?);
            Ok(false)
        }

        deserializer.deserialize_any(LineVisitor)
    }
}

impl<'de> Deserialize<'de> for Scalar<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;

        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = Scalar<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Scalar::Str(Cow::Owned(v)))
            }

            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Scalar::Integer(v.to_string()))
            }

            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Scalar::Integer(v.to_string()))
            }

            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Scalar::Other("a number with a fraction or an exponent"))
            }

            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Scalar::Bool(v))
            }

            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Scalar::Other("null"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an array"))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar::Other("an object"))
            }
        }

        deserializer.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Labels<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;

        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }

            visit_other_kinds!(Labels::Other);

            fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                Ok(Labels::Other("a string"))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut labels = Vec::new();
                while let Some(label) = seq.next_element()? {
                    labels.push(label);
                }
                Ok(Labels::List(labels))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut tasks = Vec::new();
                while let Some((Name(task), label)) = map.next_entry()? {
                    tasks.push((task, label));
                }
                Ok(Labels::Tasks(tasks))
            }
        }

        deserializer.deserialize_any(LabelsVisitor)
    }
}

/// An object key, borrowed from the line when it has no escapes.
struct Name<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;

        impl<'de> Visitor<'de> for NameVisitor {
            type Value = Name<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(NameVisitor)
    }
}

#[derive(Clone, Copy)]
enum Key {
    Text,
    TextPair,
    Image,
    Label,
    Labels,
    Other,
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Text => "text",
            Key::TextPair => "text_pair",
            Key::Image => "image",
            Key::Label => "label",
            Key::Labels => "labels",
            Key::Other => "",
        }
    }
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
                    "text_pair" => Key::TextPair,
                    "image" => Key::Image,
                    "label" => Key::Label,
                    "labels" => Key::Labels,
                    _ => Key::Other,
                })
            }
        }
        deserializer.deserialize_identifier(KeyVisitor)
    }
}
