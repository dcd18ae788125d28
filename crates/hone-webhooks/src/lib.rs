//! Webhook delivery: the loop that any `hone` process (API or worker) runs to send the
//! outbox's due deliveries, at least once each, signed per Standard Webhooks.
//!
//! - `target.rs`: where a webhook may go (names resolved and their addresses checked);
//!   the API checks new URLs with it too.
//! - `send.rs`: one attempt, with its timeouts and caps.
//! - here: [`run`], which claims due deliveries (`hone_store::webhook_outbox`), sends
//!   each on a task of its own, up to `concurrency` at once, and records the result
//!   with the retry the schedule gives. Woken by LISTEN/NOTIFY when a delivery is
//!   written, and otherwise sleeping until the next one falls due (or a poll interval).
//!   Any number of processes may run it: claims skip locked rows and hold a lease.

use std::sync::Arc;
use std::time::Duration;

use hone_domain::webhook::{DeliveryStatus, RetrySchedule, TargetPolicy};
use hone_store::webhook_outbox::ClaimedDelivery;
use hone_store::webhooks::WEBHOOKS_CHANNEL;
use hone_store::Db;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

mod send;
pub mod target;

const ATTEMPTS: &str = "hone_webhook_attempts_total";
const ATTEMPT_SECONDS: &str = "hone_webhook_attempt_seconds";
const DELIVERIES: &str = "hone_webhook_deliveries_total";

/// Says what each webhook metric is (HELP lines); once, at start-up.
pub fn describe_metrics() {
    metrics::describe_counter!(
        ATTEMPTS,
        "Webhook delivery attempts made by this process, by result (success: a 2xx answer)"
    );
    metrics::describe_histogram!(
        ATTEMPT_SECONDS,
        metrics::Unit::Seconds,
        "Time of one webhook attempt, from connecting to the end of the answer"
    );
    metrics::describe_counter!(
        DELIVERIES,
        "Webhook deliveries finished by this process's attempts, by outcome (succeeded, \
         or failed after the last attempt)"
    );
}

fn telemetry(
    result: &hone_store::webhook_outbox::AttemptResult,
    status: Option<hone_domain::webhook::DeliveryStatus>,
) {
    let outcome = if result.succeeded {
        "success"
    } else {
        "failure"
    };
    metrics::counter!(ATTEMPTS, "result" => outcome).increment(1);
    metrics::histogram!(ATTEMPT_SECONDS).record(result.latency_ms as f64 / 1000.0);
    if let Some(s @ (DeliveryStatus::Succeeded | DeliveryStatus::Failed)) = status {
        metrics::counter!(DELIVERIES, "outcome" => s.as_str()).increment(1);
    }
}

pub use send::{SendLimits, Sender};

/// How a deliverer works; built by the binary from its configuration.
#[derive(Clone, Debug)]
pub struct DeliverySettings {
    /// This process, in `attempted_by` (for operators).
    pub id: String,
    pub policy: TargetPolicy,
    pub schedule: RetrySchedule,
    pub limits: SendLimits,
    /// Attempts in flight at once.
    pub concurrency: usize,
    /// The longest sleep without a notification.
    pub poll_interval: Duration,
}

impl DeliverySettings {
    /// A claim outlives any attempt: past it, the attempt is taken for lost and the
    /// delivery is due again.
    fn lease(&self) -> Duration {
        self.limits.timeout * 2 + Duration::from_secs(10)
    }
}

/// Delivers until `shutdown`; attempts in flight then get a few seconds to finish
/// (one cut off is sent again when its lease ends).
pub async fn run(db: Db, settings: DeliverySettings, shutdown: CancellationToken) {
    let sender = match Sender::new(settings.policy, settings.limits) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client; webhooks are not delivered by this process");
            return;
        }
    };
    let wake = Arc::new(Notify::new());
    tokio::spawn(hone_store::listener::listen(
        db.clone(),
        WEBHOOKS_CHANNEL,
        wake.clone(),
        shutdown.clone(),
    ));
    let slots = Arc::new(Semaphore::new(settings.concurrency.max(1)));
    let mut in_flight = JoinSet::new();
    while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        let free = slots.available_permits();
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = in_flight.join_next() => continue,
            }
        }
        let claimed = match db
            .claim_deliveries(&settings.id, settings.lease(), free as i64)
            .await
        {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim webhook deliveries");
                Vec::new()
            }
        };
        let full = claimed.len() == free;
        for d in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                break;
            };
            in_flight.spawn(deliver(
                db.clone(),
                sender.clone(),
                settings.schedule,
                d,
                permit,
            ));
        }
        if full {
            // There may be more due: claim again as soon as a slot frees.
            continue;
        }
        let wait = match db.next_delivery_in().await {
            // Never a busy loop: a row due but not claimable (its endpoint changed
            // meanwhile) is looked at again shortly.
            Ok(Some(due)) => due.clamp(Duration::from_millis(20), settings.poll_interval),
            Ok(None) => settings.poll_interval,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read when webhooks fall due");
                settings.poll_interval
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let drain = async { while in_flight.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .is_err()
    {
        tracing::info!(
            "webhook attempts cut off by shutdown; they are sent again when their leases end"
        );
    }
}

async fn deliver(
    db: Db,
    sender: Sender,
    schedule: RetrySchedule,
    d: ClaimedDelivery,
    _slot: OwnedSemaphorePermit,
) {
    let result = sender.send(&d).await;
    let attempt = u32::try_from(d.attempt).unwrap_or(u32::MAX);
    let retry_in = if result.succeeded {
        None
    } else {
        schedule.delay_after(attempt, rand::random::<f64>())
    };
    let recorded = db.record_attempt(&d.id, d.attempt, &result, retry_in).await;
    telemetry(&result, recorded.as_ref().ok().copied().flatten());
    match recorded {
        Ok(Some(status)) => tracing::info!(
            delivery.id = %d.id,
            event.id = %d.event.id,
            event_type = d.event.kind.as_str(),
            attempt = d.attempt,
            status_code = result.status_code,
            error = result.error.as_deref(),
            retry_in_ms = retry_in.map(|r| r.as_millis() as u64),
            status = status.as_str(),
            "webhook attempt"
        ),
        Ok(None) => tracing::warn!(
            delivery.id = %d.id,
            attempt = d.attempt,
            "webhook attempt finished after its lease; its result is logged only"
        ),
        // The lease ends and the delivery is sent again: at least once.
        Err(e) => {
            tracing::warn!(delivery.id = %d.id, error = %e, "cannot record a webhook attempt")
        }
    }
}
