//! The outputs of a text encoder's frozen bottom layers, computed once
//! ([`FrozenStates`]). In [`Strategy::Partial`] the embeddings and the first `k` blocks
//! never change, so running them every step of every epoch redoes the same work: the
//! loop runs them once over the training and validation inputs, keeps every example's
//! hidden states after block `k`, and each step starts from block `k`.
//!
//! One difference from running them every step: the frozen layers run in eval mode,
//! without dropout, once. Run every step in train mode they would drop a fresh 10 % of
//! their activations each time (noise on the input of the trained layers, not a change
//! to any weight); cached, the trained layers see the frozen layers' exact outputs, as
//! they will at prediction time. The trained layers and the head keep their dropout.
//!
//! The states take `tokens × hidden × 4` bytes (f32, no padding); past the job's cap
//! ([`TrainJob::frozen_cache_bytes`]) the frozen layers run every step as before.
//!
//! [`Strategy::Partial`]: crate::config::Strategy::Partial
//! [`TrainJob::frozen_cache_bytes`]: crate::job::TrainJob::frozen_cache_bytes

use tch::{Device, Kind, Tensor};

use crate::bert::BertModel;
use crate::error::TrainError;
use crate::tokenize::{collate, Encoded};

/// Every example's hidden states after the frozen blocks, in input order.
#[derive(Debug)]
pub(crate) struct FrozenStates {
    /// Example `i`'s states `[tokens_i, hidden]`, on the device they were computed on.
    states: Vec<Tensor>,
    /// The first block the states have not been through.
    layer: usize,
}

impl FrozenStates {
    /// The bytes the states of `encoded` take after an encoder of width `hidden`.
    pub(crate) fn bytes_for(encoded: &[Encoded], hidden: usize) -> u64 {
        let tokens: usize = encoded.iter().map(Encoded::len).sum();
        (tokens * hidden * Kind::Float.elt_size_in_bytes()) as u64
    }

    /// Runs the embeddings and the first `layers` blocks of `encoder` over `encoded`,
    /// in eval mode under `no_grad`, shortest inputs first so batches pad little.
    pub(crate) fn compute(
        encoder: &BertModel,
        layers: usize,
        encoded: &[Encoded],
        pad_id: u32,
        batch_size: usize,
        device: Device,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Self, TrainError> {
        let mut order: Vec<usize> = (0..encoded.len()).collect();
        order.sort_by_key(|&i| encoded[i].len());
        let mut states: Vec<Option<Tensor>> = (0..encoded.len()).map(|_| None).collect();
        tch::no_grad(|| -> Result<(), TrainError> {
            for indices in order.chunks(batch_size.max(1)) {
                if cancelled() {
                    return Err(TrainError::Cancelled);
                }
                let items: Vec<&Encoded> = indices.iter().map(|&i| &encoded[i]).collect();
                let batch = collate(&items, pad_id, device)?;
                let hidden = encoder
                    .forward_until(
                        &batch.input_ids,
                        &batch.attention_mask,
                        Some(&batch.token_type_ids),
                        layers,
                        false,
                    )?
                    .f_to_kind(Kind::Float)?;
                for (row, &i) in indices.iter().enumerate() {
                    // A copy of the real tokens, so the padded batch can go.
                    let own = hidden
                        .f_select(0, row as i64)?
                        .f_narrow(0, 0, encoded[i].len() as i64)?
                        .f_detach_copy()?;
                    states[i] = Some(own);
                }
            }
            Ok(())
        })?;
        let states = states
            .into_iter()
            .map(|s| s.ok_or_else(|| TrainError::InvalidInput("an input has no tokens".into())))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            states,
            layer: layers,
        })
    }

    pub(crate) fn len(&self) -> usize {
        self.states.len()
    }

    /// The first block the states have not been through.
    pub(crate) fn layer(&self) -> usize {
        self.layer
    }

    /// Example `i`'s number of tokens.
    pub(crate) fn tokens(&self, i: usize) -> usize {
        self.states[i].size().first().copied().unwrap_or(0) as usize
    }

    /// The states of the examples at `indices`, padded with zeros to the longest:
    /// `[batch, seq, hidden]` and the attention mask `[batch, seq]` (1 for real tokens),
    /// both on `device`.
    pub(crate) fn batch(
        &self,
        indices: &[usize],
        device: Device,
    ) -> Result<(Tensor, Tensor), TrainError> {
        let rows: Vec<&Tensor> = indices.iter().map(|&i| &self.states[i]).collect();
        let hidden = Tensor::f_pad_sequence(&rows, true, 0.0, "right")?.f_to_device(device)?;
        let seq_len = indices.iter().map(|&i| self.tokens(i)).max().unwrap_or(0);
        let mut mask = vec![0i64; indices.len() * seq_len];
        for (row, &i) in indices.iter().enumerate() {
            mask[row * seq_len..row * seq_len + self.tokens(i)].fill(1);
        }
        let mask = Tensor::f_from_slice(&mask)?
            .f_view([indices.len() as i64, seq_len as i64])?
            .f_to_device(device)?;
        Ok((hidden, mask))
    }
}

/// The frozen states of a run's training and validation inputs.
#[derive(Debug)]
pub(crate) struct FrozenSplits {
    pub(crate) train: FrozenStates,
    pub(crate) validation: Option<FrozenStates>,
}
