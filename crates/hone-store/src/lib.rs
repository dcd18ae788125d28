//! Storage: Postgres (the system of record and the job queue) and the artifact store
//! (dataset bytes, published model directories). No HTTP and no training here.

pub mod artifacts;
pub mod checkpoints;
mod db;
pub mod events;
pub mod feature_cache;
pub mod files;
pub mod idempotency;
mod job_rows;
pub mod jobs;
pub mod listener;
pub mod models;
pub mod projects;
pub mod queue;
pub mod stats;
pub mod sweep;
pub mod usage;
pub mod webhook_outbox;
pub mod webhooks;

pub use artifacts::{
    dir_bytes, ArtifactStore, Listed, LocalArtifactStore, LocalDir, Location, ObjectArtifactStore,
    PendingObject, S3Settings,
};
pub use db::{connect, ensure_database, migrate, Db, StoreError};
pub use projects::{Project, Quota};
