//! Wakes idle workers when a job is queued (and deliverers when a webhook delivery is
//! due): LISTEN on the channel a trigger NOTIFYs, feeding a `tokio::sync::Notify`.
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
    let mut backoff = Duration::from_millis(250);
    while !shutdown.is_cancelled() {
        match PgListener::connect_with(&db.pool).await {
            Ok(mut listener) => {
                if let Err(e) = listener.listen(channel).await {
                    tracing::warn!(error = %e, channel, "LISTEN failed");
                } else {
                    backoff = Duration::from_millis(250);
                    wake.notify_waiters();
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            n = listener.try_recv() => match n {
                                Ok(Some(_)) => wake.notify_waiters(),
                                // The connection was lost; PgListener reconnects on the
                                // next call, and queued notifications may be gone.
                                Ok(None) => wake.notify_waiters(),
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
