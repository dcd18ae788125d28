//! `/metrics`: the process's metrics in the Prometheus text format, and the HTTP
//! metrics every API route records.
//!
//! Metrics are recorded where they happen, through the `metrics` facade (HTTP here;
//! predict in `hone-serving`; jobs and training in `hone-worker`; webhook attempts in
//! `hone-webhooks`); the binary installs the Prometheus exporter and hands its
//! [`PrometheusHandle`] to the routes here. A scrape also reads what only the database
//! knows (jobs by status, the connection pool) at that moment. Not public by default:
//! any valid API key may read it, anyone when `metrics_public` is set. A `hone worker`
//! process serves the same route on a port of its own ([`worker_app`]).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use hone_store::Db;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::PrometheusHandle;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{authenticate, KeyCache, ProjectLimits};
use crate::error::{ApiError, ErrorResponse};
use crate::AppState;

const REQUESTS: &str = "hone_http_requests_total";
const REQUEST_SECONDS: &str = "hone_http_request_duration_seconds";
const JOBS: &str = "hone_jobs";
const POOL: &str = "hone_db_pool_connections";

/// The Prometheus text format's content type.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What `/metrics` renders, and who may read it.
pub struct Metrics {
    /// The installed exporter's handle; `None` where no exporter is installed (the
    /// endpoint then says so with 503).
    pub handle: Option<PrometheusHandle>,
    /// Anyone may read `/metrics`, without an API key.
    pub public: bool,
}

/// Says what each metric of this crate is (HELP lines); once, at start-up.
pub fn describe() {
    describe_counter!(
        REQUESTS,
        "HTTP requests answered, by method, route template and status code"
    );
    describe_histogram!(
        REQUEST_SECONDS,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its answer's header, by method and route template"
    );
    describe_gauge!(
        JOBS,
        "Fine-tuning jobs in each status, all projects (at scrape time)"
    );
    describe_gauge!(
        POOL,
        "Database connections of this process's pool, by state (idle or in_use)"
    );
}

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(metrics))
}

/// The process's metrics in the Prometheus text format (version 0.0.4): HTTP requests
/// and latency by route; jobs by status, time queued and running, attempts by outcome,
/// method and modality; training throughput; predict batch size, queue and inference
/// time, model cache hits, misses and loads; webhook attempts and deliveries; the
/// database pool. Any valid API key may read it (anyone when `metrics_public` is set).
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses(
        (status = 200, description = "The metrics", content_type = "text/plain; version=0.0.4",
            body = String),
        (status = 401, description = "No valid API key (and metrics are not public)",
            body = ErrorResponse),
        (status = 503, description = "No metrics exporter in this process", body = ErrorResponse)))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let defaults = state.settings.project_limits;
    scrape(&state.metrics, &state.keys, &state.db, defaults, &headers).await
}

async fn scrape(
    metrics: &Metrics,
    keys: &KeyCache,
    db: &Db,
    defaults: ProjectLimits,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    if !metrics.public {
        authenticate(keys, db, defaults, headers).await?;
    }
    let Some(handle) = &metrics.handle else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "this process records no metrics",
        ));
    };
    for (status, n) in db.jobs_by_status().await? {
        gauge!(JOBS, "status" => status.as_str()).set(n as f64);
    }
    let (open, idle) = db.pool_connections();
    gauge!(POOL, "state" => "idle").set(idle as f64);
    gauge!(POOL, "state" => "in_use").set(open.saturating_sub(idle as u32) as f64);
    Ok(([(header::CONTENT_TYPE, TEXT_FORMAT)], handle.render()).into_response())
}

/// Records each request: its count by method, route template (`/v1/files/{file_id}`,
/// never the id itself, so the series stay few) and status, and its latency.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!(REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    histogram!(REQUEST_SECONDS, "method" => method, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// What a worker's metrics port needs: the API's key check without the API.
struct WorkerMetrics {
    metrics: Metrics,
    keys: KeyCache,
    db: Db,
    defaults: ProjectLimits,
}

/// `GET /metrics` alone, for a `hone worker` process's metrics port: the same
/// rendering and the same access rule as the API's.
pub fn worker_app(db: Db, metrics: Metrics, keys: KeyCache, defaults: ProjectLimits) -> Router {
    let state = Arc::new(WorkerMetrics {
        metrics,
        keys,
        db,
        defaults,
    });
    Router::new()
        .route(
            "/metrics",
            get(
                |State(s): State<Arc<WorkerMetrics>>, headers: HeaderMap| async move {
                    scrape(&s.metrics, &s.keys, &s.db, s.defaults, &headers).await
                },
            ),
        )
        .with_state(state)
}
