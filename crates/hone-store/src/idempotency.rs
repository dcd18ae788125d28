//! `Idempotency-Key` for create requests (zero2prod's pattern): the key is claimed with
//! `INSERT … ON CONFLICT DO NOTHING` in the same transaction as the rows the request
//! creates, and the response is stored there too. A concurrent request with the same
//! key waits on the claim and then reads the committed response; if the first
//! transaction rolled back, it claims the key itself.

use hone_domain::ProjectId;
use sqlx::types::Json;
use sqlx::{Postgres, Transaction};

use crate::StoreError;

/// A create request made idempotent by its client.
#[derive(Clone, Debug)]
pub struct Idempotency {
    /// What is created, e.g. `"POST /v1/files"`: the same key may be used on two routes.
    pub scope: &'static str,
    pub key: String,
    /// Digest of what the request asked for; the same key with another digest is a
    /// conflict.
    pub request_sha256: String,
    /// How long the key is remembered: once it is older, it is a new key (and the
    /// project's expired keys are deleted when it claims another).
    pub ttl: std::time::Duration,
}

/// The outcome of a create request that may carry an idempotency key.
#[derive(Debug)]
pub enum Once<T> {
    /// Created now.
    Created(T),
    /// The key was used before for the same request: its response, as stored.
    Replayed(serde_json::Value),
    /// The key was used before for a different request.
    Mismatch,
}

/// Claims `key` in `tx`: `None` when it is new (the caller creates, then calls
/// [`record`]), else what the earlier request got.
/// Keys are the project's: another project's key of the same name is another key.
pub(crate) async fn claim<T>(
    tx: &mut Transaction<'_, Postgres>,
    project: &ProjectId,
    key: &Idempotency,
) -> Result<Option<Once<T>>, StoreError> {
    let ttl = key.ttl.as_secs_f64();
    // New, or expired and so claimed again as new.
    let claimed = sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_sha256, project_id)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (project_id, scope, key) DO UPDATE
           SET request_sha256 = EXCLUDED.request_sha256, response = NULL, created_at = now()
           WHERE idempotency_keys.created_at < now() - make_interval(secs => $5)",
    )
    .bind(key.scope)
    .bind(&key.key)
    .bind(&key.request_sha256)
    .bind(project.as_str())
    .bind(ttl)
    .execute(&mut **tx)
    .await?
    .rows_affected()
        == 1;
    if claimed {
        sqlx::query(
            "DELETE FROM idempotency_keys
             WHERE project_id = $1 AND created_at < now() - make_interval(secs => $2)",
        )
        .bind(project.as_str())
        .bind(ttl)
        .execute(&mut **tx)
        .await?;
        return Ok(None);
    }
    let (digest, response): (String, Option<Json<serde_json::Value>>) = sqlx::query_as(
        "SELECT request_sha256, response FROM idempotency_keys
         WHERE scope = $1 AND key = $2 AND project_id = $3",
    )
    .bind(key.scope)
    .bind(&key.key)
    .bind(project.as_str())
    .fetch_one(&mut **tx)
    .await?;
    Ok(Some(match response {
        _ if digest != key.request_sha256 => Once::Mismatch,
        Some(Json(response)) => Once::Replayed(response),
        None => {
            return Err(StoreError::Corrupt(
                "an idempotency key without a response".into(),
            ))
        }
    }))
}

/// Stores the response of the request that claimed `key`.
pub(crate) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    project: &ProjectId,
    key: &Idempotency,
    response: &impl serde::Serialize,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE idempotency_keys SET response = $3
         WHERE scope = $1 AND key = $2 AND project_id = $4",
    )
    .bind(key.scope)
    .bind(&key.key)
    .bind(Json(response))
    .bind(project.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}
