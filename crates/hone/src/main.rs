//! `hone`: the fine-tuning service's one binary.
//!
//! `hone all` (the default) runs the API and a worker in one process; `hone serve` and
//! `hone worker` run them apart, on as many machines as needed; `hone migrate` creates
//! the database and applies migrations; `hone keys` manages API keys. `hone files`,
//! `jobs`, `predict` and `models` are clients of any hone server over HTTP
//! (`hone-cli`): they read no server configuration.

use anyhow::Context;
use clap::{Parser, Subcommand};
use hone_store::ArtifactStore;
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
    command: Option<AnyCommand>,
}

#[derive(Subcommand)]
enum AnyCommand {
    #[command(flatten)]
    Server(Command),
    #[command(flatten)]
    Client(Box<hone_cli::Command>),
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
    let command = match Cli::parse().command {
        Some(AnyCommand::Client(client)) => return hone_cli::run(*client),
        Some(AnyCommand::Server(command)) => command,
        None => Command::All,
    };
    let config = match Config::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("hone: invalid configuration: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    if let Err(e) = config.validate() {
        eprintln!("hone: invalid configuration: {e}");
        return std::process::ExitCode::FAILURE;
    }
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
    match runtime.block_on(run(command, config)) {
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
    let artifacts = config.artifact_store().await?;
    check_artifact_store(artifacts.as_ref()).await?;
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
    tasks.push(tokio::spawn(sweep_loop(
        db.clone(),
        artifacts.clone(),
        shutdown.clone(),
    )));
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

/// Housekeeping of stored data, in every process (each step is safe to run in many at
/// once): every minute, files past their `expires_at` are deleted; at start-up and then
/// daily, stored objects that no row names (a process killed between writing an object
/// and its row) are removed once an hour old, by one process at a time.
async fn sweep_loop(
    db: hone_store::Db,
    artifacts: std::sync::Arc<dyn ArtifactStore>,
    shutdown: CancellationToken,
) {
    use std::time::Duration;
    const GRACE: Duration = Duration::from_secs(3600);
    const ORPHANS_EVERY: Duration = Duration::from_secs(24 * 3600);
    const EXPIRY_EVERY: Duration = Duration::from_secs(60);
    let mut next_orphans = tokio::time::Instant::now();
    loop {
        match db.expire_files().await {
            Ok(files) => {
                for file in files {
                    let key = &file.storage_key;
                    tracing::info!(key, "removing an expired file");
                    if let Err(e) = artifacts.delete(key).await {
                        tracing::warn!(error = %e, key, "cannot remove an expired file's bytes; the orphan sweep will");
                    }
                    let dropped = hone_store::feature_cache::drop_for_file(
                        &db,
                        &artifacts,
                        &file.project,
                        &file.sha256,
                    );
                    if let Err(e) = dropped.await {
                        tracing::warn!(error = %e, key, "cannot drop an expired file's cached features");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot expire files; retrying in a minute"),
        }
        if tokio::time::Instant::now() >= next_orphans {
            next_orphans += ORPHANS_EVERY;
            match db.sweep_orphans(artifacts.as_ref(), GRACE).await {
                Ok(Some(swept)) if swept != Default::default() => {
                    tracing::info!(?swept, "the orphan sweep removed or measured artifacts")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "the orphan sweep failed; next in a day"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(EXPIRY_EVERY) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// The artifact store must answer before the process reports ready: tried for about
/// half a minute (a store started alongside, as in docker/compose.yaml, may still be
/// coming up), then a clear error naming it.
async fn check_artifact_store(artifacts: &dyn ArtifactStore) -> anyhow::Result<()> {
    let mut wait = std::time::Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match artifacts.check().await {
            Ok(()) => {
                tracing::info!(store = %artifacts.describe(), "artifact store");
                return Ok(());
            }
            Err(e) if tokio::time::Instant::now() + wait < deadline => {
                tracing::warn!(error = %e, store = %artifacts.describe(), "artifact store not reachable yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(8));
            }
            Err(e) => anyhow::bail!(
                "cannot use the artifact store {}: {e}",
                artifacts.describe()
            ),
        }
    }
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
    let device = match raw {
        "auto" => tch::Device::cuda_if_available(),
        "cpu" => tch::Device::Cpu,
        "cuda" => cuda_device(0, raw)?,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => cuda_device(n, raw)?,
            _ => anyhow::bail!("device must be auto, cpu, cuda or cuda:<n>, not {other:?}"),
        },
    };
    tracing::info!(configured = raw, device = ?device, "device");
    Ok(device)
}

fn cuda_device(n: usize, raw: &str) -> anyhow::Result<tch::Device> {
    let count = if tch::Cuda::is_available() {
        usize::try_from(tch::Cuda::device_count()).unwrap_or(0)
    } else {
        0
    };
    anyhow::ensure!(
        n < count,
        "device = {raw:?} but libtorch sees {count} CUDA device(s)"
    );
    Ok(tch::Device::Cuda(n))
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

#[cfg(test)]
mod tests {
    use super::parse_device;

    #[test]
    fn devices_parse_and_a_missing_gpu_is_refused_by_name() {
        assert_eq!(parse_device("cpu").expect("cpu"), tch::Device::Cpu);
        let auto = parse_device("auto").expect("auto");
        let gpus = if tch::Cuda::is_available() {
            tch::Cuda::device_count()
        } else {
            0
        };
        if gpus == 0 {
            assert_eq!(auto, tch::Device::Cpu);
            for raw in ["cuda", "cuda:0", "cuda:3"] {
                let e = parse_device(raw).expect_err(raw).to_string();
                assert!(e.contains(raw) && e.contains("0 CUDA device"), "{e}");
            }
        } else {
            assert_eq!(auto, tch::Device::Cuda(0));
            assert_eq!(parse_device("cuda").expect("cuda"), tch::Device::Cuda(0));
            let last = format!("cuda:{}", gpus - 1);
            assert_eq!(
                parse_device(&last).expect("last gpu"),
                tch::Device::Cuda(usize::try_from(gpus - 1).expect("count"))
            );
            assert!(parse_device(&format!("cuda:{gpus}")).is_err());
        }
        for bad in ["gpu", "cuda:", "cuda:x", "cuda:-1", "CPU"] {
            let e = parse_device(bad).expect_err(bad).to_string();
            assert!(e.contains("auto, cpu, cuda or cuda:<n>"), "{bad}: {e}");
        }
    }
}
