//! The API server.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hone_api::auth::KeyCache;
use hone_api::job_events::{EventStreams, StreamLimits};
use hone_api::metrics::Metrics;
use hone_api::server::ConnectionLimits;
use hone_api::{ApiSettings, AppState, RequestLimits};
use hone_domain::dataset::DatasetLimits;
use hone_serving::transferability::Estimator;
use hone_serving::{Predictor, ServingConfig};
use hone_store::{ArtifactStore, Db};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Threads};

/// Where the API's libtorch work runs, and how many threads it takes.
pub struct Compute {
    pub device: tch::Device,
    pub threads: Threads,
    pub batch_work: hone_train::threads::BatchWork,
}

pub async fn run(
    config: &Config,
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    compute: Compute,
    metrics: PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Compute {
        device,
        threads,
        batch_work,
    } = compute;
    let predictor = Predictor::start(ServingConfig {
        cache_size: config.predict_cache_size,
        max_pending: config.predict_max_pending,
        max_pending_per_project: config.predict_max_pending_per_project,
        queue_timeout: Duration::from_millis(config.predict_queue_timeout_ms),
        batch_size: config.predict_batch_size,
        device,
        threads: threads.inference,
        idle_threads: threads.inference_idle,
        batch_work: batch_work.clone(),
    })
    .context("cannot start the inference thread")?;
    let dataset_limits = DatasetLimits {
        max_bytes: config.max_upload_bytes,
        max_examples: config.max_examples,
        max_archive_entries: config.max_archive_entries,
        max_uncompressed_bytes: config.max_uncompressed_bytes,
        max_compression_ratio: config.max_compression_ratio,
        min_image_side: config.min_image_side,
        max_image_side: config.max_image_side,
        max_image_pixels: config.max_image_pixels,
        ..DatasetLimits::default()
    };
    // Look-ups of keys not seen lately take at most half the pool, so that a flood of
    // bogus keys leaves the rest to the requests' own queries.
    let lookups = (db.pool.options().get_max_connections() as usize / 2).max(1);
    let keys = Arc::new(KeyCache::new(
        Duration::from_millis(config.api_key_cache_ms),
        lookups,
    ));
    let event_streams = EventStreams::start(
        db.clone(),
        StreamLimits {
            max_streams: config.max_event_streams.max(1),
            max_streams_per_project: config.max_event_streams_per_project.max(1),
            ..StreamLimits::default()
        },
        shutdown.clone(),
    );
    let state = AppState {
        keys,
        event_streams,
        uploads: hone_api::slots::Slots::new(
            config.max_concurrent_uploads,
            config.max_concurrent_uploads_per_project,
        ),
        metrics: Arc::new(Metrics {
            handle: Some(metrics),
            public: config.metrics_public,
        }),
        db,
        artifacts,
        predictor,
        // An estimate is batch work, like training: it gets training's threads.
        transferability: Estimator::new(device, threads.training, batch_work),
        settings: Arc::new(ApiSettings {
            models_dir: config.models_dir.clone(),
            predict_image_limits: DatasetLimits {
                max_image_pixels: config.predict_max_image_pixels.min(config.max_image_pixels),
                ..dataset_limits.clone()
            },
            dataset_limits,
            max_predict_inputs: config.max_predict_inputs,
            max_predict_chars: crate::config::MAX_PREDICT_CHARS,
            job_max_attempts: config.job_max_attempts,
            idempotency_ttl: Duration::from_secs(config.idempotency_key_hours.saturating_mul(3600)),
            feature_cache_max_bytes: config.feature_cache_max_bytes_per_project,
            project_limits: config.project_limits(),
            webhook_policy: config.webhook_policy(),
            max_webhooks_per_project: config.max_webhooks_per_project,
        }),
    };
    let limits = RequestLimits {
        // Room for the multipart framing around the file.
        upload_body_bytes: config.max_upload_bytes.saturating_add(1 << 20),
        predict_body_bytes: config.predict_body_limit(),
        json_body_bytes: config.max_json_body_bytes,
        request_timeout: Duration::from_secs(config.request_timeout_secs.max(1)),
        body_read_timeout: Duration::from_secs(config.body_read_timeout_secs.max(1)),
    };
    let app = hone_api::app(state, limits);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    tracing::info!(%addr, "listening on http://{addr}");
    println!("hone listening on http://{addr}");
    let connections = ConnectionLimits {
        header_read_timeout: Duration::from_millis(config.header_read_timeout_ms.max(1)),
        max_connections: config.max_connections,
    };
    hone_api::server::serve(listener, app, connections, shutdown.cancelled_owned()).await;
    Ok(())
}
