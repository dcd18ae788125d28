//! Transferability estimates: which base model fits a user's data before anything is
//! trained. Each candidate's frozen features of the examples are scored with LogME
//! (You et al. 2021, see `hone_train::logme`), and so are the features of a randomly
//! initialised encoder of the same shape, the no-transfer reference.
//!
//! The encoders run on a dedicated OS thread per estimate, never on the async runtime,
//! and a semaphore admits one estimate at a time: a second caller is told at once (the
//! API answers 429) instead of queueing behind minutes of encoder work. Features come
//! from, and go to, files the caller stages; the caller owns the feature cache.
//!
//! Drawing the random encoder reseeds libtorch's global generator (as the worker's own
//! estimate does), so a seeded training running in the same process at that moment
//! (`hone all`) is no longer bitwise reproducible; cached reference features make
//! repeated estimates draw nothing.

use std::collections::{BTreeMap, BinaryHeap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use hone_domain::job::PoolingType;
use hone_domain::split::stratified_split;
use hone_train::model_dir::CONFIG_FILE;
use hone_train::threads::BatchWork;
use hone_train::{BertConfig, TrainError};
pub use hone_train::{Objective, Targets};
use tch::Tensor;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// Estimates running at once; each keeps the cores busy on its own.
const CONCURRENT_ESTIMATES: usize = 1;

/// Inputs per encoder forward pass. The worker uses the same, so that features of
/// the same file computed here or there are the same numbers.
const BATCH_SIZE: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum EstimateError {
    #[error("a transferability estimate is already running; retry shortly")]
    Overloaded,
    #[error("the estimate thread stopped")]
    Stopped,
    #[error("the estimate was cancelled")]
    Cancelled,
    #[error("estimating {model} failed: {source}")]
    Failed {
        model: String,
        #[source]
        source: TrainError,
    },
}

/// Handle to the estimator; cheap to clone.
#[derive(Clone)]
pub struct Estimator {
    device: tch::Device,
    /// libtorch intra-op threads of an estimate's thread.
    threads: usize,
    /// An estimate is batch work: the predict thread yields cores to it.
    batch_work: BatchWork,
    admission: Arc<Semaphore>,
}

impl std::fmt::Debug for Estimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Estimator")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// Admission of one estimate; held until its thread is done, even when the caller
/// went away, so that abandoned work still counts against the limit.
#[derive(Debug)]
pub struct EstimatePermit {
    _permit: OwnedSemaphorePermit,
}

/// One feature matrix of the examples: where a cached copy was staged, and where to
/// write the matrix when it has to be computed (so the caller can cache it).
#[derive(Clone, Debug, Default)]
pub struct FeatureFiles {
    pub cached: Option<PathBuf>,
    pub save_to: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct ModelInput {
    pub base_model: String,
    pub dir: PathBuf,
    pub max_seq_len: usize,
    pub pooling: PoolingType,
    /// The pretrained encoder's features.
    pub features: FeatureFiles,
    /// The random encoder's features.
    pub random_features: FeatureFiles,
}

#[derive(Clone, Debug)]
pub struct EstimateInput {
    pub texts: Vec<String>,
    /// The second text of every example, for a file of text pairs.
    pub pairs: Option<Vec<String>>,
    /// The examples' targets, of any task type (see [`hone_train::logme_targets`]).
    pub targets: Targets,
    /// Seeds the random encoder's weights.
    pub seed: u64,
    pub models: Vec<ModelInput>,
}

#[derive(Clone, Debug)]
pub struct ModelEstimate {
    pub base_model: String,
    pub score: f64,
    pub random_init_score: f64,
    /// The pretrained encoder did not run: its features came from the cache.
    pub features_cached: bool,
    /// The random encoder did not run either.
    pub random_features_cached: bool,
    /// Wall time of this model's estimate, both encoders and both fits.
    pub seconds: f64,
    /// Files written to `save_to` because they were computed.
    pub features_saved: Option<PathBuf>,
    pub random_features_saved: Option<PathBuf>,
}

impl Estimator {
    pub fn new(device: tch::Device, threads: usize, batch_work: BatchWork) -> Self {
        Self {
            device,
            threads,
            batch_work,
            admission: Arc::new(Semaphore::new(CONCURRENT_ESTIMATES)),
        }
    }

    /// Admits an estimate now or says the estimator is busy.
    pub fn try_admit(&self) -> Result<EstimatePermit, EstimateError> {
        self.admission
            .clone()
            .try_acquire_owned()
            .map(|permit| EstimatePermit { _permit: permit })
            .map_err(|_| EstimateError::Overloaded)
    }

    /// Scores every model of `input`, in its order. Dropping the future stops the
    /// encoders at their next batch.
    pub async fn estimate(
        &self,
        permit: EstimatePermit,
        input: EstimateInput,
    ) -> Result<Vec<ModelEstimate>, EstimateError> {
        let stop = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(stop.clone());
        let (reply, answer) = oneshot::channel();
        let (device, threads) = (self.device, self.threads);
        let batch_work = self.batch_work.clone();
        let span = tracing::Span::current();
        std::thread::Builder::new()
            .name("hone-transferability".into())
            .spawn(move || {
                let _entered = span.enter();
                let _working = batch_work.enter();
                hone_train::threads::use_intra_op_threads(threads);
                let result = estimate_all(&input, device, &|| stop.load(Ordering::Relaxed));
                // Free the slot before answering: a client that sends its next request
                // as soon as it has this answer must not be told the estimator is busy.
                drop(permit);
                let _ = reply.send(result);
            })
            .map_err(|_| EstimateError::Stopped)?;
        answer.await.map_err(|_| EstimateError::Stopped)?
    }
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn estimate_all(
    input: &EstimateInput,
    device: tch::Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<Vec<ModelEstimate>, EstimateError> {
    input
        .models
        .iter()
        .map(|model| {
            if cancelled() {
                return Err(EstimateError::Cancelled);
            }
            estimate_one(input, model, device, cancelled).map_err(|e| match e {
                TrainError::Cancelled => EstimateError::Cancelled,
                source => EstimateError::Failed {
                    model: model.base_model.clone(),
                    source,
                },
            })
        })
        .collect()
}

fn estimate_one(
    input: &EstimateInput,
    model: &ModelInput,
    device: tch::Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<ModelEstimate, TrainError> {
    let started = Instant::now();
    let hidden = BertConfig::from_file(&model.dir.join(CONFIG_FILE))?.hidden_size;
    let run = hone_train::FeatureRun {
        base_model_dir: &model.dir,
        max_seq_len: model.max_seq_len,
        pooling: model.pooling,
        batch_size: BATCH_SIZE,
        device,
    };
    let rows = input.texts.len();
    let (features, features_saved) = features_of(&model.features, rows, hidden, || {
        hone_train::extract_features(&run, &input.texts, input.pairs.as_deref(), cancelled)
    })?;
    let score = hone_train::logme_targets(&features, &input.targets)?;
    drop(features);
    if cancelled() {
        return Err(TrainError::Cancelled);
    }
    let (random, random_saved) = features_of(&model.random_features, rows, hidden, || {
        hone_train::features::random_init_features(
            &run,
            &input.texts,
            input.pairs.as_deref(),
            input.seed,
        )
    })?;
    let random_init_score = hone_train::logme_targets(&random, &input.targets)?;
    let estimate = ModelEstimate {
        base_model: model.base_model.clone(),
        score,
        random_init_score,
        features_cached: features_saved.is_none() && model.features.cached.is_some(),
        random_features_cached: random_saved.is_none() && model.random_features.cached.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        features_saved,
        random_features_saved: random_saved,
    };
    tracing::info!(
        model = %estimate.base_model,
        examples = rows,
        score = estimate.score,
        random_init_score = estimate.random_init_score,
        cached = estimate.features_cached,
        seconds = estimate.seconds,
        "transferability estimated"
    );
    Ok(estimate)
}

/// The staged cache entry when it is sound, else `compute`d and written to `save_to`
/// (the path is returned when it was written).
fn features_of(
    files: &FeatureFiles,
    rows: usize,
    hidden: usize,
    compute: impl FnOnce() -> Result<Tensor, TrainError>,
) -> Result<(Tensor, Option<PathBuf>), TrainError> {
    if let Some(path) = &files.cached {
        match hone_train::feature_file::load_features(path, rows, hidden) {
            Ok(t) => return Ok((t, None)),
            Err(e) => tracing::warn!(error = %e, "ignoring a damaged feature cache entry"),
        }
    }
    let features = compute()?;
    let saved = match &files.save_to {
        Some(path) => save(&features, path),
        None => None,
    };
    Ok((features, saved))
}

/// A failed write only costs the next caller a recomputation.
fn save(features: &Tensor, path: &Path) -> Option<PathBuf> {
    match hone_train::feature_file::save_features(features, path) {
        Ok(()) => Some(path.to_owned()),
        Err(e) => {
            tracing::warn!(error = %e, "cannot write features for the cache");
            None
        }
    }
}

/// The examples an estimate scores.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Rows of the file, ascending.
    pub rows: Vec<usize>,
    /// The label of each row of `rows`, renumbered to `0..classes` over the classes
    /// the sample has (LogME needs every class it is told of to occur), in the order
    /// of the original indices.
    pub labels: Vec<usize>,
    pub classes: usize,
    /// `rows` is every row of the file.
    pub whole_file: bool,
}

/// Every row when there are at most `max_examples`, else a seeded sample of
/// `max_examples` rows stratified by label, so every class keeps its share (a class
/// with one example in a large file may be left out). `labels[i]` is row `i`'s class.
pub fn sample_rows(labels: &[usize], max_examples: usize, seed: u64) -> Sample {
    let n = labels.len();
    let rows: Vec<usize> = if n <= max_examples {
        (0..n).collect()
    } else {
        let (_, held) = stratified_split(labels, max_examples as f64 / n as f64, seed);
        trim(held, labels, max_examples)
    };
    let mut present: Vec<usize> = rows.iter().map(|&i| labels[i]).collect();
    present.sort_unstable();
    present.dedup();
    let renumber: BTreeMap<usize, usize> = present
        .iter()
        .enumerate()
        .map(|(new, &old)| (old, new))
        .collect();
    Sample {
        labels: rows.iter().map(|&i| renumber[&labels[i]]).collect(),
        classes: present.len(),
        whole_file: rows.len() == n,
        rows,
    }
}

/// `stratified_split` rounds each class's share and keeps at least one of each, so it
/// may hold out a few rows more than asked; drop them from the classes with the most
/// rows in the sample, where one row less changes the least.
fn trim(rows: Vec<usize>, labels: &[usize], max: usize) -> Vec<usize> {
    if rows.len() <= max {
        return rows;
    }
    let mut by_class: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in &rows {
        by_class.entry(labels[i]).or_default().push(i);
    }
    // Largest class first; among equals, the lowest label (reversed for the max-heap).
    let mut heap: BinaryHeap<(usize, std::cmp::Reverse<usize>)> = by_class
        .iter()
        .map(|(&class, rows)| (rows.len(), std::cmp::Reverse(class)))
        .collect();
    let mut excess = rows.len() - max;
    while excess > 0 {
        let Some((count, std::cmp::Reverse(class))) = heap.pop() else {
            break;
        };
        if let Some(class_rows) = by_class.get_mut(&class) {
            class_rows.pop();
        }
        excess -= 1;
        if count > 1 {
            heap.push((count - 1, std::cmp::Reverse(class)));
        }
    }
    let mut kept: Vec<usize> = by_class.into_values().flatten().collect();
    kept.sort_unstable();
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_is_scored_whole_with_its_classes_renumbered() {
        // Classes 1, 4 and 7 of a larger label set; 0, 2, 3, 5, 6 do not occur.
        let labels = [4, 1, 7, 4, 1];
        let s = sample_rows(&labels, 10, 1);
        assert!(s.whole_file);
        assert_eq!(s.rows, vec![0, 1, 2, 3, 4]);
        assert_eq!(s.labels, vec![1, 0, 2, 1, 0]);
        assert_eq!(s.classes, 3);
    }

    #[test]
    fn a_large_file_is_sampled_by_class_exactly_to_the_limit() {
        // 900 of class 0, 90 of class 1, 7 of class 2, 3 of class 5.
        let mut labels = vec![0; 900];
        labels.extend([1; 90]);
        labels.extend([2; 7]);
        labels.extend([5; 3]);
        let s = sample_rows(&labels, 100, 42);
        assert!(!s.whole_file);
        assert_eq!(s.rows.len(), 100);
        assert!(s.rows.windows(2).all(|w| w[0] < w[1]));
        let count = |c: usize| s.labels.iter().filter(|&&l| l == c).count();
        // Shares of 90, 9, 0.7 and 0.3 rows; the rare classes keep one row each and
        // the largest gives up what rounding added.
        assert_eq!((count(0), count(1), count(2), count(3)), (89, 9, 1, 1));
        assert_eq!(s.classes, 4);
        for (&row, &label) in s.rows.iter().zip(&s.labels) {
            let original = [0, 1, 2, 5][label];
            assert_eq!(labels[row], original);
        }
        // Seeded: the same request scores the same examples.
        assert_eq!(s, sample_rows(&labels, 100, 42));
        assert_ne!(s.rows, sample_rows(&labels, 100, 43).rows);
    }

    #[test]
    fn a_lone_class_can_leave_a_sample_with_too_few_classes() {
        let mut labels = vec![3; 50];
        labels.push(8);
        let s = sample_rows(&labels, 10, 7);
        assert_eq!(s.rows.len(), 10);
        assert_eq!(s.classes, 1); // the caller refuses this: LogME needs two
        assert!(s.labels.iter().all(|&l| l == 0));
    }
}
