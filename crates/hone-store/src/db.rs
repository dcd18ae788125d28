use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The migrations in `migrations/`, compiled into the binary.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("conflict: {0}")]
    Conflict(String),
    /// The database could not be reached (as opposed to refusing a query).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("artifact store: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid stored data: {0}")]
    Corrupt(String),
    /// A value refused before it was written, because it could not be read back
    /// ([`readable`]); nothing was written.
    #[error("cannot store {0}")]
    Unwritable(String),
    /// The project is at one of its limits; nothing was written.
    #[error("project limit reached: {0:?}")]
    Quota(crate::projects::Quota),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::RowNotFound => StoreError::NotFound,
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_) => StoreError::Unavailable(e),
            other => StoreError::Database(other),
        }
    }
}

/// The handle every layer above storage uses; cheap to clone.
#[derive(Clone, Debug)]
pub struct Db {
    pub pool: PgPool,
}

/// Connects lazily-checked: the first connection is made here, so a wrong URL or a
/// stopped server is reported at start-up and not at the first request.
pub async fn connect(url: &str, max_connections: u32) -> Result<Db, StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(StoreError::Database)?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await?;
    Ok(Db { pool })
}

/// Creates the database named in `url` when the server does not have it yet, by
/// connecting to the server's `postgres` maintenance database.
pub async fn ensure_database(url: &str) -> Result<(), StoreError> {
    let options = PgConnectOptions::from_str(url).map_err(StoreError::Database)?;
    let name = options
        .get_database()
        .map(str::to_owned)
        .ok_or_else(|| StoreError::Corrupt("the database URL names no database".into()))?;
    let mut conn = options.clone().database("postgres").connect().await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match sqlx::query(&format!("CREATE DATABASE {quoted}"))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it between our check and our CREATE.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await.ok();
    Ok(())
}

pub async fn migrate(db: &Db) -> Result<(), StoreError> {
    MIGRATOR
        .run(&db.pool)
        .await
        .map_err(|e| StoreError::Database(e.into()))
}

impl Db {
    /// A round trip to the database, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// `value` as JSON for a typed column, refused when what would be stored cannot be read
/// back as its type. serde_json writes a non-finite float (NaN, ±infinity) as `null`,
/// which an `f64` field then refuses: such a row would make every read of the job (get,
/// list) fail. Checked on the worker's writes of progress, results and metrics.
pub(crate) fn readable<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
    what: &str,
) -> Result<sqlx::types::Json<serde_json::Value>, StoreError> {
    let json =
        serde_json::to_value(value).map_err(|e| StoreError::Unwritable(format!("{what}: {e}")))?;
    serde_json::from_value::<T>(json.clone()).map_err(|e| {
        StoreError::Unwritable(format!(
            "{what}: it would not read back ({e}); a number in it is not finite"
        ))
    })?;
    Ok(sqlx::types::Json(json))
}
