//! The inference thread: the one thread that runs forward passes, with its LRU cache of
//! loaded models.
//!
//! - **Batching.** Requests that queued for the same model and kind of input while a
//!   forward pass ran join the next one, up to a batch of inputs: under concurrent load
//!   the thread runs full batches instead of one small request at a time.
//! - **Loading elsewhere.** A model that is not in the cache is loaded on a loader
//!   thread ([`MAX_LOADS`] at once); its requests wait for it, while requests for
//!   loaded models go on being served.
//! - **Self-healing.** A panic in a forward pass is caught: the requests of that batch
//!   are answered with [`ServingError::Panicked`] (the API's 500), the model is dropped
//!   from the cache (it is loaded again on its next request), and the thread goes on.
//!
//! The thread is generic over [`Model`] so that its scheduling is tested with models
//! that load slowly or panic on purpose; the server runs it with hone-train's
//! `Classifier`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::num::NonZeroUsize;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use hone_train::predict::Classifier;
use hone_train::threads::use_intra_op_threads;
use lru::LruCache;

use crate::{telemetry, Message, PredictInputs, Prediction, Request, ServingConfig, ServingError};

/// Models loading at once; more wait for a loader in arrival order.
pub(crate) const MAX_LOADS: usize = 2;

/// What the inference thread serves.
pub(crate) trait Model: Sized + Send + 'static {
    fn load(dir: &Path, device: tch::Device) -> Result<Self, String>;
    fn predict(
        &self,
        inputs: &PredictInputs,
        batch_size: usize,
    ) -> Result<Vec<Prediction>, ServingError>;
}

impl Model for Classifier {
    fn load(dir: &Path, device: tch::Device) -> Result<Self, String> {
        Classifier::load(dir, device).map_err(|e| e.to_string())
    }

    fn predict(
        &self,
        inputs: &PredictInputs,
        batch_size: usize,
    ) -> Result<Vec<Prediction>, ServingError> {
        let predictions = match inputs {
            PredictInputs::Texts(texts) => self.predict_inputs(texts, None, batch_size),
            PredictInputs::Pairs { texts, pairs } => {
                self.predict_inputs(texts, Some(pairs), batch_size)
            }
            PredictInputs::Images(images) => self.predict_images(images, batch_size),
        };
        predictions.map_err(|e| match e {
            hone_train::TrainError::InvalidInput(m) => ServingError::BadInput(m),
            hone_train::TrainError::BadImage { index, message } => {
                ServingError::BadImage { index, message }
            }
            other => ServingError::Predict(other.to_string()),
        })
    }
}

/// The thread's state: the cache, the requests waiting for a model to load, and the
/// loads queued for a loader.
struct Thread<M: Model> {
    config: ServingConfig,
    cache: LruCache<String, M>,
    /// Requests for a model being loaded or queued for loading, in arrival order.
    parked: HashMap<String, Vec<Request>>,
    /// Models waiting for a loader, with their directories.
    queued_loads: VecDeque<(String, PathBuf)>,
    loading: usize,
    /// Models evicted while loading: their load is answered but not cached.
    evicted_while_loading: HashSet<String>,
    /// Sends loaders' results back to the thread.
    loaded: mpsc::Sender<Message<M>>,
    threads: usize,
}

/// Serves `rx` for as long as the process runs; `loaded` is a sender of the same
/// channel, for the loader threads (so the channel never closes).
pub(crate) fn run<M: Model>(
    config: ServingConfig,
    rx: mpsc::Receiver<Message<M>>,
    loaded: mpsc::Sender<Message<M>>,
) {
    let capacity = NonZeroUsize::new(config.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
    let mut thread = Thread {
        config,
        cache: LruCache::new(capacity),
        parked: HashMap::new(),
        queued_loads: VecDeque::new(),
        loading: 0,
        evicted_while_loading: HashSet::new(),
        loaded,
        threads: 0,
    };
    // A message taken off the channel while batching that did not fit the batch.
    let mut held: Option<Message<M>> = None;
    while let Some(message) = held.take().or_else(|| rx.recv().ok()) {
        match message {
            Message::Evict(id) => thread.evict(id),
            Message::Loaded { model_id, result } => thread.on_loaded(model_id, result),
            Message::Predict(first) => {
                let hit = thread.cache.contains(&first.model_id);
                telemetry::cache(hit);
                if !hit {
                    thread.park(first);
                    continue;
                }
                let mut batch = vec![first];
                held = thread.gather(&mut batch, &rx);
                thread.serve(batch);
            }
        }
    }
}

impl<M: Model> Thread<M> {
    /// Adds the requests that queued meanwhile for `batch`'s model and kind of input,
    /// up to a batch of inputs; returns the first message that did not fit.
    fn gather(
        &self,
        batch: &mut Vec<Request>,
        rx: &mpsc::Receiver<Message<M>>,
    ) -> Option<Message<M>> {
        let mut inputs: usize = batch.iter().map(|r| r.inputs.len()).sum();
        while inputs < self.config.batch_size {
            match rx.try_recv() {
                Ok(Message::Predict(r))
                    if r.model_id == batch[0].model_id && r.inputs.same_kind(&batch[0].inputs) =>
                {
                    inputs += r.inputs.len();
                    batch.push(r);
                }
                Ok(other) => return Some(other),
                Err(_) => return None,
            }
        }
        None
    }

    /// Answers `batch` (requests for one cached model and one kind of input) in
    /// shared forward passes.
    fn serve(&mut self, mut batch: Vec<Request>) {
        batch.retain(|r| !r.reply.is_closed()); // clients that went away while waiting
        if batch.is_empty() {
            return;
        }
        let wanted = if self.config.batch_work.any() {
            self.config.threads
        } else {
            self.config.idle_threads
        };
        if wanted != self.threads {
            use_intra_op_threads(wanted);
            self.threads = wanted;
        }
        let model_id = batch[0].model_id.clone();
        let started = std::time::Instant::now();
        let answers = match self.cache.get(&model_id) {
            Some(model) => {
                let batch_size = self.config.batch_size;
                catch_unwind(AssertUnwindSafe(|| answer(model, &batch, batch_size)))
                    .unwrap_or_else(|_| {
                        tracing::error!(model = %model_id, "a prediction panicked; the model is unloaded and the thread goes on");
                        batch.iter().map(|_| Err(ServingError::Panicked)).collect()
                    })
            }
            None => batch
                .iter()
                .map(|_| Err(ServingError::Predict("the model left the cache".into())))
                .collect(),
        };
        if answers
            .iter()
            .any(|a| matches!(a, Err(ServingError::Panicked)))
        {
            self.cache.pop(&model_id);
        }
        telemetry::served(
            batch.iter().map(|r| r.inputs.len()).sum(),
            batch.iter().map(|r| started.duration_since(r.queued_at)),
            started.elapsed(),
        );
        for (request, answer) in batch.into_iter().zip(answers) {
            let _ = request.reply.send(answer);
        }
    }

    /// Keeps `request` until its model is loaded, and has it loaded.
    fn park(&mut self, request: Request) {
        let model_id = request.model_id.clone();
        if let Some(waiting) = self.parked.get_mut(&model_id) {
            waiting.push(request);
            return;
        }
        self.evicted_while_loading.remove(&model_id);
        self.queued_loads
            .push_back((model_id.clone(), request.model_dir.clone()));
        self.parked.insert(model_id, vec![request]);
        self.start_loads();
    }

    fn start_loads(&mut self) {
        while self.loading < MAX_LOADS {
            let Some((model_id, dir)) = self.queued_loads.pop_front() else {
                return;
            };
            let (device, loaded) = (self.config.device, self.loaded.clone());
            let id = model_id.clone();
            let spawned = std::thread::Builder::new()
                .name("hone-model-loader".into())
                .spawn(move || {
                    // Loading copies tensors; it needs no team of threads.
                    use_intra_op_threads(1);
                    let started = std::time::Instant::now();
                    let result = catch_unwind(AssertUnwindSafe(|| M::load(&dir, device)))
                        .unwrap_or_else(|_| Err("loading panicked".into()))
                        .map_err(|message| ServingError::Load {
                            model: id.clone(),
                            message,
                        });
                    telemetry::loaded(result.is_ok(), started.elapsed());
                    if result.is_ok() {
                        tracing::info!(model = %id, ms = started.elapsed().as_millis() as u64, "loaded model");
                    }
                    let _ = loaded.send(Message::Loaded {
                        model_id: id,
                        result,
                    });
                });
            match spawned {
                Ok(_) => self.loading += 1,
                Err(e) => {
                    let error = ServingError::Load {
                        model: model_id.clone(),
                        message: format!("cannot start a loader thread: {e}"),
                    };
                    self.on_loaded_without_loader(model_id, error);
                }
            }
        }
    }

    fn on_loaded(&mut self, model_id: String, result: Result<M, ServingError>) {
        self.loading = self.loading.saturating_sub(1);
        self.start_loads();
        let waiting = self.parked.remove(&model_id).unwrap_or_default();
        match result {
            Ok(model) => {
                let evicted = self.evicted_while_loading.remove(&model_id);
                self.cache.put(model_id.clone(), model);
                self.serve_parked(waiting);
                if evicted {
                    self.cache.pop(&model_id);
                }
            }
            Err(error) => {
                for request in waiting {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
        }
    }

    fn on_loaded_without_loader(&mut self, model_id: String, error: ServingError) {
        for request in self.parked.remove(&model_id).unwrap_or_default() {
            let _ = request.reply.send(Err(error.clone()));
        }
    }

    /// Serves the requests that waited for one model, in arrival order, runs of the
    /// same kind of input sharing forward passes.
    fn serve_parked(&mut self, waiting: Vec<Request>) {
        let mut batch: Vec<Request> = Vec::new();
        let mut inputs = 0;
        for request in waiting {
            let fits = batch
                .first()
                .is_none_or(|first| first.inputs.same_kind(&request.inputs))
                && inputs < self.config.batch_size;
            if !fits {
                self.serve(std::mem::take(&mut batch));
                inputs = 0;
            }
            inputs += request.inputs.len();
            batch.push(request);
        }
        if !batch.is_empty() {
            self.serve(batch);
        }
    }

    fn evict(&mut self, model_id: String) {
        self.cache.pop(&model_id);
        if self.parked.contains_key(&model_id) {
            self.evicted_while_loading.insert(model_id);
        }
    }
}

/// Each request's predictions: all of them in shared forward passes, or, if that
/// fails, each alone so that every client gets its own error.
fn answer<M: Model>(
    model: &M,
    batch: &[Request],
    batch_size: usize,
) -> Vec<Result<Vec<Prediction>, ServingError>> {
    if batch.len() == 1 {
        return vec![model.predict(&batch[0].inputs, batch_size)];
    }
    let merged = PredictInputs::concat(batch.iter().map(|r| &r.inputs));
    match model.predict(&merged, batch_size) {
        Ok(predictions) => {
            let mut predictions = predictions.into_iter();
            batch
                .iter()
                .map(|r| Ok(predictions.by_ref().take(r.inputs.len()).collect()))
                .collect()
        }
        Err(_) => batch
            .iter()
            .map(|r| model.predict(&r.inputs, batch_size))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use hone_train::predict::ClassPrediction;
    use hone_train::threads::BatchWork;
    use tokio::sync::oneshot;

    use super::*;
    use crate::admission::Admission;

    /// Loads of every [`Fake`] model, to see a panicked model loaded again.
    static LOADS: AtomicUsize = AtomicUsize::new(0);

    /// A model whose behaviour its directory names: `slow…` takes 500 ms to load,
    /// `broken…` fails to; its prediction for a text is the text, and the text
    /// `panic` panics.
    struct Fake;

    impl Model for Fake {
        fn load(dir: &Path, _device: tch::Device) -> Result<Self, String> {
            LOADS.fetch_add(1, Ordering::SeqCst);
            let name = dir.to_string_lossy();
            if name.starts_with("slow") {
                std::thread::sleep(Duration::from_millis(500));
            }
            if name.starts_with("broken") {
                return Err("no weights".into());
            }
            Ok(Fake)
        }

        fn predict(
            &self,
            inputs: &PredictInputs,
            _batch_size: usize,
        ) -> Result<Vec<Prediction>, ServingError> {
            let PredictInputs::Texts(texts) = inputs else {
                return Err(ServingError::BadInput("texts only".into()));
            };
            assert!(!texts.iter().any(|t| t == "panic"), "asked to panic");
            Ok(texts
                .iter()
                .map(|t| {
                    Prediction::Class(ClassPrediction {
                        label: t.clone(),
                        score: 1.0,
                        scores: Vec::new(),
                    })
                })
                .collect())
        }
    }

    type Answer = oneshot::Receiver<Result<Vec<Prediction>, ServingError>>;

    struct Harness {
        tx: mpsc::Sender<Message<Fake>>,
        admission: Arc<Admission>,
        runtime: tokio::runtime::Runtime,
    }

    impl Harness {
        fn start() -> Self {
            let (tx, rx) = mpsc::channel();
            let config = ServingConfig {
                cache_size: 4,
                max_pending: 64,
                max_pending_per_project: 64,
                queue_timeout: Duration::from_secs(5),
                batch_size: 32,
                device: tch::Device::Cpu,
                threads: 1,
                idle_threads: 1,
                batch_work: BatchWork::default(),
            };
            let loaded = tx.clone();
            std::thread::spawn(move || run(config, rx, loaded));
            Self {
                tx,
                admission: Arc::new(Admission::new(64, 64, Duration::from_secs(5))),
                runtime: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
            }
        }

        fn send(&self, model: &str, text: &str) -> Answer {
            let (reply, answer) = oneshot::channel();
            let admitted = self
                .runtime
                .block_on(self.admission.admit("p"))
                .expect("admitted");
            self.tx
                .send(Message::Predict(Request {
                    model_id: model.into(),
                    model_dir: PathBuf::from(model),
                    inputs: PredictInputs::Texts(vec![text.into()]),
                    reply,
                    queued_at: std::time::Instant::now(),
                    _admitted: admitted,
                }))
                .expect("thread running");
            answer
        }
    }

    fn label(answer: Answer) -> Result<String, ServingError> {
        let predictions = answer.blocking_recv().expect("answered")?;
        match predictions.as_slice() {
            [Prediction::Class(c)] => Ok(c.label.clone()),
            other => panic!("unexpected predictions {other:?}"),
        }
    }

    #[test]
    fn a_panic_is_answered_500_and_the_thread_goes_on_serving() {
        let harness = Harness::start();
        assert_eq!(
            label(harness.send("panicky", "hello")).expect("ok"),
            "hello"
        );
        let loads = LOADS.load(Ordering::SeqCst);
        let panicked = label(harness.send("panicky", "panic"));
        assert!(
            matches!(panicked, Err(ServingError::Panicked)),
            "{panicked:?}"
        );
        assert_eq!(
            label(harness.send("panicky", "again")).expect("ok"),
            "again"
        );
        assert!(
            LOADS.load(Ordering::SeqCst) > loads,
            "the model that panicked was loaded again"
        );
    }

    #[test]
    fn a_model_loading_does_not_hold_up_a_loaded_one() {
        let harness = Harness::start();
        assert_eq!(label(harness.send("fast", "warm")).expect("ok"), "warm");
        let started = Instant::now();
        let slow = harness.send("slow-model", "late");
        let fast = harness.send("fast", "early");
        assert_eq!(label(fast).expect("ok"), "early");
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "the loaded model waited for the load: {:?}",
            started.elapsed()
        );
        assert_eq!(label(slow).expect("ok"), "late");
        assert!(started.elapsed() >= Duration::from_millis(500));
    }

    #[test]
    fn every_request_waiting_for_a_model_that_fails_to_load_gets_the_error() {
        let harness = Harness::start();
        let answers: Vec<Answer> = (0..3)
            .map(|i| harness.send("broken-model", &i.to_string()))
            .collect();
        for answer in answers {
            let error = label(answer).expect_err("cannot load");
            assert!(
                matches!(&error, ServingError::Load { message, .. } if message == "no weights"),
                "{error:?}"
            );
        }
        // Another request tries again (the failure is not cached).
        assert!(label(harness.send("broken-model", "x")).is_err());
    }
}
