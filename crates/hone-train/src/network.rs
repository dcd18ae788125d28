//! A model's network with what prepares its inputs ([`Network`]): the one type the
//! training loop, evaluation and the predictor run, so a trained model predicts
//! through the code a loaded one uses. Below all three, so none imports another for it.

use tch::Tensor;

use crate::base_model::Modality;
use crate::classifier::SequenceClassifier;
use crate::error::TrainError;
use crate::tokenize::TextTokenizer;
use crate::vision::ImageClassifier;
use crate::vision_data::Preprocess;

/// The network of a model and what prepares its inputs: a text classifier and its
/// tokenizer, or an image classifier and its preprocessing. Training and serving share
/// it, so a trained model predicts through the code a loaded one uses.
// One per loaded model, never in a collection: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Network {
    Text {
        model: SequenceClassifier,
        tokenizer: TextTokenizer,
    },
    Image {
        model: ImageClassifier,
        preprocess: Preprocess,
    },
}

impl Network {
    /// Logits from pooled backbone features (what feature extraction trains on).
    pub(crate) fn head_forward(&self, pooled: &Tensor, train: bool) -> Result<Tensor, TrainError> {
        match self {
            Network::Text { model, .. } => model.head_forward(pooled, train),
            Network::Image { model, .. } => model.head_forward(pooled, train),
        }
    }

    pub(crate) fn modality(&self) -> Modality {
        match self {
            Network::Text { .. } => Modality::Text,
            Network::Image { .. } => Modality::Image,
        }
    }
}
