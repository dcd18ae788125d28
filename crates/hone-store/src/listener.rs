//! Wakes idle workers when a job is queued (and deliverers when a webhook delivery is
//! due, and live event streams when their job has a new event): LISTEN on the channel a
//! trigger NOTIFYs, feeding a `tokio::sync::Notify` (or any callback).
//! Polling stays as the fallback, so a lost notification only delays work, never
//! strands it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::Db;

pub const JOBS_QUEUED_CHANNEL: &str = "hone_jobs_queued";

/// Listens until `shutdown`, reconnecting with backoff when the connection drops.
/// Every (re)connection also wakes the workers once, in case a job was queued while
/// nobody was listening.
pub async fn listen_for_jobs(db: Db, wake: Arc<Notify>, shutdown: CancellationToken) {
    listen(db, JOBS_QUEUED_CHANNEL, wake, shutdown).await
}

/// [`listen_for_jobs`] for any `channel`.
pub async fn listen(db: Db, channel: &'static str, wake: Arc<Notify>, shutdown: CancellationToken) {
    listen_with(db, channel, shutdown, |_| wake.notify_waiters()).await
}

/// Listens on `channel` until `shutdown`, calling `on_notify` with each notification's
/// payload, and with `None` when notifications may have been lost (every
/// (re)connection): then whoever waits should look for themselves.
pub async fn listen_with(
    db: Db,
    channel: &'static str,
    shutdown: CancellationToken,
    mut on_notify: impl FnMut(Option<&str>),
) {
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match PgListener::connect_with(&db.pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(channel).await {
                    tracing::warn!(error = %e, channel, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(250);
                    on_notify(None);
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            n = listener.try_recv() => match n {
                                Ok(Some(n)) => on_notify(Some(n.payload())),
                                // The connection was lost; PgListener reconnects on the
                                // next call, and queued notifications may be gone.
                                Ok(None) => on_notify(None),
                                Err(e) => {
                                    tracing::warn!(error = %e, channel, "listener disconnected");
                                    break;
                                }
                            }
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, channel, "listener cannot connect"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
