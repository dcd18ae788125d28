//! What the loop feeds the network, a batch at a time ([`Inputs`]): token ids, pooled
//! features of a frozen backbone, or images that the loader decodes, augments and
//! batches on its own threads. Training and evaluation batch through the same code.

use std::sync::Arc;

use tch::{Device, Tensor};

use crate::data::Features;
use crate::error::TrainError;
use crate::network::Network;
use crate::tokenize::{collate, Encoded};
use crate::vision_data::{ImageSet, Mode as ImageMode};

/// What the training loop feeds the model: token ids, pooled features of a frozen
/// backbone, or images the loader prepares.
pub(crate) enum Inputs<'a> {
    Tokens {
        encoded: &'a [Encoded],
        pad_id: u32,
    },
    Features(&'a Tensor),
    Images {
        set: &'a Arc<ImageSet>,
        /// The seed of training-time augmentation; `None` trains on the centre crop.
        augment: Option<u64>,
    },
}

/// The examples of one batch and, for images, their prepared pixels.
pub(crate) struct InputBatch {
    pub(crate) indices: Vec<usize>,
    pub(crate) images: Option<Tensor>,
}

pub(crate) type InputBatches<'a> = Box<dyn Iterator<Item = Result<InputBatch, TrainError>> + 'a>;

impl Inputs<'_> {
    pub(crate) fn len(&self) -> Result<usize, TrainError> {
        Ok(match self {
            Inputs::Tokens { encoded, .. } => encoded.len(),
            Inputs::Features(t) => t.size2()?.0 as usize,
            Inputs::Images { set, .. } => set.len(),
        })
    }

    /// The examples of `order` in batches of `batch_size`; `epoch` is the training
    /// epoch (augmented images when enabled), `None` evaluation. Images are prepared
    /// ahead on the loader's threads while the network works.
    pub(crate) fn batches(
        &self,
        order: Vec<usize>,
        batch_size: usize,
        epoch: Option<u32>,
    ) -> Result<InputBatches<'static>, TrainError> {
        match self {
            Inputs::Images { set, augment } => {
                let mode = match (epoch, augment) {
                    (Some(epoch), Some(seed)) => ImageMode::Train {
                        seed: *seed,
                        epoch: u64::from(epoch),
                    },
                    _ => ImageMode::Eval,
                };
                let batches = set.batches(order, batch_size, mode)?;
                Ok(Box::new(batches.map(|b| {
                    b.map(|b| InputBatch {
                        indices: b.indices,
                        images: Some(b.images),
                    })
                })))
            }
            _ => {
                let chunks: Vec<Vec<usize>> =
                    order.chunks(batch_size).map(<[usize]>::to_vec).collect();
                Ok(Box::new(chunks.into_iter().map(|indices| {
                    Ok(InputBatch {
                        indices,
                        images: None,
                    })
                })))
            }
        }
    }

    /// Logits of one batch.
    pub(crate) fn logits(
        &self,
        network: &Network,
        batch: &InputBatch,
        train: bool,
        device: Device,
    ) -> Result<Tensor, TrainError> {
        match (self, network, &batch.images) {
            (Inputs::Tokens { encoded, pad_id }, Network::Text { model, .. }, _) => {
                let items: Vec<&Encoded> = batch.indices.iter().map(|&i| &encoded[i]).collect();
                model.forward(&collate(&items, *pad_id, device)?, train)
            }
            (Inputs::Features(features), _, _) => {
                let rows: Vec<i64> = batch.indices.iter().map(|&i| i as i64).collect();
                let rows = Tensor::f_from_slice(&rows)?.f_to_device(features.device())?;
                network.head_forward(&features.f_index_select(0, &rows)?, train)
            }
            (Inputs::Images { .. }, Network::Image { model, .. }, Some(images)) => {
                model.forward(&images.f_to_device(device)?, train)
            }
            _ => Err(TrainError::InvalidInput(
                "the inputs are not of the model's modality".into(),
            )),
        }
    }
}

/// The training or the validation side of a job.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Split {
    Train,
    Validation,
}

/// What each split of a run feeds the loop where no features stand in for it: token
/// ids (a text run) or an image loader (an image run).
pub(crate) enum Prepared {
    Tokens {
        train: Vec<Encoded>,
        validation: Option<Vec<Encoded>>,
        pad_id: u32,
    },
    Images {
        train: Arc<ImageSet>,
        validation: Option<Arc<ImageSet>>,
    },
}

impl Prepared {
    /// The inputs of `split`: its features when there are some, else its token ids or
    /// images (training images augmented from the seed `augment`, when given); `None`
    /// when the job has no such split.
    pub(crate) fn inputs<'a>(
        &'a self,
        split: Split,
        features: Option<&'a Features>,
        augment: Option<u64>,
    ) -> Option<Inputs<'a>> {
        let features = features.and_then(|f| match split {
            Split::Train => Some(&f.train),
            Split::Validation => f.validation.as_ref(),
        });
        if let Some(f) = features {
            return Some(Inputs::Features(f));
        }
        Some(match (self, split) {
            (Prepared::Tokens { train, pad_id, .. }, Split::Train) => Inputs::Tokens {
                encoded: train,
                pad_id: *pad_id,
            },
            (
                Prepared::Tokens {
                    validation, pad_id, ..
                },
                Split::Validation,
            ) => Inputs::Tokens {
                encoded: validation.as_ref()?,
                pad_id: *pad_id,
            },
            (Prepared::Images { train, .. }, Split::Train) => Inputs::Images {
                set: train,
                augment,
            },
            (Prepared::Images { validation, .. }, Split::Validation) => Inputs::Images {
                set: validation.as_ref()?,
                augment: None,
            },
        })
    }
}
