//! libtorch's intra-op thread count, per OS thread.
//!
//! libtorch on Linux parallelises inside an operation with OpenMP, and OpenMP keeps the
//! team size per calling thread: `at::set_num_threads` sets it for the thread that calls
//! it (and MKL's, likewise thread-local) and stores a process-wide value that other
//! threads copy lazily, on their first parallel operation. So a count set once from
//! `main` reaches every thread only by luck of ordering, and one count for the whole
//! process cannot give the inference thread and a training thread different shares of
//! the cores. Each thread that runs tensors calls [`use_intra_op_threads`] first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The threads of this process that are running batch work (a training job, a
/// transferability estimate), counted so that the predict thread can take every core
/// while there is none and step back to its share while there is: libtorch's threads
/// wait for each other at every operation, so two teams on the same cores slow each
/// other far more than their share (BENCHMARKS.md, "Serving").
#[derive(Clone, Debug, Default)]
pub struct BatchWork(Arc<AtomicUsize>);

impl BatchWork {
    /// Counts the calling thread as running batch work until the guard is dropped.
    pub fn enter(&self) -> BatchWorkGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        BatchWorkGuard(self.0.clone())
    }

    /// Whether any thread runs batch work now.
    pub fn any(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// One thread's batch work; ends when dropped (also when the thread unwinds).
#[derive(Debug)]
pub struct BatchWorkGuard(Arc<AtomicUsize>);

impl Drop for BatchWorkGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Makes libtorch run this thread's operations on `threads` threads (itself included).
/// A thread may call it again to change its count between operations.
///
/// Call it at the start of a thread that runs tensor operations, before the first one.
/// It first lets libtorch do its lazy per-thread initialisation, which would otherwise
/// overwrite this thread's count with whatever another thread set last.
pub fn use_intra_op_threads(threads: usize) {
    let _ = tch::get_num_threads(); // libtorch's lazy per-thread initialisation, now
    tch::set_num_threads(i32::try_from(threads.max(1)).unwrap_or(i32::MAX));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_work_counts_the_threads_inside_it() {
        let work = BatchWork::default();
        assert!(!work.any());
        let first = work.enter();
        let second = work.clone().enter();
        drop(first);
        assert!(work.any(), "one thread still works");
        drop(second);
        assert!(!work.any());
        // A thread that panics leaves too.
        let inside = work.clone();
        let _ = std::thread::spawn(move || {
            let _guard = inside.enter();
            panic!("training failed");
        })
        .join();
        assert!(!work.any());
    }

    #[test]
    fn each_thread_keeps_its_own_count() {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = std::thread::spawn(move || {
            use_intra_op_threads(1);
            ready_tx.send(()).expect("send");
            go_rx.recv().expect("recv");
            // Another thread has set 3 meanwhile; this one still runs on 1.
            let _ = tch::Tensor::ones([64, 64], (tch::Kind::Float, tch::Device::Cpu)).sum(None);
            tch::get_num_threads()
        });
        ready_rx.recv().expect("ready");
        let second = std::thread::spawn(|| {
            use_intra_op_threads(3);
            tch::get_num_threads()
        })
        .join()
        .expect("second");
        go_tx.send(()).expect("go");
        assert_eq!(first.join().expect("first"), 1);
        assert_eq!(second, 3);
    }
}
