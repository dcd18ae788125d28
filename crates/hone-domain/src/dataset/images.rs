//! Image datasets: a zip with one folder per class (the ImageFolder convention), or
//! JSON Lines whose examples carry a base64 PNG or JPEG in `image` instead of `text`.
//!
//! Every image is decoded once at upload, after its header dimensions passed the
//! configured bounds, so that a file that was admitted cannot fail to decode when it
//! is trained on, and a header claiming a gigapixel image allocates nothing.
//!
//! A zip is hostile input of its own: its names can point outside any folder it is
//! unpacked in, its sizes are claims, and one small entry can inflate to gigabytes.
//! Names are therefore checked before anything is decompressed, bytes are counted as
//! they come out and reading stops at the caps, and archives inside archives are
//! refused by name and by their bytes.

use std::borrow::Cow;
use std::io::{Cursor, Read, Seek};

use zip::result::ZipError;
use zip::ZipArchive;

use super::error::{DatasetError, DatasetErrorKind};
use super::parser::Parser;
use super::row::{Input, Row, RowTarget};
use super::rules::Rules;
use super::types::{DatasetFormat, DatasetLimits, Modality, Target, TaskType};

pub(super) mod check;
mod eocd;

pub use check::{base64_bytes, check_image, check_image_header, decode_base64, Refusal};

/// One labelled image, as the trainer consumes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageExample {
    /// The PNG or JPEG bytes as uploaded (base64-decoded for JSON Lines), untouched:
    /// decoding and resizing are the model's preprocessing.
    pub image: Vec<u8>,
    /// Of the same [`TaskType`] in every example of a file; always
    /// [`Target::Single`] (the folder) for a zip.
    pub target: Target,
}

/// Reads a stored image file with the upload's rules but without its limits, as
/// [`super::parse_examples`] does for text: a file that passed the validator yields
/// the examples and counts it reported. A zip's examples come sorted by path, so that
/// every read of the same file sees the same order.
pub fn read_image_examples(
    format: DatasetFormat,
    bytes: &[u8],
) -> Result<Vec<ImageExample>, DatasetError> {
    let mut examples = Vec::new();
    let mut collect = |row: Row<'_>| {
        if let Input::Image(image) = row.input {
            examples.push(ImageExample {
                image,
                target: row.target.into_target(),
            });
        }
    };
    let mut parser = Parser::new(format, DatasetLimits::unlimited());
    if format.is_archive() {
        read_archive(Cursor::new(bytes), &mut parser.rules, &mut collect)?;
        parser.rules.finish()?;
    } else {
        parser.feed(bytes, &mut collect)?;
        parser.finish(&mut collect)?;
    }
    if parser.rules.modality() != Modality::Image {
        return Err(DatasetError::new(
            DatasetErrorKind::ModalityMismatch,
            "this file holds text examples, not images",
        ));
    }
    Ok(examples)
}

/// What reading an image file as text gets.
pub(super) fn holds_images() -> DatasetError {
    DatasetError::new(
        DatasetErrorKind::ModalityMismatch,
        "this file holds images, not text examples",
    )
}

const ARCHIVE_EXTENSIONS: [&str; 17] = [
    "zip", "jar", "war", "apk", "tar", "gz", "tgz", "bz2", "tbz2", "xz", "txz", "7z", "rar", "zst",
    "lz", "lzma", "cab",
];

/// Files that operating systems add to archives on their own; skipped rather than
/// refused, since users did not put them there and cannot easily keep them out.
fn is_junk(components: &[&str]) -> bool {
    components
        .iter()
        .any(|c| *c == "__MACOSX" || c.starts_with('.'))
        || components.last().is_some_and(|name| {
            name.eq_ignore_ascii_case("Thumbs.db") || name.eq_ignore_ascii_case("desktop.ini")
        })
}

/// An image entry that passed the checks on its name.
struct Entry {
    index: usize,
    name: String,
    components: Vec<String>,
    compressed: u64,
}

/// Checks a whole zip and hands its images, sorted by path, to `sink` as examples of
/// their folder's class. Errors name the entry.
pub(super) fn read_archive<R: Read + Seek, F: FnMut(Row<'_>)>(
    mut reader: R,
    rules: &mut Rules,
    sink: &mut F,
) -> Result<(), DatasetError> {
    let limits = rules.limits.clone();
    // The count the archive declares, before its directory is parsed into memory.
    let declared = eocd::declared_entries(&mut reader).map_err(|e| {
        DatasetError::new(
            DatasetErrorKind::InvalidArchive,
            format!("not a readable zip archive: {e}"),
        )
    })?;
    if let Some(entries) = declared.filter(|&n| n > limits.max_archive_entries) {
        return Err(DatasetError::new(
            DatasetErrorKind::TooManyEntries,
            format!(
                "the archive declares {entries} entries; the limit is {}",
                limits.max_archive_entries
            ),
        ));
    }
    let mut archive = ZipArchive::new(reader).map_err(|e| {
        DatasetError::new(
            DatasetErrorKind::InvalidArchive,
            format!("not a readable zip archive: {e}"),
        )
    })?;
    if archive.len() as u64 > limits.max_archive_entries {
        return Err(DatasetError::new(
            DatasetErrorKind::TooManyEntries,
            format!(
                "the archive has {} entries; the limit is {}",
                archive.len(),
                limits.max_archive_entries
            ),
        ));
    }
    let mut entries = Vec::new();
    for index in 0..archive.len() {
        // Raw: nothing is decompressed (or decrypted) to look at a name.
        let file = archive.by_index_raw(index).map_err(|e| {
            DatasetError::new(
                DatasetErrorKind::InvalidArchive,
                format!("entry {index} cannot be read: {e}"),
            )
        })?;
        let name = file.name().to_owned();
        let refuse = |kind, message: &str| Err(DatasetError::new(kind, message).in_entry(&name));
        let normalized = name.replace('\\', "/");
        if normalized.starts_with('/') || normalized.as_bytes().get(1) == Some(&b':') {
            return refuse(
                DatasetErrorKind::UnsafePath,
                "is an absolute path; entries must be relative (`<class>/<image>`)",
            );
        }
        let components: Vec<&str> = normalized
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if components.contains(&"..") {
            return refuse(
                DatasetErrorKind::UnsafePath,
                "has a `..` component, which points outside the folder it is unpacked in",
            );
        }
        // The zip crate's own judgement as a second opinion (NUL bytes, odd prefixes).
        if file.enclosed_name().is_none() {
            return refuse(
                DatasetErrorKind::UnsafePath,
                "is not a safe relative path; entries must be `<class>/<image>`",
            );
        }
        if is_junk(&components) {
            continue;
        }
        if file.is_symlink() {
            return refuse(
                DatasetErrorKind::UnsafePath,
                "is a symbolic link; only images and folders are accepted",
            );
        }
        if file.encrypted() {
            return refuse(
                DatasetErrorKind::EncryptedEntry,
                "is encrypted; upload an archive without a password",
            );
        }
        if file.is_dir() || components.is_empty() {
            continue;
        }
        let extension = components
            .last()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, ext)| ext.to_ascii_lowercase())
            .unwrap_or_default();
        if ARCHIVE_EXTENSIONS.contains(&extension.as_str()) {
            return refuse(
                DatasetErrorKind::NestedArchive,
                "is an archive; archives inside archives are refused",
            );
        }
        if !matches!(extension.as_str(), "png" | "jpg" | "jpeg") {
            return refuse(
                DatasetErrorKind::InvalidImage,
                "is not a PNG or JPEG image (by its name: `.png`, `.jpg` or `.jpeg`)",
            );
        }
        entries.push(Entry {
            index,
            components: components.iter().map(|c| (*c).to_owned()).collect(),
            compressed: file.compressed_size(),
            name,
        });
    }
    // "Compress folder" puts everything under the folder's name.
    let top = entries.first().and_then(|e| e.components.first().cloned());
    let wrapped = top.is_some_and(|top| {
        entries
            .iter()
            .all(|e| e.components.len() >= 3 && e.components.first() == Some(&top))
    });
    for entry in &mut entries {
        if wrapped {
            entry.components.remove(0);
        }
        let layout = match entry.components.len() {
            2 => continue,
            1 => "is outside any class folder; put each image in a folder named after its class",
            _ => "is nested too deep; the layout is `<class>/<image>`, optionally inside one top folder",
        };
        return Err(
            DatasetError::new(DatasetErrorKind::ArchiveLayout, layout).in_entry(&entry.name)
        );
    }
    entries.sort_by(|a, b| a.components.cmp(&b.components));

    let mut total = 0u64;
    for entry in entries {
        let image = inflate(&mut archive, &entry, &limits, &mut total)
            .map_err(|(kind, message)| DatasetError::new(kind, message).in_entry(&entry.name))?;
        check_image(&image, &limits)
            .map_err(|(kind, message)| DatasetError::new(kind, message).in_entry(&entry.name))?;
        let class = entry.components.first().cloned().unwrap_or_default();
        let place = |e: DatasetError| e.in_entry(&entry.name);
        rules
            .check_shape(0, TaskType::Classification, false, Modality::Image)
            .map_err(place)?;
        let row = Row {
            input: Input::Image(image),
            target: RowTarget::Single(Cow::Owned(class)),
        };
        rules.accept(0, row, sink).map_err(place)?;
    }
    Ok(())
}

/// An entry's bytes, counted as they come out: declared sizes are claims, and reading
/// stops as soon as a cap is passed.
fn inflate<R: Read + Seek>(
    archive: &mut ZipArchive<R>,
    entry: &Entry,
    limits: &DatasetLimits,
    total: &mut u64,
) -> Result<Vec<u8>, Refusal> {
    let room = limits.max_uncompressed_bytes.saturating_sub(*total);
    let too_large = || {
        (
            DatasetErrorKind::ArchiveTooLarge,
            format!(
                "the archive decompresses to more than {} bytes",
                limits.max_uncompressed_bytes
            ),
        )
    };
    let ratio_cap = entry
        .compressed
        .max(1)
        .saturating_mul(limits.max_compression_ratio);
    let bomb = || {
        (
            DatasetErrorKind::CompressionRatio,
            format!(
                "decompresses to more than {} times its compressed size ({} bytes); \
                 images barely compress, so this looks like a zip bomb",
                limits.max_compression_ratio, entry.compressed
            ),
        )
    };
    let mut file = archive.by_index(entry.index).map_err(|e| match e {
        ZipError::UnsupportedArchive(ZipError::PASSWORD_REQUIRED) => (
            DatasetErrorKind::EncryptedEntry,
            "is encrypted; upload an archive without a password".to_owned(),
        ),
        e => (
            DatasetErrorKind::InvalidArchive,
            format!("cannot be read (only stored and deflated entries are supported): {e}"),
        ),
    })?;
    let mut image =
        Vec::with_capacity(usize::try_from(file.size().min(room).min(1 << 24)).unwrap_or(0));
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut chunk).map_err(|e| {
            (
                DatasetErrorKind::InvalidArchive,
                format!("does not decompress: {e}"),
            )
        })?;
        if n == 0 {
            break;
        }
        let read = image.len() as u64 + n as u64;
        if read > ratio_cap {
            return Err(bomb());
        }
        if read > room {
            return Err(too_large());
        }
        image.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    *total += image.len() as u64;
    Ok(image)
}

#[cfg(test)]
mod tests;
