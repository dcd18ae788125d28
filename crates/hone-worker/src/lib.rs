//! The worker: claims queued jobs from Postgres (only those on base models it has) and
//! runs them, keeping each claim alive with a heartbeat. The runner (this file) knows nothing of training;
//! `finetune` does, and its `thread` module is the only one here that touches tensors.
//!
//! Wake-ups come from LISTEN/NOTIFY with polling as the fallback; a rescuer requeues
//! jobs whose worker died (lease expired). On shutdown a worker stops its job at the
//! next training step and hands it back to the queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hone_store::queue::{ClaimedJob, Lease};
use hone_store::{ArtifactStore, Db};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

mod finetune;
pub mod telemetry;

#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// Names this worker in the jobs it holds (`attempted_by`): [`worker_id`].
    pub id: String,
    pub concurrency: usize,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub models_dir: std::path::PathBuf,
    pub scratch_dir: std::path::PathBuf,
    pub device: tch::Device,
    /// libtorch intra-op threads of each job's training thread.
    pub threads: usize,
    /// The process's batch work: a training thread counts in it while it runs, so that
    /// a predict thread in the same process yields it cores.
    pub batch_work: hone_train::threads::BatchWork,
    /// Bytes a `partial` text job may hold for its frozen layers' outputs
    /// ([`hone_train::TrainJob::frozen_cache_bytes`]).
    pub frozen_cache_bytes: u64,
    /// The longest an attempt may train (`job_max_seconds`); past it the job fails
    /// with `job_timeout`, keeping its checkpoints. `None`: no limit.
    pub max_attempt_time: Option<Duration>,
    /// `checkpoint_retention = "all"`: an ended job keeps every epoch's checkpoint, not
    /// only the last, the best and the published.
    pub keep_all_checkpoints: bool,
    /// Bytes of a project's feature cache entries; least recently used go past it.
    pub feature_cache_max_bytes: u64,
}

/// A worker's name for the jobs it holds: host, process and a random part, so that two
/// workers of one process (or a restarted one) never pass for each other.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
    format!(
        "{host}:{}:{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Why a job's training should stop early.
#[derive(Debug, Default)]
pub struct StopFlags {
    /// The user cancelled the job.
    pub cancelled: AtomicBool,
    /// This worker lost the job's lease: someone else owns it now.
    pub lease_lost: AtomicBool,
    /// The worker is shutting down.
    pub shutdown: AtomicBool,
    /// The attempt ran past its maximum time (`job_max_seconds`).
    pub timed_out: AtomicBool,
    /// The user paused the job: training stops after its next checkpoint (not at
    /// once, as for the others, so that it resumes from there), so [`StopFlags::any`]
    /// leaves it out.
    pub paused: AtomicBool,
}

impl StopFlags {
    pub fn any(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
            || self.lease_lost.load(Ordering::Relaxed)
            || self.shutdown.load(Ordering::Relaxed)
            || self.timed_out.load(Ordering::Relaxed)
    }
}

pub async fn run(
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
) {
    let models = runnable_models(&settings.models_dir).await;
    if models.is_empty() {
        tracing::warn!(
            models_dir = %settings.models_dir.display(),
            "no usable base model in models_dir: this worker claims no job until one is there"
        );
    }
    tracing::info!(worker = %settings.id, concurrency = settings.concurrency, device = ?settings.device, base_models = ?models, "worker started");
    sweep_scratch(&db, &settings.scratch_dir).await;
    let wake = Arc::new(Notify::new());
    let listener = tokio::spawn(hone_store::listener::listen_for_jobs(
        db.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    let rescuer = tokio::spawn(rescue_loop(db.clone(), settings.lease, shutdown.clone()));
    let mut slots = Vec::new();
    for slot in 0..settings.concurrency {
        slots.push(tokio::spawn(slot_loop(
            slot,
            db.clone(),
            artifacts.clone(),
            settings.clone(),
            wake.clone(),
            shutdown.clone(),
        )));
    }
    for s in slots {
        let _ = s.await;
    }
    let _ = listener.await;
    let _ = rescuer.await;
    tracing::info!(worker = %settings.id, "worker stopped");
}

async fn slot_loop(
    slot: usize,
    db: Db,
    artifacts: Arc<dyn ArtifactStore>,
    settings: WorkerSettings,
    wake: Arc<Notify>,
    shutdown: CancellationToken,
) {
    let mut backoff = Duration::from_millis(500);
    while !shutdown.is_cancelled() {
        // Register for wake-ups before looking, so a job queued in between is not missed.
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let models = runnable_models(&settings.models_dir).await;
        match db
            .claim_job_of(&settings.id, settings.lease, Some(&models))
            .await
        {
            Ok(Some(claimed)) => {
                backoff = Duration::from_millis(500);
                telemetry::queued(claimed.queued_for);
                run_claimed(&db, &artifacts, &settings, claimed, &shutdown).await;
            }
            Ok(None) => {
                tokio::select! {
                    _ = &mut notified => {}
                    _ = tokio::time::sleep(settings.poll_interval) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(slot, error = %e, "cannot claim jobs; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.cancelled() => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Removes the scratch folders (`<job>-<attempt>`) of attempts that are not running:
/// left by a worker that died (killed, the machine restarted) mid-job. Folders of an
/// attempt running now, perhaps on another worker sharing the directory, stay.
async fn sweep_scratch(db: &Db, scratch_dir: &std::path::Path) {
    let Ok(mut entries) = tokio::fs::read_dir(scratch_dir).await else {
        return;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        let name = entry.file_name().to_string_lossy().into_owned();
        let attempt = name
            .rsplit_once('-')
            .and_then(|(job, attempt)| Some((job.to_owned(), attempt.parse::<i32>().ok()?)));
        let running = match &attempt {
            // Unknown (the database did not answer): leave it for the next start.
            Some((job, attempt)) => db.attempt_is_running(job, *attempt).await.unwrap_or(true),
            None => false,
        };
        if !running {
            tracing::info!(folder = %entry.path().display(), "removing a dead attempt's scratch");
            if let Err(e) = tokio::fs::remove_dir_all(entry.path()).await {
                tracing::warn!(error = %e, "cannot remove scratch");
            }
        }
    }
}

/// The base models in `models_dir` this worker can train: it claims only jobs on them,
/// so that workers with different models (a GPU pool with the large ones) share one
/// queue. Read again before each claim, so a model installed later is picked up.
async fn runnable_models(models_dir: &std::path::Path) -> Vec<String> {
    let dir = models_dir.to_owned();
    tokio::task::spawn_blocking(move || {
        hone_train::base_model::list_base_models(&dir)
            .into_iter()
            .filter_map(|(id, info)| info.ok().map(|_| id))
            .collect()
    })
    .await
    .unwrap_or_default()
}

/// Runs one claimed job while a heartbeat keeps its lease and watches for cancellation.
async fn run_claimed(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: ClaimedJob,
    shutdown: &CancellationToken,
) {
    let flags = Arc::new(StopFlags::default());
    let heartbeat = tokio::spawn(heartbeat_loop(
        db.clone(),
        Held {
            job_id: claimed.job.id.clone(),
            attempt: claimed.attempt,
            deadline: settings
                .max_attempt_time
                .map(|limit| tokio::time::Instant::now() + limit),
        },
        settings.lease,
        flags.clone(),
        shutdown.clone(),
    ));
    finetune::run_job(db, artifacts, settings, &claimed, flags.clone()).await;
    heartbeat.abort();
}

/// Renews the lease every third of it and polls for cancellation (and pausing) every
/// second, so a cancel takes effect within about a second plus one training step, and
/// a pause at the first checkpoint after it.
async fn heartbeat_loop(
    db: Db,
    held: Held,
    lease: Duration,
    flags: Arc<StopFlags>,
    shutdown: CancellationToken,
) {
    let Held {
        job_id,
        attempt,
        deadline,
    } = held;
    let tick = Duration::from_secs(1).min(lease / 3);
    let renew_every = (lease / 3).max(tick);
    let mut since_renew = Duration::ZERO;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.cancelled() => {
                flags.shutdown.store(true, Ordering::Relaxed);
                // Keep renewing while the job winds down.
                tokio::time::sleep(tick).await;
            }
        }
        since_renew += tick;
        if deadline.is_some_and(|d| tokio::time::Instant::now() >= d)
            && !flags.timed_out.swap(true, Ordering::Relaxed)
        {
            tracing::warn!(job.id = %job_id, "the attempt ran past job_max_seconds; stopping it");
        }
        let result = if since_renew >= renew_every {
            since_renew = Duration::ZERO;
            db.heartbeat(&job_id, attempt, lease).await
        } else {
            db.cancel_requested(&job_id, attempt).await
        };
        match result {
            Ok(Lease::Held {
                cancel_requested,
                pause_requested,
            }) => {
                if cancel_requested {
                    flags.cancelled.store(true, Ordering::Relaxed);
                }
                // A pause can be withdrawn (resumed) before it takes effect.
                flags.paused.store(pause_requested, Ordering::Relaxed);
            }
            Ok(Lease::Lost) => {
                // Also what a job that just ended reads before this loop is stopped:
                // the attempt says so only if it was still training
                // (`finish_stopped`).
                tracing::debug!(job.id = %job_id, "lease lost");
                flags.lease_lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => tracing::warn!(job.id = %job_id, error = %e, "heartbeat failed"),
        }
    }
}

/// The job a heartbeat keeps, and when its attempt must stop.
struct Held {
    job_id: String,
    attempt: i32,
    deadline: Option<tokio::time::Instant>,
}

/// Requeues jobs of dead workers, checking twice per lease.
async fn rescue_loop(db: Db, lease: Duration, shutdown: CancellationToken) {
    loop {
        match db.rescue_expired().await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(jobs = n, "requeued jobs whose worker stopped responding"),
            Err(e) => tracing::warn!(error = %e, "rescuer failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(lease / 2) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
