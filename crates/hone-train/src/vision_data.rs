//! Images from encoded bytes to normalised tensors, as torchvision preprocesses them for
//! an ImageNet classifier, and a loader that prepares batches ahead of the training
//! thread.
//!
//! Evaluation is torchvision's `Resize(resize_size)` → `CenterCrop(image_size)` →
//! `ToTensor()` → `Normalize(mean, std)` on a PIL image: the shorter side becomes
//! `resize_size` with Pillow's antialiased bilinear filter (fast_image_resize implements
//! Pillow's convolution filters; the parity test in `tests/it/vision_parity.rs` holds it
//! to Pillow within one 8-bit level). Training replaces the centre crop with
//! `RandomResizedCrop(image_size)` and a horizontal flip, drawn from a generator seeded by
//! (seed, epoch, example) so that a run gives the same tensors whatever the thread
//! scheduling and can resume in the middle of an epoch.
//!
//! Both start from the image already resized to `resize_size` on its shorter side, the
//! form the loader keeps in memory across epochs so JPEGs are decoded once. torchvision
//! would cut the random crop from the original; for the photos users upload (larger than
//! 256) the crop then loses detail the network would not see at 224 anyway.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, OnceLock};

use fast_image_resize::images::Image;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use tch::Tensor;

use crate::efficientnet::EfficientNetConfig;
use crate::error::TrainError;

/// An 8-bit RGB image, rows top to bottom, pixels interleaved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rgb8 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Rgb8 {
    /// Bytes held in memory, for the loader's cache budget.
    pub fn bytes(&self) -> usize {
        self.pixels.len()
    }
}

/// Decodes a PNG or JPEG into RGB: gray is repeated over the channels, alpha dropped
/// (not blended: PIL's `convert("RGB")` does the same), 16-bit samples scaled to 8 bits.
pub fn decode_rgb8(bytes: &[u8]) -> Result<Rgb8, TrainError> {
    let decoded = image::load_from_memory(bytes)
        .map_err(|e| TrainError::InvalidInput(format!("cannot decode image: {e}")))?;
    let rgb = decoded.into_rgb8();
    Ok(Rgb8 {
        width: rgb.width(),
        height: rgb.height(),
        pixels: rgb.into_raw(),
    })
}

/// The shorter side scaled to `size`, the longer one truncated as torchvision's
/// `Resize(int)` computes it (`int(size * long / short)`).
pub fn shorter_side_size(width: u32, height: u32, size: u32) -> (u32, u32) {
    let scale = |long: u32, short: u32| (size as u64 * long as u64 / short as u64) as u32;
    if width <= height {
        (size, scale(height, width).max(1))
    } else {
        (scale(width, height).max(1), size)
    }
}

/// Resizes the `(left, top, width, height)` region of `src` to `width` × `height` with
/// Pillow's antialiased bilinear filter.
fn resize_region(
    src: &Rgb8,
    region: (u32, u32, u32, u32),
    width: u32,
    height: u32,
) -> Result<Rgb8, TrainError> {
    let src_image = Image::from_vec_u8(src.width, src.height, src.pixels.clone(), PixelType::U8x3)
        .map_err(|e| TrainError::InvalidInput(format!("image buffer: {e}")))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    let (left, top, w, h) = region;
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Bilinear))
        .crop(left as f64, top as f64, w as f64, h as f64);
    Resizer::new()
        .resize(&src_image, &mut dst, &options)
        .map_err(|e| TrainError::InvalidInput(format!("cannot resize image: {e}")))?;
    Ok(Rgb8 {
        width,
        height,
        pixels: dst.into_vec(),
    })
}

/// Random crop and flip of one training example, torchvision's `RandomResizedCrop`
/// (scale (0.08, 1), ratio (3/4, 4/3)) and `RandomHorizontalFlip(0.5)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augmentation {
    /// `(left, top, width, height)` in the resized image.
    pub crop: (u32, u32, u32, u32),
    pub flip: bool,
}

/// The generator of example `index` in `epoch` of a run seeded with `seed`: independent
/// of which thread prepares the example and of what was drawn before it.
pub fn example_rng(seed: u64, epoch: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&index.to_le_bytes());
    ChaCha8Rng::from_seed(key)
}

impl Augmentation {
    const SCALE: (f64, f64) = (0.08, 1.0);
    const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

    /// torchvision's `RandomResizedCrop.get_params`: ten tries at a region of random
    /// area and aspect ratio that fits, else the largest centred region whose ratio is
    /// within bounds; then a coin for the flip.
    pub fn sample(width: u32, height: u32, rng: &mut impl Rng) -> Self {
        let (w_f, h_f) = (width as f64, height as f64);
        let area = w_f * h_f;
        let (log_lo, log_hi) = (Self::RATIO.0.ln(), Self::RATIO.1.ln());
        let mut crop = None;
        for _ in 0..10 {
            let target = area * rng.gen_range(Self::SCALE.0..Self::SCALE.1);
            let ratio = rng.gen_range(log_lo..log_hi).exp();
            let w = (target * ratio).sqrt().round();
            let h = (target / ratio).sqrt().round();
            if w > 0.0 && w <= w_f && h > 0.0 && h <= h_f {
                let (w, h) = (w as u32, h as u32);
                let top = rng.gen_range(0..=height - h);
                let left = rng.gen_range(0..=width - w);
                crop = Some((left, top, w, h));
                break;
            }
        }
        let crop = crop.unwrap_or_else(|| {
            let in_ratio = w_f / h_f;
            let (w, h) = if in_ratio < Self::RATIO.0 {
                (
                    width,
                    ((w_f / Self::RATIO.0).round() as u32).clamp(1, height),
                )
            } else if in_ratio > Self::RATIO.1 {
                (
                    ((h_f * Self::RATIO.1).round() as u32).clamp(1, width),
                    height,
                )
            } else {
                (width, height)
            };
            ((width - w) / 2, (height - h) / 2, w, h)
        });
        Self {
            crop,
            flip: rng.gen_bool(0.5),
        }
    }
}

/// What turns an image into the network's input: sizes and normalisation from the base
/// model's config.
#[derive(Debug, Clone, PartialEq)]
pub struct Preprocess {
    pub image_size: u32,
    /// The shorter side before the centre crop.
    pub resize_size: u32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// From the base model's config; without `resize_size` it is `image_size / 0.875`
    /// rounded (256 for 224), the crop fraction timm and torchvision's ImageNet
    /// evaluation use — and the same 256 as the config's TensorFlow-style
    /// `crop_padding` of 32 gives EfficientNet-Lite0.
    pub fn from_config(config: &EfficientNetConfig) -> Self {
        let image_size = config.image_size as u32;
        let resize_size = config
            .resize_size
            .map_or_else(|| (image_size as f64 / 0.875).round() as u32, |s| s as u32);
        Self {
            image_size,
            resize_size,
            mean: config.mean.map(|m| m as f32),
            std: config.std.map(|s| s as f32),
        }
    }

    /// Floats per prepared image: `3 × image_size²`.
    pub fn numel(&self) -> usize {
        3 * self.image_size as usize * self.image_size as usize
    }

    /// Decodes and resizes the shorter side to `resize_size`: the form kept in memory.
    pub fn decode_resized(&self, bytes: &[u8]) -> Result<Rgb8, TrainError> {
        let image = decode_rgb8(bytes)?;
        let (w, h) = shorter_side_size(image.width, image.height, self.resize_size);
        resize_region(&image, (0, 0, image.width, image.height), w, h)
    }

    /// The evaluation input of a resized image, `[3, image_size, image_size]` floats
    /// (channels first): centre crop as torchvision's `CenterCrop` places it, with
    /// Python's `round` (half to even: a 341-wide image is cut from column 58, not 59).
    pub fn eval_pixels(&self, resized: &Rgb8) -> Result<Vec<f32>, TrainError> {
        let size = self.image_size;
        if resized.width < size || resized.height < size {
            return Err(TrainError::InvalidInput(format!(
                "a {}×{} image is smaller than the {size}-pixel crop",
                resized.width, resized.height
            )));
        }
        let top = ((resized.height - size) as f64 / 2.0).round_ties_even() as u32;
        let left = ((resized.width - size) as f64 / 2.0).round_ties_even() as u32;
        Ok(self.normalize(resized, (left, top), false))
    }

    /// The training input of a resized image under `augmentation`.
    pub fn train_pixels(
        &self,
        resized: &Rgb8,
        augmentation: &Augmentation,
    ) -> Result<Vec<f32>, TrainError> {
        let crop = resize_region(resized, augmentation.crop, self.image_size, self.image_size)?;
        Ok(self.normalize(&crop, (0, 0), augmentation.flip))
    }

    /// `(pixel / 255 - mean) / std`, channels first, of the `image_size` square at
    /// `origin`, mirrored when `flip`.
    fn normalize(&self, image: &Rgb8, origin: (u32, u32), flip: bool) -> Vec<f32> {
        let size = self.image_size as usize;
        let plane = size * size;
        let mut out = vec![0f32; 3 * plane];
        let stride = image.width as usize * 3;
        for y in 0..size {
            let row = (origin.1 as usize + y) * stride;
            for x in 0..size {
                let sx = if flip { size - 1 - x } else { x };
                let at = row + (origin.0 as usize + sx) * 3;
                for c in 0..3 {
                    let value = image.pixels[at + c] as f32 / 255.0;
                    out[c * plane + y * size + x] = (value - self.mean[c]) / self.std[c];
                }
            }
        }
        out
    }
}

/// Training draws a crop and a flip per example; evaluation takes the centre.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Eval,
    Train { seed: u64, epoch: u64 },
}

/// How the loader runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderOptions {
    /// Batches prepared ahead of the one the trainer is using.
    pub prefetch: usize,
    /// Threads decoding and resizing; 0 for as many as the machine has cores.
    pub threads: usize,
    /// Bytes of resized images kept in memory across epochs; images past it are decoded
    /// again each time they are needed.
    pub cache_bytes: usize,
}

impl Default for LoaderOptions {
    fn default() -> Self {
        Self {
            prefetch: 4,
            threads: 0,
            cache_bytes: 2 << 30,
        }
    }
}

/// A batch ready for the network.
#[derive(Debug)]
pub struct ImageBatch {
    /// `[batch, 3, image_size, image_size]` f32 on the CPU.
    pub images: Tensor,
    /// The examples in the batch, in its order.
    pub indices: Vec<usize>,
}

/// Encoded images and the resized copies of those that fit the cache budget.
#[derive(Debug)]
pub struct ImageSet {
    encoded: Vec<Vec<u8>>,
    preprocess: Preprocess,
    cache: Vec<OnceLock<Arc<Rgb8>>>,
    cached_bytes: AtomicUsize,
    options: LoaderOptions,
    pool: rayon::ThreadPool,
}

impl ImageSet {
    pub fn new(
        encoded: Vec<Vec<u8>>,
        preprocess: Preprocess,
        options: LoaderOptions,
    ) -> Result<Arc<Self>, TrainError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads)
            .thread_name(|i| format!("hone-images-{i}"))
            .build()
            .map_err(|e| TrainError::InvalidInput(format!("image loader threads: {e}")))?;
        Ok(Arc::new(Self {
            cache: (0..encoded.len()).map(|_| OnceLock::new()).collect(),
            encoded,
            preprocess,
            cached_bytes: AtomicUsize::new(0),
            options,
            pool,
        }))
    }

    pub fn len(&self) -> usize {
        self.encoded.len()
    }

    pub fn is_empty(&self) -> bool {
        self.encoded.is_empty()
    }

    pub fn preprocess(&self) -> &Preprocess {
        &self.preprocess
    }

    /// Bytes of resized images held now.
    pub fn cached_bytes(&self) -> usize {
        self.cached_bytes.load(Ordering::Relaxed)
    }

    /// Example `index` resized, from the cache or decoded (and cached if it fits).
    fn resized(&self, index: usize) -> Result<Arc<Rgb8>, TrainError> {
        let slot = self.cache.get(index).ok_or_else(|| {
            TrainError::InvalidInput(format!("image {index} is not in a set of {}", self.len()))
        })?;
        if let Some(image) = slot.get() {
            return Ok(Arc::clone(image));
        }
        let image = Arc::new(
            self.preprocess
                .decode_resized(&self.encoded[index])
                .map_err(|e| TrainError::InvalidInput(format!("image {index}: {e}")))?,
        );
        let size = image.bytes();
        let reserved = self
            .cached_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                (used + size <= self.options.cache_bytes).then_some(used + size)
            })
            .is_ok();
        if reserved && slot.set(Arc::clone(&image)).is_err() {
            // Another thread cached it first: give the reservation back.
            self.cached_bytes.fetch_sub(size, Ordering::Relaxed);
        }
        Ok(image)
    }

    /// The network input of one example.
    pub fn pixels(&self, index: usize, mode: Mode) -> Result<Vec<f32>, TrainError> {
        let resized = self.resized(index)?;
        match mode {
            Mode::Eval => self.preprocess.eval_pixels(&resized),
            Mode::Train { seed, epoch } => {
                let mut rng = example_rng(seed, epoch, index as u64);
                let augmentation = Augmentation::sample(resized.width, resized.height, &mut rng);
                self.preprocess.train_pixels(&resized, &augmentation)
            }
        }
    }

    /// One batch of the given examples, prepared in parallel.
    pub fn batch(&self, indices: &[usize], mode: Mode) -> Result<ImageBatch, TrainError> {
        let numel = self.preprocess.numel();
        let pixels = self.pool.install(|| {
            indices
                .par_iter()
                .map(|&i| self.pixels(i, mode))
                .collect::<Result<Vec<_>, _>>()
        })?;
        let mut flat = Vec::with_capacity(numel * indices.len());
        for p in pixels {
            flat.extend_from_slice(&p);
        }
        let size = self.preprocess.image_size as i64;
        let images = Tensor::f_from_slice(&flat)?.f_view([indices.len() as i64, 3, size, size])?;
        Ok(ImageBatch {
            images,
            indices: indices.to_vec(),
        })
    }

    /// Batches of `batch_size` examples in `order` (the last one shorter), prepared on
    /// a thread of their own up to `prefetch` batches ahead. Dropping the iterator stops
    /// the preparation; an error ends the sequence.
    pub fn batches(
        self: &Arc<Self>,
        order: Vec<usize>,
        batch_size: usize,
        mode: Mode,
    ) -> Result<Batches, TrainError> {
        if batch_size == 0 {
            return Err(TrainError::InvalidInput(
                "batch_size must be positive".into(),
            ));
        }
        if let Some(bad) = order.iter().find(|&&i| i >= self.len()) {
            return Err(TrainError::InvalidInput(format!(
                "image {bad} is not in a set of {}",
                self.len()
            )));
        }
        let (sender, receiver) = sync_channel(self.options.prefetch.max(1));
        let set = Arc::clone(self);
        let mut chunks: VecDeque<Vec<usize>> =
            order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        std::thread::Builder::new()
            .name("hone-image-loader".into())
            .spawn(move || {
                while let Some(indices) = chunks.pop_front() {
                    let batch = set.batch(&indices, mode);
                    let failed = batch.is_err();
                    if sender.send(batch).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(|e| TrainError::InvalidInput(format!("image loader thread: {e}")))?;
        Ok(Batches { receiver })
    }
}

/// The batches of one pass, in order.
#[derive(Debug)]
pub struct Batches {
    receiver: Receiver<Result<ImageBatch, TrainError>>,
}

impl Iterator for Batches {
    type Item = Result<ImageBatch, TrainError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.receiver.recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
        let image = image::RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([
                (x as u8).wrapping_mul(7).wrapping_add(seed),
                (y as u8).wrapping_mul(11),
                seed,
            ])
        });
        let mut out = std::io::Cursor::new(Vec::new());
        image
            .write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        out.into_inner()
    }

    fn preprocess() -> Preprocess {
        Preprocess {
            image_size: 16,
            resize_size: 20,
            mean: [0.5; 3],
            std: [0.25; 3],
        }
    }

    #[test]
    fn resize_keeps_the_aspect_ratio_as_torchvision() {
        assert_eq!(shorter_side_size(640, 480, 256), (341, 256));
        assert_eq!(shorter_side_size(8, 8, 256), (256, 256));
        assert_eq!(shorter_side_size(30, 45, 20), (20, 30));
    }

    #[test]
    fn fallback_crop_is_centred_within_the_ratio() {
        // A 1000×10 strip: no random region of the allowed ratios fits.
        struct Max;
        impl rand::RngCore for Max {
            fn next_u32(&mut self) -> u32 {
                u32::MAX
            }
            fn next_u64(&mut self) -> u64 {
                u64::MAX
            }
            fn fill_bytes(&mut self, dest: &mut [u8]) {
                dest.fill(0xff);
            }
            fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
                dest.fill(0xff);
                Ok(())
            }
        }
        let a = Augmentation::sample(1000, 10, &mut Max);
        assert_eq!(a.crop, (493, 0, 13, 10));
    }

    #[test]
    fn augmentation_depends_on_seed_epoch_and_example_only() {
        let set = ImageSet::new(
            vec![png(40, 30, 1), png(25, 33, 2)],
            preprocess(),
            LoaderOptions::default(),
        )
        .expect("set");
        let train = |seed, epoch, index| {
            set.pixels(index, Mode::Train { seed, epoch })
                .expect("pixels")
        };
        assert_eq!(train(7, 0, 1), train(7, 0, 1));
        assert_ne!(train(7, 0, 1), train(7, 1, 1));
        assert_ne!(train(7, 0, 1), train(8, 0, 1));
        // Twenty epochs of one example: crops of different sizes and both flips.
        let draws: Vec<Augmentation> = (0..20)
            .map(|epoch| Augmentation::sample(40, 30, &mut example_rng(7, epoch, 0)))
            .collect();
        assert!(draws.iter().any(|a| a.flip) && draws.iter().any(|a| !a.flip));
        assert!(draws.iter().any(|a| a.crop.2 != draws[0].crop.2));
        for a in &draws {
            let (left, top, w, h) = a.crop;
            assert!(w > 0 && h > 0 && left + w <= 40 && top + h <= 30, "{a:?}");
        }
    }

    #[test]
    fn loader_yields_every_example_once_in_order() {
        let encoded: Vec<Vec<u8>> = (0..11).map(|i| png(20 + i, 24, i as u8)).collect();
        let set = ImageSet::new(
            encoded,
            preprocess(),
            LoaderOptions {
                prefetch: 2,
                threads: 2,
                cache_bytes: 0,
            },
        )
        .expect("set");
        let order = vec![3, 10, 0, 7, 1, 2, 9, 4, 8, 6, 5];
        let batches: Vec<ImageBatch> = set
            .batches(order.clone(), 4, Mode::Eval)
            .expect("batches")
            .collect::<Result<_, _>>()
            .expect("no errors");
        let sizes: Vec<Vec<i64>> = batches.iter().map(|b| b.images.size()).collect();
        assert_eq!(
            sizes,
            [vec![4, 3, 16, 16], vec![4, 3, 16, 16], vec![3, 3, 16, 16]]
        );
        let seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(seen, order);
        // Each row is the example it claims to be.
        let row = batches[0].images.get(1).flatten(0, -1);
        let expected = Tensor::from_slice(&set.pixels(10, Mode::Eval).expect("pixels"));
        assert_eq!(row, expected);
        assert_eq!(set.cached_bytes(), 0, "a zero budget caches nothing");
    }

    #[test]
    fn cache_stays_within_its_budget_and_gives_the_same_pixels() {
        let encoded: Vec<Vec<u8>> = (0..4).map(|i| png(40, 20, i)).collect();
        // Each resized image is 40×20 → 40×20: 2,400 bytes; room for two.
        let options = LoaderOptions {
            cache_bytes: 5_000,
            ..LoaderOptions::default()
        };
        let set = ImageSet::new(encoded, preprocess(), options).expect("set");
        let first: Vec<Vec<f32>> = (0..4)
            .map(|i| set.pixels(i, Mode::Eval).expect("pixels"))
            .collect();
        assert_eq!(set.cached_bytes(), 4_800);
        let again: Vec<Vec<f32>> = (0..4)
            .map(|i| set.pixels(i, Mode::Eval).expect("pixels"))
            .collect();
        assert_eq!(first, again);
    }

    #[test]
    fn undecodable_bytes_are_an_error_naming_the_example() {
        let set = ImageSet::new(
            vec![png(20, 20, 0), b"not an image".to_vec()],
            preprocess(),
            LoaderOptions::default(),
        )
        .expect("set");
        let results: Vec<_> = set
            .batches(vec![0, 1], 1, Mode::Eval)
            .expect("batches")
            .collect();
        assert_eq!(results.len(), 2);
        assert!(results[0].is_ok());
        let message = results[1].as_ref().expect_err("error").to_string();
        assert!(message.contains("image 1"), "{message}");
        assert!(set.batches(vec![2], 1, Mode::Eval).is_err());
    }

    #[test]
    fn gray_and_alpha_become_rgb() {
        let gray = image::GrayAlphaImage::from_fn(3, 2, |x, _| image::LumaA([x as u8 * 50, 9]));
        let mut out = std::io::Cursor::new(Vec::new());
        gray.write_to(&mut out, image::ImageFormat::Png)
            .expect("encode");
        let rgb = decode_rgb8(&out.into_inner()).expect("decode");
        assert_eq!((rgb.width, rgb.height), (3, 2));
        assert_eq!(&rgb.pixels[..9], &[0, 0, 0, 50, 50, 50, 100, 100, 100]);
    }
}
