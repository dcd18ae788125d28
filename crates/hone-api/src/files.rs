//! `/v1/files`: datasets are validated while they stream in and written to the
//! artifact store as they arrive; the row is added only once the whole file passed, so
//! a refused or interrupted upload leaves neither a row nor bytes behind. A zip can only
//! be checked whole (its directory is at its end): it is checked from the uncommitted
//! scratch copy, off the async threads, before it is moved into place.

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hone_domain::dataset::{DatasetFormat, DatasetValidator, TaskType};
use hone_domain::resources::FileObject;
use hone_domain::{FileId, Page};
use hone_store::idempotency::Once;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::io::ReaderStream;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{check_upload_room, Project};
use crate::error::{ApiError, ErrorResponse};
use crate::extract::{key_reused, IdempotencyKey};
use crate::layers::nul_in;
use crate::params::ListParams;
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(upload_file, list_files))
        .routes(routes!(get_file, delete_file))
        .routes(routes!(file_content))
}

/// The multipart form of an upload (documentation only: the handler streams it).
#[allow(dead_code)]
#[derive(ToSchema)]
struct UploadForm {
    /// The dataset: JSONL with one object per line (`.jsonl`): `{"text", "label"}`
    /// (single-label), `{"text", "labels": [...]}` (multi-label) or `{"text",
    /// "labels": {"task": "label"}}` (multi-task), each optionally with a `text_pair`;
    /// or single-label CSV with a header that has `text` and `label` columns (`.csv`).
    /// Images: JSONL whose objects have `"image"` (base64 PNG or JPEG, optionally as a
    /// `data:image/png;base64,` URL) instead of `text`, with the same targets; or a zip
    /// (`.zip`) with one folder per class, `<class>/<image>.png|jpg`, optionally inside
    /// one top folder (single-label). Every image is decoded and its size checked.
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// Must be `fine-tune`.
    #[schema(example = "fine-tune")]
    purpose: String,
    /// `jsonl`, `csv` or `zip`; by default taken from the file name's extension.
    format: Option<DatasetFormat>,
    /// What the file must hold; by default inferred from its first line (every line
    /// must then agree). Send it before `file`.
    task_type: Option<TaskType>,
    /// With `expires_after[seconds]`, as OpenAI's files API: the file is deleted that
    /// long after it is stored. Must be `created_at`.
    #[schema(rename = "expires_after[anchor]", example = "created_at")]
    expires_after_anchor: Option<String>,
    /// 3600 (an hour) to 2592000 (30 days). A file still used by an unfinished job is
    /// kept until the job ends.
    #[schema(
        rename = "expires_after[seconds]",
        example = 86400,
        minimum = 3600,
        maximum = 2592000
    )]
    expires_after_seconds: Option<u64>,
}

#[derive(Serialize, ToSchema)]
struct DeletedFile {
    id: String,
    #[schema(example = "file")]
    object: &'static str,
    deleted: bool,
}

/// Upload a dataset.
///
/// Text classification data as JSONL — single-label (`{"text", "label"}`), multi-label
/// (`{"text", "labels": [...]}`) or multi-task (`{"text", "labels": {"task": "label"}}`),
/// optionally with a `text_pair` — or single-label CSV (`text,label` header). Image
/// data as JSONL with a base64 `image` instead of `text`, or as a zip of class folders
/// (`<class>/<image>`). The file is checked while it streams in (a zip once it is
/// whole): a bad file is refused with the line or zip entry and the field at fault, and
/// nothing of it is kept.
#[utoipa::path(post, path = "/v1/files", tag = "files",
    params(("Idempotency-Key" = Option<String>, Header,
        description = "Makes retries safe: the same key with the same file and form returns the first response; with another, 409")),
    request_body(content = UploadForm, content_type = "multipart/form-data"),
    responses(
        (status = 200, description = "The stored file", body = FileObject),
        (status = 400, description = "Invalid file or form; `message` names the line or zip entry", body = ErrorResponse,
            example = json!({"error": {"message": "line 3: field `label`: missing", "type": "invalid_request_error", "param": "file", "code": "missing_field"}})),
        (status = 409, description = "The Idempotency-Key was used with another upload", body = ErrorResponse),
        (status = 413, description = "Over the upload size limit, or the project's storage limit (`max_stored_bytes`)", body = ErrorResponse),
        (status = 429, description = "As many uploads in progress as the server or the project may have; retry after `Retry-After` seconds", body = ErrorResponse)))]
async fn upload_file(
    State(state): State<AppState>,
    project: Project,
    headers: axum::http::HeaderMap,
    idempotency: IdempotencyKey,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut multipart =
        multipart.map_err(|e| ApiError::new(e.status(), "invalid_multipart", e.body_text()))?;
    // A place before a byte is read, held until the upload is answered.
    let _place = upload_place(&state, &project)?;
    check_upload_room(&state, &project, &headers).await?;
    let id = FileId::generate();
    let mut form = SmallFields::default();
    let mut stored: Option<(String, hone_domain::dataset::DatasetSummary)> = None;
    let key = hone_store::files::storage_key(&id);

    loop {
        let mut field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return discard(&state, &key, stored.is_some(), e.into()).await,
        };
        if let Some(name) = SmallFields::NAMES
            .iter()
            .find(|n| field.name() == Some(**n))
        {
            match small_field(&mut field, name).await {
                Ok(value) => form.set(name, value),
                Err(e) => return discard(&state, &key, stored.is_some(), e).await,
            }
            continue;
        }
        match field.name() {
            Some("file") => {
                if stored.is_some() {
                    let error =
                        ApiError::invalid("file", "duplicate_field", "send one `file` per upload");
                    return discard(&state, &key, true, error).await;
                }
                stored = Some(
                    store_file_field(
                        &state,
                        &key,
                        &mut field,
                        form.format.as_deref(),
                        form.task_type.as_deref(),
                    )
                    .await?,
                );
            }
            Some(other) => {
                let other = other.to_owned();
                return discard(&state, &key, stored.is_some(), ApiError::invalid(
                    other.clone(),
                    "unknown_field",
                    format!("unknown form field {other:?}; expected `file`, `purpose` and optionally `format`, `task_type` and `expires_after[anchor]` with `expires_after[seconds]`"),
                ))
                .await;
            }
            None => {}
        }
    }
    let Some((filename, summary)) = stored else {
        return Err(ApiError::invalid(
            "file",
            "missing_field",
            "the form has no `file` field",
        ));
    };
    let expires_after = match form.expires_after() {
        Ok(expires_after) => expires_after,
        Err(e) => return discard(&state, &key, true, e).await,
    };
    match form.purpose.as_deref() {
        Some("fine-tune") => {}
        Some(p) => {
            return discard(
                &state,
                &key,
                true,
                ApiError::invalid(
                    "purpose",
                    "invalid_value",
                    format!("purpose {p:?} is not supported; use `fine-tune`"),
                ),
            )
            .await
        }
        None => {
            return discard(
                &state,
                &key,
                true,
                ApiError::invalid(
                    "purpose",
                    "missing_field",
                    "the form has no `purpose` field",
                ),
            )
            .await
        }
    }
    // What the upload asked for: the same key with the same file and form replays.
    let request = [
        "fine-tune",
        form.format.as_deref().unwrap_or(""),
        form.task_type.as_deref().unwrap_or(""),
        &filename,
        &summary.sha256,
        &expires_after.map_or(String::new(), |d| d.as_secs().to_string()),
    ]
    .join("\0");
    let once = idempotency.for_request(
        "POST /v1/files",
        hex::encode(Sha256::digest(request.as_bytes())),
        state.settings.idempotency_ttl,
    );
    match state
        .db
        .insert_file_once(
            &project.id,
            &id,
            &filename,
            "fine-tune",
            &summary,
            &hone_store::files::UploadLimits {
                max_stored_bytes: Some(project.max_stored_bytes),
                expires_after,
            },
            once.as_ref(),
        )
        .await
    {
        Ok(Once::Created(file)) => {
            tracing::info!(file.id = %id, bytes = summary.bytes, examples = summary.examples, "stored dataset");
            Ok(Json(
                serde_json::to_value(file.object).map_err(|e| ApiError::internal("file", &e))?,
            ))
        }
        // A retry: its bytes are the first upload's, which is kept.
        Ok(Once::Replayed(first)) => {
            remove_upload(&state, &key).await;
            Ok(Json(first))
        }
        Ok(Once::Mismatch) => discard(&state, &key, true, key_reused()).await,
        Err(e) => discard(&state, &key, true, e.into()).await,
    }
}

/// The most bytes of a small form field (`purpose`, `format`, `task_type`): their
/// valid values are a few bytes, and anything longer is refused without being held.
const MAX_FORM_FIELD_BYTES: usize = 256;

/// A small form field's text, read up to [`MAX_FORM_FIELD_BYTES`].
/// The upload form's small fields (all but `file`), each at most
/// [`MAX_FORM_FIELD_BYTES`].
#[derive(Default)]
struct SmallFields {
    purpose: Option<String>,
    format: Option<String>,
    task_type: Option<String>,
    expires_anchor: Option<String>,
    expires_seconds: Option<String>,
}

/// OpenAI's bounds on `expires_after[seconds]`: an hour to 30 days.
const EXPIRES_AFTER_SECONDS: std::ops::RangeInclusive<u64> = 3_600..=2_592_000;

impl SmallFields {
    const NAMES: [&'static str; 5] = [
        "purpose",
        "format",
        "task_type",
        "expires_after[anchor]",
        "expires_after[seconds]",
    ];

    fn set(&mut self, name: &str, value: String) {
        let slot = match name {
            "purpose" => &mut self.purpose,
            "format" => &mut self.format,
            "task_type" => &mut self.task_type,
            "expires_after[anchor]" => &mut self.expires_anchor,
            _ => &mut self.expires_seconds,
        };
        *slot = Some(value);
    }

    /// `expires_after`, as OpenAI's files API takes it: the anchor `created_at` and
    /// 3,600 to 2,592,000 seconds; both or neither.
    fn expires_after(&self) -> Result<Option<std::time::Duration>, ApiError> {
        let (anchor, seconds) = match (&self.expires_anchor, &self.expires_seconds) {
            (None, None) => return Ok(None),
            (Some(anchor), Some(seconds)) => (anchor, seconds),
            (None, Some(_)) => {
                return Err(ApiError::invalid(
                    "expires_after[anchor]",
                    "missing_field",
                    "expires_after needs `expires_after[anchor]` (created_at) with its seconds",
                ))
            }
            (Some(_), None) => {
                return Err(ApiError::invalid(
                    "expires_after[seconds]",
                    "missing_field",
                    "expires_after needs `expires_after[seconds]` with its anchor",
                ))
            }
        };
        if anchor != "created_at" {
            return Err(ApiError::invalid(
                "expires_after[anchor]",
                "invalid_value",
                format!("expires_after[anchor] must be created_at, not {anchor:?}"),
            ));
        }
        match seconds.parse::<u64>() {
            Ok(s) if EXPIRES_AFTER_SECONDS.contains(&s) => {
                Ok(Some(std::time::Duration::from_secs(s)))
            }
            _ => Err(ApiError::invalid(
                "expires_after[seconds]",
                "invalid_value",
                format!(
                    "expires_after[seconds] must be a whole number from {} (an hour) to {} \
                     (30 days), not {seconds:?}",
                    EXPIRES_AFTER_SECONDS.start(),
                    EXPIRES_AFTER_SECONDS.end()
                ),
            )),
        }
    }
}

async fn small_field(
    field: &mut axum::extract::multipart::Field<'_>,
    name: &'static str,
) -> Result<String, ApiError> {
    let mut bytes = Vec::new();
    while let Some(chunk) = field.chunk().await? {
        if bytes.len() + chunk.len() > MAX_FORM_FIELD_BYTES {
            return Err(ApiError::invalid(
                name,
                "field_too_long",
                format!("`{name}` is at most {MAX_FORM_FIELD_BYTES} bytes"),
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    let text = String::from_utf8(bytes)
        .map_err(|_| ApiError::invalid(name, "invalid_utf8", format!("`{name}` is not UTF-8")))?;
    if text.contains('\0') {
        return Err(nul_in(name));
    }
    Ok(text)
}

/// Streams the form's `file` field into the artifact store under `key`, checking it as
/// it arrives (a zip once it is whole), and commits it only when it is valid: its name
/// and summary. `format` and `task_type` are the form's fields sent before it.
async fn store_file_field(
    state: &AppState,
    key: &str,
    field: &mut axum::extract::multipart::Field<'_>,
    format_field: Option<&str>,
    task_type_field: Option<&str>,
) -> Result<(String, hone_domain::dataset::DatasetSummary), ApiError> {
    let filename = field.file_name().unwrap_or("upload").to_owned();
    if filename.contains('\0') {
        return Err(ApiError::invalid(
            "file",
            "nul_character",
            "the file's name contains a NUL character (\\u0000)",
        ));
    }
    let format = match format_field {
        Some(f) => DatasetFormat::parse(f).ok_or_else(|| {
            ApiError::invalid("format", "invalid_value", "format must be `jsonl`, `csv` or `zip`")
        })?,
        None => DatasetFormat::from_filename(&filename).ok_or_else(|| {
            ApiError::invalid(
                "file",
                "unknown_format",
                format!("cannot tell the format of {filename:?}: name it .jsonl, .csv or .zip, or send a `format` field before the file"),
            )
        })?,
    };
    let mut validator = DatasetValidator::new(format, state.settings.dataset_limits.clone());
    if let Some(raw) = task_type_field {
        let task_type = TaskType::parse(raw).ok_or_else(|| {
            ApiError::invalid(
                "task_type",
                "invalid_value",
                "task_type must be `classification`, `multi_label` or `multi_task`",
            )
        })?;
        validator = validator.expecting(task_type);
    }
    let mut object = state.artifacts.create(key).await?;
    while let Some(chunk) = field.chunk().await? {
        let checked = chunk.clone(); // a reference count, not a copy
        validator = off_runtime(move || {
            let mut validator = validator;
            validator.push(&checked).map(|()| validator)
        })
        .await?;
        object.write(&chunk).await?;
    }
    let summary = if format.is_archive() {
        let stored = object.read_back().await?;
        off_runtime(move || validator.finish_archive(stored)).await?
    } else {
        off_runtime(move || validator.finish()).await?
    };
    object.commit().await?;
    Ok((filename, summary))
}

/// Runs a step of validation on the blocking pool: checking a chunk can mean decoding
/// images, which must not hold an async worker thread (every other request waits on
/// those). Each upload has at most one step running, so the uploads' cap
/// (`max_concurrent_uploads`) bounds the threads validation takes.
async fn off_runtime<T: Send + 'static>(
    step: impl FnOnce() -> Result<T, hone_domain::dataset::DatasetError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(step)
        .await
        .map_err(|e| ApiError::internal("checking the upload", &e))?
        .map_err(ApiError::from)
}

/// A place among the uploads being received, or 429: in all and per project, so that
/// one project's uploads cannot take every validation thread.
fn upload_place(state: &AppState, project: &Project) -> Result<crate::slots::Slot, ApiError> {
    state.uploads.take(project.id.as_str()).map_err(|full| {
        let message = match full {
            crate::slots::Full::Server => "this server is receiving as many uploads as it can",
            crate::slots::Full::Project => "this project has as many uploads in progress as it may",
        };
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_uploads",
            format!("{message}; retry when one has finished"),
        );
        e.retry_after = Some(2);
        e
    })
}

/// Removes the bytes of an upload that was refused after they were committed.
async fn discard<T>(
    state: &AppState,
    key: &str,
    committed: bool,
    error: ApiError,
) -> Result<T, ApiError> {
    if committed {
        remove_upload(state, key).await;
    }
    Err(error)
}

async fn remove_upload(state: &AppState, key: &str) {
    if let Err(e) = state.artifacts.delete(key).await {
        tracing::error!(error = %e, key, "could not remove a refused upload");
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListFilesParams {
    /// Items per page, 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// The id of the last file of the previous page.
    pub after: Option<String>,
    /// Only files of this purpose: `fine-tune` (uploads) or `fine-tune-results` (the
    /// metrics files of succeeded jobs).
    #[param(example = "fine-tune")]
    pub purpose: Option<String>,
}

/// List files, newest first.
///
/// Any query parameter besides these is refused.
#[utoipa::path(get, path = "/v1/files", tag = "files", params(ListFilesParams),
    responses((status = 200, description = "A page of files", body = inline(Page<FileObject>)),
        (status = 400, description = "Invalid query", body = ErrorResponse)))]
async fn list_files(
    State(state): State<AppState>,
    project: Project,
    query: Result<Query<ListFilesParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Page<FileObject>>, ApiError> {
    let q = query?.0;
    let page = ListParams {
        limit: q.limit,
        after: q.after,
    }
    .page()?;
    let rows = state
        .db
        .list_files(&project.id, &page, q.purpose.as_deref())
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |f| f.id.clone())))
}

fn file_id(raw: &str) -> Result<FileId, ApiError> {
    FileId::parse(raw).ok_or_else(|| ApiError::not_found("file", raw))
}

async fn find(
    state: &AppState,
    project: &Project,
    raw: &str,
) -> Result<hone_store::files::StoredFile, ApiError> {
    let id = file_id(raw)?;
    state
        .db
        .get_file(&project.id, id.as_str())
        .await
        .map_err(|e| match e {
            hone_store::StoreError::NotFound => ApiError::not_found("file", raw),
            other => other.into(),
        })
}

/// Get a file's metadata.
#[utoipa::path(get, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The file", body = FileObject),
        (status = 404, description = "No such file", body = ErrorResponse)))]
async fn get_file(
    State(state): State<AppState>,
    project: Project,
    Path(file_id): Path<String>,
) -> Result<Json<FileObject>, ApiError> {
    Ok(Json(find(&state, &project, &file_id).await?.object))
}

/// Download a file's content, as uploaded.
#[utoipa::path(get, path = "/v1/files/{file_id}/content", tag = "files",
    params(("file_id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "The bytes as uploaded, typed by the file's format",
            content(
                (Vec<u8> = "application/jsonl"),
                (Vec<u8> = "text/csv"),
                (Vec<u8> = "application/zip"))),
        (status = 404, description = "No such file", body = ErrorResponse)))]
async fn file_content(
    State(state): State<AppState>,
    project: Project,
    Path(file_id): Path<String>,
) -> Result<Response, ApiError> {
    let file = find(&state, &project, &file_id).await?;
    let reader = state.artifacts.open(&file.storage_key).await?;
    let content_type = match file.object.format {
        DatasetFormat::Jsonl => "application/jsonl",
        DatasetFormat::Csv => "text/csv",
        DatasetFormat::Zip => "application/zip",
    };
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (header::CONTENT_LENGTH, file.object.bytes.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!(
                    "attachment; filename=\"{}\"",
                    file.object.filename.replace(['"', '\\', '\r', '\n'], "_")
                ),
            ),
        ],
        Body::from_stream(ReaderStream::new(reader)),
    )
        .into_response())
}

/// Delete a file. Refused (409) while a job that has not finished uses it.
#[utoipa::path(delete, path = "/v1/files/{file_id}", tag = "files",
    params(("file_id" = String, Path, description = "The file's id")),
    responses(
        (status = 200, description = "Deleted", body = DeletedFile),
        (status = 404, description = "No such file", body = ErrorResponse),
        (status = 409, description = "A queued, running or paused job uses the file", body = ErrorResponse)))]
async fn delete_file(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
) -> Result<Json<DeletedFile>, ApiError> {
    let id = file_id(&raw)?;
    let file = state
        .db
        .delete_file(&project.id, id.as_str())
        .await
        .map_err(|e| match e {
            hone_store::StoreError::NotFound => ApiError::not_found("file", &raw),
            other => other.into(),
        })?;
    let dropped = hone_store::feature_cache::drop_for_file(
        &state.db,
        &state.artifacts,
        &project.id,
        &file.object.sha256,
    );
    if let Err(e) = dropped.await {
        tracing::warn!(error = %e, file.id = %id, "cannot drop the file's cached features");
    }
    if let Err(e) = state.artifacts.delete(&file.storage_key).await {
        tracing::error!(error = %e, file.id = %id, "file row deleted but its bytes could not be removed");
    }
    Ok(Json(DeletedFile {
        id: file.object.id,
        object: "file",
        deleted: true,
    }))
}
