//! Serving predictions from published models, and transferability estimates of base
//! models (see [`transferability`]).
//!
//! libtorch models are not `Sync` and inference is CPU-heavy, so models live on a
//! dedicated OS thread that owns a bounded LRU cache of loaded classifiers; requests
//! reach it over a channel and answer over a oneshot, and the async runtime never runs
//! a forward pass. A semaphore bounds the requests waiting for that thread: when it is
//! full the caller is told at once (the API answers 429) instead of queueing without end.

pub mod catalog;
pub mod checkpoints;
pub mod transferability;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

use hone_train::predict::Classifier;
pub use hone_train::predict::{ClassPrediction, Prediction};
use lru::LruCache;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Loaded models kept in memory.
    pub cache_size: usize,
    /// Requests admitted at once (running or waiting for the inference thread).
    pub max_pending: usize,
    /// Inputs per forward pass.
    pub batch_size: usize,
    pub device: tch::Device,
}

#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("too many prediction requests in flight; retry shortly")]
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

struct Request {
    model_id: String,
    model_dir: PathBuf,
    texts: Vec<String>,
    pairs: Option<Vec<String>>,
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
    admission: Arc<Semaphore>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor").finish_non_exhaustive()
    }
}

impl Predictor {
    pub fn start(config: ServingConfig) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Message>();
        let admission = Arc::new(Semaphore::new(config.max_pending.max(1)));
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
    /// `pairs` holds the second text of every input, for models trained on pairs.
    pub async fn predict(
        &self,
        model_id: &str,
        model_dir: PathBuf,
        texts: Vec<String>,
        pairs: Option<Vec<String>>,
    ) -> Result<Vec<Prediction>, ServingError> {
        let permit = self
            .admission
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServingError::Overloaded)?;
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Predict(Request {
                model_id: model_id.to_owned(),
                model_dir,
                texts,
                pairs,
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
        let mut inputs = batch[0].texts.len();
        while inputs < config.batch_size {
            match rx.try_recv() {
                Ok(Message::Predict(r))
                    if r.model_id == batch[0].model_id
                        && r.pairs.is_some() == batch[0].pairs.is_some() =>
                {
                    inputs += r.texts.len();
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
        texts: batch.iter().flat_map(|r| r.texts.iter().cloned()).collect(),
        pairs: batch[0].pairs.as_ref().map(|_| {
            batch
                .iter()
                .flat_map(|r| r.pairs.iter().flatten().cloned())
                .collect()
        }),
        reply: oneshot::channel().0,
        _permit: None,
    };
    match predict_one(config, cache, &merged) {
        Ok(predictions) => {
            let mut predictions = predictions.into_iter();
            for request in batch {
                let own: Vec<Prediction> = predictions.by_ref().take(request.texts.len()).collect();
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
    classifier
        .predict_inputs(&request.texts, request.pairs.as_deref(), config.batch_size)
        .map_err(|e| match e {
            hone_train::TrainError::InvalidInput(m) => ServingError::BadInput(m),
            other => ServingError::Predict(other.to_string()),
        })
}
