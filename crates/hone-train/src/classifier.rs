//! The model hone trains and serves: a BERT encoder, pooling (mean by default —
//! sentence-transformers' pooling, so a base model trained for sentence embeddings such
//! as all-MiniLM-L6-v2 starts from the representation it was trained to give — or the
//! first token's state), dropout and a head (linear, or a small MLP).
//!
//! Encoder variables keep their checkpoint names at the root of the `VarStore` and the
//! head lives under `head.`, so one safetensors file holds a whole published model and
//! reads back with the same loader as a base checkpoint.

use tch::{nn, Tensor};

pub use hone_domain::job::{HeadType, PoolingType as Pooling};

use crate::bert::{BertConfig, BertModel};
use crate::error::TrainError;
use crate::layers::{dropout, head_paths, mean_pool, Linear, WeightInit};
use crate::tokenize::Batch;

/// The classifier on top of the pooled vector.
#[derive(Debug)]
enum Head {
    Linear(Linear),
    /// `dense` → tanh → dropout → `out_proj`, named as transformers' RoBERTa head.
    Mlp {
        dense: Linear,
        out_proj: Linear,
    },
}

/// Encoder + pooling + dropout + head.
#[derive(Debug)]
pub struct SequenceClassifier {
    encoder: BertModel,
    /// One head per task, in order; their logits are concatenated.
    heads: Vec<Head>,
    pooling: Pooling,
    dropout: f64,
    num_labels: usize,
}

impl SequenceClassifier {
    /// The encoder's Linear layers compute in int8 from now on (CPU inference only;
    /// [`BertModel::quantize_int8`]); the heads stay fp32.
    pub fn quantize_int8(&mut self) -> Result<(), TrainError> {
        self.encoder.quantize_int8()
    }

    /// Creates the variables of encoder and one head of `num_labels` outputs under `vs`.
    pub fn new(
        vs: &nn::Path,
        config: &BertConfig,
        num_labels: usize,
        head: HeadType,
        pooling: Pooling,
        init: WeightInit,
    ) -> Result<Self, TrainError> {
        Self::with_heads(vs, config, &[num_labels], false, head, pooling, init)
    }

    /// Creates the variables of the encoder and of one head per entry of `outputs`:
    /// under `head.` for a single head, under `head.{i}.` for the `i`-th task's head
    /// when `per_task`.
    pub fn with_heads(
        vs: &nn::Path,
        config: &BertConfig,
        outputs: &[usize],
        per_task: bool,
        head: HeadType,
        pooling: Pooling,
        init: WeightInit,
    ) -> Result<Self, TrainError> {
        let paths = head_paths(vs, outputs, per_task)?;
        let encoder = BertModel::new(vs, config, init)?;
        let hidden = config.hidden_size;
        let heads = paths
            .into_iter()
            .map(|(head_vs, n)| {
                Ok(match head {
                    HeadType::Linear => Head::Linear(Linear::new(&head_vs, hidden, n, init)?),
                    HeadType::Mlp => Head::Mlp {
                        dense: Linear::new(&head_vs.sub("dense"), hidden, hidden, init)?,
                        out_proj: Linear::new(&head_vs.sub("out_proj"), hidden, n, init)?,
                    },
                })
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let num_labels = outputs.iter().sum();
        Ok(Self {
            encoder,
            heads,
            pooling,
            dropout: config
                .classifier_dropout
                .unwrap_or(config.hidden_dropout_prob),
            num_labels,
        })
    }

    pub fn encoder(&self) -> &BertModel {
        &self.encoder
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Logits `[batch, num_labels]`. `train` enables dropout.
    pub fn forward(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        let pooled = self.features(batch, train)?;
        self.head_forward(&pooled, train)
    }

    /// Logits from the hidden states after the encoder's first `layer` blocks (see
    /// [`BertModel::forward_until`]) and their attention mask: the remaining blocks,
    /// the pooling and the head. `train` enables dropout.
    pub fn forward_from(
        &self,
        hidden: Tensor,
        attention_mask: &Tensor,
        layer: usize,
        train: bool,
    ) -> Result<Tensor, TrainError> {
        let hidden = self
            .encoder
            .forward_from(hidden, attention_mask, layer, train)?;
        self.head_forward(&pool(&hidden, attention_mask, self.pooling)?, train)
    }

    /// The pooled encoder output `[batch, hidden]`: what the head sees, and what
    /// feature extraction caches.
    pub fn features(&self, batch: &Batch, train: bool) -> Result<Tensor, TrainError> {
        let hidden = self.encoder.forward(
            &batch.input_ids,
            &batch.attention_mask,
            Some(&batch.token_type_ids),
            train,
        )?;
        Ok(pool(&hidden, &batch.attention_mask, self.pooling)?)
    }

    /// Logits from pooled features, every head's side by side; `train` enables
    /// dropout (drawn once per head, as separate heads would).
    pub fn head_forward(&self, pooled: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        let mut logits = Vec::with_capacity(self.heads.len());
        for head in &self.heads {
            let xs = dropout(pooled.shallow_clone(), self.dropout, train)?;
            logits.push(match head {
                Head::Linear(linear) => linear.forward(&xs)?,
                Head::Mlp { dense, out_proj } => {
                    let xs = dropout(dense.forward(&xs)?.f_tanh()?, self.dropout, train)?;
                    out_proj.forward(&xs)?
                }
            });
        }
        Ok(match logits.len() {
            1 => logits.remove(0),
            _ => Tensor::f_cat(&logits, 1)?,
        })
    }
}

/// One vector per input from the encoder's last hidden states `[batch, seq, hidden]`.
pub fn pool(
    hidden: &Tensor,
    attention_mask: &Tensor,
    pooling: Pooling,
) -> Result<Tensor, tch::TchError> {
    match pooling {
        Pooling::Mean => mean_pool(hidden, attention_mask),
        Pooling::Cls => hidden.f_select(1, 0),
    }
}
