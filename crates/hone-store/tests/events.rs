//! A job's event log against the real Postgres, a fresh database per test: followed by
//! `seq` it gives every event once, in order, even while two writers add events to one
//! job at once; another project's job has no log; each event NOTIFYs its job's id.

use std::time::Duration;

use hone_store::events::{NewEvent, JOB_EVENTS_CHANNEL};
use hone_store::Db;
use sqlx::postgres::PgListener;

mod common;
use common::{file, fresh, new_job, p};

const LEASE: Duration = Duration::from_secs(30);

/// Every event of `job` after `seq`, read `page` at a time as a stream reads them;
/// `seq` is left at the last one read.
async fn follow(db: &Db, job: &str, seq: &mut Option<i64>, page: i64) -> Vec<String> {
    let mut messages = Vec::new();
    loop {
        let events = db.events_after(&p(), job, *seq, page).await.expect("read");
        let Some(last) = events.last() else {
            return messages;
        };
        *seq = Some(last.seq);
        messages.extend(events.into_iter().map(|e| e.event.message));
    }
}

#[tokio::test]
async fn following_by_seq_gives_every_event_once_in_order() {
    let f = fresh().await;
    let db = &f.db;
    let file = file(db).await;
    let job = db
        .create_job(&new_job(&p(), &file, 3))
        .await
        .expect("job")
        .id;
    let claimed = db
        .claim_job("w", LEASE)
        .await
        .expect("claim")
        .expect("a job");
    for i in 0..5 {
        db.add_event(&job, claimed.attempt, &NewEvent::info(format!("e{i}")))
            .await
            .expect("event");
    }
    let all = follow(db, &job, &mut None, 2).await;
    assert_eq!(all[0], "Job created and queued");
    assert!(all[1].starts_with("Worker w started attempt 1"), "{all:?}");
    assert_eq!(&all[2..], ["e0", "e1", "e2", "e3", "e4"]);

    // Resuming after an event's id gives what followed it.
    let listed = db
        .list_events(
            &p(),
            &job,
            &hone_domain::PageRequest::new(Some(100), None).expect("page"),
        )
        .await
        .expect("list");
    let e1 = listed.iter().find(|e| e.message == "e1").expect("e1");
    let seq = db.event_seq(&p(), &job, &e1.id).await.expect("seq");
    assert_eq!(
        follow(db, &job, &mut seq.clone(), 100).await,
        ["e2", "e3", "e4"]
    );

    // Another project's job has no log, and its events' ids name nothing.
    let other = db.ensure_project("other").await.expect("project").id;
    assert!(db
        .events_after(&other, &job, None, 100)
        .await
        .expect("read")
        .is_empty());
    assert_eq!(db.event_seq(&other, &job, &e1.id).await.expect("seq"), None);
}

#[tokio::test]
async fn a_reader_never_skips_an_event_committed_late_by_a_concurrent_writer() {
    let f = fresh().await;
    let db = &f.db;
    let file = file(db).await;
    let job = db
        .create_job(&new_job(&p(), &file, 3))
        .await
        .expect("job")
        .id;
    let claimed = db
        .claim_job("w", LEASE)
        .await
        .expect("claim")
        .expect("a job");

    // Two writers add events to one job at once while a reader follows the log as a
    // stream does; the reader must end with every event, each once.
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let db = db.clone();
            let job = job.clone();
            tokio::spawn(async move {
                for i in 0..40 {
                    db.add_event(&job, claimed.attempt, &NewEvent::info(format!("w{w}-{i}")))
                        .await
                        .expect("event");
                }
            })
        })
        .collect();
    let mut seq = None;
    let mut seen = Vec::new();
    let mut done = false;
    while !done {
        done = writers.iter().all(|w| w.is_finished());
        seen.extend(follow(db, &job, &mut seq, 3).await);
    }
    let mut written: Vec<String> = seen
        .iter()
        .filter(|m| m.starts_with('w'))
        .cloned()
        .collect();
    assert_eq!(written.len(), 80, "{seen:?}");
    written.sort();
    written.dedup();
    assert_eq!(written.len(), 80, "no event twice");
}

#[tokio::test]
async fn each_event_notifies_its_job() {
    let f = fresh().await;
    let db = &f.db;
    let mut listener = PgListener::connect_with(&db.pool).await.expect("listener");
    listener.listen(JOB_EVENTS_CHANNEL).await.expect("LISTEN");
    let file = file(db).await;
    let job = db
        .create_job(&new_job(&p(), &file, 3))
        .await
        .expect("job")
        .id;
    let n = tokio::time::timeout(Duration::from_secs(10), listener.recv())
        .await
        .expect("a notification")
        .expect("recv");
    assert_eq!(n.payload(), job);
}
