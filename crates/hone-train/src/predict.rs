//! Serving a published model: load a directory written by
//! [`TrainedModel::save`](crate::train::TrainedModel::save) and classify texts or
//! images.

use std::path::Path;

use serde::Serialize;
use tch::{nn, Device, Kind, Tensor};

use crate::base_model::{architecture_of, Modality};
use crate::bert::BertConfig;
use crate::checks::check_vocab;
use crate::classifier::SequenceClassifier;
use crate::data::TrainData;
use crate::efficientnet::{EfficientNetConfig, Init};
use crate::error::TrainError;
use crate::evaluate::evaluate_data;
use crate::layers::WeightInit;
use crate::metrics::EvalMetrics;
use crate::model_dir::{ModelMeta, QuantizationType, CONFIG_FILE, MODEL_META_FILE, WEIGHTS_FILE};
use crate::network::Network;
use crate::objective::{Objective, UNTUNED_THRESHOLD};
use crate::tokenize::{collate, Encoded, TextTokenizer};
use crate::vision::ImageClassifier;
use crate::vision_data::Preprocess;
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
    network: Network,
    meta: ModelMeta,
    objective: Objective,
    device: Device,
}

impl Classifier {
    /// Loads `dir` (hone_model.json, config.json, model.safetensors and, for a text
    /// model, tokenizer.json) onto `device`. Draws no random numbers.
    pub fn load(dir: &Path, device: Device) -> Result<Self, TrainError> {
        let meta = ModelMeta::read(dir)?;
        let vs = nn::VarStore::new(device);
        let objective = meta.objective();
        let per_task = objective.task_type == TaskType::MultiTask;
        let meta_file = || dir.join(MODEL_META_FILE);
        let (model_type, modality) = architecture_of(dir)?;
        if (meta.architecture.as_str(), meta.modality) != (model_type.as_str(), modality) {
            return Err(TrainError::config(
                meta_file(),
                format!(
                    "architecture {:?} ({}) does not match config.json's model_type {model_type:?} ({})",
                    meta.architecture,
                    meta.modality.as_str(),
                    modality.as_str()
                ),
            ));
        }
        let network = match meta.modality {
            Modality::Text => {
                let config = BertConfig::from_file(&dir.join(CONFIG_FILE))?;
                if meta.max_seq_len > config.max_position_embeddings {
                    return Err(TrainError::config(
                        meta_file(),
                        format!(
                            "max_seq_len {} exceeds max_position_embeddings {}",
                            meta.max_seq_len, config.max_position_embeddings
                        ),
                    ));
                }
                let tokenizer = TextTokenizer::from_dir(dir, meta.max_seq_len)?;
                check_vocab(&tokenizer, &config, dir)?;
                let model = SequenceClassifier::with_heads(
                    &vs.root(),
                    &config,
                    &objective.sizes(),
                    per_task,
                    meta.head,
                    meta.pooling,
                    WeightInit::Zeros,
                )?;
                Network::Text { model, tokenizer }
            }
            Modality::Image => {
                let config = EfficientNetConfig::from_file(&dir.join(CONFIG_FILE))?;
                let model = ImageClassifier::new(
                    &vs.root(),
                    &config,
                    &objective.sizes(),
                    per_task,
                    Init::Zeros,
                )?;
                Network::Image {
                    model,
                    preprocess: Preprocess::from_config(&config),
                }
            }
        };
        load_safetensors(&vs, &dir.join(WEIGHTS_FILE), &|_| false)?;
        let quantization = meta.quantization.as_ref().map(|q| q.kind);
        let mut classifier = Self {
            vs,
            network,
            meta,
            objective,
            device,
        };
        // On a GPU a quantized model serves in fp32: its int8 kernels are the CPU's.
        if quantization == Some(QuantizationType::Int8) && device == Device::Cpu {
            classifier.quantize_int8()?;
        }
        Ok(classifier)
    }

    pub(crate) fn from_parts(
        vs: nn::VarStore,
        network: Network,
        meta: ModelMeta,
        device: Device,
    ) -> Self {
        let objective = meta.objective();
        Self {
            vs,
            network,
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

    /// What the model reads: texts (or text pairs) or images.
    pub fn modality(&self) -> Modality {
        self.network.modality()
    }

    /// Serves with the encoder's Linear layers in int8 from now on (dynamic
    /// quantization through libtorch's fbgemm kernels; see `int8.rs`): text models on
    /// the CPU only. The predictions change by the quantization error, so measure a
    /// model's accuracy both ways ([`Classifier::evaluate`]) before serving it so.
    pub fn quantize_int8(&mut self) -> Result<(), TrainError> {
        if self.device != Device::Cpu {
            return Err(TrainError::InvalidInput(format!(
                "int8 quantization runs on the CPU, not on {:?}",
                self.device
            )));
        }
        match &mut self.network {
            Network::Text { model, .. } => model.quantize_int8(),
            Network::Image { .. } => Err(TrainError::InvalidInput(
                "int8 quantization is for text models (an image model's convolutions have no int8 path here)".into(),
            )),
        }
    }

    /// The text classifier; `None` for an image model.
    pub fn model(&self) -> Option<&SequenceClassifier> {
        match &self.network {
            Network::Text { model, .. } => Some(model),
            Network::Image { .. } => None,
        }
    }

    /// The text model's tokenizer; `None` for an image model.
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        match &self.network {
            Network::Text { tokenizer, .. } => Some(tokenizer),
            Network::Image { .. } => None,
        }
    }

    /// The text side of the model, or why there is none.
    fn text(&self) -> Result<(&SequenceClassifier, &TextTokenizer), TrainError> {
        match &self.network {
            Network::Text { model, tokenizer } => Ok((model, tokenizer)),
            Network::Image { .. } => Err(TrainError::InvalidInput(
                "this model classifies images, not texts".into(),
            )),
        }
    }

    /// Classifies PNG or JPEG images (`images[i]` the encoded bytes of input `i`),
    /// `batch_size` per forward pass, answers in input order. Images are prepared as
    /// validation data was in training: the shorter side resized, the centre cropped,
    /// normalised with the base model's statistics. An input that does not decode is
    /// refused by its index before anything runs.
    pub fn predict_images(
        &self,
        images: &[Vec<u8>],
        batch_size: usize,
    ) -> Result<Vec<Prediction>, TrainError> {
        let (model, preprocess) = match &self.network {
            Network::Image { model, preprocess } => (model, preprocess),
            Network::Text { .. } => {
                return Err(TrainError::InvalidInput(
                    "this model classifies texts, not images".into(),
                ))
            }
        };
        if batch_size == 0 {
            return Err(TrainError::InvalidInput(
                "batch_size must be positive".into(),
            ));
        }
        let resized = images
            .iter()
            .enumerate()
            .map(|(i, bytes)| {
                preprocess
                    .decode_resized(bytes)
                    .map_err(|e| TrainError::BadImage {
                        index: i,
                        message: match e {
                            TrainError::InvalidInput(why) => why,
                            other => other.to_string(),
                        },
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let width = self.objective.width();
        let size = preprocess.image_size as i64;
        let mut out = Vec::with_capacity(images.len() * width);
        tch::no_grad(|| -> Result<(), TrainError> {
            for chunk in resized.chunks(batch_size) {
                let mut flat = Vec::with_capacity(chunk.len() * preprocess.numel());
                for image in chunk {
                    flat.extend_from_slice(&preprocess.eval_pixels(image)?);
                }
                let batch = Tensor::f_from_slice(&flat)?
                    .f_view([chunk.len() as i64, 3, size, size])?
                    .f_to_device(self.device)?;
                out.extend(self.flat_probabilities(&model.forward(&batch, false)?)?);
            }
            Ok(())
        })?;
        Ok(self.predictions(&out))
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
        Ok(self.predictions(&probabilities))
    }

    /// The probabilities of a batch's logits, row-major on the CPU.
    fn flat_probabilities(&self, logits: &Tensor) -> Result<Vec<f32>, TrainError> {
        let probs = self
            .objective
            .probabilities(logits)?
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_flatten(0, -1)?;
        Ok(Vec::<f32>::try_from(&probs)?)
    }

    /// Answers from probabilities, `inputs × outputs` row-major.
    fn predictions(&self, probabilities: &[f32]) -> Vec<Prediction> {
        let objective = &self.objective;
        let spans = objective.spans();
        probabilities
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
            .collect()
    }

    /// Probabilities (a softmax per head, or a sigmoid per label), `texts.len() ×
    /// outputs` row-major, in input order.
    fn probabilities(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
        batch_size: usize,
    ) -> Result<Vec<f32>, TrainError> {
        let (model, tokenizer) = self.text()?;
        let encoded = tokenizer.encode_maybe_pairs(texts, pairs)?;
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let num_labels = self.objective.width();
        let mut out = vec![0f32; texts.len() * num_labels];
        tch::no_grad(|| -> Result<(), TrainError> {
            for indices in order.chunks(batch_size) {
                let items: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
                let batch = collate(&items, tokenizer.pad_id(), self.device)?;
                let probs = self.flat_probabilities(&model.forward(&batch, false)?)?;
                for (row, &i) in probs.chunks(num_labels).zip(indices) {
                    out[i * num_labels..(i + 1) * num_labels].copy_from_slice(row);
                }
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Loss, accuracy and macro-F1 on labelled examples (targets of the model's task
    /// type, indexing its labels): texts for a text model, images for an image model.
    pub fn evaluate(&self, data: &TrainData, batch_size: usize) -> Result<EvalMetrics, TrainError> {
        if batch_size == 0 || data.is_empty() || data.len() != data.labels.len() {
            return Err(TrainError::InvalidInput(
                "evaluation needs examples with targets and a positive batch_size".into(),
            ));
        }
        self.objective.check(&data.labels, "evaluation")?;
        evaluate_data(
            &self.network,
            &self.objective,
            data,
            batch_size,
            self.device,
        )
    }

    /// Logits for pre-built tensors of a text model, for callers that batch themselves.
    pub fn logits(&self, batch: &crate::tokenize::Batch) -> Result<Tensor, TrainError> {
        let (model, _) = self.text()?;
        tch::no_grad(|| model.forward(batch, false))
    }
}
