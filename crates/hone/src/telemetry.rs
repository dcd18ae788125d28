//! Prometheus metrics for this process: the exporter, installed once as the `metrics`
//! facade's recorder with histogram buckets in base units, the HELP text of every
//! crate's metrics, and (for `hone worker`) the port that serves them.

use std::time::Duration;

use anyhow::Context;
use hone_api::auth::KeyCache;
use hone_api::metrics::Metrics;
use hone_api::server::ConnectionLimits;
use hone_store::Db;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Buckets of every `…_seconds` histogram: a millisecond (an API answer) to four hours
/// (a training attempt).
const SECONDS: [f64; 19] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14400.0,
];

/// Buckets of the inputs answered together by one predict batch.
const BATCH_INPUTS: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

/// Installs the exporter and describes every metric; its upkeep runs until `shutdown`.
pub fn install(shutdown: CancellationToken) -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full("hone_predict_batch_inputs".into()),
                &BATCH_INPUTS,
            )
        })
        .and_then(|b| b.install_recorder())
        .context("cannot install the metrics recorder")?;
    hone_api::metrics::describe();
    hone_serving::telemetry::describe();
    hone_worker::telemetry::describe();
    hone_webhooks::describe_metrics();
    // The exporter leaves its periodic upkeep (draining histogram samples) to its user.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = every.tick() => upkeep.run_upkeep(),
                () = shutdown.cancelled() => return,
            }
        }
    });
    Ok(handle)
}

/// `hone worker`'s metrics port, when `worker_metrics_listen` names one: serves until
/// `shutdown`.
pub async fn serve_worker_metrics(
    config: &Config,
    db: Db,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    if config.worker_metrics_listen.is_empty() {
        return Ok(None);
    }
    let listener = tokio::net::TcpListener::bind(&config.worker_metrics_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.worker_metrics_listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "worker metrics on http://{addr}/metrics");
    let app = hone_api::metrics::worker_app(
        db,
        Metrics {
            handle: Some(handle),
            public: config.metrics_public,
        },
        KeyCache::new(Duration::from_millis(config.api_key_cache_ms), 1),
        config.project_limits(),
    );
    let limits = ConnectionLimits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        max_connections: 64,
    };
    Ok(Some(tokio::spawn(async move {
        hone_api::server::serve(listener, app, limits, shutdown.cancelled_owned()).await
    })))
}
