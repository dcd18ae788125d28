//! What every request passes through before its handler, and every answer after it:
//! the body limit of its route, the check of its path and query parameters, timeouts,
//! caught panics, and the one JSON error shape for answers that axum, hyper's
//! services or tower-http make themselves (405, 408, 413, rejected paths and forms).

use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::RawPathParamsRejection;
use axum::extract::{MatchedPath, RawPathParams, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use tower::ServiceExt;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimit;
use tower_http::timeout::{RequestBodyTimeoutLayer, TimeoutLayer};
use tower_http::trace::TraceLayer;

use crate::error::ApiError;

/// What bounds one request: the size of its body, by route, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// `POST /v1/files`: the upload limit and a little room for the multipart framing
    /// (the dataset validator enforces the exact limit on the file).
    pub upload_body_bytes: u64,
    /// `POST /v1/models/{model}/predict`.
    pub predict_body_bytes: u64,
    /// Every other route: JSON bodies (jobs, transferability, …).
    pub json_body_bytes: u64,
    /// From the request's header to its answer.
    pub request_timeout: Duration,
    /// Between two pieces of a request body.
    pub body_read_timeout: Duration,
}

impl RequestLimits {
    /// The largest body the route `path` (as the router matched it) takes for `method`.
    pub fn body_bytes(&self, method: &Method, path: &str) -> u64 {
        match (method, path) {
            (&Method::POST, "/v1/files") => self.upload_body_bytes,
            (&Method::POST, "/v1/models/{model}/predict") => self.predict_body_bytes,
            _ => self.json_body_bytes,
        }
    }
}

/// The limit a request's body was read under, for error messages further in.
#[derive(Clone, Copy, Debug)]
pub struct BodyLimit(pub u64);

/// The API's routes wrapped in the layers every request goes through. `routes` must
/// have its state already; the documentation and the fallback are merged by the caller
/// before, so that they get the outer layers too.
pub fn api_routes(routes: Router, limits: RequestLimits) -> Router {
    routes
        .route_layer(middleware::from_fn_with_state(limits, limit_body))
        .route_layer(middleware::from_fn(check_params))
        // Outermost of the route's layers, so it counts their refusals too.
        .route_layer(middleware::from_fn(crate::metrics::track))
        // The limit above is the one that applies; axum's own default (2 MB) is not.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The layers around the whole application, innermost first: the body-read and
/// request timeouts, the error envelope for answers made outside the handlers, caught
/// panics, and tracing.
pub fn outer(app: Router, limits: RequestLimits) -> Router {
    app.layer(RequestBodyTimeoutLayer::new(limits.body_read_timeout))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.request_timeout,
        ))
        .layer(middleware::map_response(envelope))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TraceLayer::new_for_http())
}

/// Applies the route's body limit with tower-http's `RequestBodyLimit`: a declared
/// `Content-Length` over it is answered 413 before a byte of the body is read, and a
/// body without one is cut off where it passes the limit.
async fn limit_body(
    State(limits): State<RequestLimits>,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map_or("", |m| m.as_str());
    let limit = limits.body_bytes(req.method(), path);
    req.extensions_mut().insert(BodyLimit(limit));
    let bytes = usize::try_from(limit).unwrap_or(usize::MAX);
    let inner =
        next.map_request(|req: Request<tower_http::body::Limited<Body>>| req.map(Body::new));
    match RequestBodyLimit::new(inner, bytes).oneshot(req).await {
        Ok(response) if response.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            // tower-http's own answer to a Content-Length over the limit is plain text.
            let own = response
                .headers()
                .get(header::CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
            if own {
                response.map(Body::new)
            } else {
                body_too_large(limit).into_response()
            }
        }
        Ok(response) => response.map(Body::new),
        Err(never) => match never {},
    }
}

/// The answer to a body over its route's limit of `limit` bytes.
pub fn body_too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over this endpoint's limit of {limit} bytes"),
    )
}

/// Path parameters must be UTF-8, and no parameter (path or query) may hold a NUL
/// character: text goes to Postgres, which stores none, and an id with one names
/// nothing. Refused here, at the edge, naming the parameter.
async fn check_params(
    params: Result<RawPathParams, RawPathParamsRejection>,
    req: Request,
    next: Next,
) -> Response {
    match params {
        Ok(params) => {
            if let Some((name, _)) = params.iter().find(|(_, value)| value.contains('\0')) {
                return nul_in(name).into_response();
            }
        }
        Err(RawPathParamsRejection::InvalidUtf8InPathParam(e)) => {
            // axum keeps the parameter's name private but says it: "… in `name`".
            let text = e.body_text();
            let mut error = ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_path_parameter",
                "a path parameter is not UTF-8 once percent-decoded",
            );
            error.param = text.split('`').nth(1).map(str::to_owned);
            return error.into_response();
        }
        // A route without parameters.
        Err(_) => {}
    }
    if let Some(query) = req.uri().query() {
        let pairs = form_urlencoded_pairs(query);
        if let Some((name, _)) = pairs
            .iter()
            .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        {
            return nul_in(&name.replace('\0', "\\0")).into_response();
        }
    }
    next.run(req).await
}

/// `name=value` pairs of a query string, percent-decoded (as axum's `Query` reads it).
fn form_urlencoded_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str::<Vec<(String, String)>>(query).unwrap_or_default()
}

/// The answer to a NUL character in the parameter or field `name`.
pub fn nul_in(name: &str) -> ApiError {
    ApiError::invalid(
        name,
        "nul_character",
        format!("`{name}` contains a NUL character (\\u0000), which no text here may hold"),
    )
}

/// Answers with a status of 400 or more that are not already our JSON envelope (axum's
/// 405, tower-http's 408 and 413, rejections written as plain text) become one, keeping
/// their status and headers (`Allow`, `Retry-After`), and a short plain-text reason as
/// the message.
async fn envelope(response: Response) -> Response {
    let status = response.status();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if status.as_u16() < 400 || json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    let (code, default) = match status {
        StatusCode::NOT_FOUND => ("unknown_route", "no such endpoint; see /docs"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take this method; `Allow` lists those it takes",
        ),
        StatusCode::REQUEST_TIMEOUT => (
            "request_timeout",
            "the request was not read and answered within the server's time limit",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "body_too_large",
            "the request body is over this endpoint's limit",
        ),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported_media_type",
            "this endpoint does not take this content type",
        ),
        s if s.is_server_error() => ("internal_error", "the server failed to handle this request"),
        _ => ("invalid_request", "the request could not be read"),
    };
    // A server error's own text is not for clients.
    let message = match text {
        Some(t) if !status.is_server_error() => t,
        _ => default.to_owned(),
    };
    let answer = ApiError::new(status, code, message).into_response();
    let (new_parts, body) = answer.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (name, value) in &new_parts.headers {
        parts.headers.insert(name, value.clone());
    }
    Response::from_parts(parts, body)
}

/// A panic in a handler: logged, and answered 500 in the envelope like any internal
/// error (the connection and the process carry on).
fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response<Body> {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("a panic without a message");
    let mut response = ApiError::internal("a request handler panicked", &detail).into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;

    fn limits() -> RequestLimits {
        RequestLimits {
            upload_body_bytes: 1000,
            predict_body_bytes: 100,
            json_body_bytes: 10,
            request_timeout: Duration::from_secs(5),
            body_read_timeout: Duration::from_secs(5),
        }
    }

    async fn json_of(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("body");
        serde_json::from_slice(&bytes).expect("a JSON body")
    }

    #[test]
    fn each_route_has_its_body_limit() {
        let l = limits();
        assert_eq!(l.body_bytes(&Method::POST, "/v1/files"), 1000);
        assert_eq!(l.body_bytes(&Method::GET, "/v1/files"), 10);
        assert_eq!(
            l.body_bytes(&Method::POST, "/v1/models/{model}/predict"),
            100
        );
        assert_eq!(l.body_bytes(&Method::POST, "/v1/fine_tuning/jobs"), 10);
    }

    /// No route of the real server panics on purpose, so the panic handler is tried on
    /// a router of one route that does, behind the same layers.
    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_in_the_envelope() {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = outer(
            api_routes(Router::new().route("/boom", get(boom)), limits()),
            limits(),
        );
        let response = app
            .oneshot(Request::get("/boom").body(Body::empty()).expect("request"))
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "internal_error", "{body}");
        assert!(
            !body.to_string().contains("boom"),
            "the panic's text is not for clients: {body}"
        );
    }

    #[tokio::test]
    async fn plain_answers_become_the_envelope_with_their_headers() {
        let app = outer(
            api_routes(
                Router::new().route("/only-get", get(|| async { "ok" })),
                limits(),
            ),
            limits(),
        );
        let response = app
            .oneshot(
                Request::delete("/only-get")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("an answer");
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert!(response.headers().contains_key(header::ALLOW));
        let body = json_of(response).await;
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }

    #[test]
    fn query_pairs_are_percent_decoded() {
        assert_eq!(
            form_urlencoded_pairs("after=%00&limit=2"),
            vec![("after".into(), "\0".into()), ("limit".into(), "2".into())]
        );
    }
}
