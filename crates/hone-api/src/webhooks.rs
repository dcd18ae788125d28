//! `/v1/webhooks`: a project's webhook endpoints (create, list, get, update, delete,
//! rotate the signing secret) and the log of their deliveries, with a manual redeliver.
//! A URL is checked here, resolution included (`hone_webhooks::target`), and again by
//! the deliverer before every attempt. The payloads hone sends are documented in the
//! OpenAPI document's `webhooks` ([`document_payloads`]).

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::Json;
use hone_domain::webhook::{
    WebhookDelivery, WebhookEndpoint, WebhookEndpointWithSecret, WebhookEvent, WebhookEventType,
    WebhookSecret,
};
use hone_domain::{Page, WebhookDeliveryId, WebhookId};
use hone_store::webhooks::{EndpointChange, NewEndpoint};
use hone_store::StoreError;
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::extract::ApiJson;
use crate::params::ListParams;
use crate::AppState;

/// How long the secret a rotation replaces keeps signing beside the new one.
const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);
const MAX_DESCRIPTION_CHARS: usize = 512;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_webhook, list_webhooks))
        .routes(routes!(get_webhook, update_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(list_deliveries))
        .routes(routes!(redeliver))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where to POST events: `https://…` (plain `http` only where the server allows
    /// it). Its host must resolve to public addresses.
    #[schema(example = "https://example.com/hooks/hone")]
    url: String,
    /// The event types to send; at least one.
    #[schema(value_type = Vec<WebhookEventType>, example = json!(["fine_tuning.job.succeeded", "fine_tuning.job.failed"]))]
    events: Vec<String>,
    /// Up to 512 characters of your own.
    description: Option<String>,
    /// `false` registers it without sending it anything yet (default `true`).
    enabled: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[schema(example = "https://example.com/hooks/hone")]
    url: Option<String>,
    #[schema(value_type = Option<Vec<WebhookEventType>>)]
    events: Option<Vec<String>>,
    /// A new description; `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    description: Option<Option<String>>,
    /// `false` stops new events (pending deliveries wait); `true` resumes.
    enabled: Option<bool>,
}

/// A field that is present (even as `null`) is `Some`.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Serialize, ToSchema)]
struct DeletedWebhook {
    id: String,
    #[schema(example = "webhook_endpoint")]
    object: &'static str,
    deleted: bool,
}

fn parse_events(raw: &[String]) -> Result<Vec<WebhookEventType>, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::invalid(
            "events",
            "invalid_value",
            format!(
                "events must name at least one event type: {}",
                WebhookEventType::names()
            ),
        ));
    }
    let mut events = raw
        .iter()
        .enumerate()
        .map(|(i, name)| {
            WebhookEventType::parse(name).ok_or_else(|| {
                ApiError::invalid(
                    format!("events[{i}]"),
                    "unknown_event_type",
                    format!(
                        "unknown event type {name:?}; one of {}",
                        WebhookEventType::names()
                    ),
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    events.sort();
    events.dedup();
    Ok(events)
}

fn check_description(description: &Option<String>) -> Result<(), ApiError> {
    match description {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => Err(ApiError::invalid(
            "description",
            "invalid_value",
            format!("description is longer than {MAX_DESCRIPTION_CHARS} characters"),
        )),
        _ => Ok(()),
    }
}

async fn check_url(state: &AppState, raw: &str) -> Result<String, ApiError> {
    hone_webhooks::target::check_endpoint_url(raw, state.settings.webhook_policy)
        .await
        .map(|u| u.to_string())
        .map_err(|e| ApiError::invalid(e.param, "invalid_url", e.message))
}

fn webhook_id(raw: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(raw).ok_or_else(|| ApiError::not_found("webhook", raw))
}

fn not_found_as(raw: &str) -> impl Fn(StoreError) -> ApiError + '_ {
    move |e| match e {
        StoreError::NotFound => ApiError::not_found("webhook", raw),
        other => other.into(),
    }
}

/// Register a webhook endpoint.
///
/// Returns the endpoint with its signing `secret`, shown only now (and by
/// `rotate_secret`): keep it to verify deliveries. Each delivery is a POST of a
/// `WebhookEvent` (see the document's `webhooks`) signed per Standard Webhooks.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks",
    request_body(content = CreateWebhookRequest, example = json!({
        "url": "https://example.com/hooks/hone",
        "events": ["fine_tuning.job.succeeded", "fine_tuning.job.failed", "fine_tuning.job.cancelled"],
        "description": "CI notifications"})),
    responses(
        (status = 200, description = "The endpoint, with its secret", body = WebhookEndpointWithSecret),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorResponse,
            example = json!({"error": {"message": "url must use https (this server does not send webhooks over plain http: webhook_allow_http = false)", "type": "invalid_request_error", "param": "url", "code": "invalid_url"}})),
        (status = 415, description = "The body is not JSON", body = ErrorResponse)))]
async fn create_webhook(
    State(state): State<AppState>,
    project: Project,
    ApiJson(req): ApiJson<CreateWebhookRequest>,
) -> Result<Json<WebhookEndpointWithSecret>, ApiError> {
    let events = parse_events(&req.events)?;
    check_description(&req.description)?;
    let url = check_url(&state, &req.url).await?;
    let secret = WebhookSecret::generate();
    let new = NewEndpoint {
        id: WebhookId::generate(),
        project: project.id.clone(),
        url,
        events,
        description: req.description,
        enabled: req.enabled.unwrap_or(true),
        secret: secret.clone(),
    };
    let endpoint = state
        .db
        .create_webhook(&new, state.settings.max_webhooks_per_project)
        .await?;
    tracing::info!(webhook.id = %endpoint.id, project = %project.id, "webhook endpoint created");
    Ok(Json(WebhookEndpointWithSecret {
        endpoint,
        secret: secret.expose().to_owned(),
    }))
}

/// List the project's webhook endpoints, newest first (without their secrets).
#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", params(ListParams),
    responses(
        (status = 200, description = "A page of endpoints", body = inline(Page<WebhookEndpoint>)),
        (status = 400, description = "Invalid query", body = ErrorResponse)))]
async fn list_webhooks(
    State(state): State<AppState>,
    project: Project,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<WebhookEndpoint>>, ApiError> {
    let page = query?.0.page()?;
    let rows = state.db.list_webhooks(&project.id, &page).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |w| w.id.clone())))
}

/// Get a webhook endpoint (without its secret).
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookEndpoint),
        (status = 404, description = "No such endpoint", body = ErrorResponse)))]
async fn get_webhook(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    let id = webhook_id(&raw)?;
    Ok(Json(
        state
            .db
            .get_webhook(&project.id, id.as_str())
            .await
            .map_err(not_found_as(&raw))?,
    ))
}

/// Update a webhook endpoint: any of `url`, `events`, `description`, `enabled`; the
/// fields left out stay as they are.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id")),
    request_body(content = UpdateWebhookRequest, example = json!({"events": ["fine_tuning.job.succeeded"], "enabled": true})),
    responses(
        (status = 200, description = "The updated endpoint", body = WebhookEndpoint),
        (status = 400, description = "Invalid request; `param` names the field", body = ErrorResponse),
        (status = 404, description = "No such endpoint", body = ErrorResponse),
        (status = 415, description = "The body is not JSON", body = ErrorResponse)))]
async fn update_webhook(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
    ApiJson(req): ApiJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookEndpoint>, ApiError> {
    let id = webhook_id(&raw)?;
    let events = req.events.as_deref().map(parse_events).transpose()?;
    if let Some(description) = &req.description {
        check_description(description)?;
    }
    let url = match &req.url {
        Some(u) => Some(check_url(&state, u).await?),
        None => None,
    };
    let change = EndpointChange {
        url,
        events,
        description: req.description,
        enabled: req.enabled,
    };
    Ok(Json(
        state
            .db
            .update_webhook(&project.id, id.as_str(), &change)
            .await
            .map_err(not_found_as(&raw))?,
    ))
}

/// Delete a webhook endpoint, with its pending deliveries and their log.
#[utoipa::path(delete, path = "/v1/webhooks/{webhook_id}", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedWebhook),
        (status = 404, description = "No such endpoint", body = ErrorResponse)))]
async fn delete_webhook(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<DeletedWebhook>, ApiError> {
    let id = webhook_id(&raw)?;
    state
        .db
        .delete_webhook(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    Ok(Json(DeletedWebhook {
        id: id.to_string(),
        object: "webhook_endpoint",
        deleted: true,
    }))
}

/// Replace the endpoint's signing secret.
///
/// Returns the new `secret`, shown only now. For 24 hours deliveries carry two
/// signatures, one per secret (`webhook-signature: v1,<new> v1,<old>`), so a receiver
/// can switch to the new secret without missing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/rotate_secret", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint, with its new secret", body = WebhookEndpointWithSecret),
        (status = 404, description = "No such endpoint", body = ErrorResponse)))]
async fn rotate_secret(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<WebhookEndpointWithSecret>, ApiError> {
    let id = webhook_id(&raw)?;
    let secret = WebhookSecret::generate();
    let endpoint = state
        .db
        .rotate_webhook_secret(&project.id, id.as_str(), &secret, ROTATION_OVERLAP)
        .await
        .map_err(not_found_as(&raw))?;
    Ok(Json(WebhookEndpointWithSecret {
        endpoint,
        secret: secret.expose().to_owned(),
    }))
}

/// The endpoint's deliveries, newest first: each event sent to it, its status, and
/// every attempt with its status code, latency and error.
#[utoipa::path(get, path = "/v1/webhooks/{webhook_id}/deliveries", tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id"), ListParams),
    responses(
        (status = 200, description = "A page of deliveries", body = inline(Page<WebhookDelivery>)),
        (status = 400, description = "Invalid query", body = ErrorResponse),
        (status = 404, description = "No such endpoint", body = ErrorResponse)))]
async fn list_deliveries(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Json<Page<WebhookDelivery>>, ApiError> {
    let id = webhook_id(&raw)?;
    let page = query?.0.page()?;
    let rows = state
        .db
        .list_deliveries(&project.id, id.as_str(), &page)
        .await
        .map_err(not_found_as(&raw))?;
    Ok(Json(Page::from_rows(rows, page.limit, |d| d.id.clone())))
}

/// Send a delivery's event to the endpoint again, now, as a new delivery with its own
/// attempts and retries. The event keeps its id (and `webhook-id`), so a receiver
/// that already has it can tell.
#[utoipa::path(post, path = "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    tag = "webhooks",
    params(("webhook_id" = String, Path, description = "The endpoint's id"),
           ("delivery_id" = String, Path, description = "The delivery to send again")),
    responses(
        (status = 200, description = "The new delivery, pending", body = WebhookDelivery),
        (status = 404, description = "No such endpoint or delivery", body = ErrorResponse)))]
async fn redeliver(
    State(state): State<AppState>,
    project: Project,
    Path((raw, raw_delivery)): Path<(String, String)>,
) -> Result<Json<WebhookDelivery>, ApiError> {
    let id = webhook_id(&raw)?;
    let no_delivery = || ApiError::not_found("delivery", &raw_delivery).with_param("delivery_id");
    let delivery = WebhookDeliveryId::parse(&raw_delivery).ok_or_else(no_delivery)?;
    match state
        .db
        .redeliver(&project.id, id.as_str(), delivery.as_str())
        .await
    {
        Ok(d) => Ok(Json(d)),
        Err(StoreError::NotFound) => match state.db.get_webhook(&project.id, id.as_str()).await {
            Ok(_) => Err(no_delivery()),
            Err(e) => Err(not_found_as(&raw)(e)),
        },
        Err(e) => Err(e.into()),
    }
}

/// Adds the OpenAPI 3.1 `webhooks` object: one POST per event type, with the signature
/// headers and the `WebhookEvent` body, so the payloads are documented where clients
/// and generators look for them. utoipa has no field for it; an extension at the root
/// is serialised at the root.
pub fn document_payloads(api: &mut utoipa::openapi::OpenApi) {
    use serde_json::json;
    let header = |name: &str, description: &str| {
        json!({"name": name, "in": "header", "required": true, "description": description,
               "schema": {"type": "string"}})
    };
    let parameters = json!([
        header("webhook-id", "The event's id, the same on every attempt: drop repeats by it."),
        header("webhook-timestamp", "Unix seconds when this attempt was signed; refuse old ones (the Standard Webhooks libraries allow 5 minutes)."),
        header("webhook-signature", "`v1,<base64 HMAC-SHA256 of \"<webhook-id>.<webhook-timestamp>.<body>\">`, keyed with the base64-decoded secret after `whsec_`; two, space-separated, for 24 hours after a rotation."),
    ]);
    let mut webhooks = serde_json::Map::new();
    for kind in WebhookEventType::ALL {
        let example = WebhookEvent {
            id: "evt-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f".into(),
            object: "event",
            kind,
            created_at: 1_764_547_200,
            data: hone_domain::webhook::WebhookEventData {
                id: match kind {
                    WebhookEventType::FileProcessed => "file-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
                    _ => "ftjob-0192f3c4a1b27c3e8d5f6a7b8c9d0e1f",
                }
                .into(),
            },
        };
        webhooks.insert(
            kind.as_str().into(),
            json!({"post": {
                "tags": ["webhooks"],
                "summary": format!("`{}`, POSTed to the endpoints subscribed to it", kind.as_str()),
                "description": "Answer 2xx within 15 seconds to acknowledge; anything else (or \
                    no answer) is retried with exponential backoff for about a day. Delivery is \
                    at least once: the same event may arrive more than once.",
                "parameters": parameters,
                "requestBody": {"required": true, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/WebhookEvent"},
                    "example": example}}},
                "responses": {"2XX": {"description": "Received"}}
            }}),
        );
    }
    api.extensions
        .get_or_insert_with(Default::default)
        .insert("webhooks".into(), serde_json::Value::Object(webhooks));
}
