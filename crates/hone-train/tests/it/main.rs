//! hone-train's integration tests, one binary (one link against libtorch).
//!
//! Everything runs on tiny random BERTs and EfficientNets written to temporary
//! directories, except `parity`, which checks the real all-MiniLM-L6-v2 against
//! transformers' output, and the `lite0_` tests of `efficientnet`, which check the real
//! EfficientNet-Lite0 against the reference implementation's.

mod base_models;
mod common;
mod efficientnet;
mod model;
mod parity;
mod resume;
mod strategies;
mod tasks;
mod training;
