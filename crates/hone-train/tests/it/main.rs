//! hone-train's integration tests, one binary (one link against libtorch).
//!
//! Everything runs on tiny random BERTs and EfficientNets written to temporary
//! directories, except `parity`, which checks the real all-MiniLM-L6-v2 against
//! transformers' output, and the `lite0_` tests of `efficientnet`, which check the real
//! EfficientNet-Lite0 against the reference implementation's, `vision_parity`, which
//! checks image preprocessing against torchvision, and the `lite0_`/real-data tests of
//! `vision` (scikit-learn's digits and Fashion-MNIST as scripts/setup installs them).

mod base_models;
mod batch_norm;
mod common;
mod efficientnet;
mod head_fit;
mod image_training;
mod model;
mod parity;
mod resume;
mod strategies;
mod tasks;
mod test_images;
mod training;
mod vision;
mod vision_parity;
