//! hone's domain: the validated values that cross every layer, with no IO.
//!
//! Inputs from users are parsed into these types at the edge (`parse`/`validate`), so
//! the storage, queue and training layers never see an unchecked value.

pub mod api_key;
pub mod data_report;
pub mod dataset;
pub mod ids;
pub mod job;
pub mod metrics;
pub mod page;
pub mod resources;
pub mod split;
pub mod webhook;

pub use ids::{
    ApiKeyId, CheckpointId, FileId, JobId, ModelId, ProjectId, WebhookDeliveryId, WebhookEventId,
    WebhookId,
};
pub use job::{
    Hyperparameters, HyperparametersInput, JobStatus, Method, MethodType, ValidationError,
};
pub use page::{Page, PageRequest};
