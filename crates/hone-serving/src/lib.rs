//! Serving predictions from published models, and transferability estimates of base
//! models (see [`transferability`]).
//!
//! libtorch models are not `Sync` and inference is CPU-heavy, so models live on a
//! dedicated OS thread that owns a bounded LRU cache of loaded classifiers
//! ([`inference`]); requests reach it over a channel and answer over a oneshot, and
//! the async runtime never runs a forward pass. Semaphores bound the requests waiting
//! for that thread, in all and per project ([`admission`]); when they are full a
//! request waits for a place, in arrival order, for at most
//! [`ServingConfig::queue_timeout`], and only then is it turned away (the API answers
//! 429): a burst queues for a moment instead of failing, and a sustained overload still
//! fails fast rather than queueing without end.

mod admission;
pub mod catalog;
pub mod checkpoints;
pub mod export;
mod inference;
pub mod telemetry;
pub mod transferability;

use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use admission::Admission;
pub use admission::Admitted;
use hone_train::predict::Classifier;
pub use hone_train::predict::{ClassPrediction, Prediction};
use hone_train::threads::BatchWork;
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
pub struct ServingConfig {
    /// Loaded models kept in memory.
    pub cache_size: usize,
    /// Requests admitted at once (running or waiting for the inference thread).
    pub max_pending: usize,
    /// Of those, the most one project may hold.
    pub max_pending_per_project: usize,
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

#[derive(Debug, Clone, thiserror::Error)]
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
    /// Input `index` is an image that does not decode (its header passed the API's
    /// checks; the pixels are decoded once, here).
    #[error("input {index}: {message}")]
    BadImage { index: usize, message: String },
    #[error("prediction failed: {0}")]
    Predict(String),
    /// The inference code panicked on this request; the thread goes on serving.
    #[error("prediction failed: an internal error occurred")]
    Panicked,
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
    pub(crate) fn same_kind(&self, other: &PredictInputs) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }

    /// All requests' inputs in order, as one (all of the first one's kind).
    pub(crate) fn concat<'a>(
        all: impl IntoIterator<Item = &'a PredictInputs> + Clone,
    ) -> PredictInputs {
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

/// One request on its way to the inference thread.
pub(crate) struct Request {
    pub(crate) model_id: String,
    pub(crate) model_dir: PathBuf,
    pub(crate) inputs: PredictInputs,
    pub(crate) reply: oneshot::Sender<Result<Vec<Prediction>, ServingError>>,
    /// When it was sent to the thread, for the queue-time metric.
    pub(crate) queued_at: std::time::Instant,
    /// Held until the request is answered.
    pub(crate) _admitted: Admitted,
}

pub(crate) enum Message<M = Classifier> {
    Predict(Request),
    Evict(String),
    /// A loader thread's result for a model that was not in the cache.
    Loaded {
        model_id: String,
        result: Result<M, ServingError>,
    },
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
        let admission = Arc::new(Admission::new(
            config.max_pending,
            config.max_pending_per_project,
            config.queue_timeout,
        ));
        let span = tracing::Span::current();
        let loaded = tx.clone();
        std::thread::Builder::new()
            .name("hone-inference".into())
            .spawn(move || {
                let _entered = span.enter();
                inference::run(config, rx, loaded)
            })?;
        Ok(Self { tx, admission })
    }

    /// Predicts with the model published in `model_dir`, loading it on first use;
    /// `project` is whose request it is (each project holds a bounded share of the
    /// queue).
    pub async fn predict(
        &self,
        project: &str,
        model_id: &str,
        model_dir: PathBuf,
        inputs: PredictInputs,
    ) -> Result<Vec<Prediction>, ServingError> {
        let admitted = self.admit(project).await?;
        self.predict_admitted(admitted, model_id, model_dir, inputs)
            .await
    }

    /// A place in the inference queue for one of `project`'s requests (see
    /// [`predict`](Self::predict)), taken before its inputs are decoded so that a
    /// flood of requests waits in line instead of decoding.
    pub async fn admit(&self, project: &str) -> Result<Admitted, ServingError> {
        self.admission.admit(project).await
    }

    /// [`predict`](Self::predict) with a place taken already.
    pub async fn predict_admitted(
        &self,
        admitted: Admitted,
        model_id: &str,
        model_dir: PathBuf,
        inputs: PredictInputs,
    ) -> Result<Vec<Prediction>, ServingError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Message::Predict(Request {
                model_id: model_id.to_owned(),
                model_dir,
                inputs,
                reply,
                queued_at: std::time::Instant::now(),
                _admitted: admitted,
            }))
            .map_err(|_| ServingError::Stopped)?;
        answer.await.map_err(|_| ServingError::Stopped)?
    }

    /// Drops a model from the cache (after it was deleted).
    pub fn evict(&self, model_id: &str) {
        let _ = self.tx.send(Message::Evict(model_id.to_owned()));
    }
}
