//! `hone`: the fine-tuning service's one binary.
//!
//! `hone all` (the default) runs the API and a worker in one process; `hone serve` and
//! `hone worker` run them apart, on as many machines as needed; `hone migrate` creates
//! the database and applies migrations; `hone keys` manages API keys.

use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hone_store::{ArtifactStore, LocalArtifactStore};
use tokio_util::sync::CancellationToken;

mod config;
mod keys;
mod serve;
mod telemetry;

use config::Config;

/// jemalloc for every allocation of the process, libtorch's included (it replaces
/// `malloc` itself); its policy of keeping freed pages is in .cargo/config.toml.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "hone", version, about = "Fine-tuning as a service")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Clone, PartialEq, Eq)]
enum Command {
    /// API and an in-process worker (the default).
    All,
    /// The HTTP API only.
    Serve,
    /// A worker only: claims queued jobs and trains them.
    Worker,
    /// Create the database if needed and apply migrations, then exit.
    Migrate,
    /// Create, list and revoke API keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hone: invalid configuration: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hone: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command.unwrap_or(Command::All), config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One clear line, not a stack of errors.
            eprintln!("hone: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    let url = config.database_url_redacted();
    if matches!(
        command,
        Command::All | Command::Migrate | Command::Keys { .. }
    ) {
        hone_store::ensure_database(&config.database_url)
            .await
            .map_err(|e| unreachable_db(&url, e))?;
    }
    let pool_size = 8 + 2 * config.worker_concurrency as u32;
    let db = hone_store::connect(&config.database_url, pool_size)
        .await
        .map_err(|e| unreachable_db(&url, e))?;
    hone_store::migrate(&db)
        .await
        .with_context(|| format!("cannot apply migrations to {url}"))?;
    if command == Command::Migrate {
        tracing::info!(database = %url, "migrations applied");
        return Ok(());
    }
    if let Command::Keys { command: action } = &command {
        return keys::run(&db, action.clone()).await;
    }
    if matches!(command, Command::All | Command::Serve) {
        keys::bootstrap(&db).await?;
    }

    let serving = matches!(command, Command::All | Command::Serve);
    let training = matches!(command, Command::All | Command::Worker);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = config.threads(cores, serving, training);
    tracing::info!(
        cores,
        inference_threads = threads.inference,
        inference_threads_idle = threads.inference_idle,
        training_threads = threads.training,
        "libtorch threads"
    );
    let batch_work = hone_train::threads::BatchWork::default();
    let device = parse_device(&config.device)?;
    let artifacts: Arc<dyn ArtifactStore> = Arc::new(
        LocalArtifactStore::new(config.data_dir.join("artifacts"))
            .await
            .with_context(|| format!("cannot use data directory {}", config.data_dir.display()))?,
    );
    let shutdown = CancellationToken::new();
    spawn_signal_handler(shutdown.clone());
    let metrics = telemetry::install(shutdown.clone())?;

    let mut tasks = Vec::new();
    // Every API and worker process delivers webhooks (claims never collide).
    if let Some(settings) = config.webhook_settings() {
        tasks.push(tokio::spawn(hone_webhooks::run(
            db.clone(),
            settings,
            shutdown.clone(),
        )));
    }
    if matches!(command, Command::All | Command::Worker) {
        let settings = config.worker_settings(device, threads.training, batch_work.clone());
        tasks.push(tokio::spawn(hone_worker::run(
            db.clone(),
            artifacts.clone(),
            settings,
            shutdown.clone(),
        )));
        if command == Command::Worker {
            let port = telemetry::serve_worker_metrics(
                &config,
                db.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            tasks.extend(port.await?);
        }
    }
    if matches!(command, Command::All | Command::Serve) {
        let result = serve::run(
            &config,
            db.clone(),
            artifacts.clone(),
            serve::Compute {
                device,
                threads,
                batch_work,
            },
            metrics,
            shutdown.clone(),
        )
        .await;
        shutdown.cancel();
        for t in tasks {
            let _ = t.await;
        }
        return result;
    }
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

fn unreachable_db(url: &str, e: hone_store::StoreError) -> anyhow::Error {
    let cause = match &e {
        hone_store::StoreError::Unavailable(inner) | hone_store::StoreError::Database(inner) => {
            inner.to_string()
        }
        other => other.to_string(),
    };
    anyhow::anyhow!("cannot reach Postgres at {url}: {cause}")
}

fn parse_device(raw: &str) -> anyhow::Result<tch::Device> {
    match raw {
        "auto" => Ok(tch::Device::cuda_if_available()),
        "cpu" => Ok(tch::Device::Cpu),
        "cuda" if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
        "cuda" => anyhow::bail!("device = \"cuda\" but libtorch sees no CUDA device"),
        other => anyhow::bail!("device must be auto, cpu or cuda, not {other:?}"),
    }
}

/// SIGINT/SIGTERM cancel the token: the API stops accepting connections and finishes
/// in-flight requests; workers stop at the next step and hand their jobs back.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            _ = term => {}
        }
        tracing::info!("shutting down");
        shutdown.cancel();
    });
}
