use std::io::{Cursor, Write};

use base64::Engine;
use image::{ImageEncoder, RgbImage};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use super::*;
use crate::dataset::{DatasetSummary, DatasetValidator};

fn png(width: u32, height: u32, shade: u8) -> Vec<u8> {
    let pixels = RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([shade, (x * 7) as u8, (y * 13) as u8])
    });
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .expect("encode png");
    out
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let pixels = RgbImage::from_fn(width, height, |x, _| image::Rgb([x as u8, 40, 90]));
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut out)
        .write_image(&pixels, width, height, image::ExtendedColorType::Rgb8)
        .expect("encode jpeg");
    out
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(entries, CompressionMethod::Deflated)
}

fn zip_with(entries: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in entries {
        if name.ends_with('/') {
            writer.add_directory(*name, options).expect("dir");
        } else {
            writer.start_file(*name, options).expect("start");
            writer.write_all(bytes).expect("write");
        }
    }
    writer.finish().expect("finish").into_inner()
}

fn validate(bytes: &[u8], limits: DatasetLimits) -> Result<DatasetSummary, DatasetError> {
    let mut validator = DatasetValidator::new(DatasetFormat::Zip, limits);
    validator.push(bytes)?;
    validator.finish_archive(Cursor::new(bytes))
}

fn refused(bytes: &[u8], limits: DatasetLimits) -> DatasetError {
    validate(bytes, limits).expect_err("must be refused")
}

fn two_classes() -> Vec<(String, Vec<u8>)> {
    vec![
        ("cats/1.png".into(), png(8, 8, 10)),
        ("cats/2.jpg".into(), jpeg(16, 12)),
        ("dogs/1.png".into(), png(9, 8, 200)),
    ]
}

fn zip_owned(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let borrowed: Vec<(&str, &[u8])> = entries
        .iter()
        .map(|(n, b)| (n.as_str(), b.as_slice()))
        .collect();
    zip_of(&borrowed)
}

#[test]
fn class_folders_are_counted_and_read_back_in_path_order() {
    let mut entries = two_classes();
    entries.reverse();
    let bytes = zip_owned(&entries);
    let summary = validate(&bytes, DatasetLimits::default()).expect("valid");
    assert_eq!(summary.format, DatasetFormat::Zip);
    assert_eq!(summary.modality, Modality::Image);
    assert_eq!(summary.task_type, TaskType::Classification);
    assert_eq!(summary.examples, 3);
    assert_eq!(summary.bytes, bytes.len() as u64);
    let counts: Vec<_> = summary
        .label_counts
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(counts, [("cats", 2), ("dogs", 1)]);

    let examples = read_image_examples(DatasetFormat::Zip, &bytes).expect("read");
    let mut sorted = two_classes();
    sorted.sort();
    let got: Vec<_> = examples.iter().map(|e| (&e.target, &e.image)).collect();
    let want: Vec<_> = sorted
        .iter()
        .map(|(name, bytes)| {
            let class = name.split('/').next().unwrap_or_default().to_owned();
            (Target::Single(class), bytes)
        })
        .collect();
    assert_eq!(
        got,
        want.iter().map(|(t, b)| (t, *b)).collect::<Vec<_>>(),
        "untouched bytes, sorted by path"
    );
    assert!(crate::dataset::parse_examples(DatasetFormat::Zip, &bytes).is_err());
}

#[test]
fn one_top_folder_is_unwrapped_and_os_junk_is_skipped() {
    let (a, b) = (png(8, 8, 1), png(8, 8, 2));
    let bytes = zip_of(&[
        ("digits/", b""),
        ("digits/zero/", b""),
        ("digits/zero/a.png", &a),
        ("digits/one/b.PNG", &b),
        ("digits/.DS_Store", b"junk"),
        ("__MACOSX/digits/zero/._a.png", b"junk"),
        ("digits/one/Thumbs.db", b"junk"),
        ("digits/one/.hidden.png", b"junk"),
    ]);
    let summary = validate(&bytes, DatasetLimits::default()).expect("valid");
    let labels: Vec<_> = summary.label_counts.keys().map(String::as_str).collect();
    assert_eq!(labels, ["one", "zero"]);
    assert_eq!(summary.examples, 2);
}

fn assert_refused(e: &DatasetError, kind: DatasetErrorKind, entry: &str) {
    assert_eq!(e.kind, kind, "{e}");
    assert_eq!(e.entry.as_deref(), Some(entry), "{e}");
    assert!(e.to_string().contains(entry), "{e}");
}

#[test]
fn path_traversal_and_absolute_paths_are_refused() {
    let image = png(8, 8, 3);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("../x.png", &image)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::UnsafePath, "../x.png");
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("cats/../../x.png", &image)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::UnsafePath, "cats/../../x.png");
    let e = refused(
        &zip_of(&[("/etc/cats/1.png", &image), ("dogs/1.png", &image)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::UnsafePath, "/etc/cats/1.png");
}

#[test]
fn symlinks_are_refused() {
    let image = png(8, 8, 3);
    let mut writer = ZipWriter::new(Cursor::new(Vec::new()));
    let options = SimpleFileOptions::default();
    writer.start_file("cats/1.png", options).expect("start");
    writer.write_all(&image).expect("write");
    writer
        .add_symlink("dogs/1.png", "/etc/passwd", options)
        .expect("symlink");
    let bytes = writer.finish().expect("finish").into_inner();
    let e = refused(&bytes, DatasetLimits::default());
    assert_refused(&e, DatasetErrorKind::UnsafePath, "dogs/1.png");
}

#[test]
fn nested_archives_are_refused_by_name_and_by_bytes() {
    let image = png(8, 8, 3);
    let inner = zip_of(&[("a/1.png", &image)]);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/more.zip", &inner)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::NestedArchive, "dogs/more.zip");
    // Disguised: named like an image, a zip by its bytes.
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/1.png", &inner)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::NestedArchive, "dogs/1.png");
    assert!(e.message.contains("zip"), "{e}");
}

#[test]
fn entries_that_are_not_images_are_refused() {
    let image = png(8, 8, 3);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/notes.txt", b"hello")]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::InvalidImage, "dogs/notes.txt");
    // Named like an image, but text by its bytes.
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/1.jpg", b"not a jpeg at all")]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::InvalidImage, "dogs/1.jpg");
    // A PNG signature with a truncated body: the header is there, the pixels are not.
    let mut broken = png(32, 32, 9);
    broken.truncate(broken.len() - 30);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/broken.png", &broken)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::InvalidImage, "dogs/broken.png");
}

#[test]
fn layout_outside_class_folders_is_refused() {
    let image = png(8, 8, 3);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("loose.png", &image)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::ArchiveLayout, "loose.png");
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/small/1.png", &image)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::ArchiveLayout, "dogs/small/1.png");
}

#[test]
fn one_class_only_is_refused() {
    let image = png(8, 8, 3);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("cats/2.png", &image)]),
        DatasetLimits::default(),
    );
    assert_eq!(e.kind, DatasetErrorKind::TooFewClasses, "{e}");
    assert!(e.message.contains("cats"), "{e}");
}

/// The count in the end record is checked before the directory is parsed: a forged
/// count is refused as too many entries, not parsed as a directory that is not there.
#[test]
fn a_declared_entry_count_over_the_cap_is_refused_first() {
    let mut bytes = zip_owned(&two_classes());
    let end = bytes.len() - 22;
    assert_eq!(&bytes[end..end + 4], b"PK\x05\x06");
    for at in [end + 8, end + 10] {
        bytes[at..at + 2].copy_from_slice(&60_000u16.to_le_bytes());
    }
    let limits = DatasetLimits {
        max_archive_entries: 100,
        ..DatasetLimits::default()
    };
    let e = refused(&bytes, limits);
    assert_eq!(e.kind, DatasetErrorKind::TooManyEntries, "{e}");
    assert!(e.message.contains("60000"), "{e}");
}

#[test]
fn caps_on_entries_total_size_and_ratio_hold() {
    let entries = two_classes();
    let bytes = zip_owned(&entries);
    let limits = DatasetLimits {
        max_archive_entries: 2,
        ..DatasetLimits::default()
    };
    assert_eq!(
        refused(&bytes, limits).kind,
        DatasetErrorKind::TooManyEntries
    );

    let sizes: u64 = entries.iter().map(|(_, b)| b.len() as u64).sum();
    let limits = DatasetLimits {
        max_uncompressed_bytes: sizes - 1,
        ..DatasetLimits::default()
    };
    let e = refused(&bytes, limits);
    assert_eq!(e.kind, DatasetErrorKind::ArchiveTooLarge, "{e}");
    assert!(e.entry.is_some(), "{e}");

    // A megabyte of zeros named like an image: deflate shrinks it a thousandfold.
    let bomb = vec![0u8; 1 << 20];
    let image = png(8, 8, 3);
    let e = refused(
        &zip_of(&[("cats/1.png", &image), ("dogs/bomb.png", &bomb)]),
        DatasetLimits::default(),
    );
    assert_refused(&e, DatasetErrorKind::CompressionRatio, "dogs/bomb.png");
}

#[test]
fn image_bounds_name_the_entry_and_task_types_other_than_single_label_are_refused() {
    let bytes = zip_of(&[
        ("cats/1.png", &png(8, 8, 1)),
        ("dogs/1.png", &png(7, 20, 2)),
    ]);
    let e = refused(&bytes, DatasetLimits::default());
    assert_refused(&e, DatasetErrorKind::ImageSize, "dogs/1.png");
    assert!(e.message.contains("7×20"), "{e}");

    let bytes = zip_owned(&two_classes());
    let mut validator = DatasetValidator::new(DatasetFormat::Zip, DatasetLimits::default())
        .expecting(TaskType::MultiLabel);
    let e = validator.push(&bytes).expect_err("zip is single-label");
    assert_eq!(e.kind, DatasetErrorKind::UnsupportedTaskType);
    assert!(e.message.contains("single-label"), "{e}");
}

#[test]
fn garbage_is_not_a_zip() {
    let e = refused(b"certainly not a zip", DatasetLimits::default());
    assert_eq!(e.kind, DatasetErrorKind::InvalidArchive, "{e}");
}

fn jsonl(lines: &[String]) -> Vec<u8> {
    lines.join("\n").into_bytes()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn validate_jsonl(bytes: &[u8]) -> Result<DatasetSummary, DatasetError> {
    let mut validator = DatasetValidator::new(DatasetFormat::Jsonl, DatasetLimits::default());
    validator.push(bytes)?;
    validator.finish()
}

#[test]
fn jsonl_images_take_every_target_shape_and_read_back() {
    let (a, b) = (png(8, 8, 1), jpeg(8, 8));
    let unpadded = b64(&b);
    let unpadded = unpadded.trim_end_matches('=');
    let single = jsonl(&[
        format!(r#"{{"image": "{}", "label": "zero"}}"#, b64(&a)),
        format!(r#"{{"image": "data:image/jpeg;base64,{unpadded}", "label": 1}}"#),
    ]);
    let summary = validate_jsonl(&single).expect("valid");
    assert_eq!(summary.modality, Modality::Image);
    assert_eq!(summary.examples, 2);
    let examples = read_image_examples(DatasetFormat::Jsonl, &single).expect("read");
    assert_eq!(examples[0].image, a);
    assert_eq!(examples[1].image, b);
    assert_eq!(examples[1].target, Target::Single("1".into()));
    assert!(crate::dataset::parse_examples(DatasetFormat::Jsonl, &single).is_err());

    let multi = jsonl(&[
        format!(r#"{{"image": "{}", "labels": ["x", "y"]}}"#, b64(&a)),
        format!(r#"{{"image": "{}", "labels": ["y"]}}"#, b64(&b)),
    ]);
    let summary = validate_jsonl(&multi).expect("valid");
    assert_eq!(summary.task_type, TaskType::MultiLabel);
    let tasks = jsonl(&[
        format!(
            r#"{{"image": "{}", "labels": {{"digit": "0", "ink": "red"}}}}"#,
            b64(&a)
        ),
        format!(
            r#"{{"image": "{}", "labels": {{"digit": "1", "ink": "blue"}}}}"#,
            b64(&b)
        ),
    ]);
    let summary = validate_jsonl(&tasks).expect("valid");
    assert_eq!(summary.task_type, TaskType::MultiTask);
    let examples = read_image_examples(DatasetFormat::Jsonl, &tasks).expect("read");
    assert_eq!(examples[1].target.task_type(), TaskType::MultiTask);
}

#[test]
fn jsonl_image_errors_name_the_line_and_field() {
    let a = png(8, 8, 1);
    let bad_base64 = jsonl(&[
        format!(r#"{{"image": "{}", "label": "a"}}"#, b64(&a)),
        r#"{"image": "@@not base64@@", "label": "b"}"#.to_owned(),
    ]);
    let e = validate_jsonl(&bad_base64).expect_err("bad base64");
    assert_eq!((e.kind, e.line), (DatasetErrorKind::InvalidBase64, Some(2)));
    assert!(e.to_string().starts_with("line 2: field `image`: "), "{e}");

    let not_image = jsonl(&[
        format!(r#"{{"image": "{}", "label": "a"}}"#, b64(&a)),
        format!(r#"{{"image": "{}", "label": "b"}}"#, b64(b"GIF89a....")),
    ]);
    let e = validate_jsonl(&not_image).expect_err("not an image");
    assert_eq!(
        e.to_string(),
        "line 2: field `image`: not a PNG or JPEG image"
    );

    let mixed = jsonl(&[
        format!(r#"{{"image": "{}", "label": "a"}}"#, b64(&a)),
        r#"{"text": "hello", "label": "b"}"#.to_owned(),
    ]);
    let e = validate_jsonl(&mixed).expect_err("mixed");
    assert_eq!(
        (e.kind, e.line),
        (DatasetErrorKind::ModalityMismatch, Some(2))
    );
    assert_eq!(e.field.as_deref(), Some("text"));

    let both = jsonl(&[format!(
        r#"{{"image": "{}", "text": "x", "label": "a"}}"#,
        b64(&a)
    )]);
    let e = validate_jsonl(&both).expect_err("both");
    assert_eq!(e.kind, DatasetErrorKind::ConflictingFields);
}

#[test]
fn huge_declared_dimensions_are_refused_from_the_header() {
    // An 8×8 JPEG whose frame header claims 60000×60000: decoding it would allocate
    // ~10 GB; the header check refuses it first.
    let mut huge = jpeg(8, 8);
    let sof = huge
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("baseline frame header");
    for offset in [5, 7] {
        huge[sof + offset..sof + offset + 2].copy_from_slice(&60_000u16.to_be_bytes());
    }
    let lines = jsonl(&[
        format!(r#"{{"image": "{}", "label": "a"}}"#, b64(&png(8, 8, 1))),
        format!(r#"{{"image": "{}", "label": "b"}}"#, b64(&huge)),
    ]);
    let e = validate_jsonl(&lines).expect_err("too large");
    assert_eq!(
        (e.kind, e.line),
        (DatasetErrorKind::ImageSize, Some(2)),
        "{e}"
    );
    assert!(e.message.contains("60000×60000"), "{e}");
}
