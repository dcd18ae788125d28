//! `GET /v1/models/{model}/content`: a fine-tuned model to take away, as a `.tar.gz` of
//! its directory with a README that loads it in Python ([`hone_serving::export`]).
//!
//! The archive is written on a blocking thread into a bounded channel that the response
//! body reads, so a download holds a few chunks in memory whatever the model's size, and
//! a slow client slows the writer instead of piling up bytes; a client that goes away
//! closes the channel and the writer stops at its next chunk.

use std::io::{self, Write};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hone_serving::export::Archive;
use hone_store::StoreError;
use tokio::sync::mpsc;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::AppState;

/// Bytes per chunk of the response body, and chunks buffered between the writer and
/// the connection.
const CHUNK_BYTES: usize = 64 * 1024;
const CHUNKS_IN_FLIGHT: usize = 4;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(model_content))
}

/// Download a fine-tuned model: a `.tar.gz` of its directory that works without hone.
///
/// One folder (the model's id with `:` made `-`) holding the weights
/// (`model.safetensors`: the encoder or backbone under their usual names, the head
/// under `head.`), `config.json`, the tokenizer's files (text models),
/// `hone_model.json` (labels in the head's order, pooling, head), `manifest.json`
/// (the job it came from), `preprocessing.json`, and a `README.md` whose Python
/// snippet loads it — `transformers`' `AutoModel` and `AutoTokenizer` plus the pooling
/// and head for a text model, plain PyTorch for an image model — and gives the
/// probabilities predict gives. The archive streams as it is written, so its length
/// is not known in advance.
#[utoipa::path(get, path = "/v1/models/{model}/content", tag = "models",
    params(("model" = String, Path, description = "The model's id, `ft:...`")),
    responses(
        (status = 200, description = "The model as a gzip-compressed tar archive; \
            `Content-Disposition` names it `<model>.tar.gz`",
            content((Vec<u8> = "application/gzip"))),
        (status = 404, description = "No such model", body = ErrorResponse)))]
async fn model_content(
    State(state): State<AppState>,
    project: Project,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let model = state
        .db
        .get_model(&project.id, &id)
        .await
        .map_err(|e| match e {
            StoreError::NotFound => ApiError::not_found("model", &id),
            other => other.into(),
        })?;
    // Held until the archive is written: a cached copy is not evicted under the writer.
    let dir = state.artifacts.local_dir(&model.storage_key).await?;
    let model_id = id.clone();
    let (archive, dir) = tokio::task::spawn_blocking(move || {
        let root: &std::path::Path = &dir;
        (Archive::prepare(root, &model_id), dir)
    })
    .await
    .map_err(|e| ApiError::internal("model archive", &e))?;
    let archive = archive.map_err(|e| ApiError::internal("model archive", &e))?;

    let (tx, mut rx) = mpsc::channel::<io::Result<Bytes>>(CHUNKS_IN_FLIGHT);
    let span = tracing::info_span!("model_content", model = %id);
    tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let _pinned = dir;
        let out = io::BufWriter::with_capacity(CHUNK_BYTES, ChannelWriter(tx.clone()));
        if let Err(e) = archive.write(out) {
            if tx.is_closed() {
                tracing::debug!("model download ended by the client");
            } else {
                tracing::error!(error = %e, "model archive failed while streaming");
                // The body ends in an error, so the client sees a cut-off download
                // rather than a short archive that looks whole.
                let _ = tx.blocking_send(Err(e));
            }
        }
    });
    let body = Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    // Ids are made by the server; anything a quoted header value cannot hold is `_`.
    let filename: String = id
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | ':' | '-' => c,
            _ => '_',
        })
        .collect();
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/gzip".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}.tar.gz\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// A `Write` whose every write becomes a chunk of the response body; it waits while
/// the channel is full and fails once the body is dropped.
struct ChannelWriter(mpsc::Sender<io::Result<Bytes>>);

impl Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
