//! What deliverers do to the webhook outbox (the `webhook_deliveries` rows the
//! migration's triggers write): claim due deliveries, record what each attempt got,
//! and learn when the next one falls due. The claim is committed at once and no
//! transaction is held while a request is in flight; instead the claim moves the row's
//! `next_attempt_at` to the end of a lease, so no other deliverer takes it meanwhile,
//! and a deliverer that dies leaves it due again when the lease ends. The result of an
//! attempt is written only while the row's `attempts` is still the one claimed, so a
//! deliverer that overran its lease cannot overwrite the next attempt's result.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hone_domain::webhook::{
    DeliveryStatus, WebhookEvent, WebhookEventData, WebhookEventType, WebhookSecret,
};

use crate::{Db, StoreError};

/// A delivery a deliverer holds, with all it needs to send it.
#[derive(Clone, Debug)]
pub struct ClaimedDelivery {
    pub id: String,
    /// 1 for the first; fences the write of the result.
    pub attempt: i32,
    pub endpoint_id: String,
    pub url: String,
    /// The current secret, then the one a rotation replaced while it still signs.
    pub secrets: Vec<WebhookSecret>,
    pub event: WebhookEvent,
}

/// What one attempt got.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    pub succeeded: bool,
    pub status_code: Option<i32>,
    pub latency_ms: i64,
    pub error: Option<String>,
    pub response_body: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ClaimRow {
    id: String,
    attempts: i32,
    endpoint_id: String,
    url: String,
    secret: String,
    previous_secret: Option<String>,
    event_id: String,
    event_type: String,
    object_id: String,
    event_created_at: DateTime<Utc>,
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Db {
    /// Claims up to `limit` due deliveries of enabled endpoints for `lease`, and commits
    /// the claim at once.
    pub async fn claim_deliveries(
        &self,
        deliverer: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedDelivery>, StoreError> {
        let rows: Vec<ClaimRow> = sqlx::query_as(
            "WITH next AS (
                 SELECT d.id FROM webhook_deliveries d
                 JOIN webhook_endpoints e ON e.id = d.endpoint_id
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now() AND e.enabled
                 ORDER BY d.next_attempt_at, d.id
                 LIMIT $3 FOR UPDATE OF d SKIP LOCKED)
             UPDATE webhook_deliveries d
             SET attempts = d.attempts + 1, attempted_by = $1,
                 lease_expires_at = now() + $2 * interval '1 millisecond',
                 next_attempt_at = now() + $2 * interval '1 millisecond'
             FROM next, webhook_endpoints e, webhook_events ev
             WHERE d.id = next.id AND e.id = d.endpoint_id AND ev.id = d.event_id
             RETURNING d.id, d.attempts, e.id AS endpoint_id, e.url, e.secret,
                 CASE WHEN e.previous_secret_expires_at > now() THEN e.previous_secret END
                     AS previous_secret,
                 ev.id AS event_id, ev.type AS event_type, ev.object_id,
                 ev.created_at AS event_created_at",
        )
        .bind(deliverer)
        .bind(millis(lease))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(claimed).collect()
    }

    /// Records an attempt and what follows from it: `succeeded`, due again after
    /// `retry_in`, or `failed` when there is no retry. Returns the delivery's status,
    /// or `None` when the delivery is no longer this attempt's (its lease ran out and
    /// another attempt began, or its endpoint was deleted); the attempt is logged
    /// either way while the delivery exists.
    pub async fn record_attempt(
        &self,
        delivery: &str,
        attempt: i32,
        result: &AttemptResult,
        retry_in: Option<Duration>,
    ) -> Result<Option<DeliveryStatus>, StoreError> {
        let status = match (result.succeeded, retry_in) {
            (true, _) => DeliveryStatus::Succeeded,
            (false, Some(_)) => DeliveryStatus::Pending,
            (false, None) => DeliveryStatus::Failed,
        };
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO webhook_delivery_attempts
                 (delivery_id, attempt, status_code, latency_ms, error, response_body)
             SELECT $1, $2, $3, $4, $5, $6
             WHERE EXISTS (SELECT 1 FROM webhook_deliveries WHERE id = $1)
             ON CONFLICT (delivery_id, attempt) DO NOTHING",
        )
        .bind(delivery)
        .bind(attempt)
        .bind(result.status_code)
        .bind(result.latency_ms)
        .bind(&result.error)
        .bind(&result.response_body)
        .execute(&mut *tx)
        .await?;
        let done = sqlx::query(
            "UPDATE webhook_deliveries
             SET status = $3, lease_expires_at = NULL,
                 finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END,
                 next_attempt_at = CASE WHEN $3 = 'pending'
                     THEN now() + $4 * interval '1 millisecond' ELSE next_attempt_at END
             WHERE id = $1 AND attempts = $2 AND status = 'pending'",
        )
        .bind(delivery)
        .bind(attempt)
        .bind(status.as_str())
        .bind(retry_in.map_or(0.0, millis))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((done.rows_affected() == 1).then_some(status))
    }

    /// How long until the next pending delivery of an enabled endpoint falls due, by
    /// the database's clock (the one claims go by); zero when one is due.
    pub async fn next_delivery_in(&self) -> Result<Option<Duration>, StoreError> {
        let millis: Option<f64> = sqlx::query_scalar(
            "SELECT (extract(epoch FROM min(d.next_attempt_at) - now()) * 1000)::float8
             FROM webhook_deliveries d
             JOIN webhook_endpoints e ON e.id = d.endpoint_id
             WHERE d.status = 'pending' AND e.enabled",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(millis.map(|m| Duration::from_secs_f64(m.max(0.0) / 1000.0)))
    }
}

fn claimed(r: ClaimRow) -> Result<ClaimedDelivery, StoreError> {
    let secret = |raw: &str| {
        WebhookSecret::parse(raw).ok_or_else(|| {
            StoreError::Corrupt(format!("webhook {} has a malformed secret", r.endpoint_id))
        })
    };
    let mut secrets = vec![secret(&r.secret)?];
    if let Some(previous) = &r.previous_secret {
        secrets.push(secret(previous)?);
    }
    let kind = WebhookEventType::parse(&r.event_type).ok_or_else(|| {
        StoreError::Corrupt(format!("event {} has type {}", r.event_id, r.event_type))
    })?;
    Ok(ClaimedDelivery {
        id: r.id,
        attempt: r.attempts,
        endpoint_id: r.endpoint_id,
        url: r.url,
        secrets,
        event: WebhookEvent {
            id: r.event_id,
            object: "event",
            kind,
            created_at: r.event_created_at.timestamp(),
            data: WebhookEventData { id: r.object_id },
        },
    })
}
