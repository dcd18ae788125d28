//! The one error type of the HTTP layer and the one place that picks status codes.
//! Internal errors are logged with their detail and shown to clients only as a generic
//! message; user errors say what was wrong and which parameter.

use axum::extract::multipart::MultipartError;
use axum::extract::rejection::QueryRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hone_domain::dataset::{DatasetError, DatasetErrorKind};
use hone_domain::ValidationError;
use hone_serving::transferability::EstimateError;
use hone_serving::ServingError;
use hone_store::{Quota, StoreError};
use serde::Serialize;
use utoipa::ToSchema;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    /// Seconds for `Retry-After`; 429 and 503 answers default to 1.
    pub retry_after: Option<u32>,
}

/// `{"error": {"message", "type", "param", "code"}}`, as the OpenAI API answers.
#[derive(Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    #[schema(example = "line 3: field `label`: missing")]
    pub message: String,
    /// `invalid_request_error`, `not_found_error`, `conflict_error`, `rate_limit_error`,
    /// `service_unavailable_error` or `server_error`.
    #[serde(rename = "type")]
    #[schema(example = "invalid_request_error")]
    pub kind: &'static str,
    /// The request field at fault, when there is one.
    #[schema(example = "file")]
    pub param: Option<String>,
    #[schema(example = "missing_field")]
    pub code: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            param: None,
            retry_after: None,
        }
    }

    pub fn invalid(
        param: impl Into<String>,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            param: Some(param.into()),
            ..Self::new(StatusCode::BAD_REQUEST, code, message)
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no {what} with id {id:?}"),
        )
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    fn kind(&self) -> &'static str {
        match self.status {
            StatusCode::NOT_FOUND => "not_found_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::CONFLICT => "conflict_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable_error",
            s if s.is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub(crate) fn internal(context: &str, error: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %error, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "the server failed to handle this request; it has been logged",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = self.kind();
        let status = self.status;
        let retry_after = self.retry_after;
        let body = ErrorResponse {
            error: ErrorBody {
                message: self.message,
                kind,
                param: self.param,
                code: Some(self.code.to_owned()),
            },
        };
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        } else if matches!(
            status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        // A 413 may leave the request body unread, which leaves the connection unusable
        // for the next request: say so, instead of letting the client reuse it.
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "not found"),
            StoreError::Conflict(message) => Self::new(StatusCode::CONFLICT, "conflict", message),
            StoreError::Unavailable(e) => {
                tracing::warn!(error = %e, "database unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    "the database is unavailable; retry shortly",
                )
            }
            StoreError::Quota(Quota::ActiveJobs { limit }) => Self {
                // Jobs take minutes: polling every second would only add load.
                retry_after: Some(30),
                ..Self::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_active_jobs",
                    format!(
                        "this project has {limit} queued or running jobs, its limit \
                         (max_active_jobs = {limit}); retry when one has finished"
                    ),
                )
            },
            StoreError::Quota(Quota::StoredBytes { limit, used }) => Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "storage_limit_exceeded",
                format!(
                    "this upload does not fit in the project's storage limit \
                     (max_stored_bytes = {limit}); {used} bytes are stored (files, \
                     checkpoints and models, as GET /v1/usage shows): delete some to \
                     make room"
                ),
            )
            .with_param("file"),
            StoreError::Quota(Quota::WebhookEndpoints { limit }) => Self::new(
                StatusCode::CONFLICT,
                "webhook_limit_reached",
                format!(
                    "this project has {limit} webhook endpoints, its limit \
                     (max_webhooks_per_project); delete one to add another"
                ),
            ),
            other => Self::internal("storage error", &other),
        }
    }
}

impl From<std::io::Error> for ApiError {
    fn from(e: std::io::Error) -> Self {
        Self::internal("artifact store error", &e)
    }
}

impl From<ServingError> for ApiError {
    fn from(e: ServingError) -> Self {
        match e {
            ServingError::Overloaded => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            }
            ServingError::BadInput(m) => Self::invalid("inputs", "invalid_inputs", m),
            ServingError::BadImage { index, message } => Self::invalid(
                format!("inputs[{index}]"),
                "invalid_image",
                format!("input {index}: {message}"),
            ),
            other => Self::internal("prediction error", &other),
        }
    }
}

impl From<EstimateError> for ApiError {
    fn from(e: EstimateError) -> Self {
        match e {
            EstimateError::Overloaded => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            }
            other => Self::internal("transferability estimate failed", &other),
        }
    }
}

impl From<ValidationError> for ApiError {
    fn from(e: ValidationError) -> Self {
        Self::invalid(e.param, "invalid_value", e.message)
    }
}

impl From<DatasetError> for ApiError {
    fn from(e: DatasetError) -> Self {
        let status = if e.kind == DatasetErrorKind::TooLarge {
            StatusCode::PAYLOAD_TOO_LARGE
        } else {
            StatusCode::BAD_REQUEST
        };
        Self {
            status,
            code: e.kind.code(),
            message: e.to_string(),
            param: Some("file".into()),
            retry_after: None,
        }
    }
}

impl From<MultipartError> for ApiError {
    fn from(e: MultipartError) -> Self {
        let status = e.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(status, "too_large", "the upload exceeds the size limit");
        }
        if crate::extract::is_timeout(&e) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                "the request body stopped arriving; the server waits for each piece of it only so long",
            );
        }
        Self::new(StatusCode::BAD_REQUEST, "invalid_multipart", e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    /// axum says "Failed to deserialize query string: limit: invalid digit found in
    /// string"; the user reads which parameter, and why, in words about it.
    fn from(e: QueryRejection) -> Self {
        let text = e.body_text();
        let detail = text
            .strip_prefix("Failed to deserialize query string: ")
            .unwrap_or(&text);
        match detail.split_once(": ") {
            Some((param, why))
                if !param.is_empty()
                    && param
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_[].".contains(c)) =>
            {
                let why = if why.contains("invalid digit") || why.contains("number too large") {
                    "must be a whole number".to_owned()
                } else {
                    crate::extract::user_words(why)
                };
                Self::invalid(param.to_owned(), "invalid_value", format!("{param} {why}"))
            }
            _ => Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!(
                    "invalid query string: {}",
                    crate::extract::user_words(detail)
                ),
            ),
        }
    }
}
