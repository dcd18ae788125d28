//! Published fine-tuned models.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hone_domain::dataset::TaskType;
use hone_domain::resources::{JobResult, ModelObject};
use hone_domain::{PageRequest, ProjectId};
use sqlx::types::Json;

use crate::{Db, StoreError};

#[derive(Clone, Debug)]
pub struct NewModel {
    pub id: String,
    pub job_id: String,
    pub base_model: String,
    pub storage_key: String,
    pub task_type: TaskType,
    pub labels: Vec<String>,
    /// Multi-task: each task's labels.
    pub tasks: Option<BTreeMap<String, Vec<String>>>,
    /// Published from this epoch's checkpoint.
    pub checkpoint_epoch: Option<u32>,
    /// The size of its directory, counted in the project's usage.
    pub bytes: u64,
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
    task_type: String,
    labels: Json<Vec<String>>,
    tasks: Option<Json<BTreeMap<String, Vec<String>>>>,
    checkpoint_epoch: Option<i32>,
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
                task_type: TaskType::parse(&r.task_type).unwrap_or_default(),
                labels: r.labels.0,
                tasks: r.tasks.map(|t| t.0),
                checkpoint_epoch: r.checkpoint_epoch.and_then(|e| u32::try_from(e).ok()),
                metrics: r.metrics.map(|m| m.0),
            },
            storage_key: r.storage_key,
        }
    }
}

const COLUMNS: &str = "id, job_id, base_model, storage_key, task_type, labels, tasks, \
                       checkpoint_epoch, metrics, created_at";

pub fn storage_key(model_id: &str) -> String {
    // Model ids contain ':'; keep the key a plain path component.
    format!("models/{}", model_id.replace(':', "_"))
}

/// Where a worker publishes the model of its attempt: a worker that lost its lease
/// and removes what it uploaded cannot remove the model of the attempt that owns the
/// job now, which the same model id would otherwise share.
pub fn attempt_storage_key(model_id: &str, attempt: i32) -> String {
    format!("{}-attempt-{attempt}", storage_key(model_id))
}

pub(crate) async fn insert_model<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    model: &NewModel,
    metrics: &JobResult,
) -> Result<bool, StoreError> {
    let metrics = crate::db::readable(metrics, "the model's metrics")?;
    // A model belongs to its job's project.
    let done = sqlx::query(
        "INSERT INTO models (id, job_id, base_model, storage_key, task_type, labels, tasks,
                             checkpoint_epoch, metrics, project_id, bytes)
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, project_id, $10
         FROM fine_tuning_jobs WHERE id = $2
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&model.id)
    .bind(&model.job_id)
    .bind(&model.base_model)
    .bind(&model.storage_key)
    .bind(model.task_type.as_str())
    .bind(Json(&model.labels))
    .bind(model.tasks.as_ref().map(Json))
    .bind(model.checkpoint_epoch.map(|e| e as i32))
    .bind(metrics)
    .bind(i64::try_from(model.bytes).unwrap_or(i64::MAX))
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

impl Db {
    /// Publishes a model outside a job's success (from a checkpoint); `false` when a
    /// model with this id exists already, which is then left as it is.
    pub async fn add_model(
        &self,
        model: &NewModel,
        metrics: &JobResult,
    ) -> Result<bool, StoreError> {
        insert_model(&self.pool, model, metrics).await
    }

    /// The model a job published when it succeeded (not one of its checkpoints').
    pub async fn final_model_of(
        &self,
        project: &ProjectId,
        job_id: &str,
    ) -> Result<StoredModel, StoreError> {
        let row: ModelRow = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM models
             WHERE job_id = $1 AND checkpoint_epoch IS NULL AND project_id = $2
             ORDER BY created_at DESC LIMIT 1"
        ))
        .bind(job_id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.into())
    }

    /// A model of `project`; another project's model is `NotFound`, as a missing one.
    pub async fn get_model(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<StoredModel, StoreError> {
        let row: ModelRow = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM models WHERE id = $1 AND project_id = $2"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.into())
    }

    pub async fn list_models(
        &self,
        project: &ProjectId,
        page: &PageRequest,
    ) -> Result<Vec<ModelObject>, StoreError> {
        let rows: Vec<ModelRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM models
             WHERE project_id = $3
               AND ($1::text IS NULL
                    OR (created_at, id) < (SELECT created_at, id FROM models
                                           WHERE id = $1 AND project_id = $3))
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .bind(project.as_str())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| StoredModel::from(r).object)
            .collect())
    }

    /// Deletes the row; the caller removes the directory afterwards.
    pub async fn delete_model(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<StoredModel, StoreError> {
        let row: ModelRow = sqlx::query_as(&format!(
            "DELETE FROM models WHERE id = $1 AND project_id = $2 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row.into())
    }
}
