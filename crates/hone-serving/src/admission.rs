//! Admission to the inference queue: a bounded line in front of a bounded queue.
//!
//! At most `max_pending` requests are in the inference thread's queue. Past that a
//! request waits for a place, first come first served (tokio's semaphore is fair), for
//! at most the queue timeout; so does at most [`MAX_WAITING_PER_PENDING`] × `max_pending`
//! of them. A short burst is absorbed as a little latency; a load the thread cannot keep
//! up with is refused (429) within the timeout instead of piling up without end.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::ServingError;

/// Requests that may wait in line per place in the queue: each waiter is a parked task
/// holding its inputs, so their number is bounded as well as their wait.
pub const MAX_WAITING_PER_PENDING: usize = 16;

#[derive(Debug)]
pub struct Admission {
    places: Arc<Semaphore>,
    waiting: AtomicUsize,
    max_waiting: usize,
    timeout: Duration,
}

impl Admission {
    pub fn new(max_pending: usize, timeout: Duration) -> Self {
        let max_pending = max_pending.max(1);
        Self {
            places: Arc::new(Semaphore::new(max_pending)),
            waiting: AtomicUsize::new(0),
            max_waiting: max_pending.saturating_mul(MAX_WAITING_PER_PENDING),
            timeout,
        }
    }

    /// A place in the queue, held until the request is answered: at once if one is
    /// free, else after waiting in line.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, ServingError> {
        if let Ok(permit) = self.places.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _in_line = InLine::join(&self.waiting, self.max_waiting)?;
        match tokio::time::timeout(self.timeout, self.places.clone().acquire_owned()).await {
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

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_makes_requests_wait_in_order_not_fail() {
        let admission = Arc::new(Admission::new(1, TIMEOUT));
        let first = admission.admit().await.expect("a free place");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..3 {
            let (admission, tx) = (admission.clone(), tx.clone());
            tokio::spawn(async move {
                let permit = admission.admit().await;
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
        let admission = Admission::new(1, TIMEOUT);
        let _held = admission.admit().await.expect("a free place");
        let started = tokio::time::Instant::now();
        let refused = admission.admit().await;
        assert!(matches!(refused, Err(ServingError::Overloaded)));
        assert_eq!(started.elapsed(), TIMEOUT);
        assert_eq!(
            admission.waiting.load(Ordering::Relaxed),
            0,
            "it left the line"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_longest_line_requests_are_refused_at_once() {
        let admission = Arc::new(Admission::new(1, TIMEOUT));
        let _held = admission.admit().await.expect("a free place");
        let mut waiters = Vec::new();
        for _ in 0..MAX_WAITING_PER_PENDING {
            let admission = admission.clone();
            waiters.push(tokio::spawn(async move { admission.admit().await.is_ok() }));
            tokio::task::yield_now().await;
        }
        assert_eq!(
            admission.waiting.load(Ordering::Relaxed),
            MAX_WAITING_PER_PENDING
        );
        let started = tokio::time::Instant::now();
        assert!(matches!(
            admission.admit().await,
            Err(ServingError::Overloaded)
        ));
        assert_eq!(started.elapsed(), Duration::ZERO);
        // A client that goes away leaves the line.
        let gone = waiters.pop().expect("a waiter");
        gone.abort();
        assert!(gone.await.is_err_and(|e| e.is_cancelled()));
        assert_eq!(
            admission.waiting.load(Ordering::Relaxed),
            MAX_WAITING_PER_PENDING - 1
        );
    }
}
