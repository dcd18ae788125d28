//! One image's bytes, checked: what it is by its magic bytes, its header's dimensions
//! against the limits, and that it decodes. A JSON Lines `image` field, a zip entry
//! and a predict input all need exactly these checks and nothing of zip or parsing, so
//! they sit in a leaf that the JSON Lines syntax can use without depending on the
//! module that reads whole image files.

use std::io::Cursor;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use image::{ImageFormat, ImageReader, Limits};

use crate::dataset::error::DatasetErrorKind;
use crate::dataset::types::DatasetLimits;

/// A refusal without its place: the caller knows the line, the entry or the input.
pub type Refusal = (DatasetErrorKind, String);

/// Padding is optional and a `data:image/…;base64,` prefix is accepted, since that is
/// what browsers and most tools produce.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The image bytes of a JSON Lines `image` field (or a predict input), checked.
pub fn decode_base64(field: &str, limits: &DatasetLimits) -> Result<Vec<u8>, Refusal> {
    let bytes = base64_bytes(field)?;
    check_image(&bytes, limits)?;
    Ok(bytes)
}

/// The bytes of a base64 `image` field (or a `data:image/…;base64,` URL), not checked.
pub fn base64_bytes(field: &str) -> Result<Vec<u8>, Refusal> {
    let encoded = match field.strip_prefix("data:") {
        Some(url) => match url.split_once(";base64,") {
            Some((media, data)) if media.starts_with("image/") => data,
            _ => {
                return Err((
                    DatasetErrorKind::InvalidBase64,
                    "a data URL must look like `data:image/png;base64,…`".into(),
                ))
            }
        },
        None => field,
    };
    BASE64.decode(encoded.trim()).map_err(|e| {
        (
            DatasetErrorKind::InvalidBase64,
            format!("is not valid base64 (standard alphabet): {e}"),
        )
    })
}

const PNG: &[u8] = b"\x89PNG\r\n\x1a\n";
const JPEG: &[u8] = b"\xFF\xD8\xFF";

/// Refuses what is not a PNG or JPEG by its bytes, whatever its name says, then checks
/// the header's dimensions before anything is allocated for the pixels, then decodes.
pub fn check_image(bytes: &[u8], limits: &DatasetLimits) -> Result<(), Refusal> {
    let format = check_image_header(bytes, limits)?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut bounds = Limits::default();
    bounds.max_image_width = Some(limits.max_image_side);
    bounds.max_image_height = Some(limits.max_image_side);
    // Four bytes a pixel (RGBA) of the largest allowed image, plus the decoder's room.
    bounds.max_alloc = Some(limits.max_image_pixels.saturating_mul(8));
    reader.limits(bounds);
    reader.decode().map_err(|e| {
        (
            DatasetErrorKind::InvalidImage,
            format!("the {format:?} image does not decode: {e}"),
        )
    })?;
    Ok(())
}

/// [`check_image`] without the decoding: a PNG or JPEG by its bytes whose header's
/// dimensions are within the limits. For predict, whose inference thread decodes each
/// image once, within these same bounds, and names an input whose pixels do not decode.
pub fn check_image_header(bytes: &[u8], limits: &DatasetLimits) -> Result<ImageFormat, Refusal> {
    let invalid = |message: String| (DatasetErrorKind::InvalidImage, message);
    let format = if bytes.starts_with(PNG) {
        ImageFormat::Png
    } else if bytes.starts_with(JPEG) {
        ImageFormat::Jpeg
    } else if let Some(kind) = archive_kind(bytes) {
        return Err((
            DatasetErrorKind::NestedArchive,
            format!("is a {kind} archive, not an image; archives inside archives are refused"),
        ));
    } else {
        return Err(invalid("not a PNG or JPEG image".into()));
    };
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format)
        .into_dimensions()
        .map_err(|e| invalid(format!("cannot read the {format:?} header: {e}")))?;
    let (short, long) = (width.min(height), width.max(height));
    let size = |message: String| {
        Err((
            DatasetErrorKind::ImageSize,
            format!("the image is {width}×{height} pixels; {message}"),
        ))
    };
    if short < limits.min_image_side {
        return size(format!(
            "each side must be at least {} pixels",
            limits.min_image_side
        ));
    }
    if long > limits.max_image_side {
        return size(format!(
            "each side must be at most {} pixels",
            limits.max_image_side
        ));
    }
    if u64::from(width) * u64::from(height) > limits.max_image_pixels {
        return size(format!("the limit is {} pixels", limits.max_image_pixels));
    }
    Ok(format)
}

/// The kind of archive (or compressed stream) `bytes` start with, if any.
fn archive_kind(bytes: &[u8]) -> Option<&'static str> {
    const MAGIC: [(&[u8], &str); 9] = [
        (b"PK\x03\x04", "zip"),
        (b"PK\x05\x06", "zip"),
        (b"PK\x07\x08", "zip"),
        (b"\x1F\x8B", "gzip"),
        (b"BZh", "bzip2"),
        (b"\xFD7zXZ\x00", "xz"),
        (b"7z\xBC\xAF\x27\x1C", "7z"),
        (b"Rar!\x1A\x07", "rar"),
        (b"\x28\xB5\x2F\xFD", "zstd"),
    ];
    if let Some((_, kind)) = MAGIC.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        return Some(kind);
    }
    (bytes.get(257..262) == Some(b"ustar")).then_some("tar")
}
