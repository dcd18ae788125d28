//! Image preprocessing against torchvision on Pillow
//! (`tests/fixtures/vision/preprocess.json`, made by
//! `scripts/fixtures/vision_preprocess.py`; see the fixtures README).

use std::path::{Path, PathBuf};

use hone_train::efficientnet::EfficientNetConfig;
use hone_train::vision_data::Preprocess;
use serde::Deserialize;

use crate::efficientnet::lite0_dir;

#[derive(Deserialize)]
struct Fixture {
    image_size: u32,
    resize_size: u32,
    mean: [f32; 3],
    std: [f32; 3],
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    input: String,
    mode: String,
    expected: String,
}

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision")
}

#[test]
fn evaluation_preprocessing_matches_torchvision_within_one_level() {
    let dir = fixture_dir();
    let fixture: Fixture =
        serde_json::from_slice(&std::fs::read(dir.join("preprocess.json")).expect("fixture"))
            .expect("fixture json");
    let config =
        EfficientNetConfig::from_file(&lite0_dir().join("config.json")).expect("lite0 config");
    let preprocess = Preprocess::from_config(&config);
    assert_eq!(
        (preprocess.image_size, preprocess.resize_size),
        (fixture.image_size, fixture.resize_size)
    );
    assert_eq!(
        (preprocess.mean, preprocess.std),
        (fixture.mean, fixture.std)
    );
    // One 8-bit level after normalisation.
    let level = 1.0 / 255.0 / fixture.std.iter().fold(f32::MAX, |a, &b| a.min(b));
    let plane = (fixture.image_size * fixture.image_size) as usize;
    let modes: Vec<&str> = fixture.cases.iter().map(|c| c.mode.as_str()).collect();
    assert_eq!(modes, ["L", "RGBA", "LA", "RGB", "RGB"]);

    for case in &fixture.cases {
        let bytes = std::fs::read(dir.join(&case.input)).expect("input");
        let resized = preprocess.decode_resized(&bytes).expect("decode");
        let ours = preprocess.eval_pixels(&resized).expect("pixels");
        let expected = image::open(dir.join(&case.expected))
            .expect("expected png")
            .into_rgb8();
        assert_eq!(
            expected.dimensions(),
            (fixture.image_size, fixture.image_size)
        );
        let mut worst = 0f32;
        let mut off = 0usize;
        let mut beyond_one = 0usize;
        for (i, pixel) in expected.pixels().enumerate() {
            for c in 0..3 {
                let theirs = (pixel[c] as f32 / 255.0 - fixture.mean[c]) / fixture.std[c];
                let diff = (ours[c * plane + i] - theirs).abs();
                worst = worst.max(diff);
                off += usize::from(diff > level * 0.5);
                beyond_one += usize::from(diff > level * 1.001);
            }
        }
        println!(
            "{}: max |ours - torchvision| = {worst:.5} ({:.2} levels); of {} values {off} differ, \
             {beyond_one} by more than a level",
            case.input,
            worst / level,
            3 * plane
        );
        if case.input.ends_with(".jpg") {
            // JPEG leaves the inverse DCT's rounding to the decoder: zune-jpeg (the
            // `image` crate's) and Pillow's libjpeg-turbo decode this file up to 3 levels
            // apart in 0.003% of values, before any resizing (the blue channel's (x·y) mod
            // 256 pattern is as hard on the inverse DCT as content gets); resized, 0.16%
            // of values end up more than a level apart.
            assert!(
                worst <= level * 3.001,
                "{}: max difference {worst}",
                case.input
            );
            assert!(
                beyond_one * 200 <= 3 * plane,
                "{}: {beyond_one} values",
                case.input
            );
        } else {
            assert!(
                worst <= level * 1.001,
                "{}: max difference {worst} exceeds one level ({level})",
                case.input
            );
        }
    }
}
