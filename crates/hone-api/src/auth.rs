//! `Authorization: Bearer <key>`: the [`Project`] extractor authenticates a request and
//! names the project it acts for. Every handler of a project's resources takes one, and
//! hands its id to the store, which filters by it: another project's resource is "not
//! found", exactly like a missing one.

use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::Utc;
use hone_domain::api_key::{hash_key, is_well_formed};
use hone_domain::ProjectId;
use hone_store::projects::{last_used_is_stale, KeyLookup};
use hone_store::Db;
use lru::LruCache;
use tokio::sync::Semaphore;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

use crate::error::ApiError;
use crate::AppState;

/// The name of the security scheme in the OpenAPI document.
pub const SCHEME: &str = "bearer";

/// The project a request acts for, with its limits (the project's own, else the
/// server's defaults).
#[derive(Clone, Debug)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    pub max_active_jobs: i64,
    pub max_stored_bytes: i64,
}

/// The server's limits for projects that set none of their own.
#[derive(Clone, Copy, Debug)]
pub struct ProjectLimits {
    /// Queued and running jobs of one project.
    pub max_active_jobs: i64,
    /// Bytes one project stores (files, kept checkpoints, published models).
    pub max_stored_bytes: i64,
}

fn unauthorized(code: &'static str, message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
}

/// The key of `Authorization: Bearer <key>` (the scheme is case-insensitive).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        unauthorized(
            "missing_api_key",
            "send your API key as `Authorization: Bearer <key>`; \
             `hone keys create --project NAME` makes one",
        )
    })?;
    let malformed = || {
        unauthorized(
            "invalid_api_key",
            "the Authorization header must be `Bearer <key>` with a key `hone_sk_…`",
        )
    };
    let value = value.to_str().map_err(|_| malformed())?;
    let (scheme, key) = value.split_once(' ').ok_or_else(malformed)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(malformed());
    }
    let key = key.trim();
    if !is_well_formed(key) {
        return Err(malformed());
    }
    Ok(key)
}

/// What a key was found to be, as the cache keeps it.
#[derive(Clone, Debug)]
enum KnownKey {
    Valid(Project),
    Revoked,
    Unknown,
}

/// API key look-ups, remembered for a short time (`api_key_cache_ms`): a request with
/// a key seen in that time costs no query, and a flood of bogus keys (well-formed, so
/// each would be a query) cannot take the database's connections from everyone else.
/// Known and refused keys are kept apart, so refused ones cannot push known ones out;
/// and look-ups that miss run a few at a time, leaving most of the pool to the
/// requests' own queries. The cost: a revoked key keeps working for up to the cache
/// time, and a new key is refused for as long if it was tried before it existed.
pub struct KeyCache {
    ttl: Duration,
    known: Mutex<LruCache<String, (Instant, Project)>>,
    refused: Mutex<LruCache<String, (Instant, KnownKey)>>,
    lookups: Semaphore,
}

/// Keys remembered of each kind (known, refused); the oldest are forgotten first.
const CACHED_KEYS: NonZeroUsize = match NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => unreachable!(),
};

impl KeyCache {
    /// A cache that keeps look-ups for `ttl` and runs at most `lookups` at once.
    pub fn new(ttl: Duration, lookups: usize) -> Self {
        Self {
            ttl,
            known: Mutex::new(LruCache::new(CACHED_KEYS)),
            refused: Mutex::new(LruCache::new(CACHED_KEYS)),
            lookups: Semaphore::new(lookups.max(1)),
        }
    }

    fn get(&self, hash: &str) -> Option<KnownKey> {
        let fresh = |at: &Instant| at.elapsed() < self.ttl;
        if let Some((at, project)) = lock(&self.known).get(hash) {
            if fresh(at) {
                return Some(KnownKey::Valid(project.clone()));
            }
        }
        match lock(&self.refused).get(hash) {
            Some((at, refusal)) if fresh(at) => Some(refusal.clone()),
            _ => None,
        }
    }

    fn put(&self, hash: String, found: &KnownKey) {
        let now = Instant::now();
        match found {
            KnownKey::Valid(project) => {
                lock(&self.refused).pop(&hash);
                lock(&self.known).put(hash, (now, project.clone()));
            }
            refusal => {
                lock(&self.known).pop(&hash);
                lock(&self.refused).put(hash, (now, refusal.clone()));
            }
        }
    }

    /// What the key whose hash is `hash` is: from the cache, else from the database.
    async fn find(
        &self,
        db: &Db,
        defaults: ProjectLimits,
        hash: String,
    ) -> Result<KnownKey, ApiError> {
        if let Some(found) = self.get(&hash) {
            return Ok(found);
        }
        let _permit = self
            .lookups
            .acquire()
            .await
            .map_err(|e| ApiError::internal("key look-ups", &e))?;
        // Another request may have looked it up while this one waited.
        if let Some(found) = self.get(&hash) {
            return Ok(found);
        }
        let found = match db.find_api_key(&hash).await? {
            KeyLookup::Unknown => KnownKey::Unknown,
            KeyLookup::Revoked => KnownKey::Revoked,
            KeyLookup::Valid {
                key,
                project,
                last_used_at,
            } => {
                if last_used_is_stale(last_used_at, Utc::now()) {
                    // Off the request's path: a lost update only delays `last_used_at`.
                    let db = db.clone();
                    tokio::spawn(async move {
                        if let Err(e) = db.touch_api_key(&key).await {
                            tracing::warn!(error = %e, "could not record an API key's use");
                        }
                    });
                }
                KnownKey::Valid(Project {
                    id: project.id,
                    name: project.name,
                    max_active_jobs: project.max_active_jobs.unwrap_or(defaults.max_active_jobs),
                    max_stored_bytes: project
                        .max_stored_bytes
                        .unwrap_or(defaults.max_stored_bytes),
                })
            }
        };
        self.put(hash, &found);
        Ok(found)
    }
}

/// The cache's maps hold no invariant a panic could break mid-way: a poisoned lock is
/// still usable.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FromRequestParts<AppState> for Project {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let defaults = state.settings.project_limits;
        authenticate(&state.keys, &state.db, defaults, &parts.headers).await
    }
}

/// The project the request's API key acts for, or 401 (what the [`Project`] extractor
/// does, for routes outside the API's state, such as a worker's `/metrics`).
pub async fn authenticate(
    keys: &KeyCache,
    db: &Db,
    defaults: ProjectLimits,
    headers: &HeaderMap,
) -> Result<Project, ApiError> {
    let key = bearer(headers)?;
    match keys.find(db, defaults, hash_key(key)).await? {
        KnownKey::Valid(project) => Ok(project),
        KnownKey::Unknown => Err(unauthorized(
            "invalid_api_key",
            "this API key is not known to the server",
        )),
        KnownKey::Revoked => Err(unauthorized(
            "revoked_api_key",
            "this API key was revoked; ask for a new one",
        )),
    }
}

/// Refuses an upload whose declared size (`Content-Length`, which includes a little
/// multipart framing) cannot fit in the project's storage, before a byte is stored.
/// The exact check is made again with the file's real size when its row is added.
pub async fn check_upload_room(
    state: &AppState,
    project: &Project,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    /// Framing of a multipart upload (boundaries, part headers, small fields).
    const FRAMING: i64 = 16 * 1024;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(0);
    let used = state.db.stored_bytes(&project.id).await?;
    let limit = project.max_stored_bytes;
    if used >= limit || used.saturating_add(declared.saturating_sub(FRAMING).max(0)) > limit {
        return Err(
            hone_store::StoreError::Quota(hone_store::Quota::StoredBytes { limit, used }).into(),
        );
    }
    Ok(())
}

/// Paths anyone may call: probes and the documentation.
pub const PUBLIC_PATHS: [&str; 2] = ["/healthz", "/readyz"];

/// Declares the `bearer` scheme, and on every operation but the public ones requires it
/// and documents its 401 (done on the finished document, so no route can be missed).
pub struct SecurityAddon;

impl utoipa::Modify for SecurityAddon {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::SecurityRequirement;
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let unauthorized = ResponseBuilder::new()
            .description("No API key, or an unknown or revoked one")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorResponse")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if PUBLIC_PATHS.contains(&path.as_str()) {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![SecurityRequirement::new(SCHEME, Vec::<String>::new())]);
                op.responses
                    .responses
                    .insert("401".into(), unauthorized.clone().into());
            }
        }
        let components = openapi.components.get_or_insert_with(Default::default);
        let mut http = Http::new(HttpAuthScheme::Bearer);
        http.bearer_format = Some("hone_sk_…".into());
        http.description = Some(
            "An API key, `hone_sk_…`; `hone keys create --project NAME` makes one, and the \
             first start of a fresh install prints one."
                .into(),
        );
        components.add_security_scheme(SCHEME, SecurityScheme::Http(http));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project(name: &str) -> Project {
        Project {
            id: ProjectId::generate(),
            name: name.into(),
            max_active_jobs: 1,
            max_stored_bytes: 1,
        }
    }

    #[test]
    fn look_ups_are_kept_for_the_cache_time_only() {
        let cache = KeyCache::new(Duration::from_millis(200), 1);
        assert!(cache.get("a").is_none());
        cache.put("a".into(), &KnownKey::Valid(project("p")));
        cache.put("b".into(), &KnownKey::Unknown);
        assert!(matches!(cache.get("a"), Some(KnownKey::Valid(p)) if p.name == "p"));
        assert!(matches!(cache.get("b"), Some(KnownKey::Unknown)));
        // Revoked replaces known.
        cache.put("a".into(), &KnownKey::Revoked);
        assert!(matches!(cache.get("a"), Some(KnownKey::Revoked)));
        std::thread::sleep(Duration::from_millis(250));
        assert!(cache.get("a").is_none() && cache.get("b").is_none());
    }

    #[test]
    fn refused_keys_cannot_push_known_ones_out() {
        let cache = KeyCache::new(Duration::from_secs(60), 1);
        cache.put("known".into(), &KnownKey::Valid(project("p")));
        for i in 0..CACHED_KEYS.get() + 10 {
            cache.put(format!("bogus-{i}"), &KnownKey::Unknown);
        }
        assert!(matches!(cache.get("known"), Some(KnownKey::Valid(_))));
        assert!(
            cache.get("bogus-0").is_none(),
            "the oldest refusals are forgotten"
        );
    }
}
