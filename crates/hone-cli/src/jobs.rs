//! `hone jobs create|list|get|watch|events|cancel`.

use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{json_body, Client};
use crate::error::CliError;
use crate::output::{self, Column};
use crate::watch;

#[derive(Subcommand)]
pub enum JobsCommand {
    /// Create a fine-tuning job; prints the queued job (or, with --watch, follows it).
    Create(CreateJob),
    /// List jobs, newest first.
    List {
        #[command(flatten)]
        page: output::ListArgs,
        /// Only jobs with this status (queued, running, succeeded, failed, …).
        #[arg(long)]
        status: Option<String>,
    },
    /// A job, as JSON.
    Get { id: String },
    /// Follow a job to its end: a progress bar (plain lines when stdout is not a
    /// terminal), then the evaluation summary. Exits 1 if the job failed or was
    /// cancelled. Ctrl-C stops watching, not the job.
    Watch { id: String },
    /// A job's events, oldest first.
    Events {
        id: String,
        /// How many of the newest events (1–100; the server's default is 20).
        #[arg(long)]
        limit: Option<u32>,
        /// Events older than this event id (the previous page's oldest).
        #[arg(long)]
        after: Option<String>,
        /// Each event as a JSON line.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a queued, running or paused job.
    Cancel { id: String },
}

/// How the job transfers the base model (the API's `method.type`).
#[derive(Clone, Copy, ValueEnum)]
pub enum MethodArg {
    Full,
    Partial,
    #[value(name = "feature_extraction", alias = "feature-extraction")]
    FeatureExtraction,
    Auto,
}

impl MethodArg {
    fn as_api(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Partial => "partial",
            Self::FeatureExtraction => "feature_extraction",
            Self::Auto => "auto",
        }
    }
}

#[derive(Args)]
pub struct CreateJob {
    /// The base model to fine-tune (`hone models list` shows them, owned by `system`).
    #[arg(long, short)]
    model: String,
    /// The id of the uploaded training file.
    #[arg(long, short = 'f')]
    training_file: String,
    /// An uploaded file of held-out examples (by default the server holds some out).
    #[arg(long)]
    validation_file: Option<String>,
    /// full (default), partial, feature_extraction or auto.
    #[arg(long, value_enum)]
    method: Option<MethodArg>,
    /// `partial` only: encoder layers frozen from the bottom.
    #[arg(long)]
    frozen_layers: Option<u32>,
    /// Passes over the training data (server default: 3; 10 for feature_extraction).
    #[arg(long)]
    epochs: Option<u32>,
    /// Examples per optimisation step (server default: 16).
    #[arg(long)]
    batch_size: Option<u32>,
    /// Peak learning rate (server default: 5e-5 for a text model, 3e-4 for an image one;
    /// 1e-3 for feature_extraction).
    #[arg(long)]
    learning_rate: Option<f64>,
    /// Any other hyperparameter as NAME=VALUE, VALUE read as JSON when it is one, else
    /// as text; repeatable: `-H warmup_ratio=0.1 -H head=mlp`.
    #[arg(long = "hyperparameter", short = 'H', value_name = "NAME=VALUE")]
    hyperparameters: Vec<String>,
    /// Makes the run repeatable (random when left out).
    #[arg(long)]
    seed: Option<i64>,
    /// Added to the fine-tuned model's id.
    #[arg(long)]
    suffix: Option<String>,
    /// KEY=VALUE of your own, kept with the job; repeatable.
    #[arg(long = "metadata", value_name = "KEY=VALUE")]
    metadata: Vec<String>,
    /// Makes a retry of this command create nothing new.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the job to its end, as `hone jobs watch`.
    #[arg(long)]
    watch: bool,
    /// Print only the job's id.
    #[arg(long, short, conflicts_with = "watch")]
    quiet: bool,
}

pub async fn run(client: &Client, command: JobsCommand) -> Result<ExitCode, CliError> {
    match command {
        JobsCommand::Create(args) => return create(client, args).await,
        JobsCommand::List { page, status } => {
            let mut query = page.query();
            query.extend(status.map(|s| ("status", s)));
            let listed: Value = client.get("/v1/fine_tuning/jobs", &query).await?;
            output::list(
                &listed,
                page.json,
                &[
                    Column::Text("ID", "id"),
                    Column::Text("STATUS", "status"),
                    Column::Text("BASE MODEL", "model"),
                    Column::Text("FINE-TUNED MODEL", "fine_tuned_model"),
                    Column::Time("CREATED", "created_at"),
                ],
            )?;
        }
        JobsCommand::Get { id } => {
            let job: Value = client.get(&job_path(&id, ""), &[]).await?;
            output::object(&job)?;
        }
        JobsCommand::Watch { id } => return watch::watch(client, &id).await,
        JobsCommand::Events {
            id,
            limit,
            after,
            json,
        } => {
            let mut query = Vec::new();
            query.extend(limit.map(|l| ("limit", l.to_string())));
            query.extend(after.map(|a| ("after", a)));
            let page: Value = client.get(&job_path(&id, "/events"), &query).await?;
            events(&page, json)?;
        }
        JobsCommand::Cancel { id } => {
            let job: Value = client.post(&job_path(&id, "/cancel"), &json!({})).await?;
            output::line(&format!(
                "{} {}",
                output::text(&job, "id"),
                output::text(&job, "status")
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `/v1/fine_tuning/jobs/<id><tail>`, the id escaped so that no input leaves the path.
pub fn job_path(id: &str, tail: &str) -> String {
    format!("/v1/fine_tuning/jobs/{}{tail}", escape_segment(id))
}

/// A path segment percent-encoded but for the characters ids are made of.
pub fn escape_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn create(client: &Client, args: CreateJob) -> Result<ExitCode, CliError> {
    let body = create_body(&args)?;
    let mut request = client
        .request(Method::POST, "/v1/fine_tuning/jobs")
        .json(&body);
    if let Some(key) = &args.idempotency_key {
        request = request.header("Idempotency-Key", key);
    }
    let job: Value = json_body(client.send(request).await?).await?;
    let id = output::text(&job, "id");
    if args.watch {
        eprintln!("created {id}");
        return watch::watch(client, &id).await;
    }
    if args.quiet {
        output::line(&id)?;
    } else {
        output::object(&job)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The request body of `POST /v1/fine_tuning/jobs` from the flags; only what was
/// given, so the server's defaults apply to the rest.
fn create_body(args: &CreateJob) -> Result<Value, CliError> {
    let mut body = Map::new();
    body.insert("model".into(), args.model.clone().into());
    body.insert("training_file".into(), args.training_file.clone().into());
    if let Some(v) = &args.validation_file {
        body.insert("validation_file".into(), v.clone().into());
    }
    let mut method = Map::new();
    if let Some(m) = args.method {
        method.insert("type".into(), m.as_api().into());
    }
    if let Some(n) = args.frozen_layers {
        method.insert("frozen_layers".into(), n.into());
    }
    if !method.is_empty() {
        body.insert("method".into(), method.into());
    }
    let mut hyper = Map::new();
    if let Some(n) = args.epochs {
        hyper.insert("epochs".into(), n.into());
    }
    if let Some(n) = args.batch_size {
        hyper.insert("batch_size".into(), n.into());
    }
    if let Some(lr) = args.learning_rate {
        hyper.insert("learning_rate".into(), lr.into());
    }
    for pair in &args.hyperparameters {
        let (name, value) = split_pair(pair, "--hyperparameter")?;
        let value = serde_json::from_str(value).unwrap_or_else(|_| Value::from(value));
        if hyper.insert(name.to_owned(), value).is_some() {
            return Err(CliError::Usage(format!(
                "hyperparameter {name} is given twice"
            )));
        }
    }
    if !hyper.is_empty() {
        body.insert("hyperparameters".into(), hyper.into());
    }
    if let Some(seed) = args.seed {
        body.insert("seed".into(), seed.into());
    }
    if let Some(suffix) = &args.suffix {
        body.insert("suffix".into(), suffix.clone().into());
    }
    if !args.metadata.is_empty() {
        let mut metadata = Map::new();
        for pair in &args.metadata {
            let (key, value) = split_pair(pair, "--metadata")?;
            metadata.insert(key.to_owned(), value.into());
        }
        body.insert("metadata".into(), metadata.into());
    }
    Ok(body.into())
}

fn split_pair<'a>(pair: &'a str, flag: &str) -> Result<(&'a str, &'a str), CliError> {
    match pair.split_once('=') {
        Some((name, value)) if !name.trim().is_empty() => Ok((name.trim(), value)),
        _ => Err(CliError::Usage(format!(
            "{flag} takes NAME=VALUE, not {pair:?}"
        ))),
    }
}

/// The page's events, oldest first (the server sends the newest first).
fn events(page: &Value, json: bool) -> Result<(), CliError> {
    let mut items = output::page_items(page);
    items.reverse();
    for e in &items {
        if json {
            output::line(&e.to_string())?;
        } else {
            output::line(&format!(
                "{}  {:<5}  {}",
                output::time(e, "created_at"),
                output::text(e, "level"),
                output::text(e, "message")
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::json;

    use super::{create_body, escape_segment, CreateJob};

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: CreateJob,
    }

    fn body(argv: &[&str]) -> Result<serde_json::Value, String> {
        let cli = Cli::try_parse_from(std::iter::once("create").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        create_body(&cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn flags_make_the_request_body() {
        let b = body(&[
            "-m",
            "all-MiniLM-L6-v2",
            "-f",
            "file-1",
            "--method",
            "feature_extraction",
            "--epochs",
            "2",
            "--learning-rate",
            "0.001",
            "-H",
            "warmup_ratio=0.2",
            "-H",
            "head=mlp",
            "--seed",
            "7",
            "--metadata",
            "team=a=b",
        ])
        .expect("valid");
        assert_eq!(
            b,
            json!({
                "model": "all-MiniLM-L6-v2", "training_file": "file-1",
                "method": {"type": "feature_extraction"},
                "hyperparameters": {"epochs": 2, "learning_rate": 0.001,
                    "warmup_ratio": 0.2, "head": "mlp"},
                "seed": 7, "metadata": {"team": "a=b"},
            })
        );
        let minimal = body(&["-m", "m", "-f", "f"]).expect("valid");
        assert_eq!(minimal, json!({"model": "m", "training_file": "f"}));
    }

    #[test]
    fn bad_pairs_are_usage_errors() {
        let e = body(&["-m", "m", "-f", "f", "-H", "epochs"]).expect_err("no =");
        assert!(e.contains("NAME=VALUE"), "{e}");
        let e =
            body(&["-m", "m", "-f", "f", "--epochs", "2", "-H", "epochs=3"]).expect_err("twice");
        assert!(e.contains("twice"), "{e}");
        assert!(body(&["-m", "m", "-f", "f", "--method", "lora"]).is_err());
    }

    #[test]
    fn ids_stay_one_path_segment() {
        assert_eq!(escape_segment("ftjob-0a9F"), "ftjob-0a9F");
        assert_eq!(escape_segment("ft:base:x:1"), "ft:base:x:1");
        assert_eq!(escape_segment("../x?y#"), "..%2Fx%3Fy%23");
    }
}
