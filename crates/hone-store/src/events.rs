//! A job's event log as the API and the worker both write it: every state change and
//! worker message goes in by `insert_event`, inside the transaction of the change.

use hone_domain::resources::{EventLevel, EventType};
use sqlx::types::Json;
use uuid::Uuid;

use crate::StoreError;

#[derive(Clone, Debug)]
pub struct NewEvent {
    pub level: EventLevel,
    pub kind: EventType,
    pub message: String,
    pub data: Option<serde_json::Value>,
}

impl NewEvent {
    pub fn info(message: impl Into<String>) -> Self {
        Self {
            level: EventLevel::Info,
            kind: EventType::Message,
            message: message.into(),
            data: None,
        }
    }

    pub fn warn(message: impl Into<String>) -> Self {
        Self {
            level: EventLevel::Warn,
            ..Self::info(message)
        }
    }

    pub fn metrics(message: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            level: EventLevel::Info,
            kind: EventType::Metrics,
            message: message.into(),
            data: Some(data),
        }
    }
}

fn event_id() -> String {
    format!("ftevent-{}", Uuid::now_v7().simple())
}

pub(crate) async fn insert_event<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    job_id: &str,
    event: &NewEvent,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO fine_tuning_job_events (id, job_id, level, type, message, data)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event_id())
    .bind(job_id)
    .bind(level_str(event.level))
    .bind(type_str(event.kind))
    .bind(&event.message)
    .bind(event.data.as_ref().map(Json))
    .execute(exec)
    .await?;
    Ok(())
}

fn level_str(l: EventLevel) -> &'static str {
    match l {
        EventLevel::Info => "info",
        EventLevel::Warn => "warn",
        EventLevel::Error => "error",
    }
}

fn type_str(t: EventType) -> &'static str {
    match t {
        EventType::Message => "message",
        EventType::Metrics => "metrics",
    }
}
