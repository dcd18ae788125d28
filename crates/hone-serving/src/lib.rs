//! Serving predictions from published models, and transferability estimates of base
//! models (see [`transferability`]).
//!
//! libtorch models are not `Sync` and inference is CPU-heavy, so models live on a
//! dedicated OS thread that owns a bounded LRU cache of loaded classifiers; requests
//! reach it over a channel and answer over a oneshot, and the async runtime never runs
//! a forward pass. A semaphore bounds the requests waiting for that thread; when it is
//! full a request waits for a place, in arrival order, for at most
//! [`ServingConfig::queue_timeout`], and only then is it turned away (the API answers
//! 429): a burst queues for a moment instead of failing, and a sustained overload still
//! fails fast rather than queueing without end.

mod admission;
pub mod catalog;
pub mod checkpoints;
pub mod transferability;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use admission::Admission;
use hone_train::predict::Classifier;
pub use hone_train::predict::{ClassPrediction, Prediction};
use hone_train::threads::{use_intra_op_threads, BatchWork};
use lru::LruCache;
use tokio::sync::{oneshot, OwnedSemaphorePermit};

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Loaded models kept in memory.
    pub cache_size: usize,
    /// Requests admitted at once (running or waiting for the inference thread).
    pub max_pending: usize,
    /// How long a request may wait for admission before it is refused as overloaded.
    pub queue_timeout: Duration,
    /// Inputs per forward pass.
    pub batch_size: usize,
    pub device: tch::Device,
    /// libtorch intra-op threads of the inference thread while batch work (training,
    /// estimates) runs in the process.
    pub threads: usize,
    /// ... and while none does.
    pub idle_threads: usize,
    /// The process's batch work, which the inference thread yields cores to.
    pub batch_work: BatchWork,
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("the prediction queue is full and stayed full; retry shortly")]
    Overloaded,
    #[error("the inference thread has stopped")]
    Stopped,
    #[error("model {model} could not be loaded: {message}")]
    Load { model: String, message: String },
    /// The inputs do not suit the model (pairs for a single-text model or back).
    #[error("{0}")]
    BadInput(String),
    #[error("prediction failed: {0}")]
    Predict(String),
}

/// What one request asks a model to classify: one kind of input per request, the
/// kind the model was trained on.
#[derive(Debug, Clone, PartialEq)]
pub enum PredictInputs {
    Texts(Vec<String>),
    /// `texts[i]` with `pairs[i]`, for models trained on text pairs.
    Pairs {
        texts: Vec<String>,
        pairs: Vec<String>,
    },
    /// Encoded PNG or JPEG images, for image models.
    Images(Vec<Vec<u8>>),
}

impl PredictInputs {
    pub fn len(&self) -> usize {
        match self {
            PredictInputs::Texts(t) | PredictInputs::Pairs { texts: t, .. } => t.len(),
            PredictInputs::Images(i) => i.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `other` can share forward passes with these inputs.
    fn same_kind(&self, other: &PredictInputs) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// All requests' inputs in order, as one (all of the first one's kind).
    fn concat<'a>(all: impl IntoIterator<Item = &'a PredictInputs> + Clone) -> PredictInputs {
        let mut merged = match all.clone().into_iter().next() {
            Some(PredictInputs::Pairs { .. }) => PredictInputs::Pairs {
                texts: Vec::new(),
                pairs: Vec::new(),
            },
            Some(PredictInputs::Images(_)) => PredictInputs::Images(Vec::new()),
            _ => PredictInputs::Texts(Vec::new()),
        };
        for inputs in all {
            match (&mut merged, inputs) {
                (PredictInputs::Texts(m), PredictInputs::Texts(t)) => m.extend(t.iter().cloned()),
                (
                    PredictInputs::Pairs { texts, pairs },
                    PredictInputs::Pairs { texts: t, pairs: p },
                ) => {
                    texts.extend(t.iter().cloned());
                    pairs.extend(p.iter().cloned());
                }
                (PredictInputs::Images(m), PredictInputs::Images(i)) => m.extend(i.iter().cloned()),
                _ => {}
            }
        }
        merged
    }
}

struct Request {
    model_id: String,
    model_dir: PathBuf,
    inputs: PredictInputs,
    reply: oneshot::Sender<Result<Vec<Prediction>, ServingError>>,
    /// Held until the request is answered; `None` for a merged batch, whose requests
    /// hold their own.
    _permit: Option<OwnedSemaphorePermit>,
}

enum Message {
    Predict(Request),
    Evict(String),
}

/// Handle to the inference thread; cheap to clone.
#[derive(Clone)]
pub struct Predictor {
    tx: mpsc::Sender<Message>,
    admission: Arc<Admission>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor").finish_non_exhaustive()
    }
}

impl Predictor {
    pub fn start(config: ServingConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Message>();
        let admission = Arc::new(Admission::new(config.max_pending, config.queue_timeout));
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("hone-inference".into())
            .spawn(move || {
                let _entered = span.enter();
                run(config, rx)
            })?;
        Ok(Self { tx, admission })
    }

    /// Predicts with the model published in `model_dir`, loading it on first use.
    pub async fn predict(
        &self,
        model_id: &str,
        model_dir: PathBuf,
        inputs: PredictInputs,
    ) -> Result<Vec<Prediction>, ServingError> {
        let permit = self.admission.admit().await?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Predict(Request {
                model_id: model_id.to_owned(),
                model_dir,
                inputs,
                reply,
                _permit: Some(permit),
            }))
            .map_err(|_| ServingError::Stopped)?;
        answer.await.map_err(|_| ServingError::Stopped)?
    }

    /// Drops a model from the cache (after it was deleted).
    pub fn evict(&self, model_id: &str) {
        let _ = self.tx.send(Message::Evict(model_id.to_owned()));
    }
}

fn run(config: ServingConfig, rx: mpsc::Receiver<Message>) {
    let capacity = NonZeroUsize::new(config.cache_size.max(1)).unwrap_or(NonZeroUsize::MIN);
    let mut cache: LruCache<String, Classifier> = LruCache::new(capacity);
    // A message taken off the channel while batching that did not fit the batch.
    let mut held: Option<Message> = None;
    let mut threads = 0;
    while let Some(message) = held.take().or_else(|| rx.recv().ok()) {
        let first = match message {
            Message::Evict(id) => {
                cache.pop(&id);
                continue;
            }
            Message::Predict(r) => r,
        };
        // Requests that queued meanwhile for the same model and kind of input join
        // this one's forward passes (up to a batch of inputs): under concurrent load
        // the thread runs full batches instead of one small request at a time.
        let mut batch = vec![first];
        let mut inputs = batch[0].inputs.len();
        while inputs < config.batch_size {
            match rx.try_recv() {
                Ok(Message::Predict(r))
                    if r.model_id == batch[0].model_id && r.inputs.same_kind(&batch[0].inputs) =>
                {
                    inputs += r.inputs.len();
                    batch.push(r);
                }
                Ok(other) => {
                    held = Some(other);
                    break;
                }
                Err(_) => break,
            }
        }
        batch.retain(|r| !r.reply.is_closed()); // clients that went away while waiting
        let wanted = if config.batch_work.any() {
            config.threads
        } else {
            config.idle_threads
        };
        if wanted != threads {
            use_intra_op_threads(wanted);
            threads = wanted;
        }
        if batch.len() > 1 {
            predict_batch(&config, &mut cache, batch);
        } else if let Some(request) = batch.pop() {
            let result = predict_one(&config, &mut cache, &request);
            let _ = request.reply.send(result);
        }
    }
}

/// Several requests for one model in shared forward passes, each answered with its
/// own predictions; if the merged call fails, each request runs alone so that every
/// client gets its own error.
fn predict_batch(
    config: &ServingConfig,
    cache: &mut LruCache<String, Classifier>,
    batch: Vec<Request>,
) {
    let merged = Request {
        model_id: batch[0].model_id.clone(),
        model_dir: batch[0].model_dir.clone(),
        inputs: PredictInputs::concat(batch.iter().map(|r| &r.inputs)),
        reply: oneshot::channel().0,
        _permit: None,
    };
    match predict_one(config, cache, &merged) {
        Ok(predictions) => {
            let mut predictions = predictions.into_iter();
            for request in batch {
                let own: Vec<Prediction> =
                    predictions.by_ref().take(request.inputs.len()).collect();
                let _ = request.reply.send(Ok(own));
            }
        }
        Err(_) => {
            for request in batch {
                let result = predict_one(config, cache, &request);
                let _ = request.reply.send(result);
            }
        }
    }
}

fn predict_one(
    config: &ServingConfig,
    cache: &mut LruCache<String, Classifier>,
    request: &Request,
) -> Result<Vec<Prediction>, ServingError> {
    if !cache.contains(&request.model_id) {
        let started = std::time::Instant::now();
        let classifier = Classifier::load(&request.model_dir, config.device).map_err(|e| {
            ServingError::Load {
                model: request.model_id.clone(),
                message: e.to_string(),
            }
        })?;
        tracing::info!(model = %request.model_id, ms = started.elapsed().as_millis() as u64, "loaded model");
        cache.put(request.model_id.clone(), classifier);
    }
    let classifier = cache
        .get(&request.model_id)
        .ok_or_else(|| ServingError::Predict("model vanished from the cache".into()))?;
    let predictions = match &request.inputs {
        PredictInputs::Texts(texts) => classifier.predict_inputs(texts, None, config.batch_size),
        PredictInputs::Pairs { texts, pairs } => {
            classifier.predict_inputs(texts, Some(pairs), config.batch_size)
        }
        PredictInputs::Images(images) => classifier.predict_images(images, config.batch_size),
    };
    predictions.map_err(|e| match e {
        hone_train::TrainError::InvalidInput(m) => ServingError::BadInput(m),
        other => ServingError::Predict(other.to_string()),
    })
}
