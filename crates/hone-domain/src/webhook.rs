//! Webhooks: the event types a project can subscribe to, the objects the API returns
//! for endpoints and deliveries, and the body hone POSTs. The pieces with rules of their
//! own are submodules: `signature.rs` (Standard Webhooks signing secrets and
//! signatures), `target.rs` (which URLs and addresses may be delivered to) and
//! `retry.rs` (when a failed attempt is tried again). No IO: resolving names and sending
//! requests are `hone-webhooks`'.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

mod retry;
mod signature;
mod target;

pub use retry::RetrySchedule;
pub use signature::{sign, signature_header, WebhookSecret, SECRET_PREFIX};
pub use target::{forbidden_address, parse_endpoint_url, TargetPolicy, MAX_URL_CHARS};

/// What happened, as the `type` of an event and in an endpoint's `events`.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
pub enum WebhookEventType {
    /// A job finished and published its model.
    #[serde(rename = "fine_tuning.job.succeeded")]
    JobSucceeded,
    /// A job failed for good (its error says why).
    #[serde(rename = "fine_tuning.job.failed")]
    JobFailed,
    /// A job was cancelled.
    #[serde(rename = "fine_tuning.job.cancelled")]
    JobCancelled,
    /// A worker started an attempt of a job (again after a retry or a rescue).
    #[serde(rename = "fine_tuning.job.running")]
    JobRunning,
    /// An upload was validated and stored.
    #[serde(rename = "file.processed")]
    FileProcessed,
}

impl WebhookEventType {
    pub const ALL: [WebhookEventType; 5] = [
        WebhookEventType::JobSucceeded,
        WebhookEventType::JobFailed,
        WebhookEventType::JobCancelled,
        WebhookEventType::JobRunning,
        WebhookEventType::FileProcessed,
    ];

    /// The name in bodies, in `events` and in the database (the migration's triggers
    /// write these same strings).
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEventType::JobSucceeded => "fine_tuning.job.succeeded",
            WebhookEventType::JobFailed => "fine_tuning.job.failed",
            WebhookEventType::JobCancelled => "fine_tuning.job.cancelled",
            WebhookEventType::JobRunning => "fine_tuning.job.running",
            WebhookEventType::FileProcessed => "file.processed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == raw)
    }

    /// Every name, for messages.
    pub fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

/// What hone POSTs to an endpoint, as OpenAI's webhooks: the object is named, not
/// embedded; fetch it (`GET /v1/fine_tuning/jobs/{id}`) for its state. The same event
/// is sent with the same `id` (and `webhook-id` header) on every attempt, so a receiver
/// can drop repeats.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEvent {
    #[schema(example = "evt-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "event")]
    pub object: &'static str,
    #[serde(rename = "type")]
    pub kind: WebhookEventType,
    /// Unix seconds: when it happened (not when it was sent).
    pub created_at: i64,
    pub data: WebhookEventData,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEventData {
    /// The job's (or file's) id.
    #[schema(example = "ftjob-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
}

/// An endpoint that receives a project's events.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEndpoint {
    #[schema(example = "wh-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "webhook_endpoint")]
    pub object: &'static str,
    #[schema(example = "https://example.com/hooks/hone")]
    pub url: String,
    /// The event types sent to it.
    pub events: Vec<WebhookEventType>,
    pub description: Option<String>,
    /// A disabled endpoint gets no new events, and its pending deliveries wait.
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds: until then, deliveries are signed with the secret replaced by the
    /// last rotation as well as with the new one.
    pub previous_secret_expires_at: Option<i64>,
}

/// An endpoint with its signing secret: answered only when the secret is made (create,
/// rotate); keep it, it is not shown again.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookEndpointWithSecret {
    #[serde(flatten)]
    pub endpoint: WebhookEndpoint,
    /// `whsec_` and the base64 of 32 random bytes: the HMAC key of the Standard Webhooks
    /// signature (its base64-decoded bytes are the key).
    #[schema(example = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwMfKQ9r8GKYo=")]
    pub secret: String,
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    /// An attempt got a 2xx.
    Succeeded,
    /// Every attempt failed; `POST …/redeliver` sends it again.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Succeeded => "succeeded",
            DeliveryStatus::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|s| s.as_str() == raw)
    }
}

/// One event sent to one endpoint, with every attempt made so far.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct WebhookDelivery {
    #[schema(example = "whdel-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f")]
    pub id: String,
    #[schema(example = "webhook.delivery")]
    pub object: &'static str,
    pub webhook_id: String,
    /// The event's id: the body's `id` and the `webhook-id` header.
    pub event_id: String,
    pub event_type: WebhookEventType,
    pub status: DeliveryStatus,
    /// Oldest first.
    pub attempts: Vec<DeliveryAttempt>,
    /// Unix seconds, while `pending`.
    pub next_attempt_at: Option<i64>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds, once `succeeded` or `failed`.
    pub finished_at: Option<i64>,
    /// The delivery this one sends again, for a manual redelivery.
    pub redelivery_of: Option<String>,
}

/// One HTTP request of a delivery and what came of it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub attempt: i32,
    /// Unix seconds, when it was sent.
    pub created_at: i64,
    /// The receiver's status code, when it answered.
    pub status_code: Option<i32>,
    /// Milliseconds from sending to the end of the (capped) response.
    pub latency_ms: i64,
    /// Why it failed: a non-2xx status, a timeout, a refused target, …
    pub error: Option<String>,
    /// The start of the response body (at most 1 KiB).
    pub response_body: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_types_round_trip_through_their_names_and_serde() {
        for t in WebhookEventType::ALL {
            assert_eq!(WebhookEventType::parse(t.as_str()), Some(t));
            assert_eq!(
                serde_json::to_value(t).expect("serialize"),
                serde_json::json!(t.as_str())
            );
        }
        assert_eq!(WebhookEventType::parse("fine_tuning.job.created"), None);
    }

    #[test]
    fn the_body_is_shaped_as_openai_s() {
        let body = WebhookEvent {
            id: "evt-1".into(),
            object: "event",
            kind: WebhookEventType::JobSucceeded,
            created_at: 1_700_000_000,
            data: WebhookEventData {
                id: "ftjob-1".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serialize"),
            r#"{"id":"evt-1","object":"event","type":"fine_tuning.job.succeeded","created_at":1700000000,"data":{"id":"ftjob-1"}}"#
        );
    }
}
