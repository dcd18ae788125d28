//! `hone models list|download`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use futures::StreamExt;
use reqwest::Method;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::client::Client;
use crate::error::{chain, CliError};
use crate::jobs::escape_segment;
use crate::output::{self, Column};

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// List the base models (owned by `system`) and this project's fine-tuned models.
    List(output::ListArgs),
    /// Download a fine-tuned model as a .tar.gz that loads without hone (its README
    /// says how); prints the path written.
    Download {
        model: String,
        /// Where to write it (`-` for stdout); by default `<model>.tar.gz` with each
        /// `:` made `-`, in the current directory.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub async fn run(client: &Client, command: ModelsCommand) -> Result<ExitCode, CliError> {
    match command {
        ModelsCommand::List(args) => {
            let page: Value = client.get("/v1/models", &args.query()).await?;
            output::list(
                &page,
                args.json,
                &[
                    Column::Text("ID", "id"),
                    Column::Text("OWNED BY", "owned_by"),
                    Column::Time("CREATED", "created"),
                ],
            )?;
        }
        ModelsCommand::Download { model, output } => {
            let target = output.unwrap_or_else(|| default_name(&model));
            download(client, &model, &target).await?;
            if target != Path::new("-") {
                output::line(&target.display().to_string())?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn default_name(model: &str) -> PathBuf {
    let safe: String = model
        .chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' | '-' => c,
            _ => '-',
        })
        .collect();
    PathBuf::from(format!("{}.tar.gz", safe.trim_start_matches('.')))
}

/// Streams the archive to disk as it comes: into `<target>.part`, renamed to `target`
/// only once whole, so an interrupted download never leaves a file that looks done.
async fn download(client: &Client, model: &str, target: &Path) -> Result<(), CliError> {
    let path = format!("/v1/models/{}/content", escape_segment(model));
    let response = client.send(client.request(Method::GET, &path)).await?;
    let url = response.url().to_string();
    let mut body = response.bytes_stream();
    if target == Path::new("-") {
        let mut out = tokio::io::stdout();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::Interrupted {
                url: url.clone(),
                cause: chain(&e),
            })?;
            out.write_all(&chunk)
                .await
                .map_err(|e| CliError::io("stdout", e))?;
        }
        return out.flush().await.map_err(|e| CliError::io("stdout", e));
    }
    let mut part = target.as_os_str().to_owned();
    part.push(".part");
    let part = PathBuf::from(part);
    let shown = part.display().to_string();
    let written = async {
        let mut file = tokio::fs::File::create(&part)
            .await
            .map_err(|e| CliError::io(&shown, e))?;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| CliError::Interrupted {
                url: url.clone(),
                cause: chain(&e),
            })?;
            file.write_all(&chunk)
                .await
                .map_err(|e| CliError::io(&shown, e))?;
        }
        file.sync_all().await.map_err(|e| CliError::io(&shown, e))
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&part).await;
        return Err(e);
    }
    tokio::fs::rename(&part, target)
        .await
        .map_err(|e| CliError::io(target.display(), e))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::default_name;

    #[test]
    fn default_names_are_plain_file_names() {
        assert_eq!(
            default_name("ft:all-MiniLM-L6-v2:reviews:abc"),
            PathBuf::from("ft-all-MiniLM-L6-v2-reviews-abc.tar.gz")
        );
        assert_eq!(default_name("../x"), PathBuf::from("-x.tar.gz"));
    }
}
