//! The worker's metrics, recorded through the `metrics` facade (the binary installs the
//! Prometheus exporter and serves it): how long jobs waited and ran, how their
//! attempts ended, and how many examples training went through.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};

const QUEUED_SECONDS: &str = "hone_job_queued_seconds";
const ATTEMPT_SECONDS: &str = "hone_job_attempt_seconds";
const ATTEMPTS: &str = "hone_job_attempts_total";
const EXAMPLES: &str = "hone_train_examples_total";

/// Says what each metric is (HELP lines); once, at start-up.
pub fn describe() {
    describe_histogram!(
        QUEUED_SECONDS,
        Unit::Seconds,
        "Time a job waited in the queue, from when it could run to its claim"
    );
    describe_histogram!(
        ATTEMPT_SECONDS,
        Unit::Seconds,
        "Time a job attempt ran on this worker, from claim to its end, by outcome, \
         method and modality"
    );
    describe_counter!(
        ATTEMPTS,
        "Job attempts ended on this worker, by outcome (succeeded, failed, retried, \
         cancelled, released at shutdown, lost lease), method and modality"
    );
    describe_counter!(
        EXAMPLES,
        "Training examples processed (one per example per epoch), by modality; its \
         rate is training throughput in examples per second"
    );
}

pub(crate) fn queued(waited: Duration) {
    histogram!(QUEUED_SECONDS).record(waited.as_secs_f64());
}

/// How an attempt ended, with what the user asked for and the data's modality
/// (`unknown` when the attempt ended before its files were read).
pub(crate) struct AttemptLabels {
    pub(crate) outcome: &'static str,
    pub(crate) method: &'static str,
    pub(crate) modality: &'static str,
}

pub(crate) fn attempt_ended(labels: AttemptLabels, ran: Duration) {
    let AttemptLabels {
        outcome,
        method,
        modality,
    } = labels;
    counter!(ATTEMPTS, "outcome" => outcome, "method" => method, "modality" => modality)
        .increment(1);
    histogram!(ATTEMPT_SECONDS, "outcome" => outcome, "method" => method, "modality" => modality)
        .record(ran.as_secs_f64());
}

pub(crate) fn trained(examples: u64, modality: &'static str) {
    counter!(EXAMPLES, "modality" => modality).increment(examples);
}
