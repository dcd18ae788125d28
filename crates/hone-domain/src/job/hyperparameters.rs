//! A job's hyperparameters: as a user sends them ([`HyperparametersInput`]), their
//! validation, and the complete recipe stored with the job ([`Hyperparameters`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::openai::{self, AutoOr};
use super::{
    ClassWeights, HeadSolver, HeadType, MethodType, MonitorMetric, PoolingType, Quantization,
    ValidationError, AUTO_DEFAULT_BUDGET, AUTO_MAX_BUDGET,
};
use crate::dataset::Modality;

/// The highest learning rate a job may have (or its search try).
pub const MAX_LEARNING_RATE: f64 = 0.1;

/// The default rate of a text model that trains its encoder: transformers' default
/// for fine-tuning.
pub const TEXT_FINE_TUNE_LEARNING_RATE: f64 = 5e-5;

/// The default rate of an image model that trains its backbone. A convolutional
/// network fine-tuned on a few hundred images moves little at a transformer's 5e-5:
/// on Fashion-MNIST (20 a class, EfficientNet-Lite0, `full`, 3 epochs) hone's own
/// learning-rate search chose 5e-4 and held-out accuracy rose from 0.154 to 0.574, and
/// plain PyTorch on a 10-class task of 30 a class scored 0.93–0.98 at 3e-4 (full and
/// partial, with augmentation) against 0.37–0.79 at 1e-4 (issue 19; BENCHMARKS.md).
pub const IMAGE_FINE_TUNE_LEARNING_RATE: f64 = 3e-4;

/// The default rate of a new head trained alone on frozen features.
pub const HEAD_LEARNING_RATE: f64 = 1e-3;

/// The fewest optimisation steps a default training takes: on a few hundred
/// examples, 3 epochs at batch 16 are 20 to 40 steps, which left hone's `full` 4.6 to
/// 21 points below a plain PyTorch fine-tune on every text task of the quality
/// benchmark; sized, every `partial` and `full` row of it rose, by 3 to 40 points
/// (BENCHMARKS.md, "Transfer quality: epochs sized for the data"). The best epoch by
/// validation loss is published whatever the count, so more epochs cost time, not the
/// model.
pub const MIN_DEFAULT_STEPS: u32 = 100;
/// The most epochs [`MIN_DEFAULT_STEPS`] adds.
pub const MAX_DEFAULT_EPOCHS: u32 = 20;

/// Hyperparameters as a user sends them: every one optional. OpenAI's names
/// (`n_epochs`, `learning_rate_multiplier`) and `"auto"` values are accepted beside
/// hone's; giving both names of one setting with different values is refused.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HyperparametersInput {
    /// Passes over the training data (1–100). Default 3 (10 for a `feature_extraction`
    /// head trained with AdamW), raised on a small training set until training takes
    /// at least 100 optimisation steps, to at most 20 epochs; the job's
    /// `hyperparameters.epochs` shows the count once it runs.
    #[schema(example = 3)]
    pub epochs: Option<u32>,
    /// OpenAI's name for `epochs`; `"auto"` is the default.
    #[schema(schema_with = auto_or_integer)]
    pub n_epochs: Option<AutoOr<u32>>,
    /// Examples per optimisation step (1–512), or `"auto"`. Default 16.
    #[schema(schema_with = auto_or_integer)]
    pub batch_size: Option<AutoOr<u32>>,
    /// Peak learning rate of AdamW (0 < lr ≤ 0.1). Default 5e-5 for a text base
    /// model, 3e-4 for an image one; 1e-3 for `feature_extraction`, where only the new
    /// head trains. `"auto"` (`partial`,
    /// `full`, or `auto` when it chooses one of them): the job tries a small grid around
    /// the method's default (⅓×, 1×, 3×, 10×), each for a third of the epochs (at least
    /// one), keeps the rate with the best validation macro-F1 (a tie within 0.01 goes
    /// to the one nearest the default) and reports them all in
    /// `result.learning_rate_search`; without validation data it keeps the default.
    #[schema(schema_with = auto_or_number)]
    pub learning_rate: Option<AutoOr<f64>>,
    /// OpenAI's way to set the learning rate: a factor (0 < m ≤ 100) on the default
    /// learning rate of the method that runs (for `auto`, of the method it chooses), or
    /// `"auto"` for 1. With `learning_rate` too, the two must agree.
    #[schema(schema_with = auto_or_number)]
    pub learning_rate_multiplier: Option<AutoOr<f64>>,
    /// Fraction of the steps spent warming the learning rate up linearly (0–0.5). Default 0.1.
    #[schema(example = 0.1)]
    pub warmup_ratio: Option<f64>,
    /// AdamW decoupled weight decay (0–1). Default 0.01.
    #[schema(example = 0.01)]
    pub weight_decay: Option<f64>,
    /// Inputs are truncated to this many tokens (8 to the model's maximum). Default 128.
    #[schema(example = 128)]
    pub max_seq_len: Option<u32>,
    /// Layer-wise learning-rate decay (0 < d ≤ 1): the head trains at `learning_rate`,
    /// the top encoder layer at `learning_rate·d`, the next at `·d²`, down to the
    /// embeddings. Lower layers hold more general features and should move less.
    /// Default 1 (one rate for all).
    #[schema(example = 0.9)]
    pub layer_lr_decay: Option<f64>,
    /// Default `linear`.
    pub head: Option<HeadType>,
    /// Default `mean`.
    pub pooling: Option<PoolingType>,
    /// Label smoothing of the cross-entropy (0 ≤ ε < 0.5). Default 0.
    #[schema(example = 0.1)]
    pub label_smoothing: Option<f64>,
    /// Default `none`.
    pub class_weights: Option<ClassWeights>,
    /// Fraction of the training file held out, stratified by label, when no
    /// `validation_file` is given (0 disables; at most 0.5). Default: 0.2 below 1,000
    /// examples, 0.1 above; none below 20 examples.
    #[schema(example = 0.2)]
    pub validation_split: Option<f64>,
    /// Stop after this many epochs without improvement of `early_stopping_metric`
    /// (0 disables; 1–100). Whatever stops training, the best epoch's weights are the
    /// ones published. Default 0.
    #[schema(example = 2)]
    pub early_stopping_patience: Option<u32>,
    /// What picks the best epoch and drives early stopping. Default `loss`.
    pub early_stopping_metric: Option<MonitorMetric>,
    /// Multi-task files: the weight of each task's loss in the joint loss (each above
    /// 0 and at most 100; relative, so only their ratios matter). Tasks left out weigh
    /// 1. Default: every task weighs 1.
    #[schema(example = json!({"sentiment": 1.0, "topic": 0.5}))]
    pub task_weights: Option<BTreeMap<String, f64>>,
    /// Image base models only: train `full` and `partial` on a random resized crop and
    /// horizontal flip of each image, drawn anew every epoch (`feature_extraction`
    /// computes its features once, on the centre crop, and never augments). Turn it off
    /// for images whose orientation carries the label (digits, text). Default `true`.
    #[schema(example = true)]
    pub augment: Option<bool>,
    /// Text base models only: make each training batch of texts of similar length
    /// (shuffled within buckets of 50 batches, the buckets' batches in random order,
    /// as transformers' `group_by_length`), so batches carry less padding and train
    /// faster. Every text is still seen once per epoch. Default `true`.
    #[schema(example = true)]
    pub group_by_length: Option<bool>,
    /// `feature_extraction` (and `auto` when it chooses it), linear heads: `lbfgs`
    /// fits the head to convergence as L2-regularised logistic regression with the
    /// regularisation chosen by 5-fold cross-validation on the training split (a tuned
    /// linear probe, reported as the job's one epoch: `epochs` is 1 and refused when
    /// given with `feature_extraction`; `learning_rate` and the schedule do not
    /// apply); `adamw` trains it for `epochs`. Default `lbfgs`, unless the request
    /// sets `epochs` (`n_epochs`), `learning_rate` or `learning_rate_multiplier`,
    /// which only `adamw` uses, or an `mlp` head, which always trains with `adamw`.
    pub head_solver: Option<HeadSolver>,
    /// Text models: `int8` serves the published model with its encoder's Linear layers
    /// in int8 on the CPU (about 1.5–1.7× faster predictions); the job evaluates the
    /// model both ways on its validation data and reports the change in
    /// `result.quantization`. Default `none` (fp32).
    pub quantization: Option<Quantization>,
    /// `auto` only: what its search by trial may spend, as a multiple of the training
    /// of the candidate it considers (0–10). The head alone on the frozen features is
    /// always fitted; `partial` (at one or two depths) and then `full` each get a trial
    /// of half their epochs when that trial, with the trials before it, costs at most
    /// `auto_budget` times the candidate's own training. 0 tries nothing beyond the
    /// head alone. Default 1: `auto` then costs at most about twice the training of
    /// the costliest strategy it tries.
    #[schema(example = 1.0)]
    pub auto_budget: Option<f64>,
    /// Final fit: once training has chosen its epochs on the validation data (the best
    /// epoch), train again from the start on the training and validation data
    /// together for that many epochs, and publish that model. Its reported validation
    /// metrics are the first run's (the refit has no held-out data left). Worth it when
    /// the validation data are a large share of all the data and the first run's
    /// choice is stable; with a few examples a class, the validation split is all the
    /// evidence there is. Default `true` for a fitted probe (`feature_extraction` with
    /// `head_solver` `lbfgs` and a linear head, or `auto`'s choice of it), which
    /// chooses its regularisation by cross-validation on the data it fits and has no
    /// epochs to choose, so the validation data only report; `false` otherwise.
    #[schema(example = false)]
    pub refit_on_validation: Option<bool>,
}

/// Hyperparameters with every default filled in and every bound checked; stored with
/// the job so that the run is reproducible from the job row alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Hyperparameters {
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// `learning_rate` was `"auto"`: the rate is searched before training (see the
    /// request field); `learning_rate` holds the method's default until then. `false`
    /// for every job stored before the field existed.
    #[serde(default)]
    pub learning_rate_search: bool,
    /// `learning_rate` over the default learning rate of the method that runs
    /// (OpenAI's `learning_rate_multiplier`); it is what an `auto` job keeps when it
    /// adopts the defaults of its choice.
    #[serde(default = "one")]
    pub learning_rate_multiplier: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub max_seq_len: u32,
    #[serde(default = "one")]
    pub layer_lr_decay: f64,
    #[serde(default)]
    pub head: HeadType,
    #[serde(default)]
    pub pooling: PoolingType,
    #[serde(default)]
    pub label_smoothing: f64,
    #[serde(default)]
    pub class_weights: ClassWeights,
    /// `None`: chosen by the size of the training file (see the request field).
    #[serde(default)]
    pub validation_split: Option<f64>,
    #[serde(default)]
    pub early_stopping_patience: u32,
    #[serde(default)]
    pub early_stopping_metric: MonitorMetric,
    /// Multi-task: the weights the request gave; tasks not named weigh 1.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub task_weights: BTreeMap<String, f64>,
    /// Image jobs: random crops and flips in training (see the request field); always
    /// `false` for text, as for every job stored before images.
    #[serde(default)]
    pub augment: bool,
    /// Text jobs: batches of similar length (see the request field); `false` for
    /// image jobs, and for every job stored before the field existed.
    #[serde(default)]
    pub group_by_length: bool,
    /// How `feature_extraction` fits a linear head (see the request field); `adamw`
    /// for every job stored before the field existed.
    #[serde(default)]
    pub head_solver: HeadSolver,
    /// `auto`'s search budget (see the request field); 1 for jobs stored before it
    /// existed.
    #[serde(default = "one")]
    pub auto_budget: f64,
    /// Train again on training + validation data for the chosen epochs (see the
    /// request field); `false` for jobs stored before it existed.
    #[serde(default)]
    pub refit_on_validation: bool,
    /// How the published model serves (see the request field); `none` for every job
    /// stored before the field existed.
    #[serde(default)]
    pub quantization: Quantization,
    /// The fields that took their default rather than a value from the request. An
    /// `auto` job re-derives these once it has chosen its strategy.
    #[serde(default)]
    pub defaulted: Vec<String>,
    /// The kind of base model whose defaults filled the fields the request left out
    /// (they differ in the learning rate); `text` for every job stored before image
    /// models had defaults of their own.
    #[serde(default)]
    pub modality: Modality,
}

fn one() -> f64 {
    1.0
}

impl Default for Hyperparameters {
    fn default() -> Self {
        Self::defaults_for(MethodType::Full, Modality::Text)
    }
}

impl Hyperparameters {
    /// The recipe for a strategy on a kind of base model when the user states nothing:
    /// transformers' defaults for fine-tuning a text model, a higher rate for an image
    /// model's backbone, and for a head alone the higher rate and longer schedule that
    /// a freshly initialised linear model needs.
    pub fn defaults_for(method: MethodType, modality: Modality) -> Self {
        let head_only = method.head_only();
        Self {
            epochs: if head_only { 10 } else { 3 },
            batch_size: 16,
            learning_rate: match (head_only, modality) {
                (true, _) => HEAD_LEARNING_RATE,
                (false, Modality::Text) => TEXT_FINE_TUNE_LEARNING_RATE,
                (false, Modality::Image) => IMAGE_FINE_TUNE_LEARNING_RATE,
            },
            learning_rate_search: false,
            learning_rate_multiplier: 1.0,
            warmup_ratio: 0.1,
            weight_decay: 0.01,
            max_seq_len: 128,
            layer_lr_decay: 1.0,
            head: HeadType::Linear,
            pooling: PoolingType::Mean,
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            validation_split: None,
            early_stopping_patience: 0,
            early_stopping_metric: MonitorMetric::Loss,
            task_weights: BTreeMap::new(),
            augment: false,
            group_by_length: false,
            // A head alone is fitted as a tuned linear probe: on the quality benchmark
            // it scored 5 to 11 points above 10 AdamW epochs at 1e-3 on every text
            // task (BENCHMARKS.md, "Transfer quality"), and `auto`'s trials are
            // measured against it as their floor.
            head_solver: if head_only || method == MethodType::Auto {
                HeadSolver::Lbfgs
            } else {
                HeadSolver::AdamW
            },
            auto_budget: AUTO_DEFAULT_BUDGET,
            refit_on_validation: false,
            quantization: Quantization::None,
            defaulted: Vec::new(),
            modality,
        }
    }

    /// These hyperparameters with the method-dependent defaults of `method` in every
    /// field the user left out: how `auto` adopts the recipe of its choice. A learning
    /// rate given as a multiplier scales the new default; one given outright stays,
    /// and its multiplier is now relative to the new default.
    pub fn rebased_on(&self, method: MethodType) -> Self {
        let d = Self::defaults_for(method, self.modality);
        let mut out = self.clone();
        for field in &self.defaulted {
            match field.as_str() {
                "epochs" => out.epochs = d.epochs,
                "learning_rate" => {
                    out.learning_rate = d.learning_rate * self.learning_rate_multiplier
                }
                "refit_on_validation" => out.refit_on_validation = out.fits_a_probe(method),
                _ => {}
            }
        }
        out.learning_rate_multiplier = out.learning_rate / d.learning_rate;
        // A fitted head is one fit, reported as one epoch.
        if out.fits_a_probe(method) {
            out.epochs = 1;
        }
        out
    }

    /// Whether the published head is a fitted probe: `feature_extraction` with a linear
    /// head and `head_solver` `lbfgs`. Its regularisation is chosen by cross-validation
    /// on the data it fits, not on the validation data, so the final fit on training
    /// and validation data together costs that choice nothing.
    pub fn fits_a_probe(&self, method: MethodType) -> bool {
        method == MethodType::FeatureExtraction
            && self.head_solver == HeadSolver::Lbfgs
            && self.head == HeadType::Linear
    }

    /// `refit_on_validation` as asked, or its default for `method`: on for a fitted
    /// probe, off otherwise. A default is remembered, so that `auto` re-derives it
    /// for its choice.
    fn with_refit(mut self, asked: Option<bool>, method: MethodType) -> Self {
        match asked {
            Some(refit) => self.refit_on_validation = refit,
            None => {
                self.refit_on_validation = self.fits_a_probe(method);
                self.defaulted.push("refit_on_validation".to_owned());
            }
        }
        self
    }

    /// These hyperparameters for a training set of `examples` (what remains after the
    /// validation split): a backbone trained with the default `epochs` (`partial`,
    /// `full`, or a head trained with AdamW) gets at least [`MIN_DEFAULT_STEPS`]
    /// optimisation steps, in as many epochs as that takes up to
    /// [`MAX_DEFAULT_EPOCHS`], and never fewer epochs than the default. A fitted probe
    /// has no epochs, and `epochs` given by the request are kept.
    pub fn sized_for(&self, method: MethodType, examples: usize) -> Self {
        let mut out = self.clone();
        if !self.defaulted.iter().any(|f| f == "epochs")
            || self.fits_a_probe(method)
            || method == MethodType::Auto
        {
            return out;
        }
        let per_epoch = examples.div_ceil(self.batch_size.max(1) as usize).max(1) as u32;
        let floor = Self::defaults_for(method, self.modality).epochs;
        out.epochs = MIN_DEFAULT_STEPS
            .div_ceil(per_epoch)
            .clamp(floor, MAX_DEFAULT_EPOCHS.max(floor));
        out
    }

    /// The weight of `task`'s loss in a multi-task job.
    pub fn task_weight(&self, task: &str) -> f64 {
        self.task_weights.get(task).copied().unwrap_or(1.0)
    }

    /// The validation fraction to hold out of `examples` training examples.
    pub fn validation_fraction(&self, examples: usize) -> f64 {
        match self.validation_split {
            Some(f) => f,
            None if examples < 20 => 0.0,
            None if examples < 1000 => 0.2,
            None => 0.1,
        }
    }
}

impl HyperparametersInput {
    /// For a text base model: `model_max_len` is its position limit, the upper bound
    /// of `max_seq_len`; `method` picks the defaults.
    pub fn validate(
        &self,
        model_max_len: u32,
        method: MethodType,
    ) -> Result<Hyperparameters, ValidationError> {
        if self.augment.is_some() {
            return Err(ValidationError::new(
                "hyperparameters.augment",
                "applies to image base models only",
            ));
        }
        let mut hp = self.validate_common(model_max_len, method, Modality::Text)?;
        hp.group_by_length = self.group_by_length.unwrap_or(true);
        hp.quantization = self.quantization.unwrap_or_default();
        Ok(hp)
    }

    /// For an image base model, which has no token limit or pooling choice and takes a
    /// linear head: the fields that only mean something for text are refused by name
    /// rather than silently ignored. `max_seq_len` is stored as 0.
    pub fn validate_image(&self, method: MethodType) -> Result<Hyperparameters, ValidationError> {
        let text_only = [
            ("max_seq_len", self.max_seq_len.is_some()),
            ("pooling", self.pooling.is_some()),
            ("head", self.head.is_some_and(|h| h != HeadType::Linear)),
            ("group_by_length", self.group_by_length.is_some()),
            (
                "quantization",
                self.quantization.is_some_and(|q| q != Quantization::None),
            ),
        ];
        if let Some((name, _)) = text_only.iter().find(|(_, given)| *given) {
            return Err(ValidationError::new(
                format!("hyperparameters.{name}"),
                "applies to text base models only (an image model's input size and \
                 preprocessing come from the base model, its head is linear, and its \
                 convolutions have no int8 path)",
            ));
        }
        let mut hp = self.validate_common(u32::MAX, method, Modality::Image)?;
        hp.max_seq_len = 0;
        hp.augment = self.augment.unwrap_or(true);
        Ok(hp)
    }

    fn validate_common(
        &self,
        model_max_len: u32,
        method: MethodType,
        modality: Modality,
    ) -> Result<Hyperparameters, ValidationError> {
        let d = Hyperparameters::defaults_for(method, modality);
        let p = |name: &str| format!("hyperparameters.{name}");
        // `auto`'s epochs and rate are for the strategy it chooses, not its floor.
        let scheduled = method == MethodType::FeatureExtraction && self.asks_for_a_schedule();
        let head_solver = self.head_solver.unwrap_or(if scheduled {
            HeadSolver::AdamW
        } else {
            d.head_solver
        });
        if head_solver != HeadSolver::AdamW
            && !matches!(method, MethodType::FeatureExtraction | MethodType::Auto)
        {
            return Err(ValidationError::new(
                p("head_solver"),
                "applies to feature_extraction (and auto) only: the other methods train the \
                 backbone with the head",
            ));
        }
        // Only the method-dependent fields need remembering (see `rebased_on`).
        let mut defaulted = Vec::new();
        let epochs = openai::one_of(("epochs", self.epochs), ("n_epochs", self.n_epochs))?
            .unwrap_or_else(|| {
                defaulted.push("epochs".to_owned());
                d.epochs
            });
        let (learning_rate, learning_rate_multiplier) = self.resolve_learning_rate(&d)?;
        let learning_rate_search = self.learning_rate == Some(AutoOr::Auto);
        // A searched rate is centred on the default of the method that runs.
        if self.learning_rate.and_then(AutoOr::value).is_none() {
            defaulted.push("learning_rate".to_owned());
        }
        if learning_rate_search && method == MethodType::FeatureExtraction {
            return Err(ValidationError::new(
                p("learning_rate"),
                "\"auto\" searches the rate of a method that trains the encoder (partial, \
                 full, or auto when it chooses one); a feature_extraction head has its own \
                 default",
            ));
        }
        if !(1..=100).contains(&epochs) {
            return Err(ValidationError::new(
                p(if self.epochs.is_some() {
                    "epochs"
                } else {
                    "n_epochs"
                }),
                "must be between 1 and 100",
            ));
        }
        // A fitted head is one fit, reported as one epoch: a number of epochs asked
        // for would be ignored, so it is refused by name.
        let fitted = head_solver == HeadSolver::Lbfgs && method == MethodType::FeatureExtraction;
        if fitted && !defaulted.iter().any(|f| f == "epochs") {
            return Err(ValidationError::new(
                p(if self.epochs.is_some() {
                    "epochs"
                } else {
                    "n_epochs"
                }),
                "does not apply with head_solver lbfgs: the head is fitted to convergence \
                 once (leave it out, or use head_solver adamw)",
            ));
        }
        let epochs = if fitted { 1 } else { epochs };
        let batch_size = self
            .batch_size
            .and_then(AutoOr::value)
            .unwrap_or(d.batch_size);
        if !(1..=512).contains(&batch_size) {
            return Err(ValidationError::new(
                p("batch_size"),
                "must be between 1 and 512",
            ));
        }
        if !(learning_rate > 0.0 && learning_rate <= MAX_LEARNING_RATE) {
            return Err(ValidationError::new(
                p("learning_rate"),
                "must be greater than 0 and at most 0.1",
            ));
        }
        let warmup_ratio = self.warmup_ratio.unwrap_or(d.warmup_ratio);
        if !(0.0..=0.5).contains(&warmup_ratio) {
            return Err(ValidationError::new(
                p("warmup_ratio"),
                "must be between 0 and 0.5",
            ));
        }
        let weight_decay = self.weight_decay.unwrap_or(d.weight_decay);
        if !(0.0..=1.0).contains(&weight_decay) {
            return Err(ValidationError::new(
                p("weight_decay"),
                "must be between 0 and 1",
            ));
        }
        let max_seq_len = self.max_seq_len.unwrap_or(d.max_seq_len.min(model_max_len));
        if !(8..=model_max_len).contains(&max_seq_len) {
            return Err(ValidationError::new(
                p("max_seq_len"),
                format!("must be between 8 and {model_max_len} (the base model's limit)"),
            ));
        }
        let layer_lr_decay = self.layer_lr_decay.unwrap_or(d.layer_lr_decay);
        if !(layer_lr_decay > 0.0 && layer_lr_decay <= 1.0) {
            return Err(ValidationError::new(
                p("layer_lr_decay"),
                "must be greater than 0 and at most 1",
            ));
        }
        let label_smoothing = self.label_smoothing.unwrap_or(d.label_smoothing);
        if !(0.0..0.5).contains(&label_smoothing) {
            return Err(ValidationError::new(
                p("label_smoothing"),
                "must be at least 0 and below 0.5",
            ));
        }
        if let Some(f) = self.validation_split {
            if !(0.0..=0.5).contains(&f) {
                return Err(ValidationError::new(
                    p("validation_split"),
                    "must be between 0 and 0.5",
                ));
            }
        }
        let early_stopping_patience = self
            .early_stopping_patience
            .unwrap_or(d.early_stopping_patience);
        if early_stopping_patience > 100 {
            return Err(ValidationError::new(
                p("early_stopping_patience"),
                "must be between 0 and 100",
            ));
        }
        let task_weights = self.task_weights.clone().unwrap_or_default();
        if let Some((task, w)) = task_weights.iter().find(|(_, &w)| !(w > 0.0 && w <= 100.0)) {
            return Err(ValidationError::new(
                format!("hyperparameters.task_weights.{task}"),
                format!("is {w}; must be greater than 0 and at most 100"),
            ));
        }
        let auto_budget = self.auto_budget.unwrap_or(d.auto_budget);
        if self.auto_budget.is_some() && method != MethodType::Auto {
            return Err(ValidationError::new(
                p("auto_budget"),
                "applies to `auto` only: it caps the search for a strategy",
            ));
        }
        if !(0.0..=AUTO_MAX_BUDGET).contains(&auto_budget) {
            return Err(ValidationError::new(
                p("auto_budget"),
                format!("must be between 0 and {AUTO_MAX_BUDGET}"),
            ));
        }
        Ok(Hyperparameters {
            epochs,
            batch_size,
            learning_rate,
            learning_rate_search,
            learning_rate_multiplier,
            warmup_ratio,
            weight_decay,
            max_seq_len,
            layer_lr_decay,
            head: self.head.unwrap_or(d.head),
            pooling: self.pooling.unwrap_or(d.pooling),
            label_smoothing,
            class_weights: self.class_weights.unwrap_or(d.class_weights),
            validation_split: self.validation_split,
            early_stopping_patience,
            early_stopping_metric: self
                .early_stopping_metric
                .unwrap_or(d.early_stopping_metric),
            task_weights,
            augment: false,
            group_by_length: false,
            head_solver,
            auto_budget,
            refit_on_validation: false,
            quantization: Quantization::None,
            defaulted,
            modality,
        }
        .with_refit(self.refit_on_validation, method))
    }
}

impl HyperparametersInput {
    /// Whether the request sets what only a head trained over epochs uses (their
    /// number, a learning rate) or an `mlp` head: a `feature_extraction` head then
    /// defaults to AdamW rather than to the fitted probe.
    fn asks_for_a_schedule(&self) -> bool {
        self.epochs.is_some()
            || self.n_epochs.and_then(AutoOr::value).is_some()
            || self.learning_rate.and_then(AutoOr::value).is_some()
            || self
                .learning_rate_multiplier
                .and_then(AutoOr::value)
                .is_some()
            || self.head == Some(HeadType::Mlp)
    }

    /// The learning rate and its multiplier on `d`'s default, from `learning_rate`,
    /// `learning_rate_multiplier`, both (when they agree) or neither.
    fn resolve_learning_rate(&self, d: &Hyperparameters) -> Result<(f64, f64), ValidationError> {
        let multiplier = match self.learning_rate_multiplier {
            Some(AutoOr::Value(m)) if !(m > 0.0 && m <= 100.0) => {
                return Err(ValidationError::new(
                    "hyperparameters.learning_rate_multiplier",
                    "must be greater than 0 and at most 100",
                ))
            }
            Some(AutoOr::Value(m)) => Some(m),
            Some(AutoOr::Auto) | None => None,
        };
        match (self.learning_rate, multiplier) {
            (Some(AutoOr::Auto), Some(_)) => Err(ValidationError::new(
                "hyperparameters.learning_rate_multiplier",
                "cannot be given with learning_rate \"auto\" (the search picks the rate); \
                 give one of them",
            )),
            (Some(AutoOr::Auto), None) => Ok((d.learning_rate, 1.0)),
            (Some(AutoOr::Value(lr)), Some(m))
                if (lr - d.learning_rate * m).abs() > 1e-9 * lr.abs() =>
            {
                Err(ValidationError::new(
                    "hyperparameters.learning_rate_multiplier",
                    format!(
                        "is {m}, which makes a learning rate of {}, but \
                         hyperparameters.learning_rate is {lr}; give one of them",
                        d.learning_rate * m
                    ),
                ))
            }
            (Some(AutoOr::Value(lr)), _) => Ok((lr, lr / d.learning_rate)),
            (None, m) => {
                let m = m.unwrap_or(1.0);
                Ok((d.learning_rate * m, m))
            }
        }
    }
}

fn auto_or(number: utoipa::openapi::schema::Type) -> utoipa::openapi::schema::OneOfBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(["auto"])),
        )
        .item(ObjectBuilder::new().schema_type(number))
}

fn auto_or_integer() -> utoipa::openapi::schema::OneOfBuilder {
    auto_or(utoipa::openapi::schema::Type::Integer)
}

fn auto_or_number() -> utoipa::openapi::schema::OneOfBuilder {
    auto_or(utoipa::openapi::schema::Type::Number)
}
