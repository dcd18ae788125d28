//! Serving a published model: load a directory written by
//! [`TrainedModel::save`](crate::train::TrainedModel::save) and classify texts.

use std::path::Path;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::bert::{BertConfig, WeightInit};
use crate::classifier::{ModelMeta, SequenceClassifier, CONFIG_FILE, WEIGHTS_FILE};
use crate::error::TrainError;
use crate::objective::{Objective, UNTUNED_THRESHOLD};
use crate::tokenize::{collate, Encoded, TextTokenizer};
use crate::train::{check_vocab, evaluate_encoded, EvalMetrics, TrainData};
use crate::weights::load_safetensors;
use hone_domain::dataset::TaskType;

/// One softmax head's answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassPrediction {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Every label's probability (softmax), in the head's label order.
    pub scores: Vec<(String, f32)>,
}

/// What a model says about one input, by its task type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Prediction {
    /// Single-label classification.
    Class(ClassPrediction),
    /// Multi-label: the labels at or above the threshold, and every label's
    /// probability (sigmoid), in the model's label order.
    MultiLabel {
        labels: Vec<String>,
        scores: Vec<(String, f32)>,
        threshold: f32,
    },
    /// Multi-task: every task's answer, in the model's task order.
    MultiTask(Vec<(String, ClassPrediction)>),
}

impl Prediction {
    /// The label of a single-label prediction.
    pub fn label(&self) -> Option<&str> {
        match self {
            Prediction::Class(p) => Some(&p.label),
            _ => None,
        }
    }
}

fn class_prediction(labels: &[String], row: &[f32]) -> ClassPrediction {
    let best = row
        .iter()
        .enumerate()
        .fold(0, |best, (i, &p)| if p > row[best] { i } else { best });
    ClassPrediction {
        label: labels[best].clone(),
        score: row[best],
        scores: labels.iter().cloned().zip(row.iter().copied()).collect(),
    }
}

/// A published model loaded for inference. Not `Sync` (libtorch tensors): keep it
/// on the thread that serves predictions.
#[derive(Debug)]
pub struct Classifier {
    vs: nn::VarStore,
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    meta: ModelMeta,
    objective: Objective,
    device: Device,
}

impl Classifier {
    /// Loads `dir` (hone_model.json, config.json, tokenizer.json, model.safetensors)
    /// onto `device`. Draws no random numbers.
    pub fn load(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let meta = ModelMeta::read(dir)?;
        let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
        if meta.architecture != config.model_type {
            return Err(TrainError::config(
                dir.join(crate::classifier::MODEL_META_FILE),
                format!(
                    "architecture {:?} does not match config.json's model_type {:?}",
                    meta.architecture, config.model_type
                ),
            ));
        }
        if meta.max_seq_len > config.max_position_embeddings {
            return Err(TrainError::config(
                dir.join(crate::classifier::MODEL_META_FILE),
                format!(
                    "max_seq_len {} exceeds max_position_embeddings {}",
                    meta.max_seq_len, config.max_position_embeddings
                ),
            ));
        }
        let tokenizer = TextTokenizer::from_dir(dir, meta.max_seq_len)?;
        check_vocab(&tokenizer, &config, dir)?;
        let vs = nn::VarStore::new(device);
        let objective = meta.objective();
        let model = SequenceClassifier::with_heads(
            &vs.root(),
            &config,
            &objective.sizes(),
            objective.task_type == TaskType::MultiTask,
            meta.head,
            meta.pooling,
            WeightInit::Zeros,
        )?;
        load_safetensors(&vs, &dir.join(WEIGHTS_FILE), &|_| false)?;
        Ok(Self {
            vs,
            model,
            tokenizer,
            meta,
            objective,
            device,
        })
    }

    pub(crate) fn from_parts(
        vs: nn::VarStore,
        model: SequenceClassifier,
        tokenizer: TextTokenizer,
        meta: ModelMeta,
        device: Device,
    ) -> Self {
        let objective = meta.objective();
        Self {
            vs,
            model,
            tokenizer,
            meta,
            objective,
            device,
        }
    }

    pub(crate) fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Label names in the order of the head's outputs (empty for multi-task).
    pub fn labels(&self) -> &[String] {
        &self.meta.labels
    }

    /// What the model's heads predict.
    pub fn objective(&self) -> &Objective {
        &self.objective
    }

    pub fn meta(&self) -> &ModelMeta {
        &self.meta
    }

    pub fn model(&self) -> &SequenceClassifier {
        &self.model
    }

    pub fn tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// Classifies `texts`, `batch_size` per forward pass, answers in input order.
    ///
    /// Texts are batched by length (shortest first) so each batch pads little; the
    /// order of the answers is restored afterwards.
    pub fn predict(
        &self,
        texts: &[String],
        batch_size: usize,
    ) -> Result<Vec<Prediction>, TrainError> {
        self.predict_inputs(texts, None, batch_size)
    }

    /// Classifies text pairs (`texts[i]` with `pairs[i]`) with a model trained on pairs.
    pub fn predict_pairs(
        &self,
        texts: &[String],
        pairs: &[String],
        batch_size: usize,
    ) -> Result<Vec<Prediction>, TrainError> {
        self.predict_inputs(texts, Some(pairs), batch_size)
    }

    /// Whether the model classifies text pairs rather than single texts.
    pub fn takes_pairs(&self) -> bool {
        self.meta.text_pairs
    }

    /// Single texts or pairs, whichever the model was trained on.
    pub fn predict_inputs(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
        batch_size: usize,
    ) -> Result<Vec<Prediction>, TrainError> {
        if batch_size == 0 {
            return Err(TrainError::InvalidInput(
                "batch_size must be positive".into(),
            ));
        }
        match (self.meta.text_pairs, pairs.is_some()) {
            (true, false) => {
                return Err(TrainError::InvalidInput(
                    "this model classifies text pairs: give every input a text_pair".into(),
                ))
            }
            (false, true) => {
                return Err(TrainError::InvalidInput(
                    "this model classifies single texts: leave text_pair out".into(),
                ))
            }
            _ => {}
        }
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let probabilities = self.probabilities(texts, pairs, batch_size)?;
        let objective = &self.objective;
        let spans = objective.spans();
        Ok(probabilities
            .chunks(objective.width())
            .map(|row| match objective.task_type {
                TaskType::Classification => {
                    Prediction::Class(class_prediction(objective.labels(), row))
                }
                TaskType::MultiLabel => {
                    let threshold = self.meta.threshold.unwrap_or(UNTUNED_THRESHOLD);
                    let labels = objective.labels();
                    Prediction::MultiLabel {
                        labels: labels
                            .iter()
                            .zip(row)
                            .filter(|(_, &p)| p >= threshold)
                            .map(|(l, _)| l.clone())
                            .collect(),
                        scores: labels.iter().cloned().zip(row.iter().copied()).collect(),
                        threshold,
                    }
                }
                TaskType::MultiTask => Prediction::MultiTask(
                    objective
                        .heads
                        .iter()
                        .zip(&spans)
                        .map(|(head, &(offset, size))| {
                            let span = &row[offset as usize..(offset + size) as usize];
                            (head.name.clone(), class_prediction(&head.labels, span))
                        })
                        .collect(),
                ),
            })
            .collect())
    }

    /// Probabilities (a softmax per head, or a sigmoid per label), `texts.len() ×
    /// outputs` row-major, in input order.
    fn probabilities(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
        batch_size: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let encoded = self.tokenizer.encode_maybe_pairs(texts, pairs)?;
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let num_labels = self.objective.width();
        let mut out = vec![0f32; texts.len() * num_labels];
        tch::no_grad(|| -> Result<(), TrainError> {
            for indices in order.chunks(batch_size) {
                let items: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
                let batch = collate(&items, self.tokenizer.pad_id(), self.device)?;
                let probs = self
                    .objective
                    .probabilities(&self.model.forward(&batch, false)?)?
                    .f_to_kind(Kind::Float)?
                    .f_to_device(Device::Cpu)?
                    .f_flatten(0, -1)?;
                let probs = Vec::<f32>::try_from(&probs)?;
                for (row, &i) in probs.chunks(num_labels).zip(indices) {
                    out[i * num_labels..(i + 1) * num_labels].copy_from_slice(row);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Loss, accuracy and macro-F1 on labelled examples (targets of the model's task
    /// type, indexing its labels).
    pub fn evaluate(&self, data: &TrainData, batch_size: usize) -> Result<EvalMetrics, TrainError> {
        if batch_size == 0 || data.is_empty() || data.texts.len() != data.labels.len() {
            return Err(TrainError::InvalidInput(
                "evaluation needs examples with targets and a positive batch_size".into(),
            ));
        }
        self.objective.check(&data.labels, "evaluation")?;
        let encoded = self
            .tokenizer
            .encode_maybe_pairs(&data.texts, data.text_pairs.as_deref())?;
        evaluate_encoded(
            &self.model,
            &self.objective,
            &encoded,
            &data.labels,
            self.tokenizer.pad_id(),
            batch_size,
            self.device,
        )
    }

    /// Logits for pre-built tensors, for callers that batch themselves.
    pub fn logits(&self, batch: &crate::tokenize::Batch) -> Result<Tensor, TrainError> {
        tch::no_grad(|| self.model.forward(batch, false))
    }
}
