//! The serving metrics, recorded through the `metrics` facade (the binary installs the
//! Prometheus exporter; without one they cost nothing). Names follow Prometheus
//! conventions: base units, `_total` for counters.

use std::time::Duration;

use metrics::{counter, describe_counter, describe_histogram, histogram, Unit};

const CACHE: &str = "hone_model_cache_requests_total";
const LOADS: &str = "hone_model_loads_total";
const LOAD_SECONDS: &str = "hone_model_load_seconds";
const BATCH_INPUTS: &str = "hone_predict_batch_inputs";
const QUEUE_SECONDS: &str = "hone_predict_queue_seconds";
const INFERENCE_SECONDS: &str = "hone_predict_inference_seconds";

/// Says what each metric is (HELP lines); once, at start-up.
pub fn describe() {
    describe_counter!(
        CACHE,
        "Predict requests taken by the inference thread, by whether their model was \
         loaded (hit) or had to be loaded (miss)"
    );
    describe_counter!(
        LOADS,
        "Model loads by the inference thread's loaders, by outcome"
    );
    describe_histogram!(LOAD_SECONDS, Unit::Seconds, "Time to load a model");
    describe_histogram!(
        BATCH_INPUTS,
        "Inputs answered together by one serving batch (requests for one model that \
         queued together)"
    );
    describe_histogram!(
        QUEUE_SECONDS,
        Unit::Seconds,
        "Time a predict request waited from admission to its forward passes"
    );
    describe_histogram!(
        INFERENCE_SECONDS,
        Unit::Seconds,
        "Time of one serving batch's forward passes"
    );
}

pub(crate) fn cache(hit: bool) {
    counter!(CACHE, "result" => if hit { "hit" } else { "miss" }).increment(1);
}

pub(crate) fn loaded(ok: bool, took: Duration) {
    counter!(LOADS, "outcome" => if ok { "ok" } else { "error" }).increment(1);
    histogram!(LOAD_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn served(inputs: usize, waits: impl Iterator<Item = Duration>, took: Duration) {
    histogram!(BATCH_INPUTS).record(inputs as f64);
    let queue = histogram!(QUEUE_SECONDS);
    for wait in waits {
        queue.record(wait.as_secs_f64());
    }
    histogram!(INFERENCE_SECONDS).record(took.as_secs_f64());
}
