//! Extractors that answer bad requests with our error envelope and name the field at
//! fault, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use hone_store::idempotency::Idempotency;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;

/// A JSON body; a type error points at its path (`hyperparameters.epochs`).
pub struct ApiJson<T>(pub T);

/// A JSON body and the SHA-256 of its canonical form (keys sorted, no whitespace), so
/// that the same request sent twice with different formatting digests the same.
pub struct HashedJson<T>(pub T, pub String);

async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json") || v.contains("+json"));
    if !json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected a body with `Content-Type: application/json`",
        ));
    }
    Bytes::from_request(req, state)
        .await
        .map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = format!("invalid JSON body: {inner}");
        let mut err = ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", message);
        if path != "." {
            err = err.with_param(path);
        }
        err
    })
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(ApiJson(parse(&json_body(req, state).await?)?))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for HashedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_body(req, state).await?;
        let value: T = parse(&bytes)?;
        // It parsed as `T`, so it is JSON; serde_json's map keeps keys sorted.
        let canonical: serde_json::Value = parse(&bytes)?;
        let digest = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        Ok(HashedJson(value, digest))
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, when present.
pub struct IdempotencyKey(pub Option<String>);

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl IdempotencyKey {
    /// The key for a request of `scope` whose content digests to `request_sha256`.
    pub fn for_request(self, scope: &'static str, request_sha256: String) -> Option<Idempotency> {
        self.0.map(|key| Idempotency {
            scope,
            key,
            request_sha256,
        })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(IDEMPOTENCY_KEY) else {
            return Ok(IdempotencyKey(None));
        };
        let key = value
            .to_str()
            .ok()
            .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
            .ok_or_else(|| {
                ApiError::invalid(
                    IDEMPOTENCY_KEY,
                    "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 255 visible ASCII characters",
                )
            })?;
        Ok(IdempotencyKey(Some(key.to_owned())))
    }
}

/// The answer to a key used before with a different request.
pub fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "this Idempotency-Key was used with a different request; use a new key",
    )
    .with_param(IDEMPOTENCY_KEY)
}
