//! Admission to the inference queue: a bounded line in front of a bounded queue, with
//! a share per project.
//!
//! At most `max_pending` requests are in the inference thread's queue. Past that a
//! request waits for a place, first come first served (tokio's semaphore is fair), for
//! at most the queue timeout; so does at most [`MAX_WAITING_PER_PENDING`] × `max_pending`
//! of them. A short burst is absorbed as a little latency; a load the thread cannot keep
//! up with is refused (429) within the timeout instead of piling up without end.
//!
//! One project holds at most `per_project` of the places: its requests first line up
//! for one of its own places (a line of its own, bounded the same way), and only then
//! for a place in the queue. A tenant that floods the endpoint waits in its own line,
//! while every other project still finds places free, or a line short enough to be
//! admitted within the timeout.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ServingError;

/// Requests that may wait in line per place in the queue: each waiter is a parked task
/// holding its inputs, so their number is bounded as well as their wait.
pub const MAX_WAITING_PER_PENDING: usize = 16;

#[derive(Debug)]
pub struct Admission {
    queue: Places,
    /// Each project's own places, made on its first request. One small entry per
    /// project that ever predicted: bounded by the projects there are.
    projects: Mutex<HashMap<String, Arc<Places>>>,
    per_project: usize,
    timeout: Duration,
}

/// A request's places, its project's and the queue's, held until it is answered.
#[derive(Debug)]
pub struct Admitted {
    _project: OwnedSemaphorePermit,
    _queue: OwnedSemaphorePermit,
}

impl Admission {
    /// `max_pending` places in the queue, at most `per_project` of them (capped at
    /// `max_pending`) held by one project.
    pub fn new(max_pending: usize, per_project: usize, timeout: Duration) -> Self {
        let max_pending = max_pending.max(1);
        Self {
            queue: Places::new(max_pending),
            projects: Mutex::new(HashMap::new()),
            per_project: per_project.clamp(1, max_pending),
            timeout,
        }
    }

    /// A place of `project`'s and a place in the queue, held until the request is
    /// answered: at once if both are free, else after waiting in line, for at most the
    /// queue timeout in all.
    pub async fn admit(&self, project: &str) -> Result<Admitted, ServingError> {
        let started = tokio::time::Instant::now();
        let own = self.project_places(project);
        let project_place = own.take(self.timeout).await?;
        let left = self.timeout.saturating_sub(started.elapsed());
        let queue_place = self.queue.take(left).await?;
        Ok(Admitted {
            _project: project_place,
            _queue: queue_place,
        })
    }

    fn project_places(&self, project: &str) -> Arc<Places> {
        let mut projects = self
            .projects
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        projects
            .entry(project.to_owned())
            .or_insert_with(|| Arc::new(Places::new(self.per_project)))
            .clone()
    }
}

/// Places and the line in front of them.
#[derive(Debug)]
struct Places {
    places: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
}

impl Places {
    fn new(places: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(places)),
            waiting: AtomicUsize::new(0),
            max_waiting: places.saturating_mul(MAX_WAITING_PER_PENDING),
        }
    }

    /// A place: at once if one is free, else after waiting in line for at most
    /// `timeout`.
    async fn take(&self, timeout: Duration) -> Result<OwnedSemaphorePermit, ServingError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _in_line = InLine::join(&self.waiting, self.max_waiting)?;
        match tokio::time::timeout(timeout, self.places.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(ServingError::Stopped),
            Err(_) => Err(ServingError::Overloaded),
        }
    }
}

/// One request in line; leaves it when dropped, also when its client goes away.
struct InLine<'a>(&'a AtomicUsize);

impl<'a> InLine<'a> {
    fn join(waiting: &'a AtomicUsize, max: usize) -> Result<Self, ServingError> {
        if waiting.fetch_add(1, Ordering::Relaxed) >= max {
            waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ServingError::Overloaded);
        }
        Ok(Self(waiting))
    }
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Requests of project "p" waiting in its own line.
    fn own_waiting(admission: &Admission) -> usize {
        admission
            .project_places("p")
            .waiting
            .load(Ordering::Relaxed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_makes_requests_wait_in_order_not_fail() {
        let admission = Arc::new(Admission::new(1, 1, TIMEOUT));
        let first = admission.admit("p").await.expect("a free place");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (admission, tx) = (admission.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = admission.admit("p").await;
                let _ = tx.send((n, permit.is_ok()));
                tokio::time::sleep(Duration::from_millis(100)).await; // "predicting"
            });
            tokio::task::yield_now().await; // line up in spawn order
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(
            rx.try_recv().is_err(),
            "nobody is admitted while the place is held"
        );
        drop(first);
        for expected in 0..3 {
            assert_eq!(rx.recv().await, Some((expected, true)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_is_refused_only_after_the_queue_timeout() {
        let admission = Admission::new(1, 1, TIMEOUT);
        let _held = admission.admit("p").await.expect("a free place");
        let started = tokio::time::Instant::now();
        let refused = admission.admit("p").await;
        assert!(matches!(refused, Err(ServingError::Overloaded)));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(
            admission.queue.waiting.load(Ordering::Relaxed) + own_waiting(&admission),
            0,
            "it left the line"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_longest_line_requests_are_refused_at_once() {
        let admission = Arc::new(Admission::new(1, 1, TIMEOUT));
        let _held = admission.admit("p").await.expect("a free place");
        let mut waiters = Vec::new();
        for _ in 0..MAX_WAITING_PER_PENDING {
            let admission = admission.clone();
            waiters.push(tokio::spawn(
                async move { admission.admit("p").await.is_ok() },
            ));
            tokio::task::yield_now().await;
        }
        assert_eq!(
            admission.queue.waiting.load(Ordering::Relaxed) + own_waiting(&admission),
            MAX_WAITING_PER_PENDING
        );
        let started = tokio::time::Instant::now();
        assert!(matches!(
            admission.admit("p").await,
            Err(ServingError::Overloaded)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A client that goes away leaves the line.
        let gone = waiters.pop().expect("a waiter");
        gone.abort();
        assert!(gone.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(
            admission.queue.waiting.load(Ordering::Relaxed) + own_waiting(&admission),
            MAX_WAITING_PER_PENDING - 1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_project_waits_in_its_own_line_and_others_get_in() {
        // Four places, two per project at most.
        let admission = Arc::new(Admission::new(4, 2, TIMEOUT));
        let flood_a = admission.admit("a").await.expect("a's first place");
        let _flood_b = admission.admit("a").await.expect("a's second place");
        // a's third request waits for one of a's places although the queue has two.
        let waiting = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit("a").await.is_ok() })
        };
        tokio::task::yield_now().await;
        assert_eq!(admission.queue.places.available_permits(), 2);
        assert_eq!(
            admission
                .project_places("a")
                .waiting
                .load(Ordering::Relaxed),
            1
        );
        // Another project is admitted at once, twice.
        let started = tokio::time::Instant::now();
        let _c1 = admission.admit("c").await.expect("c gets in");
        let _c2 = admission.admit("c").await.expect("c gets in again");
        assert_eq!(started.elapsed(), Duration::ZERO);
        // When a answers one request, its next one goes in.
        drop(flood_a);
        assert!(waiting.await.expect("task"));
    }

    #[tokio::test(start_paused = true)]
    async fn the_timeout_covers_both_lines() {
        let admission = Arc::new(Admission::new(2, 1, TIMEOUT));
        let held_a = admission.admit("a").await.expect("a's place");
        let _held_b = admission.admit("b").await.expect("b's place");
        // c has a place of its own but the queue is full: it waits, then is refused
        // after the one timeout.
        let started = tokio::time::Instant::now();
        let refused = admission.admit("c").await;
        assert!(matches!(refused, Err(ServingError::Overloaded)));
        assert_eq!(started.elapsed(), TIMEOUT);
        // a waits for its own place for 2 s, then gets the queue's at once.
        let second_a = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit("a").await.is_ok() })
        };
        tokio::time::sleep(Duration::from_secs(2)).await;
        drop(held_a);
        assert!(second_a.await.expect("task"));
    }
}
