//! `hone files upload|list`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use reqwest::multipart::{Form, Part};
use reqwest::Method;
use serde_json::Value;

use crate::client::{json_body, Client};
use crate::error::CliError;
use crate::output::{self, Column};

#[derive(Subcommand)]
pub enum FilesCommand {
    /// Upload a dataset (JSONL, CSV, or a zip of class folders); prints the file object
    /// with its example and label counts. The server checks it as it streams in.
    Upload {
        path: PathBuf,
        /// `fine-tune`, the only purpose hone knows.
        #[arg(long, default_value = "fine-tune")]
        purpose: String,
        /// `jsonl`, `csv` or `zip`; by default the server reads the file name's
        /// extension.
        #[arg(long)]
        format: Option<String>,
        /// `single_label`, `multi_label` or `multi_task`; by default inferred from the
        /// first line.
        #[arg(long)]
        task_type: Option<String>,
        /// Print only the file's id (for `FILE=$(hone files upload … -q)`).
        #[arg(long, short)]
        quiet: bool,
    },
    /// List uploaded files, newest first.
    List(output::ListArgs),
}

pub async fn run(client: &Client, command: FilesCommand) -> Result<ExitCode, CliError> {
    match command {
        FilesCommand::Upload {
            path,
            purpose,
            format,
            task_type,
            quiet,
        } => {
            let file = upload(client, &path, &purpose, format, task_type).await?;
            if quiet {
                output::line(&output::text(&file, "id"))?;
            } else {
                output::object(&file)?;
            }
        }
        FilesCommand::List(args) => {
            let page: Value = client.get("/v1/files", &args.query()).await?;
            output::list(
                &page,
                args.json,
                &[
                    Column::Text("ID", "id"),
                    Column::Text("FILENAME", "filename"),
                    Column::Text("EXAMPLES", "examples"),
                    Column::Text("TASK", "task_type"),
                    Column::Time("CREATED", "created_at"),
                ],
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Streams the file from disk into the multipart form (no copy in memory); the form
/// fields come before the file, as the server reads them first.
async fn upload(
    client: &Client,
    path: &std::path::Path,
    purpose: &str,
    format: Option<String>,
    task_type: Option<String>,
) -> Result<Value, CliError> {
    let shown = path.display().to_string();
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| CliError::io(&shown, e))?;
    let bytes = file
        .metadata()
        .await
        .map_err(|e| CliError::io(&shown, e))?
        .len();
    let name = path
        .file_name()
        .map_or_else(|| "upload".to_owned(), |n| n.to_string_lossy().into_owned());
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
    let mut form = Form::new().text("purpose", purpose.to_owned());
    if let Some(format) = format {
        form = form.text("format", format);
    }
    if let Some(task_type) = task_type {
        form = form.text("task_type", task_type);
    }
    let form = form.part(
        "file",
        Part::stream_with_length(body, bytes).file_name(name),
    );
    let response = client
        .send(client.request(Method::POST, "/v1/files").multipart(form))
        .await?;
    json_body(response).await
}
