//! How a run trains: its hyperparameters ([`TrainConfig`]), which weights train
//! ([`Strategy`]) and where the encoder's weights start from ([`EncoderInit`]). A leaf:
//! the loop, the optimizer, checkpoints (a checkpoint resumes only a run with the same
//! settings) and the image classifier's freezing read it, and it reads none of them.

use serde::{Deserialize, Serialize};

pub use hone_domain::job::HeadSolver;
use hone_domain::job::{
    ClassWeights, HeadType, Hyperparameters, MonitorMetric, PoolingType as Pooling,
};

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
    pub strategy: Strategy,
    pub head: HeadType,
    pub pooling: Pooling,
    /// The head trains at the full rate, encoder layer `i` of `L` (1-based) at
    /// `rate · decay^(L+1-i)`, the embeddings at `rate · decay^(L+1)`.
    pub layer_lr_decay: f64,
    pub label_smoothing: f64,
    pub class_weights: ClassWeights,
    /// Epochs without improvement of `monitor` before training stops; 0 never stops.
    pub early_stopping_patience: u32,
    /// What picks the best epoch (needs validation data).
    pub monitor: MonitorMetric,
    /// Images only: train `full` and `partial` on a random resized crop and flip of
    /// each image, drawn per (seed, epoch, image) so a resumed run draws the same ones.
    /// Feature extraction trains on features computed once, so never augments.
    #[serde(default = "augment_default")]
    pub augment: bool,
    /// Text only: each epoch's batches of texts of similar length (see
    /// [`crate::inputs::grouped_by_length`]); off in checkpoints taken before it existed.
    #[serde(default)]
    pub group_by_length: bool,
    /// `feature_extraction` with linear heads: how the heads are fitted on the frozen
    /// features; AdamW in checkpoints taken before it existed.
    #[serde(default)]
    pub head_solver: HeadSolver,
}

fn augment_default() -> bool {
    true
}

/// Which weights train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum Strategy {
    #[default]
    Full,
    /// The embeddings and the first `frozen_layers` encoder layers stay fixed.
    Partial { frozen_layers: usize },
    /// The whole encoder stays fixed; its pooled outputs are computed once (or handed
    /// in through [`TrainJob::features`]) and only the head trains on them.
    ///
    /// [`TrainJob::features`]: crate::job::TrainJob::features
    FeatureExtraction,
}

impl TrainConfig {
    /// The settings of a job's run: its hyperparameters (already checked by the
    /// domain when the job was created), the strategy its method resolved to, and its
    /// seed. Gradients are clipped at norm 1, transformers' default, which the API
    /// does not expose.
    pub fn from_hyperparameters(hp: &Hyperparameters, strategy: Strategy, seed: u64) -> Self {
        Self {
            epochs: hp.epochs,
            batch_size: hp.batch_size as usize,
            learning_rate: hp.learning_rate,
            warmup_ratio: hp.warmup_ratio,
            weight_decay: hp.weight_decay,
            max_seq_len: hp.max_seq_len as usize,
            seed,
            grad_clip: 1.0,
            strategy,
            head: hp.head,
            pooling: hp.pooling,
            layer_lr_decay: hp.layer_lr_decay,
            label_smoothing: hp.label_smoothing,
            class_weights: hp.class_weights,
            early_stopping_patience: hp.early_stopping_patience,
            monitor: hp.early_stopping_metric,
            augment: hp.augment,
            group_by_length: hp.group_by_length,
            head_solver: hp.head_solver,
        }
    }
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
            strategy: Strategy::Full,
            head: HeadType::Linear,
            pooling: Pooling::Mean,
            layer_lr_decay: 1.0,
            label_smoothing: 0.0,
            class_weights: ClassWeights::None,
            early_stopping_patience: 0,
            monitor: MonitorMetric::Loss,
            augment: true,
            // transformers' default; the API's is `true` for text (see
            // `HyperparametersInput::group_by_length`).
            group_by_length: false,
            head_solver: HeadSolver::AdamW,
        }
    }
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

#[cfg(test)]
mod tests {
    use hone_domain::dataset::Modality;
    use hone_domain::job::MethodType;

    use super::*;

    #[test]
    fn from_hyperparameters_takes_every_setting_of_the_job() {
        let hp = Hyperparameters {
            epochs: 4,
            batch_size: 8,
            max_seq_len: 64,
            layer_lr_decay: 0.9,
            head: HeadType::Mlp,
            pooling: Pooling::Cls,
            label_smoothing: 0.1,
            class_weights: ClassWeights::Balanced,
            early_stopping_patience: 2,
            early_stopping_metric: MonitorMetric::MacroF1,
            augment: true,
            group_by_length: true,
            head_solver: HeadSolver::Lbfgs,
            ..Hyperparameters::defaults_for(MethodType::FeatureExtraction, Modality::Text)
        };
        let strategy = Strategy::Partial { frozen_layers: 2 };
        assert_eq!(
            TrainConfig::from_hyperparameters(&hp, strategy, 11),
            TrainConfig {
                epochs: 4,
                batch_size: 8,
                learning_rate: 1e-3,
                warmup_ratio: 0.1,
                weight_decay: 0.01,
                max_seq_len: 64,
                seed: 11,
                grad_clip: 1.0,
                strategy,
                head: HeadType::Mlp,
                pooling: Pooling::Cls,
                layer_lr_decay: 0.9,
                label_smoothing: 0.1,
                class_weights: ClassWeights::Balanced,
                early_stopping_patience: 2,
                monitor: MonitorMetric::MacroF1,
                augment: true,
                group_by_length: true,
                head_solver: HeadSolver::Lbfgs,
            }
        );
    }
}
