//! What the loop feeds the network, a batch at a time ([`Inputs`]): token ids, pooled
//! features of a frozen backbone, or images that the loader decodes, augments and
//! batches on its own threads. Training and evaluation batch through the same code.

use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::Rng;
use tch::{Device, Tensor};

use crate::data::Features;
use crate::error::TrainError;
use crate::frozen::{FrozenSplits, FrozenStates};
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
    /// The hidden states after a text encoder's frozen blocks; the rest of the
    /// network runs from there.
    Frozen(&'a FrozenStates),
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
            Inputs::Frozen(states) => states.len(),
            Inputs::Images { set, .. } => set.len(),
        })
    }

    /// Each example's number of tokens, for inputs made of tokens.
    pub(crate) fn token_lengths(&self) -> Option<Vec<usize>> {
        match self {
            Inputs::Tokens { encoded, .. } => Some(encoded.iter().map(Encoded::len).collect()),
            Inputs::Frozen(states) => Some((0..states.len()).map(|i| states.tokens(i)).collect()),
            Inputs::Features(_) | Inputs::Images { .. } => None,
        }
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
            (Inputs::Frozen(states), Network::Text { model, .. }, _) => {
                let (hidden, mask) = states.batch(&batch.indices, device)?;
                model.forward_from(hidden, &mask, states.layer(), train)
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

/// Buckets of `BUCKET_BATCHES` batches: wide enough that sorting within one removes
/// most padding, narrow enough that batches still mix examples from across the
/// epoch's shuffle. transformers' `LengthGroupedSampler` uses 50.
const BUCKET_BATCHES: usize = 50;

/// `order` (an epoch's shuffle) rearranged so that every run of `batch_size` holds
/// examples of similar length, as transformers' `group_by_length`: the shuffle is cut
/// into buckets of [`BUCKET_BATCHES`] batches, each bucket sorted by length (longest
/// first), cut into batches, and all batches put in a random order drawn from `rng`.
/// Every example stays exactly once; the batches (and so the steps per epoch) are as
/// many as before.
pub(crate) fn grouped_by_length(
    order: Vec<usize>,
    lengths: &[usize],
    batch_size: usize,
    rng: &mut impl Rng,
) -> Vec<usize> {
    let batch_size = batch_size.max(1);
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(order.len().div_ceil(batch_size));
    for bucket in order.chunks(batch_size * BUCKET_BATCHES) {
        let mut bucket = bucket.to_vec();
        // Stable: ties keep the shuffle's order.
        bucket.sort_by_key(|&i| std::cmp::Reverse(lengths[i]));
        batches.extend(bucket.chunks(batch_size).map(<[usize]>::to_vec));
    }
    // The short last batch goes last, so the others stay full.
    let last = match batches.last() {
        Some(b) if b.len() < batch_size => batches.pop(),
        _ => None,
    };
    batches.shuffle(rng);
    batches.extend(last);
    batches.concat()
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
    /// The inputs of `split`: its features when there are some, else its frozen
    /// states when there are some, else its token ids or
    /// images (training images augmented from the seed `augment`, when given); `None`
    /// when the job has no such split.
    pub(crate) fn inputs<'a>(
        &'a self,
        split: Split,
        features: Option<&'a Features>,
        frozen: Option<&'a FrozenSplits>,
        augment: Option<u64>,
    ) -> Option<Inputs<'a>> {
        let features = features.and_then(|f| match split {
            Split::Train => Some(&f.train),
            Split::Validation => f.validation.as_ref(),
        });
        if let Some(f) = features {
            return Some(Inputs::Features(f));
        }
        let frozen = frozen.and_then(|f| match split {
            Split::Train => Some(&f.train),
            Split::Validation => f.validation.as_ref(),
        });
        if let Some(states) = frozen {
            return Some(Inputs::Frozen(states));
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

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    /// The padding of `order` cut into batches: Σ over batches of (longest − each).
    fn padding(order: &[usize], lengths: &[usize], batch_size: usize) -> usize {
        order
            .chunks(batch_size)
            .map(|b| {
                let longest = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
                b.iter().map(|&i| longest - lengths[i]).sum::<usize>()
            })
            .sum()
    }

    #[test]
    fn grouping_by_length_keeps_every_example_once_and_cuts_padding() {
        let mut rng = StdRng::seed_from_u64(7);
        let lengths: Vec<usize> = (0..1003).map(|_| rng.gen_range(3..120)).collect();
        let mut order: Vec<usize> = (0..lengths.len()).collect();
        order.shuffle(&mut rng);
        let batch_size = 16;
        let grouped = grouped_by_length(order.clone(), &lengths, batch_size, &mut rng);

        let mut seen = grouped.clone();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        // 1003 = 62 full batches + 11: the short batch stays last, so every other
        // batch that `batches` cuts is full.
        let last_batch = &grouped[62 * batch_size..];
        assert_eq!(last_batch.len(), 11);
        let shuffled = padding(&order, &lengths, batch_size);
        let less = padding(&grouped, &lengths, batch_size);
        assert!(less * 5 < shuffled, "{less} vs {shuffled}");
        // The batches come in a random order, not longest first.
        let firsts: Vec<usize> = grouped
            .chunks(batch_size)
            .take(10)
            .map(|b| lengths[b[0]])
            .collect();
        assert!(firsts.windows(2).any(|w| w[0] < w[1]), "{firsts:?}");
        // The same draws give the same order: a resumed run batches as the first did.
        let mut again = StdRng::seed_from_u64(7);
        let _: Vec<usize> = (0..1003).map(|_| again.gen_range(3..120)).collect();
        let mut order_again: Vec<usize> = (0..lengths.len()).collect();
        order_again.shuffle(&mut again);
        assert_eq!(
            grouped_by_length(order_again, &lengths, batch_size, &mut again),
            grouped
        );
    }
}
