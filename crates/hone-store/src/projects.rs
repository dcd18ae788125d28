//! Projects (tenants), their API keys and their limits. A request's key is looked up
//! by the SHA-256 of the secret; the secret itself is never stored.

use chrono::{DateTime, Utc};
use hone_domain::api_key::NewApiKey;
use hone_domain::{ApiKeyId, ProjectId};

use crate::{Db, StoreError};

/// A project as a request acts for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Project {
    pub id: ProjectId,
    pub name: String,
    /// Overrides of the server's default limits; `None` = the default.
    pub max_active_jobs: Option<i64>,
    pub max_stored_bytes: Option<i64>,
}

/// What a presented key resolved to.
#[derive(Clone, Debug)]
pub enum KeyLookup {
    Valid {
        key: ApiKeyId,
        project: Project,
        /// When the key was last recorded as used (recorded at most once a minute).
        last_used_at: Option<DateTime<Utc>>,
    },
    Revoked,
    Unknown,
}

/// A key as `hone keys list` shows it: never the secret.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyInfo {
    pub id: String,
    pub project: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The limit a request ran into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Quota {
    /// Queued and running jobs of the project.
    ActiveJobs { limit: i64 },
    /// Bytes of the project's stored files.
    StoredBytes { limit: i64, used: i64 },
    /// Webhook endpoints of the project.
    WebhookEndpoints { limit: i64 },
}

#[derive(sqlx::FromRow)]
struct ProjectRow {
    id: String,
    name: String,
    max_active_jobs: Option<i32>,
    max_stored_bytes: Option<i64>,
}

impl TryFrom<ProjectRow> for Project {
    type Error = StoreError;

    fn try_from(r: ProjectRow) -> Result<Self, StoreError> {
        Ok(Project {
            id: ProjectId::parse(&r.id)
                .ok_or_else(|| StoreError::Corrupt(format!("project id {:?}", r.id)))?,
            name: r.name,
            max_active_jobs: r.max_active_jobs.map(i64::from),
            max_stored_bytes: r.max_stored_bytes,
        })
    }
}

/// How often `last_used_at` is written for a key in use: a write per request would
/// turn every read into a write.
const LAST_USED_RESOLUTION_SECS: i64 = 60;

impl Db {
    /// The project named `name`, created when it does not exist yet.
    pub async fn ensure_project(&self, name: &str) -> Result<Project, StoreError> {
        let row: ProjectRow = sqlx::query_as(
            "WITH new AS (
                 INSERT INTO projects (id, name) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING
                 RETURNING id, name, max_active_jobs, max_stored_bytes)
             SELECT * FROM new
             UNION ALL
             SELECT id, name, max_active_jobs, max_stored_bytes FROM projects WHERE name = $2",
        )
        .bind(ProjectId::generate().as_str())
        .bind(name)
        .fetch_one(&self.pool)
        .await?;
        row.try_into()
    }

    /// A new key for `project`; the caller shows its secret once.
    pub async fn create_api_key(&self, project: &ProjectId) -> Result<NewApiKey, StoreError> {
        let key = NewApiKey::generate();
        insert_key(&self.pool, project, &key).await?;
        Ok(key)
    }

    /// The first key of a fresh install: a key for the `default` project, made only
    /// when no key exists at all (revoked ones count), so it is shown exactly once even
    /// when several processes start together.
    pub async fn bootstrap_api_key(&self) -> Result<Option<NewApiKey>, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("LOCK TABLE api_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys)")
            .fetch_one(&mut *tx)
            .await?;
        if any {
            return Ok(None);
        }
        let project: String = sqlx::query_scalar("SELECT id FROM projects WHERE name = 'default'")
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Corrupt("no default project".into()))?;
        let project = ProjectId::parse(&project)
            .ok_or_else(|| StoreError::Corrupt(format!("project id {project:?}")))?;
        let key = NewApiKey::generate();
        insert_key(&mut *tx, &project, &key).await?;
        tx.commit().await?;
        Ok(Some(key))
    }

    /// Every key, newest first.
    pub async fn list_api_keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT k.id, p.name AS project, k.prefix, k.created_at, k.last_used_at, k.revoked_at
             FROM api_keys k JOIN projects p ON p.id = k.project_id
             ORDER BY k.created_at DESC, k.id DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Revokes a key: requests with it are refused from now on. `NotFound` when no key
    /// has this id; revoking twice keeps the first revocation's time.
    pub async fn revoke_api_key(&self, id: &str) -> Result<(), StoreError> {
        let found: Option<String> = sqlx::query_scalar(
            "UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1
             RETURNING id",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        found.map(|_| ()).ok_or(StoreError::NotFound)
    }

    /// The key whose SHA-256 is `hash`, and its project.
    pub async fn find_api_key(&self, hash: &str) -> Result<KeyLookup, StoreError> {
        #[derive(sqlx::FromRow)]
        struct Row {
            key_id: String,
            revoked: bool,
            last_used_at: Option<DateTime<Utc>>,
            #[sqlx(flatten)]
            project: ProjectRow,
        }
        let row: Option<Row> = sqlx::query_as(
            "SELECT k.id AS key_id, k.revoked_at IS NOT NULL AS revoked, k.last_used_at,
                    p.id, p.name, p.max_active_jobs, p.max_stored_bytes
             FROM api_keys k JOIN projects p ON p.id = k.project_id
             WHERE k.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else {
            return Ok(KeyLookup::Unknown);
        };
        if row.revoked {
            return Ok(KeyLookup::Revoked);
        }
        Ok(KeyLookup::Valid {
            key: ApiKeyId::parse(&row.key_id)
                .ok_or_else(|| StoreError::Corrupt(format!("key id {:?}", row.key_id)))?,
            project: row.project.try_into()?,
            last_used_at: row.last_used_at,
        })
    }

    /// Records that `key` was used, unless that was recorded in the last minute
    /// (callers skip the call then too; the guard keeps concurrent requests from
    /// writing twice).
    pub async fn touch_api_key(&self, key: &ApiKeyId) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = now()
             WHERE id = $1
               AND (last_used_at IS NULL OR last_used_at < now() - make_interval(secs => $2))",
        )
        .bind(key.as_str())
        .bind(LAST_USED_RESOLUTION_SECS as f64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Sets (or with `None` clears) a project's limits.
    pub async fn set_project_limits(
        &self,
        project: &ProjectId,
        max_active_jobs: Option<i64>,
        max_stored_bytes: Option<i64>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE projects SET max_active_jobs = $2, max_stored_bytes = $3 WHERE id = $1",
        )
        .bind(project.as_str())
        .bind(max_active_jobs.map(|n| i32::try_from(n).unwrap_or(i32::MAX)))
        .bind(max_stored_bytes)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Bytes of the project's stored files.
    pub async fn stored_bytes(&self, project: &ProjectId) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(sum(bytes), 0)::bigint FROM files WHERE project_id = $1",
        )
        .bind(project.as_str())
        .fetch_one(&self.pool)
        .await?)
    }
}

/// Whether `last_used_at` is stale enough to be written again.
pub fn last_used_is_stale(last_used_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
    last_used_at.is_none_or(|t| (now - t).num_seconds() >= LAST_USED_RESOLUTION_SECS)
}

async fn insert_key<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    project: &ProjectId,
    key: &NewApiKey,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO api_keys (id, project_id, prefix, hash) VALUES ($1, $2, $3, $4)")
        .bind(key.id.as_str())
        .bind(project.as_str())
        .bind(&key.prefix)
        .bind(&key.hash)
        .execute(exec)
        .await?;
    Ok(())
}

/// Locks the project's row for the rest of `tx`, so that checks of its limits and the
/// rows they admit are one step: two concurrent creates cannot both pass a limit.
pub(crate) async fn lock(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    project: &ProjectId,
) -> Result<(), StoreError> {
    sqlx::query("SELECT 1 FROM projects WHERE id = $1 FOR UPDATE")
        .bind(project.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or(StoreError::NotFound)?;
    Ok(())
}
