//! Claims per second with many queued jobs: the queue's side of BENCHMARKS.md's "Queue
//! latency". For each concurrency it makes a new database (migrated as `hone migrate`
//! does), queues `--jobs` jobs through `Db::create_job`, then lets that many tasks claim
//! them through `Db::claim_job` — the worker's own claim, event included — each ending
//! its job at once with `Db::fail_job` (not retryable), until the queue is empty. Every
//! database it makes is dropped at the end.
//!
//! ```text
//! cargo run --release -p hone-store --example claims -- \
//!     [--jobs 10000] [--concurrency 1,4,16] [--without-claim-index] [--out FILE]
//! ```
//!
//! `--without-claim-index` drops `fine_tuning_jobs_project_claim_idx` after migrating, to show
//! what the index is worth. Prints one JSON object (also written to `--out`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hone_domain::dataset::{DatasetFormat, DatasetSummary, TaskType};
use hone_domain::job::{Hyperparameters, Method};
use hone_domain::resources::JobError;
use hone_domain::{FileId, JobId, ProjectId};
use hone_store::jobs::NewJob;
use hone_store::queue::NEXT_QUEUED;
use hone_store::Db;
use serde_json::{json, Value};
use sqlx::{Connection, Executor, PgConnection};

type Error = Box<dyn std::error::Error + Send + Sync>;

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";
const LEASE: Duration = Duration::from_secs(60);
/// Tasks that queue the jobs: enough to fill the queue quickly, not part of the figure.
const INSERTERS: usize = 8;

struct Args {
    jobs: usize,
    concurrency: Vec<usize>,
    without_claim_index: bool,
    out: Option<String>,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        jobs: 10_000,
        concurrency: vec![1, 4, 16],
        without_claim_index: false,
        out: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--jobs" => args.jobs = value()?.parse()?,
            "--concurrency" => {
                args.concurrency = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--without-claim-index" => args.without_claim_index = true,
            "--out" => args.out = Some(value()?),
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    if args.jobs == 0 || args.concurrency.contains(&0) {
        return Err("--jobs and each --concurrency must be at least 1".into());
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = parse_args()?;
    let mut runs = Vec::new();
    for &tasks in &args.concurrency {
        let name = format!("hone_bench_claims_{}", uuid::Uuid::new_v4().simple());
        let run = run_once(&name, &args, tasks).await;
        drop_database(&name).await?;
        let run = run?;
        eprintln!(
            "claims: {tasks} task(s): {:.0} claims/s, claim p50 {:.2} ms, p99 {:.2} ms",
            run["claims_per_second"].as_f64().unwrap_or(0.0),
            run["claim_ms"]["p50"].as_f64().unwrap_or(0.0),
            run["claim_ms"]["p99"].as_f64().unwrap_or(0.0),
        );
        runs.push(run);
    }
    let result = json!({
        "jobs": args.jobs,
        "claim_index": !args.without_claim_index,
        "lease_seconds": LEASE.as_secs(),
        "runs": runs,
    });
    let text = serde_json::to_string_pretty(&result)?;
    if let Some(out) = &args.out {
        std::fs::write(out, format!("{text}\n"))?;
    }
    println!("{text}");
    Ok(())
}

/// One measurement on a new database `name` with `tasks` claimers.
async fn run_once(name: &str, args: &Args, tasks: usize) -> Result<Value, Error> {
    let url = format!("{SERVER}/{name}");
    hone_store::ensure_database(&url).await?;
    let db = hone_store::connect(&url, (tasks.max(INSERTERS) + 2) as u32).await?;
    hone_store::migrate(&db).await?;
    if args.without_claim_index {
        sqlx::query("DROP INDEX fine_tuning_jobs_project_claim_idx")
            .execute(&db.pool)
            .await?;
    }

    let started = Instant::now();
    fill_queue(&db, args.jobs).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    // What autovacuum would have done by the time a queue this long had built up.
    sqlx::query("VACUUM ANALYZE fine_tuning_jobs")
        .execute(&db.pool)
        .await?;
    let plan = explain_claim(&db).await?;

    let barrier = Arc::new(tokio::sync::Barrier::new(tasks + 1));
    let mut claimers = Vec::new();
    for t in 0..tasks {
        let db = db.clone();
        let barrier = barrier.clone();
        claimers.push(tokio::spawn(async move { claim_all(db, t, barrier).await }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let mut claim_ms = Vec::with_capacity(args.jobs);
    let mut cycle_ms = Vec::with_capacity(args.jobs);
    for claimer in claimers {
        let (claims, cycles) = claimer.await??;
        claim_ms.extend(claims);
        cycle_ms.extend(cycles);
    }
    let seconds = started.elapsed().as_secs_f64();

    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM fine_tuning_jobs WHERE status <> 'failed' OR attempt <> 1",
    )
    .fetch_one(&db.pool)
    .await?;
    if claim_ms.len() != args.jobs || left != 0 {
        return Err(format!(
            "{} claims of {} jobs, {left} not failed after exactly one attempt",
            claim_ms.len(),
            args.jobs
        )
        .into());
    }
    db.pool.close().await;
    Ok(json!({
        "tasks": tasks,
        "jobs": args.jobs,
        "fill_seconds": fill_seconds,
        "seconds": seconds,
        "claims_per_second": args.jobs as f64 / seconds,
        "claim_ms": summary(&mut claim_ms),
        "claim_and_finish_ms": summary(&mut cycle_ms),
        "claim_plan": plan,
    }))
}

/// Queues `jobs` jobs on one file, `INSERTERS` at a time, as the API queues them.
async fn fill_queue(db: &Db, jobs: usize) -> Result<(), Error> {
    let project = ProjectId::parse("proj-00000000000000000000000000000000")
        .ok_or("the default project id does not parse")?;
    let file = FileId::generate();
    let summary = DatasetSummary {
        format: DatasetFormat::Jsonl,
        bytes: 10,
        sha256: "00".repeat(32),
        examples: 2,
        task_type: TaskType::Classification,
        modality: Default::default(),
        text_pairs: false,
        label_counts: BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)]),
        task_label_counts: BTreeMap::new(),
    };
    db.insert_file(&project, &file, "f.jsonl", "fine-tune", &summary)
        .await?;
    let mut inserters = Vec::new();
    for i in 0..INSERTERS {
        let db = db.clone();
        let new = NewJob {
            id: JobId::generate(),
            project: project.clone(),
            base_model: "all-MiniLM-L6-v2".into(),
            training_file: file.to_string(),
            validation_file: None,
            method: Method::default(),
            hyperparameters: Hyperparameters::default(),
            seed: 1,
            suffix: None,
            metadata: None,
            max_attempts: 1,
        };
        let count = jobs / INSERTERS + usize::from(i < jobs % INSERTERS);
        inserters.push(tokio::spawn(async move {
            for _ in 0..count {
                db.create_job(&NewJob {
                    id: JobId::generate(),
                    ..new.clone()
                })
                .await?;
            }
            Ok::<_, hone_store::StoreError>(())
        }));
    }
    for inserter in inserters {
        inserter.await??;
    }
    Ok(())
}

/// Claims and fails jobs until none is left; (claim latencies, claim + finish), in ms.
async fn claim_all(
    db: Db,
    task: usize,
    barrier: Arc<tokio::sync::Barrier>,
) -> Result<(Vec<f64>, Vec<f64>), Error> {
    let worker = format!("bench-{task}");
    let error = JobError {
        code: "bench".into(),
        message: "the claims benchmark ends every job it claims".into(),
        param: None,
    };
    let (mut claims, mut cycles) = (Vec::new(), Vec::new());
    barrier.wait().await;
    loop {
        let started = Instant::now();
        let Some(claimed) = db.claim_job(&worker, LEASE).await? else {
            break;
        };
        claims.push(started.elapsed().as_secs_f64() * 1e3);
        db.fail_job(&claimed.job.id, claimed.attempt, &error, false)
            .await?;
        cycles.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok((claims, cycles))
}

/// The plan Postgres picks for the claim's `SELECT` on the full queue, with what it read.
async fn explain_claim(db: &Db) -> Result<Vec<String>, Error> {
    let mut tx = db.pool.begin().await?;
    let rows: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {NEXT_QUEUED}"
    ))
    .bind(None::<Vec<String>>)
    .fetch_all(&mut *tx)
    .await?;
    // The row it locked stays queued.
    tx.rollback().await?;
    Ok(rows)
}

fn summary(ms: &mut [f64]) -> Value {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
    json!({
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "max": ms[ms.len() - 1],
        "mean": ms.iter().sum::<f64>() / ms.len() as f64,
    })
}

async fn drop_database(name: &str) -> Result<(), Error> {
    let mut conn = PgConnection::connect(&format!("{SERVER}/postgres")).await?;
    conn.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str())
        .await?;
    Ok(())
}
