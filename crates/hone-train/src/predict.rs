//! Serving a published model: load a directory written by
//! [`TrainedModel::save`](crate::train::TrainedModel::save) and classify texts.

use std::path::Path;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::bert::{BertConfig, WeightInit};
use crate::classifier::{ModelMeta, SequenceClassifier, CONFIG_FILE, WEIGHTS_FILE};
use crate::error::TrainError;
use crate::tokenize::{collate, Encoded, TextTokenizer};
use crate::train::{check_vocab, evaluate_encoded, EvalMetrics, TrainData};
use crate::weights::load_safetensors;

/// The classification of one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// The most probable label.
    pub label: String,
    /// Its probability.
    pub score: f32,
    /// Every label's probability (softmax), in the model's label order.
    pub scores: Vec<(String, f32)>,
}

/// A published model loaded for inference. Not `Sync` (libtorch tensors): keep it
/// on the thread that serves predictions.
#[derive(Debug)]
pub struct Classifier {
    vs: nn::VarStore,
    model: SequenceClassifier,
    tokenizer: TextTokenizer,
    meta: ModelMeta,
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
        let model = SequenceClassifier::new(
            &vs.root(),
            &config,
            meta.labels.len(),
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
        Self {
            vs,
            model,
            tokenizer,
            meta,
            device,
        }
    }

    pub(crate) fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Label names in the order of the head's outputs.
    pub fn labels(&self) -> &[String] {
        &self.meta.labels
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
        let labels = self.labels();
        Ok(probabilities
            .chunks(labels.len())
            .map(|row| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |best, (i, &p)| if p > row[best] { i } else { best });
                Prediction {
                    label: labels[best].clone(),
                    score: row[best],
                    scores: labels.iter().cloned().zip(row.iter().copied()).collect(),
                }
            })
            .collect())
    }

    /// Softmax probabilities, `texts.len() × labels` row-major, in input order.
    fn probabilities(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
        batch_size: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let encoded = self.tokenizer.encode_maybe_pairs(texts, pairs)?;
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let num_labels = self.labels().len();
        let mut out = vec![0f32; texts.len() * num_labels];
        tch::no_grad(|| -> Result<(), TrainError> {
            for indices in order.chunks(batch_size) {
                let items: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
                let batch = collate(&items, self.tokenizer.pad_id(), self.device)?;
                let probs = self
                    .model
                    .forward(&batch, false)?
                    .f_softmax(-1, Kind::Float)?
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

    /// Loss, accuracy and macro-F1 on labelled examples (`data.labels` index
    /// [`Classifier::labels`]).
    pub fn evaluate(&self, data: &TrainData, batch_size: usize) -> Result<EvalMetrics, TrainError> {
        if batch_size == 0 || data.is_empty() || data.texts.len() != data.labels.len() {
            return Err(TrainError::InvalidInput(
                "evaluation needs examples with one label each and a positive batch_size".into(),
            ));
        }
        if let Some(l) = data.labels.iter().find(|&&l| l >= self.labels().len()) {
            return Err(TrainError::InvalidInput(format!(
                "label index {l} out of range"
            )));
        }
        let encoded = self
            .tokenizer
            .encode_maybe_pairs(&data.texts, data.text_pairs.as_deref())?;
        evaluate_encoded(
            &self.model,
            &encoded,
            &data.labels,
            &self.meta.labels,
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
