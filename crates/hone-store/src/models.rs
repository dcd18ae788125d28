//! Published fine-tuned models.

use chrono::{DateTime, Utc};
use hone_domain::resources::{JobResult, ModelObject};
use hone_domain::PageRequest;
use sqlx::types::Json;

use crate::{Db, StoreError};

#[derive(Clone, Debug)]
pub struct NewModel {
    pub id: String,
    pub job_id: String,
    pub base_model: String,
    pub storage_key: String,
    pub labels: Vec<String>,
}

/// A published model: what the API shows plus where its directory is.
#[derive(Clone, Debug)]
pub struct StoredModel {
    pub object: ModelObject,
    pub storage_key: String,
}

#[derive(sqlx::FromRow)]
struct ModelRow {
    id: String,
    job_id: String,
    base_model: String,
    storage_key: String,
    labels: Json<Vec<String>>,
    metrics: Option<Json<JobResult>>,
    created_at: DateTime<Utc>,
}

impl From<ModelRow> for StoredModel {
    fn from(r: ModelRow) -> Self {
        StoredModel {
            object: ModelObject {
                id: r.id,
                object: "model",
                created: r.created_at.timestamp(),
                owned_by: "user",
                base_model: r.base_model,
                job_id: r.job_id,
                labels: r.labels.0,
                metrics: r.metrics.map(|m| m.0),
            },
            storage_key: r.storage_key,
        }
    }
}

const COLUMNS: &str = "id, job_id, base_model, storage_key, labels, metrics, created_at";

pub fn storage_key(model_id: &str) -> String {
    // Model ids contain ':'; keep the key a plain path component.
    format!("models/{}", model_id.replace(':', "_"))
}

pub(crate) async fn insert_model<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    model: &NewModel,
    metrics: &JobResult,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO models (id, job_id, base_model, storage_key, labels, metrics)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&model.id)
    .bind(&model.job_id)
    .bind(&model.base_model)
    .bind(&model.storage_key)
    .bind(Json(&model.labels))
    .bind(Json(metrics))
    .execute(exec)
    .await?;
    Ok(())
}

impl Db {
    pub async fn get_model(&self, id: &str) -> Result<StoredModel, StoreError> {
        let row: ModelRow = sqlx::query_as(&format!("SELECT {COLUMNS} FROM models WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row.into())
    }

    pub async fn list_models(&self, page: &PageRequest) -> Result<Vec<ModelObject>, StoreError> {
        let rows: Vec<ModelRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM models
             WHERE $1::text IS NULL
                OR (created_at, id) < (SELECT created_at, id FROM models WHERE id = $1)
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredModel::from(r).object)
            .collect())
    }

    /// Deletes the row; the caller removes the directory afterwards.
    pub async fn delete_model(&self, id: &str) -> Result<StoredModel, StoreError> {
        let row: ModelRow = sqlx::query_as(&format!(
            "DELETE FROM models WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.into())
    }
}
