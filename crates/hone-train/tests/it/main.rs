//! hone-train's integration tests, one binary (one link against libtorch).
//!
//! Everything runs on tiny random BERTs written to temporary directories, except
//! `parity`, which checks the real all-MiniLM-L6-v2 against transformers' output.

mod base_models;
mod common;
mod model;
mod parity;
mod strategies;
mod tasks;
mod training;
