//! The API server.

use std::sync::Arc;

use anyhow::Context;
use hone_api::{ApiSettings, AppState};
use hone_domain::dataset::DatasetLimits;
use hone_serving::transferability::Estimator;
use hone_serving::{Predictor, ServingConfig};
use hone_store::{ArtifactStore, Db};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Threads};

pub async fn run(
    config: &Config,
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    device: tch::Device,
    threads: Threads,
    batch_work: hone_train::threads::BatchWork,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let predictor = Predictor::start(ServingConfig {
        cache_size: config.predict_cache_size,
        max_pending: config.predict_max_pending,
        max_pending_per_project: config.predict_max_pending_per_project,
        queue_timeout: std::time::Duration::from_millis(config.predict_queue_timeout_ms),
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
    let state = AppState {
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
            max_predict_chars: 100_000,
            job_max_attempts: config.job_max_attempts,
            project_limits: hone_api::auth::ProjectLimits {
                max_active_jobs: config.max_active_jobs_per_project,
                max_stored_bytes: config.max_stored_bytes_per_project,
            },
            webhook_policy: config.webhook_policy(),
        }),
    };
    let app = hone_api::app(state, config.max_upload_bytes);
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    tracing::info!(%addr, "listening on http://{addr}");
    println!("hone listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("server error")
}
