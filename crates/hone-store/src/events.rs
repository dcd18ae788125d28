//! A job's event log as the API and the worker both write it: every state change and
//! worker message goes in by `insert_event`, inside the transaction of the change.
//!
//! A job's events are appended in commit order: `insert_event` locks the job's row
//! before the event takes its `seq`, so two transactions adding events to one job take
//! their numbers one after the other, and a reader that has seen `seq` n has seen every
//! event of that job below n. The live stream (`events_after`) relies on it; an insert
//! trigger NOTIFYs `hone_job_events` with the job id.

use chrono::{DateTime, Utc};
use hone_domain::resources::{EventLevel, EventType, JobEvent};
use hone_domain::{PageRequest, ProjectId};
use sqlx::types::Json;
use uuid::Uuid;

use crate::{Db, StoreError};

/// The channel an insert trigger NOTIFYs with the job's id.
pub const JOB_EVENTS_CHANNEL: &str = "hone_job_events";

/// An event with its place in the job's log, for readers that follow the log.
#[derive(Clone, Debug)]
pub struct SeqEvent {
    pub seq: i64,
    pub event: JobEvent,
}

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

pub(crate) async fn insert_event(
    conn: &mut sqlx::PgConnection,
    job_id: &str,
    event: &NewEvent,
) -> Result<(), StoreError> {
    // The row lock orders this job's events by commit (see the module's comment); a
    // transaction that already updated the row holds it.
    sqlx::query("SELECT 1 FROM fine_tuning_jobs WHERE id = $1 FOR UPDATE")
        .bind(job_id)
        .execute(&mut *conn)
        .await?;
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
    .execute(&mut *conn)
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

#[derive(sqlx::FromRow)]
struct EventRow {
    seq: i64,
    id: String,
    level: String,
    r#type: String,
    message: String,
    data: Option<Json<serde_json::Value>>,
    created_at: DateTime<Utc>,
}

impl From<EventRow> for SeqEvent {
    fn from(r: EventRow) -> Self {
        let level = match r.level.as_str() {
            "warn" => EventLevel::Warn,
            "error" => EventLevel::Error,
            _ => EventLevel::Info,
        };
        let kind = if r.r#type == "metrics" {
            EventType::Metrics
        } else {
            EventType::Message
        };
        SeqEvent {
            seq: r.seq,
            event: JobEvent {
                id: r.id,
                object: "fine_tuning.job.event",
                created_at: r.created_at.timestamp(),
                level,
                kind,
                message: r.message,
                data: r.data.map(|d| d.0),
            },
        }
    }
}

const EVENT_COLUMNS: &str = "e.seq, e.id, e.level, e.type, e.message, e.data, e.created_at";

impl Db {
    /// Events of a job of `project` (none for another project's job), newest first, as
    /// the OpenAI API lists them.
    pub async fn list_events(
        &self,
        project: &ProjectId,
        job_id: &str,
        page: &PageRequest,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS}
             FROM fine_tuning_job_events e
             JOIN fine_tuning_jobs j ON j.id = e.job_id AND j.project_id = $4
             WHERE e.job_id = $1
               AND ($2::text IS NULL
                    OR e.seq < (SELECT seq FROM fine_tuning_job_events WHERE id = $2))
             ORDER BY e.seq DESC LIMIT $3"
        ))
        .bind(job_id)
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| SeqEvent::from(r).event).collect())
    }

    /// Up to `limit` events of a job of `project` after `seq` (from the first when
    /// `None`), oldest first: the next part of the log for a reader that follows it.
    pub async fn events_after(
        &self,
        project: &ProjectId,
        job_id: &str,
        seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<SeqEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS}
             FROM fine_tuning_job_events e
             JOIN fine_tuning_jobs j ON j.id = e.job_id AND j.project_id = $4
             WHERE e.job_id = $1 AND e.seq > COALESCE($2, 0)
             ORDER BY e.seq LIMIT $3"
        ))
        .bind(job_id)
        .bind(seq)
        .bind(limit)
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(SeqEvent::from).collect())
    }

    /// The place in the job's log of the event `event_id`, if the job (of `project`)
    /// has it.
    pub async fn event_seq(
        &self,
        project: &ProjectId,
        job_id: &str,
        event_id: &str,
    ) -> Result<Option<i64>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT e.seq FROM fine_tuning_job_events e
             JOIN fine_tuning_jobs j ON j.id = e.job_id AND j.project_id = $3
             WHERE e.job_id = $1 AND e.id = $2",
        )
        .bind(job_id)
        .bind(event_id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?)
    }
}
