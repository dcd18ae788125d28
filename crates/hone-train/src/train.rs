//! Full fine-tuning of a [`SequenceClassifier`] from a base model directory.
//!
//! The recipe is transformers' `Trainer` default, so results are comparable with what
//! users know: cross-entropy, AdamW (no decay on biases and LayerNorm), linear warmup
//! then linear decay to zero stepped once per batch, gradient-norm clipping, dropout
//! only while training. Everything that draws random numbers — head initialisation,
//! dropout, the shuffle — is seeded from [`TrainConfig::seed`], so a job rerun with the
//! same seed on the same machine reproduces its losses exactly.
//!
//! [`fine_tune`] blocks; the worker runs it on a dedicated OS thread and hears about
//! progress through a [`TrainObserver`], which is also how it asks training to stop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tch::{nn, COptimizer, Device, Kind, Reduction, Tensor};

use crate::bert::{BertConfig, WeightInit, NO_DECAY_GROUP};
use crate::classifier::{
    is_head_variable, ModelMeta, Pooling, SequenceClassifier, CONFIG_FILE, MODEL_META_VERSION,
    WEIGHTS_FILE,
};
pub use crate::error::TrainError;
use crate::predict::Classifier;
use crate::tokenize::{collate, Encoded, TextTokenizer, TOKENIZER_FILE};
use crate::weights::load_safetensors;

/// Hyperparameters of one fine-tuning run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    pub epochs: u32,
    pub batch_size: usize,
    /// Peak learning rate, reached at the end of warmup.
    pub learning_rate: f64,
    /// Fraction of all steps spent warming up (rounded up to whole steps).
    pub warmup_ratio: f64,
    /// AdamW's decoupled weight decay; biases and LayerNorm parameters are exempt.
    pub weight_decay: f64,
    /// Tokens per text, special tokens included; longer texts are truncated.
    pub max_seq_len: usize,
    /// Seeds libtorch (head initialisation, dropout) and the shuffle. On CPU a seed
    /// reproduces a run bit for bit; on CUDA some backward kernels (embedding
    /// gradients) accumulate with atomics, so reruns agree only to rounding.
    pub seed: u64,
    /// Maximum global gradient L2 norm; 0 disables clipping.
    pub grad_clip: f64,
}

impl Default for TrainConfig {
    /// transformers' `TrainingArguments` defaults, with the weight decay and sequence
    /// length usual for sentence classification.
    fn default() -> Self {
        Self {
            epochs: 3,
            batch_size: 16,
            learning_rate: 5e-5,
            warmup_ratio: 0.0,
            weight_decay: 0.01,
            max_seq_len: 128,
            seed: 42,
            grad_clip: 1.0,
        }
    }
}

/// Examples as parallel vectors; `labels[i]` indexes [`TrainJob::label_names`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrainData {
    pub texts: Vec<String>,
    pub labels: Vec<usize>,
}

impl TrainData {
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// Everything one run needs. `device` is the caller's choice (CUDA when present).
#[derive(Debug)]
pub struct TrainJob<'a> {
    /// A Hugging Face model directory: config.json, model.safetensors, tokenizer.json.
    pub base_model_dir: &'a Path,
    /// Label names, in the order of the head's outputs.
    pub label_names: Vec<String>,
    pub train: TrainData,
    pub validation: Option<TrainData>,
    pub config: TrainConfig,
    pub device: Device,
}

/// Where the encoder's weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncoderInit {
    /// The base model's checkpoint: transfer learning.
    #[default]
    Pretrained,
    /// Random weights of the same architecture: the from-scratch baseline that tells
    /// how much the pretrained weights are worth on the user's data.
    Random,
}

/// Receives progress from the training thread and can stop it.
pub trait TrainObserver {
    /// After every optimizer step.
    fn on_step(&mut self, progress: &StepProgress);
    /// After every epoch, with its validation metrics when there is a validation set.
    fn on_epoch(&mut self, metrics: &EpochMetrics);
    /// Polled before every step (and every evaluation batch); `true` ends training
    /// with [`TrainError::Cancelled`].
    fn cancelled(&self) -> bool;
}

/// Progress after one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepProgress {
    /// 1-based.
    pub epoch: u32,
    /// Global, 1-based.
    pub step: u64,
    pub total_steps: u64,
    /// Mean cross-entropy of this step's batch.
    pub loss: f64,
    /// The learning rate this step used.
    pub learning_rate: f64,
    /// Since training started (model loading and tokenization included).
    pub elapsed: Duration,
}

/// Metrics of one epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: u32,
    /// Mean cross-entropy over the epoch's training examples (with dropout on).
    pub train_loss: f64,
    pub validation: Option<EvalMetrics>,
}

/// Metrics on a labelled set, computed in eval mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalMetrics {
    /// Mean cross-entropy.
    pub loss: f64,
    pub accuracy: f64,
    /// Unweighted mean of per-class F1 over the classes that occur in the labels or
    /// the predictions (scikit-learn's `f1_score(average="macro")`).
    pub macro_f1: f64,
    pub examples: usize,
}

/// The result of [`fine_tune`]: the weights of the last epoch, ready to [`save`] — or
/// to predict with at once, through the same code a loaded model uses.
///
/// [`save`]: TrainedModel::save
#[derive(Debug)]
pub struct TrainedModel {
    classifier: Classifier,
    base_model_dir: PathBuf,
    history: Vec<EpochMetrics>,
}

/// Base-model files a published model carries so it can be served (and opened by
/// transformers) without the base model directory.
const REQUIRED_FILES: &[&str] = &[CONFIG_FILE, TOKENIZER_FILE];
const OPTIONAL_FILES: &[&str] = &[
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
];

impl TrainedModel {
    /// Writes a published model directory: `model.safetensors` (encoder under its
    /// checkpoint names, head as `head.weight`/`head.bias`), the base model's config and
    /// tokenizer files, and `hone_model.json`.
    pub fn save(&self, dir: &Path) -> Result<(), TrainError> {
        std::fs::create_dir_all(dir).map_err(|e| TrainError::io(dir, e))?;
        self.classifier.var_store().save(dir.join(WEIGHTS_FILE))?;
        for name in REQUIRED_FILES.iter().chain(OPTIONAL_FILES) {
            let src = self.base_model_dir.join(name);
            if !src.is_file() && OPTIONAL_FILES.contains(name) {
                continue;
            }
            std::fs::copy(&src, dir.join(name)).map_err(|e| TrainError::io(&src, e))?;
        }
        self.classifier.meta().write(dir)
    }

    /// What `hone_model.json` says.
    pub fn meta(&self) -> &ModelMeta {
        self.classifier.meta()
    }

    /// The metrics of the last epoch (whose weights this model holds).
    pub fn final_metrics(&self) -> Option<&EpochMetrics> {
        self.history.last()
    }

    /// Metrics of every epoch, in order.
    pub fn history(&self) -> &[EpochMetrics] {
        &self.history
    }

    pub fn labels(&self) -> &[String] {
        self.classifier.labels()
    }

    /// The trained model as a predictor, e.g. to evaluate it further before saving.
    pub fn classifier(&self) -> &Classifier {
        &self.classifier
    }
}

/// Fine-tunes every weight of the base model plus a new classification head.
pub fn fine_tune(
    job: TrainJob,
    observer: &mut dyn TrainObserver,
) -> Result<TrainedModel, TrainError> {
    fine_tune_with(job, EncoderInit::Pretrained, observer)
}

/// [`fine_tune`] with the choice of starting from the checkpoint or from random
/// weights of the same architecture.
pub fn fine_tune_with(
    job: TrainJob,
    init: EncoderInit,
    observer: &mut dyn TrainObserver,
) -> Result<TrainedModel, TrainError> {
    let started = Instant::now();
    let TrainJob {
        base_model_dir,
        label_names,
        train,
        validation,
        config,
        device,
    } = job;
    check_job(&label_names, &train, validation.as_ref(), &config)?;
    let num_labels = label_names.len();

    let bert_config = BertConfig::from_file(&base_model_dir.join(CONFIG_FILE))?;
    if config.max_seq_len > bert_config.max_position_embeddings {
        return Err(TrainError::InvalidInput(format!(
            "max_seq_len {} exceeds the base model's max_position_embeddings {}",
            config.max_seq_len, bert_config.max_position_embeddings
        )));
    }
    let tokenizer = TextTokenizer::from_dir(base_model_dir, config.max_seq_len)?;
    check_vocab(&tokenizer, &bert_config, base_model_dir)?;

    tch::manual_seed(config.seed as i64);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let vs = nn::VarStore::new(device);
    let model = SequenceClassifier::new(
        &vs.root(),
        &bert_config,
        num_labels,
        WeightInit::random(&bert_config),
    )?;
    if init == EncoderInit::Pretrained {
        load_safetensors(&vs, &base_model_dir.join(WEIGHTS_FILE), &is_head_variable)?;
    }

    let train_encoded = tokenizer.encode(&train.texts)?;
    let validation_encoded = match &validation {
        Some(v) => Some(tokenizer.encode(&v.texts)?),
        None => None,
    };

    let steps_per_epoch = train.len().div_ceil(config.batch_size) as u64;
    let total_steps = steps_per_epoch * u64::from(config.epochs);
    let schedule = LinearSchedule::new(&config, total_steps);
    let mut optimizer = Optimizer::new(&vs, &config)?;
    let pad_id = tokenizer.pad_id();
    tracing::info!(
        examples = train.len(),
        labels = num_labels,
        total_steps,
        ?device,
        ?init,
        "fine-tuning"
    );

    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut history = Vec::with_capacity(config.epochs as usize);
    let mut step = 0u64;
    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        let mut loss_sum = 0.0;
        for indices in order.chunks(config.batch_size) {
            if observer.cancelled() {
                return Err(TrainError::Cancelled);
            }
            let learning_rate = schedule.at(step);
            let items: Vec<&Encoded> = indices.iter().map(|&i| &train_encoded[i]).collect();
            let targets: Vec<i64> = indices.iter().map(|&i| train.labels[i] as i64).collect();
            let batch = collate(&items, pad_id, device)?;
            let targets = Tensor::f_from_slice(&targets)?.f_to_device(device)?;

            let logits = model.forward(&batch, true)?;
            let loss = cross_entropy(&logits, &targets, Reduction::Mean)?;
            optimizer.step(&loss, learning_rate)?;

            let loss = loss.f_double_value(&[])?;
            if !loss.is_finite() {
                return Err(TrainError::InvalidInput(format!(
                    "training diverged: the loss is {loss} at step {}; try a lower learning rate",
                    step + 1
                )));
            }
            step += 1;
            loss_sum += loss * indices.len() as f64;
            observer.on_step(&StepProgress {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate,
                elapsed: started.elapsed(),
            });
        }
        let validation = match (&validation, &validation_encoded) {
            (Some(data), Some(encoded)) => Some(evaluate_encoded(
                &model,
                encoded,
                &data.labels,
                pad_id,
                config.batch_size,
                device,
                &|| observer.cancelled(),
            )?),
            _ => None,
        };
        let metrics = EpochMetrics {
            epoch,
            train_loss: loss_sum / train.len() as f64,
            validation,
        };
        tracing::info!(
            epoch,
            train_loss = metrics.train_loss,
            validation_loss = metrics.validation.as_ref().map(|v| v.loss),
            "epoch done"
        );
        observer.on_epoch(&metrics);
        history.push(metrics);
    }

    let meta = ModelMeta {
        format_version: MODEL_META_VERSION,
        architecture: bert_config.model_type.clone(),
        pooling: Pooling::Mean,
        labels: label_names,
        max_seq_len: config.max_seq_len,
    };
    Ok(TrainedModel {
        classifier: Classifier::from_parts(vs, model, tokenizer, meta, device),
        base_model_dir: base_model_dir.to_owned(),
        history,
    })
}

fn check_job(
    labels: &[String],
    train: &TrainData,
    validation: Option<&TrainData>,
    config: &TrainConfig,
) -> Result<(), TrainError> {
    let invalid = |m: String| Err(TrainError::InvalidInput(m));
    if labels.len() < 2 {
        return invalid(format!(
            "a classifier needs at least 2 labels, got {}",
            labels.len()
        ));
    }
    if train.is_empty() {
        return invalid("the training set is empty".into());
    }
    for (name, data) in
        std::iter::once(("training", train)).chain(validation.map(|v| ("validation", v)))
    {
        if data.texts.len() != data.labels.len() {
            return invalid(format!(
                "the {name} set has {} texts but {} labels",
                data.texts.len(),
                data.labels.len()
            ));
        }
        if let Some((i, l)) = data
            .labels
            .iter()
            .enumerate()
            .find(|(_, &l)| l >= labels.len())
        {
            return invalid(format!(
                "{name} example {i} has label index {l}, but there are {} labels",
                labels.len()
            ));
        }
    }
    if validation.is_some_and(TrainData::is_empty) {
        return invalid("the validation set is empty".into());
    }
    if config.epochs == 0 || config.batch_size == 0 {
        return invalid("epochs and batch_size must be positive".into());
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return invalid(format!(
            "learning_rate {} must be positive",
            config.learning_rate
        ));
    }
    if !(0.0..=1.0).contains(&config.warmup_ratio) {
        return invalid(format!(
            "warmup_ratio {} is not in [0, 1]",
            config.warmup_ratio
        ));
    }
    if !(config.weight_decay.is_finite() && config.weight_decay >= 0.0) {
        return invalid(format!("weight_decay {} must be >= 0", config.weight_decay));
    }
    if !(config.grad_clip.is_finite() && config.grad_clip >= 0.0) {
        return invalid(format!("grad_clip {} must be >= 0", config.grad_clip));
    }
    Ok(())
}

/// An id at or above the embedding table's size would be an index error on CPU and a
/// device-side assert (a dead CUDA context) on GPU: refuse such a pair up front.
pub(crate) fn check_vocab(
    tokenizer: &TextTokenizer,
    config: &BertConfig,
    dir: &Path,
) -> Result<(), TrainError> {
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(TrainError::config(
            dir.join(TOKENIZER_FILE),
            format!(
                "the tokenizer knows {} tokens but the model's vocab_size is {}",
                tokenizer.vocab_size(),
                config.vocab_size
            ),
        ));
    }
    Ok(())
}

fn cross_entropy(
    logits: &Tensor,
    targets: &Tensor,
    reduction: Reduction,
) -> Result<Tensor, TrainError> {
    Ok(logits.f_cross_entropy_loss::<Tensor>(targets, None, reduction, -100, 0.0)?)
}

/// transformers' `get_linear_schedule_with_warmup`: the multiplier of the `s`-th step
/// (0-based) rises linearly from 0 over the warmup steps, then falls linearly to 0 at
/// the last step.
#[derive(Debug, Clone, Copy)]
struct LinearSchedule {
    peak: f64,
    warmup: u64,
    total: u64,
}

impl LinearSchedule {
    fn new(config: &TrainConfig, total: u64) -> Self {
        Self {
            peak: config.learning_rate,
            warmup: (config.warmup_ratio * total as f64).ceil() as u64,
            total,
        }
    }

    fn at(&self, step: u64) -> f64 {
        let factor = if step < self.warmup {
            step as f64 / self.warmup.max(1) as f64
        } else {
            let left = self.total.saturating_sub(step) as f64;
            (left / self.total.saturating_sub(self.warmup).max(1) as f64).max(0.0)
        };
        self.peak * factor
    }
}

/// libtorch's AdamW over the store's trainable variables, in two groups so biases
/// and LayerNorm parameters get no weight decay, and a clip of the global gradient
/// norm that stays on the device (no host sync, as `torch.nn.utils.clip_grad_norm_`).
/// Built on `COptimizer` rather than `nn::Optimizer`, whose methods panic on errors.
/// Public so that `examples/bench.rs` measures the very step the service trains with.
#[derive(Debug)]
pub struct Optimizer {
    inner: COptimizer,
    params: Vec<Tensor>,
    max_grad_norm: f64,
}

impl Optimizer {
    /// AdamW with `config`'s learning rate, weight decay and gradient clip over every
    /// trainable variable of `vs`.
    pub fn new(vs: &nn::VarStore, config: &TrainConfig) -> Result<Self, TrainError> {
        let mut inner = COptimizer::adamw(
            config.learning_rate,
            0.9,
            0.999,
            config.weight_decay,
            1e-8,
            false,
        )?;
        let variables = vs
            .variables_
            .lock()
            .map_err(|_| TrainError::InvalidInput("the variable store is poisoned".into()))?;
        let mut params = Vec::with_capacity(variables.trainable_variables.len());
        let mut no_decay = false;
        for var in &variables.trainable_variables {
            inner.add_parameters(&var.tensor, var.group)?;
            no_decay |= var.group == NO_DECAY_GROUP;
            params.push(var.tensor.shallow_clone());
        }
        if no_decay {
            inner.set_weight_decay_group(NO_DECAY_GROUP, 0.0)?;
        }
        Ok(Self {
            inner,
            params,
            max_grad_norm: config.grad_clip,
        })
    }

    /// Zeroes the gradients, backpropagates `loss`, clips, and updates the variables
    /// at `learning_rate`.
    pub fn step(&mut self, loss: &Tensor, learning_rate: f64) -> Result<(), TrainError> {
        self.inner.zero_grad()?;
        loss.f_backward()?;
        if self.max_grad_norm > 0.0 {
            self.clip_grad_norm()?;
        }
        self.inner.set_learning_rate(learning_rate)?;
        self.inner.step()?;
        Ok(())
    }

    fn clip_grad_norm(&self) -> Result<(), TrainError> {
        tch::no_grad(|| {
            let grads: Vec<Tensor> = self
                .params
                .iter()
                .map(Tensor::grad)
                .filter(Tensor::defined)
                .collect();
            if grads.is_empty() {
                return Ok(());
            }
            let norms = grads
                .iter()
                .map(|g| g.f_norm())
                .collect::<Result<Vec<_>, _>>()?;
            let total = Tensor::f_stack(&norms, 0)?.f_norm()?;
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(self.max_grad_norm)?
                .f_clamp_max(1.0)?;
            for mut g in grads {
                let _ = g.f_mul_(&coef)?;
            }
            Ok(())
        })
    }
}

/// Loss, accuracy and macro-F1 of `model` on tokenized examples, in eval mode under
/// `no_grad`. Results stay on the device until the end, so a GPU is not stalled once
/// per batch.
pub(crate) fn evaluate_encoded(
    model: &SequenceClassifier,
    encoded: &[Encoded],
    labels: &[usize],
    pad_id: u32,
    batch_size: usize,
    device: Device,
    cancelled: &dyn Fn() -> bool,
) -> Result<EvalMetrics, TrainError> {
    tch::no_grad(|| {
        let mut loss_sum = Tensor::f_zeros([], (Kind::Float, device))?;
        let mut predictions = Vec::new();
        for (items, targets) in encoded.chunks(batch_size).zip(labels.chunks(batch_size)) {
            if cancelled() {
                return Err(TrainError::Cancelled);
            }
            let items: Vec<&Encoded> = items.iter().collect();
            let batch = collate(&items, pad_id, device)?;
            let targets: Vec<i64> = targets.iter().map(|&l| l as i64).collect();
            let targets = Tensor::f_from_slice(&targets)?.f_to_device(device)?;
            let logits = model.forward(&batch, false)?;
            loss_sum = loss_sum.f_add(&cross_entropy(&logits, &targets, Reduction::Sum)?)?;
            predictions.push(logits.f_argmax(-1, false)?);
        }
        let predicted: Vec<i64> =
            Vec::try_from(Tensor::f_cat(&predictions, 0)?.f_to_device(Device::Cpu)?)?;
        let loss = loss_sum.f_double_value(&[])? / labels.len() as f64;
        let (accuracy, macro_f1) = classification_scores(labels, &predicted, model.num_labels());
        Ok(EvalMetrics {
            loss,
            accuracy,
            macro_f1,
            examples: labels.len(),
        })
    })
}

/// Accuracy and macro-F1 from true and predicted class indices.
fn classification_scores(truth: &[usize], predicted: &[i64], num_labels: usize) -> (f64, f64) {
    let mut true_positive = vec![0u64; num_labels];
    let mut actual = vec![0u64; num_labels];
    let mut guessed = vec![0u64; num_labels];
    for (&t, &p) in truth.iter().zip(predicted) {
        let p = p as usize;
        actual[t] += 1;
        if p < num_labels {
            guessed[p] += 1;
        }
        if t == p {
            true_positive[t] += 1;
        }
    }
    let n = truth.len().max(1) as f64;
    let accuracy = true_positive.iter().sum::<u64>() as f64 / n;
    let f1s: Vec<f64> = (0..num_labels)
        .filter(|&c| actual[c] + guessed[c] > 0)
        .map(|c| 2.0 * true_positive[c] as f64 / (actual[c] + guessed[c]) as f64)
        .collect();
    let macro_f1 = if f1s.is_empty() {
        0.0
    } else {
        f1s.iter().sum::<f64>() / f1s.len() as f64
    };
    (accuracy, macro_f1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_matches_transformers() {
        let config = TrainConfig {
            learning_rate: 1.0,
            warmup_ratio: 0.2,
            ..TrainConfig::default()
        };
        let s = LinearSchedule::new(&config, 10);
        let lrs: Vec<f64> = (0..10).map(|i| s.at(i)).collect();
        let expected = [0.0, 0.5, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125];
        for (a, b) in lrs.iter().zip(expected) {
            assert!((a - b).abs() < 1e-12, "{lrs:?}");
        }
        let no_warmup = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                ..config
            },
            4,
        );
        assert_eq!(no_warmup.warmup, 1); // ceil(0.2 * 4)
        let flat = LinearSchedule::new(
            &TrainConfig {
                learning_rate: 1.0,
                warmup_ratio: 0.0,
                ..TrainConfig::default()
            },
            4,
        );
        assert_eq!(flat.at(0), 1.0);
        assert_eq!(flat.at(3), 0.25);
    }

    #[test]
    fn macro_f1_matches_scikit_learn() {
        // sklearn: f1_score([0,0,1,1,2], [0,1,1,1,0], average="macro") == 0.4333…
        let (acc, f1) = classification_scores(&[0, 0, 1, 1, 2], &[0, 1, 1, 1, 0], 3);
        assert!((acc - 0.6).abs() < 1e-12);
        let expected = (0.5 + 0.8 + 0.0) / 3.0;
        assert!((f1 - expected).abs() < 1e-12, "{f1}");
        // A class absent from both sides does not count.
        let (_, f1) = classification_scores(&[0, 1], &[0, 1], 5);
        assert_eq!(f1, 1.0);
    }
}
