//! Real labelled images for tests, from the files `scripts/setup` installs:
//! scikit-learn's 8×8 digits (`.deps/data/digits.csv.gz`) and Debian's Fashion-MNIST
//! (`/usr/share/datasets/fashion-mnist/*.gz`). Test code, not library code: the
//! end-to-end tests of the `hone` crate include this file by its path to build upload
//! files from the same images.

use std::io::Read;
use std::path::Path;

use flate2::read::GzDecoder;

use hone_train::TrainError;

/// A gray image and its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelledImage {
    pub width: u32,
    pub height: u32,
    /// Row-major, 0 black to 255 white.
    pub pixels: Vec<u8>,
    pub label: u8,
}

impl LabelledImage {
    /// The image as a gray PNG file.
    pub fn png(&self) -> Result<Vec<u8>, TrainError> {
        let image = image::GrayImage::from_raw(self.width, self.height, self.pixels.clone())
            .ok_or_else(|| TrainError::InvalidInput("pixels do not fill the image".into()))?;
        let mut out = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .map_err(|e| TrainError::InvalidInput(format!("cannot encode PNG: {e}")))?;
        Ok(out.into_inner())
    }
}

fn gunzip(path: &Path) -> Result<Vec<u8>, TrainError> {
    let file = std::fs::File::open(path).map_err(|e| TrainError::io(path, e))?;
    let mut bytes = Vec::new();
    GzDecoder::new(file)
        .read_to_end(&mut bytes)
        .map_err(|e| TrainError::io(path, e))?;
    Ok(bytes)
}

/// scikit-learn's digits: each line 64 pixel values 0–16 and the digit, commas between.
/// Pixels are stretched to 0–255 (`v * 255 / 16`, rounded).
pub fn read_digits(path: &Path) -> Result<Vec<LabelledImage>, TrainError> {
    let text = String::from_utf8(gunzip(path)?)
        .map_err(|e| TrainError::config(path, format!("not text: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let bad = |m: String| TrainError::config(path, format!("line {}: {m}", i + 1));
            let values = line
                .split(',')
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .map_err(|e| bad(format!("{v:?}: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let [pixels @ .., label] = values.as_slice() else {
                return Err(bad("empty line".into()));
            };
            if pixels.len() != 64 || pixels.iter().any(|p| !(0.0..=16.0).contains(p)) {
                return Err(bad("expected 64 pixel values in 0..=16 and a label".into()));
            }
            if !(0.0..=9.0).contains(label) {
                return Err(bad(format!("label {label} is not a digit")));
            }
            Ok(LabelledImage {
                width: 8,
                height: 8,
                pixels: pixels
                    .iter()
                    .map(|p| (p * 255.0 / 16.0).round() as u8)
                    .collect(),
                label: *label as u8,
            })
        })
        .collect()
}

fn idx_header(
    bytes: &[u8],
    path: &Path,
    magic: u32,
    dims: usize,
) -> Result<Vec<usize>, TrainError> {
    let word = |i: usize| -> Option<u32> {
        bytes
            .get(4 * i..4 * i + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
    };
    if word(0) != Some(magic) {
        return Err(TrainError::config(
            path,
            format!("not an IDX file with magic {magic:#x}"),
        ));
    }
    (1..=dims)
        .map(|i| {
            word(i)
                .map(|d| d as usize)
                .ok_or_else(|| TrainError::config(path, "truncated IDX header"))
        })
        .collect()
}

/// A pair of IDX files, as MNIST and Fashion-MNIST ship: `images` (gzipped, magic
/// 0x803, `[n, rows, cols]` u8) and `labels` (gzipped, magic 0x801, `[n]` u8). At most
/// `limit` images are returned, from the start.
pub fn read_idx(
    images: &Path,
    labels: &Path,
    limit: usize,
) -> Result<Vec<LabelledImage>, TrainError> {
    let image_bytes = gunzip(images)?;
    let label_bytes = gunzip(labels)?;
    let dims = idx_header(&image_bytes, images, 0x803, 3)?;
    let count = idx_header(&label_bytes, labels, 0x801, 1)?[0];
    let (n, rows, cols) = (dims[0], dims[1], dims[2]);
    if n != count {
        return Err(TrainError::config(
            labels,
            format!("{count} labels for {n} images"),
        ));
    }
    let size = rows * cols;
    let pixels = &image_bytes[16..];
    let label_values = &label_bytes[8..];
    if pixels.len() < n * size || label_values.len() < n {
        return Err(TrainError::config(
            images,
            "IDX data shorter than its header says",
        ));
    }
    Ok((0..n.min(limit))
        .map(|i| LabelledImage {
            width: cols as u32,
            height: rows as u32,
            pixels: pixels[i * size..(i + 1) * size].to_vec(),
            label: label_values[i],
        })
        .collect())
}

/// Where setup puts Debian's Fashion-MNIST.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The first `limit` images of Fashion-MNIST's test split (`t10k`).
pub fn read_fashion_mnist_test(limit: usize) -> Result<Vec<LabelledImage>, TrainError> {
    let dir = Path::new(FASHION_MNIST_DIR);
    read_idx(
        &dir.join("t10k-images-idx3-ubyte.gz"),
        &dir.join("t10k-labels-idx1-ubyte.gz"),
        limit,
    )
}
