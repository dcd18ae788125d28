//! Dataset file metadata.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use hone_domain::dataset::{DatasetFormat, DatasetSummary, Modality, TaskType};
use hone_domain::resources::FileObject;
use hone_domain::{FileId, PageRequest, ProjectId};
use sqlx::types::Json;

use crate::idempotency::{Idempotency, Once};
use crate::{Db, StoreError};

#[derive(sqlx::FromRow)]
struct FileRow {
    id: String,
    filename: String,
    purpose: String,
    format: String,
    bytes: i64,
    sha256: String,
    examples: i64,
    label_counts: Json<BTreeMap<String, u64>>,
    task_type: String,
    modality: String,
    text_pairs: bool,
    task_label_counts: Json<BTreeMap<String, BTreeMap<String, u64>>>,
    storage_key: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// A stored file: what the API shows plus where its bytes are.
#[derive(Clone, Debug)]
pub struct StoredFile {
    pub object: FileObject,
    pub storage_key: String,
}

impl TryFrom<FileRow> for StoredFile {
    type Error = StoreError;

    fn try_from(r: FileRow) -> Result<Self, StoreError> {
        let format = DatasetFormat::parse(&r.format)
            .ok_or_else(|| StoreError::Corrupt(format!("file {} has format {}", r.id, r.format)))?;
        let task_type = TaskType::parse(&r.task_type).ok_or_else(|| {
            StoreError::Corrupt(format!("file {} has task type {}", r.id, r.task_type))
        })?;
        let modality = Modality::parse(&r.modality).ok_or_else(|| {
            StoreError::Corrupt(format!("file {} has modality {}", r.id, r.modality))
        })?;
        Ok(StoredFile {
            object: FileObject {
                id: r.id,
                object: "file",
                bytes: r.bytes,
                created_at: r.created_at.timestamp(),
                filename: r.filename,
                purpose: r.purpose,
                format,
                sha256: r.sha256,
                examples: r.examples,
                label_counts: r.label_counts.0,
                task_type,
                modality,
                text_pairs: r.text_pairs,
                task_label_counts: r.task_label_counts.0,
                status: "processed",
                expires_at: r.expires_at.map(|t| t.timestamp()),
            },
            storage_key: r.storage_key,
        })
    }
}

const COLUMNS: &str = "id, filename, purpose, format, bytes, sha256, examples, label_counts, \
     task_type, modality, text_pairs, task_label_counts, storage_key, created_at, expires_at";

/// A file [`Db::expire_files`] deleted: where its bytes are, and whose and what they
/// were (the feature cache drops what was computed from them).
#[derive(Clone, Debug)]
pub struct ExpiredFile {
    pub storage_key: String,
    pub project: ProjectId,
    pub sha256: String,
}

/// What an upload may take: the project's stored-bytes limit, and when it expires.
#[derive(Clone, Copy, Debug, Default)]
pub struct UploadLimits {
    pub max_stored_bytes: Option<i64>,
    /// Deleted this long after it is stored (`expires_after`).
    pub expires_after: Option<std::time::Duration>,
}

pub fn storage_key(id: &FileId) -> String {
    format!("files/{id}")
}

/// The purpose of the files hone writes itself: a job's per-step metrics.
pub const RESULTS_PURPOSE: &str = "fine-tune-results";

/// A job's results file (CSV of its metrics), already in the artifact store under
/// [`storage_key`] of `id`.
#[derive(Clone, Debug)]
pub struct ResultsFile {
    pub id: FileId,
    pub filename: String,
    pub bytes: i64,
    pub sha256: String,
    /// Data rows of the CSV.
    pub rows: i64,
}

/// Records `file` as a file of `job_id`'s project, in the transaction that marks the
/// job succeeded. It is a CSV with no labels, so the dataset columns say so.
pub(crate) async fn insert_results_file(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job_id: &str,
    file: &ResultsFile,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO files (id, filename, purpose, format, bytes, sha256, examples, label_counts,
                            storage_key, project_id)
         SELECT $1, $2, $3, 'csv', $4, $5, $6, '{}', $7, project_id
         FROM fine_tuning_jobs WHERE id = $8",
    )
    .bind(file.id.as_str())
    .bind(&file.filename)
    .bind(RESULTS_PURPOSE)
    .bind(file.bytes)
    .bind(&file.sha256)
    .bind(file.rows)
    .bind(storage_key(&file.id))
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Db {
    pub async fn insert_file(
        &self,
        project: &ProjectId,
        id: &FileId,
        filename: &str,
        purpose: &str,
        summary: &DatasetSummary,
    ) -> Result<StoredFile, StoreError> {
        match self
            .insert_file_once(
                project,
                id,
                filename,
                purpose,
                summary,
                &UploadLimits::default(),
                None,
            )
            .await?
        {
            Once::Created(file) => Ok(file),
            _ => Err(StoreError::Corrupt(
                "a file without a key was replayed".into(),
            )),
        }
    }

    /// [`Db::insert_file`] made idempotent by `key` (see [`Db::create_job_once`]).
    /// With `max_stored_bytes`, the project's files including this one must fit in it:
    /// checked with the project locked, in the transaction that adds the row.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_file_once(
        &self,
        project: &ProjectId,
        id: &FileId,
        filename: &str,
        purpose: &str,
        summary: &DatasetSummary,
        limits: &UploadLimits,
        key: Option<&Idempotency>,
    ) -> Result<Once<StoredFile>, StoreError> {
        let max_stored_bytes = limits.max_stored_bytes;
        let mut tx = self.pool.begin().await?;
        if let Some(key) = key {
            if let Some(earlier) = crate::idempotency::claim(&mut tx, project, key).await? {
                return Ok(earlier);
            }
        }
        let bytes = i64::try_from(summary.bytes).unwrap_or(i64::MAX);
        if let Some(limit) = max_stored_bytes {
            crate::projects::lock(&mut tx, project).await?;
            // Files, checkpoints and published models all count.
            let used = crate::usage::usage(&mut *tx, project).await?.stored_bytes();
            let used = i64::try_from(used).unwrap_or(i64::MAX);
            if used.saturating_add(bytes) > limit {
                return Err(StoreError::Quota(crate::Quota::StoredBytes { limit, used }));
            }
        }
        let row: FileRow = sqlx::query_as(&format!(
            "INSERT INTO files (id, filename, purpose, format, bytes, sha256, examples, label_counts,
                               task_type, text_pairs, task_label_counts, storage_key, modality, project_id,
                               expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
                     now() + $15 * interval '1 second') RETURNING {COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(filename)
        .bind(purpose)
        .bind(summary.format.as_str())
        .bind(bytes)
        .bind(&summary.sha256)
        .bind(i64::try_from(summary.examples).unwrap_or(i64::MAX))
        .bind(Json(&summary.label_counts))
        .bind(summary.task_type.as_str())
        .bind(summary.text_pairs)
        .bind(Json(&summary.task_label_counts))
        .bind(storage_key(id))
        .bind(summary.modality.as_str())
        .bind(project.as_str())
        .bind(limits.expires_after.map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)))
        .fetch_one(&mut *tx)
        .await?;
        let file: StoredFile = row.try_into()?;
        if let Some(key) = key {
            crate::idempotency::record(&mut tx, project, key, &file.object).await?;
        }
        tx.commit().await?;
        Ok(Once::Created(file))
    }

    /// A file of `project`; another project's file is `NotFound`, as a missing one.
    pub async fn get_file(&self, project: &ProjectId, id: &str) -> Result<StoredFile, StoreError> {
        let row: FileRow = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM files WHERE id = $1 AND project_id = $2"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// A file whatever its project, for the worker: the job it trains named it, and the
    /// job was checked against its project when it was created.
    pub async fn get_file_of_job(&self, id: &str) -> Result<StoredFile, StoreError> {
        let row: FileRow = sqlx::query_as(&format!("SELECT {COLUMNS} FROM files WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        row.try_into()
    }

    /// Newest first; `after` is the id of the last file of the previous page; with
    /// `purpose`, only files of that purpose.
    pub async fn list_files(
        &self,
        project: &ProjectId,
        page: &PageRequest,
        purpose: Option<&str>,
    ) -> Result<Vec<FileObject>, StoreError> {
        let rows: Vec<FileRow> = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM files
             WHERE project_id = $3
               AND ($1::text IS NULL
                    OR (created_at, id) < (SELECT created_at, id FROM files
                                           WHERE id = $1 AND project_id = $3))
               AND ($4::text IS NULL OR purpose = $4)
             ORDER BY created_at DESC, id DESC LIMIT $2"
        ))
        .bind(page.after.as_deref())
        .bind(page.limit + 1)
        .bind(project.as_str())
        .bind(purpose)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|r| StoredFile::try_from(r).map(|f| f.object))
            .collect()
    }

    /// Deletes the row unless a job that has not finished still needs the file; the
    /// caller removes the bytes after this succeeded.
    /// Deletes the files past their `expires_at` that no unfinished job uses; their
    /// storage keys, for the caller to remove (rows first: a removal that fails leaves
    /// an object without a row, which the orphan sweep takes).
    pub async fn expire_files(&self) -> Result<Vec<ExpiredFile>, StoreError> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "DELETE FROM files f
             WHERE f.expires_at <= now()
               AND NOT EXISTS (
                   SELECT 1 FROM fine_tuning_jobs j
                   WHERE (j.training_file = f.id OR j.validation_file = f.id)
                     AND j.status IN ('validating_files', 'queued', 'running', 'paused'))
             RETURNING f.storage_key, f.project_id, f.sha256",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(storage_key, project, sha256)| {
                Ok(ExpiredFile {
                    storage_key,
                    project: ProjectId::parse(&project)
                        .ok_or_else(|| StoreError::Corrupt(format!("project id {project:?}")))?,
                    sha256,
                })
            })
            .collect()
    }

    pub async fn delete_file(
        &self,
        project: &ProjectId,
        id: &str,
    ) -> Result<StoredFile, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: FileRow = sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM files WHERE id = $1 AND project_id = $2 FOR UPDATE"
        ))
        .bind(id)
        .bind(project.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let user: Option<String> = sqlx::query_scalar(
            "SELECT id FROM fine_tuning_jobs
             WHERE (training_file = $1 OR validation_file = $1)
               AND status IN ('validating_files', 'queued', 'running', 'paused')
             LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(job) = user {
            return Err(StoreError::Conflict(format!(
                "file {id} is used by job {job}, which has not finished"
            )));
        }
        sqlx::query("DELETE FROM files WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        row.try_into()
    }
}
