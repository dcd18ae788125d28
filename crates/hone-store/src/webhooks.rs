//! Webhook endpoints as the API manages them, one project's at a time, and the log of
//! their deliveries. Events and deliveries are written by the migration's triggers in
//! the transaction of the change they report; what deliverers do to the outbox is
//! `webhook_outbox.rs`.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hone_domain::webhook::{
    DeliveryAttempt, DeliveryStatus, WebhookDelivery, WebhookEndpoint, WebhookEventType,
    WebhookSecret,
};
use hone_domain::{PageRequest, ProjectId, WebhookDeliveryId, WebhookId};

use crate::{Db, StoreError};

/// The channel the triggers (and a redelivery) NOTIFY when a delivery is due.
pub const WEBHOOKS_CHANNEL: &str = "hone_webhooks";

/// A validated endpoint, ready to be stored.
#[derive(Clone, Debug)]
pub struct NewEndpoint {
    pub id: WebhookId,
    pub project: ProjectId,
    pub url: String,
    pub events: Vec<WebhookEventType>,
    pub description: Option<String>,
    pub enabled: bool,
    pub secret: WebhookSecret,
}

/// What an update changes; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<WebhookEventType>>,
    /// `Some(None)` clears the description.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: String,
    url: String,
    description: Option<String>,
    events: Vec<String>,
    enabled: bool,
    created_at: DateTime<Utc>,
    previous_secret_expires_at: Option<DateTime<Utc>>,
}

const ENDPOINT_COLUMNS: &str =
    "id, url, description, events, enabled, created_at, previous_secret_expires_at";

impl TryFrom<EndpointRow> for WebhookEndpoint {
    type Error = StoreError;

    fn try_from(r: EndpointRow) -> Result<Self, StoreError> {
        let events = r
            .events
            .iter()
            .map(|e| {
                WebhookEventType::parse(e).ok_or_else(|| {
                    StoreError::Corrupt(format!("webhook {} has event type {e}", r.id))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(WebhookEndpoint {
            id: r.id,
            object: "webhook_endpoint",
            url: r.url,
            events,
            description: r.description,
            enabled: r.enabled,
            created_at: r.created_at.timestamp(),
            previous_secret_expires_at: r.previous_secret_expires_at.map(|t| t.timestamp()),
        })
    }
}

fn names(events: &[WebhookEventType]) -> Vec<&'static str> {
    events.iter().map(|e| e.as_str()).collect()
}

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    endpoint_id: String,
    event_id: String,
    event_type: String,
    status: String,
    next_attempt_at: DateTime<Utc>,
    created_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    redelivery_of: Option<String>,
}

#[derive(sqlx::FromRow)]
struct AttemptRow {
    delivery_id: String,
    attempt: i32,
    status_code: Option<i32>,
    latency_ms: i64,
    error: Option<String>,
    response_body: Option<String>,
    created_at: DateTime<Utc>,
}

/// A page of deliveries, or one: `$1` the endpoint, `$2` the project, `$3` a delivery
/// id to start after (or to find, with `ONE`), `$4` the limit.
const DELIVERIES: &str = "
    SELECT d.id, d.endpoint_id, d.event_id, ev.type AS event_type, d.status,
           d.next_attempt_at, d.created_at, d.finished_at, d.redelivery_of
    FROM webhook_deliveries d
    JOIN webhook_events ev ON ev.id = d.event_id
    JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.project_id = $2
    WHERE d.endpoint_id = $1";

impl Db {
    /// Adds an endpoint unless the project has `max_per_project` already (counted under
    /// the project's row lock, so concurrent creates cannot both pass).
    pub async fn create_webhook(
        &self,
        new: &NewEndpoint,
        max_per_project: i64,
    ) -> Result<WebhookEndpoint, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
            .bind(new.project.as_str())
            .execute(&mut *tx)
            .await?;
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM webhook_endpoints WHERE project_id = $1")
                .bind(new.project.as_str())
                .fetch_one(&mut *tx)
                .await?;
        if count >= max_per_project {
            return Err(StoreError::Quota(
                crate::projects::Quota::WebhookEndpoints {
                    limit: max_per_project,
                },
            ));
        }
        let row: EndpointRow = sqlx::query_as(&format!(
            "INSERT INTO webhook_endpoints (id, project_id, url, description, events, secret, enabled)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(new.id.as_str())
        .bind(new.project.as_str())
        .bind(&new.url)
        .bind(&new.description)
        .bind(names(&new.events))
        .bind(new.secret.expose())
        .bind(new.enabled)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        row.try_into()
    }

    /// An endpoint of `project`; another project's is `NotFound`, as a missing one.
    pub async fn get_webhook(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<WebhookEndpoint, StoreError> {
        let row: EndpointRow = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND project_id = $2"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// Endpoints newest first; up to `page.limit + 1` rows (the extra one says there is
    /// more).
    pub async fn list_webhooks(
        &self,
        project: &ProjectId,
        page: &PageRequest,
    ) -> Result<Vec<WebhookEndpoint>, StoreError> {
        let rows: Vec<EndpointRow> = sqlx::query_as(&format!(
            "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
             WHERE project_id = $1
               AND ($2::text IS NULL
                    OR (created_at, id) < (SELECT created_at, id FROM webhook_endpoints
                                           WHERE id = $2 AND project_id = $1))
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(project.as_str())
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(WebhookEndpoint::try_from).collect()
    }

    pub async fn update_webhook(
        &self,
        project: &ProjectId,
        id: &str,
        change: &EndpointChange,
    ) -> Result<WebhookEndpoint, StoreError> {
        let row: EndpointRow = sqlx::query_as(&format!(
            "UPDATE webhook_endpoints
             SET url = coalesce($3, url), events = coalesce($4, events),
                 description = CASE WHEN $5 THEN $6 ELSE description END,
                 enabled = coalesce($7, enabled)
             WHERE id = $1 AND project_id = $2 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(project.as_str())
        .bind(&change.url)
        .bind(change.events.as_deref().map(names))
        .bind(change.description.is_some())
        .bind(change.description.clone().flatten())
        .bind(change.enabled)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// Deletes an endpoint with its deliveries and their log.
    pub async fn delete_webhook(&self, project: &ProjectId, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1 AND project_id = $2")
            .bind(id)
            .bind(project.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Replaces the signing secret; the replaced one keeps signing beside it for
    /// `overlap`, so receivers can switch without losing a delivery.
    pub async fn rotate_webhook_secret(
        &self,
        project: &ProjectId,
        id: &str,
        secret: &WebhookSecret,
        overlap: Duration,
    ) -> Result<WebhookEndpoint, StoreError> {
        let row: EndpointRow = sqlx::query_as(&format!(
            "UPDATE webhook_endpoints
             SET previous_secret = secret,
                 previous_secret_expires_at = now() + $4 * interval '1 millisecond',
                 secret = $3
             WHERE id = $1 AND project_id = $2 RETURNING {ENDPOINT_COLUMNS}"
        ))
        .bind(id)
        .bind(project.as_str())
        .bind(secret.expose())
        .bind(overlap.as_secs_f64() * 1000.0)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// An endpoint's deliveries, newest first, each with its attempts; up to
    /// `page.limit + 1` (the extra one says there is more). `NotFound` for another
    /// project's endpoint.
    pub async fn list_deliveries(
        &self,
        project: &ProjectId,
        webhook: &str,
        page: &PageRequest,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        self.get_webhook(project, webhook).await?;
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!(
            "{DELIVERIES}
               AND ($3::text IS NULL
                    OR (d.created_at, d.id) < (SELECT created_at, id FROM webhook_deliveries
                                               WHERE id = $3 AND endpoint_id = $1))
             ORDER BY d.created_at DESC, d.id DESC LIMIT $4"
        ))
        .bind(webhook)
        .bind(project.as_str())
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await?;
        self.with_attempts(rows).await
    }

    pub async fn get_delivery(
        &self,
        project: &ProjectId,
        webhook: &str,
        id: &str,
    ) -> Result<WebhookDelivery, StoreError> {
        let rows: Vec<DeliveryRow> = sqlx::query_as(&format!("{DELIVERIES} AND d.id = $3"))
            .bind(webhook)
            .bind(project.as_str())
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        self.with_attempts(rows)
            .await?
            .pop()
            .ok_or(StoreError::NotFound)
    }

    /// Sends a delivery's event to its endpoint again, as a new delivery (with the
    /// same event id, so a receiver that already has it can tell), due at once.
    pub async fn redeliver(
        &self,
        project: &ProjectId,
        webhook: &str,
        delivery: &str,
    ) -> Result<WebhookDelivery, StoreError> {
        let id = WebhookDeliveryId::generate();
        let mut tx = self.pool.begin().await?;
        let created: Option<String> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (id, endpoint_id, event_id, redelivery_of)
             SELECT $1, d.endpoint_id, d.event_id, d.id
             FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.project_id = $4
             WHERE d.id = $2 AND d.endpoint_id = $3
             RETURNING id",
        )
        .bind(id.as_str())
        .bind(delivery)
        .bind(webhook)
        .bind(project.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        if created.is_none() {
            return Err(StoreError::NotFound);
        }
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(WEBHOOKS_CHANNEL)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.get_delivery(project, webhook, id.as_str()).await
    }

    async fn with_attempts(
        &self,
        rows: Vec<DeliveryRow>,
    ) -> Result<Vec<WebhookDelivery>, StoreError> {
        let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
        let attempts: Vec<AttemptRow> = sqlx::query_as(
            "SELECT delivery_id, attempt, status_code, latency_ms, error, response_body, created_at
             FROM webhook_delivery_attempts WHERE delivery_id = ANY ($1)
             ORDER BY delivery_id, attempt",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let mut by_delivery: HashMap<String, Vec<DeliveryAttempt>> = HashMap::new();
        for a in attempts {
            by_delivery
                .entry(a.delivery_id)
                .or_default()
                .push(DeliveryAttempt {
                    attempt: a.attempt,
                    created_at: a.created_at.timestamp(),
                    status_code: a.status_code,
                    latency_ms: a.latency_ms,
                    error: a.error,
                    response_body: a.response_body,
                });
        }
        rows.into_iter()
            .map(|r| {
                let status = DeliveryStatus::parse(&r.status).ok_or_else(|| {
                    StoreError::Corrupt(format!("delivery {} has status {}", r.id, r.status))
                })?;
                let event_type = WebhookEventType::parse(&r.event_type).ok_or_else(|| {
                    StoreError::Corrupt(format!("event {} has type {}", r.event_id, r.event_type))
                })?;
                Ok(WebhookDelivery {
                    attempts: by_delivery.remove(&r.id).unwrap_or_default(),
                    id: r.id,
                    object: "webhook.delivery",
                    webhook_id: r.endpoint_id,
                    event_id: r.event_id,
                    event_type,
                    status,
                    next_attempt_at: (status == DeliveryStatus::Pending)
                        .then(|| r.next_attempt_at.timestamp()),
                    created_at: r.created_at.timestamp(),
                    finished_at: r.finished_at.map(|t| t.timestamp()),
                    redelivery_of: r.redelivery_of,
                })
            })
            .collect()
    }
}
