//! How workers claim from the queue, against the real Postgres, a fresh database per
//! test: the order of ready jobs, a claim's cost with a long queue, base models a
//! worker has, and fairness across projects.

use std::time::Duration;

use hone_domain::job::JobStatus;
use hone_domain::PageRequest;

const LEASE: Duration = Duration::from_secs(30);

mod common;
use common::{file, fresh, job, new_job, p, status};

#[tokio::test]
async fn claims_take_ready_jobs_by_priority_then_schedule_then_id_with_their_event() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(job(&f.db, &file, 3).await);
    }
    // (priority, seconds from now it is scheduled at) for each job, in creation order.
    let when = [(2, -30), (1, -10), (1, -20), (1, 3600), (2, -40)];
    for (id, (priority, seconds)) in ids.iter().zip(when) {
        sqlx::query(
            "UPDATE fine_tuning_jobs SET priority = $2,
                 scheduled_at = now() + $3 * interval '1 second' WHERE id = $1",
        )
        .bind(id)
        .bind(priority as i16)
        .bind(seconds as f64)
        .execute(&f.db.pool)
        .await
        .expect("schedule");
    }
    let mut order = Vec::new();
    while let Some(c) = f.db.claim_job("w", LEASE).await.expect("claim") {
        order.push(c.job.id);
    }
    let expected: Vec<String> = [2, 1, 4, 0].iter().map(|&i| ids[i].clone()).collect();
    assert_eq!(order, expected, "the job scheduled in an hour waits");
    assert_eq!(status(&f.db, &ids[3]).await, JobStatus::Queued);

    // The claim and its event are one commit: every claimed job has its event.
    let page = PageRequest::new(Some(100), None).expect("page");
    for id in &order {
        let events = f.db.list_events(&p(), id, &page).await.expect("events");
        assert!(
            events
                .iter()
                .any(|e| e.message == "Worker w started attempt 1 of 3"),
            "{events:?}"
        );
    }
}

#[tokio::test]
async fn a_claim_probes_each_project_s_head_not_the_whole_queue() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let template = job(&f.db, &file, 3).await;
    // A long queue over 20 projects, copied from one job in a single statement
    // (creating each through the API's path would take the test most of its time).
    sqlx::query(
        "INSERT INTO projects (id, name)
         SELECT 'proj-' || md5('p' || g::text), 'p' || g FROM generate_series(1, 20) g",
    )
    .execute(&f.db.pool)
    .await
    .expect("projects");
    sqlx::query(
        "INSERT INTO fine_tuning_jobs (id, base_model, training_file, method, hyperparameters,
             seed, max_attempts, project_id, priority, scheduled_at)
         SELECT 'ftjob-' || md5(g::text), base_model, training_file, method, hyperparameters,
             seed, max_attempts, 'proj-' || md5('p' || (1 + g % 20)::text), 1 + g % 3,
             now() - g * interval '1 second'
         FROM fine_tuning_jobs, generate_series(1, 20000) g WHERE id = $1",
    )
    .bind(&template)
    .execute(&f.db.pool)
    .await
    .expect("fill the queue");
    sqlx::query("ANALYZE fine_tuning_jobs")
        .execute(&f.db.pool)
        .await
        .expect("analyze");

    let mut tx = f.db.pool.begin().await.expect("begin");
    let plan: Vec<String> = sqlx::query_scalar(&format!(
        "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
        hone_store::queue::NEXT_QUEUED
    ))
    .bind(None::<Vec<String>>)
    .fetch_all(&mut *tx)
    .await
    .expect("explain");
    tx.rollback().await.expect("rollback");
    let plan = plan.join("\n");
    assert!(
        plan.contains("using fine_tuning_jobs_project_claim_idx"),
        "{plan}"
    );
    assert!(
        !plan.contains("Seq Scan on fine_tuning_jobs"),
        "the queue is never read whole: {plan}"
    );
    // A few pages per project (21 with the default one): the skip scan's probe, the
    // head's index path, heap page and lock, the running count; not the queue's
    // hundreds (about 11 each, measured).
    let read: u64 = plan
        .lines()
        .find_map(|l| l.trim().strip_prefix("Buffers: "))
        .expect("buffers in the plan")
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    assert!(read < 21 * 16, "read {read} pages for one claim: {plan}");

    // And the claim takes a head: with no project running anything, the oldest job
    // of the first priority over all projects.
    let first: String = sqlx::query_scalar(
        "SELECT id FROM fine_tuning_jobs WHERE status = 'queued'
         ORDER BY priority, scheduled_at, id LIMIT 1",
    )
    .fetch_one(&f.db.pool)
    .await
    .expect("head");
    let claimed =
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("job");
    assert_eq!(claimed.job.id, first);
}

#[tokio::test]
async fn a_worker_claims_only_jobs_on_base_models_it_has() {
    let f = fresh().await;
    let file = file(&f.db).await;
    let mut big = new_job(&p(), &file, 3);
    big.base_model = "vit-large".into();
    let big = f.db.create_job(&big).await.expect("job").id;
    let small = job(&f.db, &file, 3).await;

    let has = |models: &[&str]| models.iter().map(|m| m.to_string()).collect::<Vec<_>>();
    // The big job is older, but this worker lacks its model: it takes the other one.
    let claimed =
        f.db.claim_job_of("cpu", LEASE, Some(&has(&["m", "minilm"])))
            .await
            .expect("claim")
            .expect("a job on m");
    assert_eq!(claimed.job.id, small);
    assert!(
        f.db.claim_job_of("cpu", LEASE, Some(&has(&["m"])))
            .await
            .expect("claim")
            .is_none(),
        "the vit-large job waits for a worker that has it"
    );
    assert!(f
        .db
        .claim_job_of("none", LEASE, Some(&[]))
        .await
        .expect("claim")
        .is_none());
    assert_eq!(status(&f.db, &big).await, JobStatus::Queued);
    let claimed =
        f.db.claim_job_of("gpu", LEASE, Some(&has(&["vit-large"])))
            .await
            .expect("claim")
            .expect("the vit-large job");
    assert_eq!(claimed.job.id, big);
}

#[tokio::test]
async fn claims_are_fair_across_projects() {
    let f = fresh().await;
    let quiet = f.db.ensure_project("quiet").await.expect("project").id;
    let busy_file = file(&f.db).await;
    let quiet_file = common::file_in(&f.db, &quiet, 10, None)
        .await
        .expect("file");
    // The busy project queued five jobs first; the quiet one queues one later.
    let mut busy_jobs = Vec::new();
    for _ in 0..5 {
        busy_jobs.push(job(&f.db, &busy_file, 3).await);
    }
    let quiet_job =
        f.db.create_job(&new_job(&quiet, &quiet_file, 3))
            .await
            .expect("job")
            .id;
    let claim = || async {
        f.db.claim_job("w", LEASE)
            .await
            .expect("claim")
            .expect("a job")
    };
    // No project runs anything: the oldest goes first.
    assert_eq!(claim().await.job.id, busy_jobs[0]);
    // The busy project now runs one, the quiet one none: the quiet one's job is next,
    // although four of the busy project's are older.
    assert_eq!(claim().await.job.id, quiet_job);
    // Then each runs one; the busy project's queue goes on in order.
    assert_eq!(claim().await.job.id, busy_jobs[1]);
    assert_eq!(claim().await.job.id, busy_jobs[2]);
}
