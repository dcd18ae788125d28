//! `hone predict MODEL "text"…` or `--file inputs.jsonl`: one JSON line out per input,
//! in order. A file is read and sent a batch at a time, so its size is not bounded by
//! memory or by the server's inputs per request.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::client::Client;
use crate::error::CliError;
use crate::jobs::escape_segment;
use crate::output;

#[derive(Args)]
pub struct PredictArgs {
    /// The fine-tuned model (`ft:…`).
    model: String,
    /// Texts to classify.
    #[arg(required_unless_present = "file", conflicts_with = "file")]
    inputs: Vec<String>,
    /// JSONL inputs, one a line, as the API takes them: a string, or an object such
    /// as {"text": …, "text_pair": …} or {"image": <base64>}; `-` reads stdin.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Inputs per request with --file (at most the server's max_predict_inputs).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch_size: u32,
}

pub async fn run(client: &Client, args: PredictArgs) -> Result<ExitCode, CliError> {
    let path = format!("/v1/models/{}/predict", escape_segment(&args.model));
    let Some(file) = args.file else {
        let inputs = args.inputs.into_iter().map(Value::from).collect();
        send(client, &path, inputs).await?;
        return Ok(ExitCode::SUCCESS);
    };
    let shown = file.display().to_string();
    let reader: Box<dyn tokio::io::AsyncRead + Unpin> = if shown == "-" {
        Box::new(tokio::io::stdin())
    } else {
        Box::new(
            tokio::fs::File::open(&file)
                .await
                .map_err(|e| CliError::io(&shown, e))?,
        )
    };
    let mut lines = BufReader::new(reader).lines();
    let batch_size = args.batch_size as usize;
    let mut batch = Vec::with_capacity(batch_size);
    let mut first_line = 1;
    let mut number = 0;
    loop {
        let line = lines
            .next_line()
            .await
            .map_err(|e| CliError::io(&shown, e))?;
        let Some(line) = line else { break };
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let input: Value = serde_json::from_str(&line).map_err(|e| {
            CliError::Input(format!(
                "{shown} line {number}: not JSON ({e}); each line is an input, a JSON \
                 string or object"
            ))
        })?;
        if batch.is_empty() {
            first_line = number;
        }
        batch.push(input);
        if batch.len() == batch_size {
            send_lines(
                client,
                &path,
                std::mem::take(&mut batch),
                &shown,
                first_line,
                number,
            )
            .await?;
        }
    }
    if !batch.is_empty() {
        send_lines(client, &path, batch, &shown, first_line, number).await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One batch of a file; an error names its lines (what came before is already out).
async fn send_lines(
    client: &Client,
    path: &str,
    inputs: Vec<Value>,
    file: &str,
    first: usize,
    last: usize,
) -> Result<(), CliError> {
    send(client, path, inputs).await.map_err(|e| match e {
        CliError::Api {
            status,
            message,
            param,
        } => CliError::Api {
            status,
            message: format!("{message} (in the inputs on lines {first}–{last} of {file})"),
            param,
        },
        other => other,
    })
}

/// One request; each prediction printed as a JSON line.
async fn send(client: &Client, path: &str, inputs: Vec<Value>) -> Result<(), CliError> {
    let sent = inputs.len();
    let answer: Value = client.post(path, &json!({ "inputs": inputs })).await?;
    let predictions = answer
        .get("predictions")
        .and_then(Value::as_array)
        .filter(|p| p.len() == sent)
        .ok_or_else(|| CliError::Unexpected {
            url: client.url(path),
            detail: format!("not one prediction for each of the {sent} inputs"),
        })?;
    for p in predictions {
        output::line(&p.to_string())?;
    }
    Ok(())
}
