//! What the store's test binaries share: a fresh database per test, and rows to fill it.
#![allow(dead_code)]

use std::collections::BTreeMap;

use hone_domain::dataset::{DatasetFormat, DatasetSummary, TaskType};
use hone_domain::job::{Hyperparameters, Method};
use hone_domain::{FileId, JobId, ProjectId};
use hone_store::jobs::NewJob;
use hone_store::{Db, StoreError};
use sqlx::{Connection, Executor, PgConnection};

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The project the migration made for rows that predate projects.
pub fn p() -> ProjectId {
    ProjectId::parse("proj-00000000000000000000000000000000").expect("the default project")
}

pub struct Fresh {
    pub db: Db,
    name: String,
}

impl Drop for Fresh {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(mut c) = PgConnection::connect(ADMIN_URL).await {
                    let _ = c
                        .execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
                        .await;
                }
            });
        })
        .join();
    }
}

/// A new database, created by `ensure_database` itself and migrated.
pub async fn fresh() -> Fresh {
    let name = format!("hone_store_test_{}", uuid::Uuid::new_v4().simple());
    let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
    hone_store::ensure_database(&url)
        .await
        .expect("create database");
    hone_store::ensure_database(&url)
        .await
        .expect("creating twice is fine");
    let db = hone_store::connect(&url, 16).await.expect("connect");
    hone_store::migrate(&db).await.expect("migrate");
    Fresh { db, name }
}

/// A file of `bytes` bytes in `project`, within `max_stored_bytes` when given.
pub async fn file_in(
    db: &Db,
    project: &ProjectId,
    bytes: u64,
    max_stored_bytes: Option<i64>,
) -> Result<String, StoreError> {
    let id = FileId::generate();
    let summary = summary(bytes);
    db.insert_file_once(
        project,
        &id,
        "f.jsonl",
        "fine-tune",
        &summary,
        &hone_store::files::UploadLimits {
            max_stored_bytes,
            expires_after: None,
        },
        None,
    )
    .await?;
    Ok(id.to_string())
}

/// What an upload of `bytes` bytes with two labels sums up to.
pub fn summary(bytes: u64) -> DatasetSummary {
    DatasetSummary {
        format: DatasetFormat::Jsonl,
        bytes,
        sha256: "00".repeat(32),
        examples: 2,
        task_type: TaskType::Classification,
        modality: Default::default(),
        text_pairs: false,
        label_counts: BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]),
        task_label_counts: BTreeMap::new(),
    }
}

/// A job of `project` on `file`.
pub fn new_job(project: &ProjectId, file: &str, max_attempts: i32) -> NewJob {
    NewJob {
        id: JobId::generate(),
        project: project.clone(),
        base_model: "m".into(),
        training_file: file.into(),
        validation_file: None,
        method: Method::default(),
        hyperparameters: Hyperparameters::default(),
        seed: 1,
        suffix: None,
        metadata: None,
        max_attempts,
    }
}

/// A 10-byte file of the default project.
pub async fn file(db: &Db) -> String {
    file_in(db, &p(), 10, None).await.expect("file")
}

/// A queued job of the default project on `file`; its id.
pub async fn job(db: &Db, file: &str, max_attempts: i32) -> String {
    db.create_job(&new_job(&p(), file, max_attempts))
        .await
        .expect("job")
        .id
}

/// A job's status.
pub async fn status(db: &Db, id: &str) -> hone_domain::job::JobStatus {
    db.get_job(&p(), id).await.expect("job").status
}
