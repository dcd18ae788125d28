//! `hone files|jobs|predict|models`: the client commands of the `hone` binary, which
//! talk to any hone server over HTTP (`HONE_URL`, `HONE_API_KEY`) and know nothing of
//! the server's code: the API is JSON on the wire here, read leniently, so a client
//! works with a newer server.
//!
//! Output is for people and pipes alike: results on stdout (JSON objects, tables,
//! JSON lines), notes on stderr, and errors as `error: <the server's message>` on
//! stderr with exit code 1 (2 for usage errors, as clap's own).

use std::process::ExitCode;

use clap::{Args, Subcommand};
use secrecy::SecretString;

mod client;
mod error;
mod files;
mod jobs;
mod models;
mod output;
mod predict;
mod summary;
mod watch;

pub use error::CliError;

use client::Client;

/// The client commands, flattened into the `hone` binary's own.
#[derive(Subcommand)]
pub enum Command {
    /// Upload and list datasets (client: talks to HONE_URL).
    Files {
        #[command(flatten)]
        server: Server,
        #[command(subcommand)]
        command: files::FilesCommand,
    },
    /// Create, list, watch and cancel fine-tuning jobs (client).
    Jobs {
        #[command(flatten)]
        server: Server,
        #[command(subcommand)]
        command: jobs::JobsCommand,
    },
    /// Classify texts with a fine-tuned model; one JSON line per input (client).
    Predict {
        #[command(flatten)]
        server: Server,
        #[command(flatten)]
        args: predict::PredictArgs,
    },
    /// List and download models (client).
    Models {
        #[command(flatten)]
        server: Server,
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
}

/// Which server, and the key to call it with.
#[derive(Args)]
pub struct Server {
    /// The hone server.
    #[arg(
        long,
        env = "HONE_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    url: String,
    /// An API key (`hone_sk_…`); better left in HONE_API_KEY than on a command line,
    /// where other users of the machine can read it.
    #[arg(long, env = "HONE_API_KEY", hide_env_values = true, global = true)]
    api_key: Option<String>,
}

impl Server {
    fn client(self) -> Result<Client, CliError> {
        let key = self
            .api_key
            .filter(|k| !k.trim().is_empty())
            .ok_or_else(|| {
                CliError::Usage(
                    "no API key: set HONE_API_KEY (the server prints one on its first start; \
                 `hone keys create` makes more)"
                        .to_owned(),
                )
            })?;
        Client::new(&self.url, SecretString::from(key.trim().to_owned()))
    }
}

/// Runs a client command to its end: the process's exit code.
pub fn run(command: Command) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{}", e.report());
            e.exit_code()
        }
    }
}

async fn dispatch(command: Command) -> Result<ExitCode, CliError> {
    match command {
        Command::Files { server, command } => files::run(&server.client()?, command).await,
        Command::Jobs { server, command } => jobs::run(&server.client()?, command).await,
        Command::Predict { server, args } => predict::run(&server.client()?, args).await,
        Command::Models { server, command } => models::run(&server.client()?, command).await,
    }
}
