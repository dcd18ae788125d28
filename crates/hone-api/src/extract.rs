//! Extractors that answer bad requests with our error envelope and name the field at
//! fault, instead of axum's plain-text rejections.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use hone_store::idempotency::Idempotency;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::layers::{body_too_large, nul_in, BodyLimit};

/// A JSON body; a type error points at its path (`hyperparameters.epochs`).
pub struct ApiJson<T>(pub T);

/// A JSON body and the SHA-256 of its canonical form (keys sorted, no whitespace), so
/// that the same request sent twice with different formatting digests the same.
pub struct HashedJson<T>(pub T, pub String);

/// The bytes of a JSON body (415 for another content type), read within the route's
/// body limit.
pub(crate) async fn json_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
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
    let limit = req.extensions().get::<BodyLimit>().copied();
    Bytes::from_request(req, state)
        .await
        .map_err(|e| body_error(e, limit))
}

/// A body that could not be read: over its route's limit (413), stalled past the
/// body-read timeout (408), or cut off.
pub fn body_error(e: BytesRejection, limit: Option<BodyLimit>) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return match limit {
            Some(BodyLimit(bytes)) => body_too_large(bytes),
            None => ApiError::new(e.status(), "body_too_large", e.body_text()),
        };
    }
    if is_timeout(&e) {
        return ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request body stopped arriving; the server waits for each piece of it only so long",
        );
    }
    ApiError::new(e.status(), "invalid_body", e.body_text())
}

/// Whether tower-http's body-read timeout is behind an error.
pub fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if c.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

/// The body as JSON, once; then as `T`, each error naming its path. No text in it may
/// hold a NUL character (Postgres stores none).
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, serde_json::Value), ApiError> {
    // Not JSON at all (cut off, a syntax error): the line and column say where; no
    // field is at fault.
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the body must be a JSON object, not {}", kind(&value)),
        ));
    }
    if let Some(path) = nul_path(&value, String::new()) {
        return Err(nul_in(&path));
    }
    let typed = serde_path_to_error::deserialize(&value).map_err(invalid_json)?;
    Ok((typed, value))
}

fn kind(value: &serde_json::Value) -> &'static str {
    use serde_json::Value;
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn invalid_json(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let message = user_words(&e.into_inner().to_string());
    let mut err = ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_json",
        format!("invalid JSON body: {message}"),
    );
    if path != "." && !path.contains('?') {
        err = err.with_param(path);
    }
    err
}

/// serde's message without the server's type names: "expected struct Hyperparameters"
/// (or "… with 8 elements", "internally tagged enum Method") says "expected an object",
/// "did not match any variant of untagged enum PredictInput" says "did not match any
/// accepted shape".
pub(crate) fn user_words(message: &str) -> String {
    const NAMED: [(&str, &str); 5] = [
        ("expected struct variant ", "expected an object"),
        ("expected struct ", "expected an object"),
        ("expected internally tagged enum ", "expected an object"),
        ("expected enum ", "expected one of the accepted values"),
        ("any variant of untagged enum ", "any accepted shape"),
    ];
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some((i, needle, words)) = NAMED
        .iter()
        .filter_map(|(needle, words)| rest.find(needle).map(|i| (i, *needle, *words)))
        .min_by_key(|(i, needle, _)| (*i, usize::MAX - needle.len()))
    {
        out.push_str(&rest[..i]);
        out.push_str(words);
        let after = &rest[i + needle.len()..];
        let name_end = after
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(after.len());
        rest = &after[name_end..];
        // "with 8 elements" / "with 1 element"
        if let Some(tail) = rest.strip_prefix(" with ") {
            if let Some(end) = tail.find(" element") {
                let counted = &tail[end + " element".len()..];
                rest = counted.strip_prefix('s').unwrap_or(counted);
            }
        }
    }
    out.push_str(rest);
    out
}

/// The path (`metadata.k`, `inputs[2]`) of the first string or key in `value` that
/// holds a NUL character.
pub fn nul_path(value: &serde_json::Value, at: String) -> Option<String> {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains('\0') => Some(if at.is_empty() { ".".into() } else { at }),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, item)| nul_path(item, format!("{at}[{i}]"))),
        Value::Object(map) => map.iter().find_map(|(k, v)| {
            let here = if at.is_empty() {
                k.replace('\0', "\\0")
            } else {
                format!("{at}.{}", k.replace('\0', "\\0"))
            };
            if k.contains('\0') {
                Some(here)
            } else {
                nul_path(v, here)
            }
        }),
        _ => None,
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        Ok(ApiJson(parse(&json_body(req, state).await?)?.0))
    }
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for HashedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = json_body(req, state).await?;
        // Parsed once; serde_json's map keeps keys sorted, which makes it canonical.
        let (value, canonical): (T, _) = parse(&bytes)?;
        let digest = hex::encode(Sha256::digest(canonical.to_string().as_bytes()));
        Ok(HashedJson(value, digest))
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters, when present.
pub struct IdempotencyKey(pub Option<String>);

pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

impl IdempotencyKey {
    /// The key for a request of `scope` whose content digests to `request_sha256`,
    /// remembered for `ttl`.
    pub fn for_request(
        self,
        scope: &'static str,
        request_sha256: String,
        ttl: std::time::Duration,
    ) -> Option<Idempotency> {
        self.0.map(|key| Idempotency {
            scope,
            key,
            request_sha256,
            ttl,
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

#[cfg(test)]
mod tests {
    use super::user_words;

    #[test]
    fn serde_messages_lose_the_server_s_type_names() {
        assert_eq!(
            user_words("invalid length 0, expected struct CreateJobRequest with 8 elements"),
            "invalid length 0, expected an object"
        );
        assert_eq!(
            user_words(
                "invalid type: integer `3`, expected struct Hyperparameters at line 1 column 20"
            ),
            "invalid type: integer `3`, expected an object at line 1 column 20"
        );
        assert_eq!(
            user_words("invalid type: string \"x\", expected internally tagged enum Method"),
            "invalid type: string \"x\", expected an object"
        );
        assert_eq!(
            user_words("data did not match any variant of untagged enum PredictInput"),
            "data did not match any accepted shape"
        );
        assert_eq!(
            user_words("unknown field `n_epoch`, expected one of `epochs`, `n_epochs`"),
            "unknown field `n_epoch`, expected one of `epochs`, `n_epochs`"
        );
    }
}
