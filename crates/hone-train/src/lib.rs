//! Training and inference for hone, on libtorch through tch.
//!
//! This crate knows nothing about HTTP, the database or the queue: the worker calls
//! [`train::fine_tune`] on a dedicated OS thread and publishes the directory that
//! [`train::TrainedModel::save`] writes; the server loads it with
//! [`predict::Classifier::load`]. Every call takes the device it runs on, and the
//! library never picks libtorch's thread count: the binary decides both, and each of
//! its threads that runs tensors sets its own count with
//! [`threads::use_intra_op_threads`].
//!
//! Reproducibility: training seeds libtorch's global generator. Loading models for
//! inference draws no random numbers, so serving in the same process does not disturb
//! a seeded run; two trainings at once in one process would.
//!
//! # Layers
//!
//! Modules import downwards only, never each other:
//!
//! 1. Leaves, the vocabulary everything else shares: [`error`], [`objective`]
//!    (what the heads predict, losses and reports), [`model_dir`] (a model directory's
//!    files, [`ModelMeta`] and [`Manifest`]), [`config`], [`data`], [`job`],
//!    [`metrics`] and [`observer`] (what a run is given and what it reports),
//!    [`weights`] (loading safetensors by name), [`threads`] (libtorch's thread count
//!    per OS thread), [`layers`] (what both architectures are built of) and `int8`
//!    (libtorch's fbgemm int8 Linear, through `cpp/int8_linear.cpp`).
//! 2. Architectures, one file each, built from the leaves: [`bert`] and
//!    [`efficientnet`]; the classifiers on top of them, [`classifier`] (text) and
//!    [`vision`] (images); their inputs, [`tokenize`] and [`vision_data`]; and
//!    [`base_model`], the catalogue of base model directories.
//! 3. Training and inference on those: the steps of a run (`checks`, `setup`,
//!    `inputs`, `evaluate`, `schedule`, `early_stopping`, [`trainable`], [`optim`],
//!    [`resume`], [`features`], [`feature_file`], [`recalibrate`], `head_fit` with
//!    [`probe`] and [`lbfgs`], the linear probe a `feature_extraction` head can be
//!    fitted as), the loop that runs them
//!    ([`train`]), and serving ([`predict`], and [`quantize`], which marks a published
//!    model to be served in int8 with what that changes on its validation data), which shares the network type and the
//!    scoring with the loop rather than importing it; [`export`], the README and
//!    preprocessing a model carries when it is downloaded, which says in Python what
//!    [`predict`] does.

pub mod base_model;
pub mod bert;
mod checks;
pub mod classifier;
pub mod config;
pub mod data;
mod early_stopping;
pub mod efficientnet;
pub mod error;
mod evaluate;
pub mod export;
pub mod feature_file;
pub mod features;
mod frozen;
mod head_fit;
mod inputs;
mod int8;
pub mod job;
pub mod layers;
pub mod lbfgs;
pub mod logme;
pub mod metrics;
pub mod model_dir;
mod network;
pub mod objective;
pub mod observer;
pub mod optim;
pub mod predict;
pub mod probe;
pub mod quantize;
pub mod recalibrate;
pub mod resume;
mod schedule;
mod setup;
pub mod threads;
pub mod tokenize;
pub mod train;
pub mod trainable;
pub mod vision;
pub mod vision_data;
pub mod weights;

pub use base_model::{
    inspect_base_model, list_base_models, BaseModelInfo, BaseModelInput, Modality,
};
pub use bert::{BertConfig, BertModel};
pub use classifier::{HeadType, Pooling, SequenceClassifier};
pub use config::{EncoderInit, HeadSolver, Strategy, TrainConfig};
pub use data::{Features, TrainData};
pub use efficientnet::{EfficientNet, EfficientNetConfig};
pub use error::TrainError;
pub use features::{extract_features, extract_image_features, FeatureRun};
pub use job::{TrainJob, DEFAULT_FROZEN_CACHE_BYTES};
pub use layers::WeightInit;
pub use logme::{logme_classification, logme_multilabel, logme_targets};
pub use metrics::{EpochMetrics, EvalMetrics, Evaluation, StepProgress};
pub use model_dir::{Manifest, ModelMeta};
pub use objective::{Objective, Report, Targets, TaskSpec};
pub use observer::{Checkpoint, TrainObserver};
pub use predict::{ClassPrediction, Classifier, Prediction};
pub use tokenize::{Batch, TextTokenizer};
pub use train::{fine_tune, fine_tune_with, TrainedModel};
pub use trainable::apply_checkpoint;
pub use vision::ImageClassifier;
pub use vision_data::{ImageBatch, ImageSet, LoaderOptions, Mode as ImageMode, Preprocess};
