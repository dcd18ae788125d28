//! The HTTP API: one module per resource, each exposing `router()`, merged here into
//! one `OpenApiRouter` so the OpenAPI document is generated from the same route list
//! that serves requests and cannot drift from it.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use hone_domain::dataset::DatasetLimits;
use hone_serving::transferability::Estimator;
use hone_serving::Predictor;
use hone_store::{ArtifactStore, Db};
pub use layers::RequestLimits;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

pub mod auth;
mod base_models;
mod checkpoints;
pub mod error;
mod examples;
mod extract;
mod files;
mod health;
pub mod job_events;
mod jobs;
pub mod layers;
pub mod metrics;
mod model_content;
mod models;
mod params;
pub mod server;
pub mod slots;
mod transferability;
mod ui;
mod usage;
mod webhooks;

/// Everything the handlers need, built once by the binary.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub artifacts: Arc<dyn ArtifactStore>,
    pub predictor: Predictor,
    /// Runs transferability estimates, one at a time.
    pub transferability: Estimator,
    pub settings: Arc<ApiSettings>,
    /// API key look-ups of the last few seconds.
    pub keys: Arc<auth::KeyCache>,
    /// The live event streams open on this process, and their wake-ups.
    pub event_streams: Arc<job_events::EventStreams>,
    /// What `/metrics` renders, and who may read it.
    pub metrics: Arc<metrics::Metrics>,
    /// Places of the uploads being received, in all and per project.
    pub uploads: Arc<slots::Slots>,
}

#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Folder of base-model directories.
    pub models_dir: PathBuf,
    pub dataset_limits: DatasetLimits,
    /// The image bounds of predict requests: the uploads' with a smaller pixel cap.
    pub predict_image_limits: DatasetLimits,
    /// Inputs accepted in one predict request.
    pub max_predict_inputs: usize,
    /// Characters accepted in one predict input.
    pub max_predict_chars: usize,
    /// Attempts a job gets before it is failed for good.
    pub job_max_attempts: i32,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: std::time::Duration,
    /// Bytes of a project's feature cache; least recently used entries go past it.
    pub feature_cache_max_bytes: u64,
    /// Limits of projects that set none of their own.
    pub project_limits: auth::ProjectLimits,
    /// Which webhook URLs are accepted (the deliverer applies the same policy).
    pub webhook_policy: hone_domain::webhook::TargetPolicy,
    /// Webhook endpoints one project may have.
    pub max_webhooks_per_project: i64,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "hone",
        description = "Fine-tuning as a service: upload a labeled dataset, fine-tune a \
            pretrained model on it, and call predict on the result.\n\nErrors are \
            `{\"error\": {\"message\", \"type\", \"param\", \"code\"}}`; lists are \
            `{\"object\": \"list\", \"data\": [...], \"has_more\"}` with `limit`/`after` cursors.\n\n\
            Every request but the health probes sends an API key as \
            `Authorization: Bearer hone_sk_…`; it acts for the key's project, and sees only \
            that project's files, jobs and models.\n\n\
            People can use the same API from the dashboard at `/ui` (`/` redirects \
            there): a page served by the server itself, which sends the key pasted into \
            it as this header.",
        license(name = "Apache-2.0")
    ),
    tags(
        (name = "files", description = "Upload and manage datasets"),
        (name = "base-models", description = "Pretrained backbones to start from"),
        (name = "transferability", description = "Which base model fits your data, estimated before training"),
        (name = "fine-tuning", description = "Create and follow fine-tuning jobs"),
        (name = "models", description = "Fine-tuned models and predictions"),
        (name = "webhooks", description = "Endpoints that receive the project's events (jobs \
            finishing, files processed) as signed POSTs, per Standard Webhooks; the payloads \
            are described under `webhooks`"),
        (name = "projects", description = "What the key's project stores and runs, against its limits"),
        (name = "health", description = "Liveness and readiness")
    ),
    components(schemas(
        hone_domain::webhook::WebhookEvent,
        hone_domain::webhook::WebhookEventData,
        hone_domain::webhook::WebhookEventType
    ))
)]
struct ApiDoc;

/// The routes and their OpenAPI document.
pub fn routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(files::router())
        .merge(base_models::router())
        .merge(transferability::router())
        .merge(jobs::router())
        .merge(job_events::router())
        .merge(checkpoints::router())
        .merge(models::router())
        .merge(model_content::router())
        .merge(webhooks::router())
        .merge(health::router())
        .merge(metrics::router())
        .merge(usage::router())
        .split_for_parts();
    utoipa::Modify::modify(&auth::SecurityAddon, &mut api);
    webhooks::document_payloads(&mut api);
    (router, api)
}

/// The OpenAPI document, as `/openapi.json` serves it.
pub fn openapi() -> serde_json::Value {
    examples::whole_requests(&routes().1)
}

/// The whole application: API routes, `/openapi.json`, Swagger UI at `/docs` and the
/// dashboard at `/ui` (both served from the binary, so they work offline), and the layers of [`layers`]: each
/// route's body limit, parameter checks, timeouts, caught panics turned into 500s, one
/// JSON error shape for every error, and request tracing.
pub fn app(state: AppState, limits: RequestLimits) -> Router {
    let (router, api) = routes();
    let app = layers::api_routes(router.with_state(state), limits)
        .merge(
            SwaggerUi::new("/docs")
                .external_url_unchecked("/openapi.json", examples::whole_requests(&api))
                // The online validator badge would call validator.swagger.io: docs stay offline.
                .config(utoipa_swagger_ui::Config::default().validator_url("none")),
        )
        .merge(ui::router())
        .fallback(|| async {
            error::ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "unknown_route",
                "no such endpoint; see /docs",
            )
        });
    layers::outer(app, limits)
}
