//! Text → token ids with the base model's own `tokenizer.json`, and batches of them →
//! tensors.
//!
//! The tokenizer never pads: a dataset is tokenized once, and each batch is padded only
//! to its own longest member when its tensors are built ("dynamic padding"). Short
//! texts — most of a typical classification set — then cost short sequences instead of
//! `max_seq_len` each, which is most of the speed of training on CPU.

use std::path::Path;

use tch::{Device, Tensor};
use tokenizers::{
    EncodeInput, PostProcessor, Tokenizer, TruncationDirection, TruncationParams,
    TruncationStrategy,
};

use crate::error::TrainError;
use crate::model_dir::TOKENIZER_FILE;

/// One tokenized text, special tokens included, truncated, not padded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The tensors of one padded batch, all `[batch, seq]` i64 on the model's device.
#[derive(Debug)]
pub struct Batch {
    pub input_ids: Tensor,
    /// 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    pub token_type_ids: Tensor,
}

/// A model's tokenizer set up for hone: truncation to `max_seq_len`, no padding.
#[derive(Debug, Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    max_seq_len: usize,
    pad_id: u32,
}

impl TextTokenizer {
    /// Loads `dir/tokenizer.json`. The padding and truncation stored in the file
    /// (all-MiniLM-L6-v2 ships "pad everything to 128") are replaced.
    pub fn from_dir(dir: &Path, max_seq_len: usize) -> Result<Self, TrainError> {
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(TrainError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "tokenizer.json not found"),
            ));
        }
        let mut inner = Tokenizer::from_file(&path)
            .map_err(|e| TrainError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .unwrap_or(0);
        // Room for at least one token besides [CLS] and [SEP]; the tokenizers crate
        // subtracts the special tokens from the limit and must not underflow.
        let special = inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        if max_seq_len <= special {
            return Err(TrainError::InvalidInput(format!(
                "max_seq_len {max_seq_len} leaves no room next to the {special} special tokens"
            )));
        }
        inner.with_padding(None);
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: max_seq_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        Ok(Self {
            inner,
            max_seq_len,
            pad_id,
        })
    }

    pub fn max_seq_len(&self) -> usize {
        self.max_seq_len
    }

    /// The id padding positions get; they are masked out, so it only has to be a
    /// valid row of the embedding table.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Size of the vocabulary including added tokens: every id the tokenizer can
    /// produce is below it.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenizes texts (in parallel), with special tokens and truncation.
    pub fn encode<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>, TrainError> {
        let inputs: Vec<EncodeInput> = texts.iter().map(|t| t.as_ref().into()).collect();
        self.encode_inputs(inputs)
    }

    /// Tokenizes text pairs as the model's pair template says (BERT: `[CLS] a [SEP] b
    /// [SEP]`, token types 0 then 1), truncating the longer text first.
    pub fn encode_pairs<S: AsRef<str>>(
        &self,
        texts: &[S],
        pairs: &[S],
    ) -> Result<Vec<Encoded>, TrainError> {
        if texts.len() != pairs.len() {
            return Err(TrainError::InvalidInput(format!(
                "{} texts but {} text pairs",
                texts.len(),
                pairs.len()
            )));
        }
        let inputs: Vec<EncodeInput> = texts
            .iter()
            .zip(pairs)
            .map(|(a, b)| (a.as_ref(), b.as_ref()).into())
            .collect();
        self.encode_inputs(inputs)
    }

    /// [`encode`](Self::encode) or [`encode_pairs`](Self::encode_pairs), as `pairs` says.
    pub fn encode_maybe_pairs(
        &self,
        texts: &[String],
        pairs: Option<&[String]>,
    ) -> Result<Vec<Encoded>, TrainError> {
        match pairs {
            Some(pairs) => self.encode_pairs(texts, pairs),
            None => self.encode(texts),
        }
    }

    fn encode_inputs(&self, inputs: Vec<EncodeInput>) -> Result<Vec<Encoded>, TrainError> {
        let encodings = self
            .inner
            .encode_batch_fast(inputs, true)
            .map_err(|e| TrainError::Tokenizer(e.to_string()))?;
        Ok(encodings
            .into_iter()
            .map(|e| Encoded {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
            })
            .collect())
    }
}

/// Pads `items` to the longest of them and moves the batch to `device`.
pub fn collate(items: &[&Encoded], pad_id: u32, device: Device) -> Result<Batch, TrainError> {
    let batch = items.len();
    let seq_len = items.iter().map(|e| e.len()).max().unwrap_or(0);
    if batch == 0 || seq_len == 0 {
        return Err(TrainError::InvalidInput(
            "cannot build an empty batch".into(),
        ));
    }
    let mut ids = vec![i64::from(pad_id); batch * seq_len];
    let mut mask = vec![0i64; batch * seq_len];
    let mut types = vec![0i64; batch * seq_len];
    for (row, item) in items.iter().enumerate() {
        let start = row * seq_len;
        let n = item.len();
        for (dst, &src) in ids[start..start + n].iter_mut().zip(&item.ids) {
            *dst = i64::from(src);
        }
        mask[start..start + n].fill(1);
        for (dst, &src) in types[start..start + n].iter_mut().zip(&item.type_ids) {
            *dst = i64::from(src);
        }
    }
    let shape = [batch as i64, seq_len as i64];
    let tensor = |data: &[i64]| -> Result<Tensor, TrainError> {
        Ok(Tensor::f_from_slice(data)?
            .f_view(shape)?
            .f_to_device(device)?)
    };
    Ok(Batch {
        input_ids: tensor(&ids)?,
        attention_mask: tensor(&mask)?,
        token_type_ids: tensor(&types)?,
    })
}

/// Token counts of `texts` under the base model's tokenizer, special tokens included and
/// nothing truncated: what the data report compares with `max_seq_len`.
pub fn token_lengths(
    base_model_dir: &Path,
    texts: &[String],
    pairs: Option<&[String]>,
) -> Result<Vec<usize>, TrainError> {
    let tokenizer = TextTokenizer::from_dir(base_model_dir, usize::MAX / 2)?;
    Ok(tokenizer
        .encode_maybe_pairs(texts, pairs)?
        .iter()
        .map(|e| e.len())
        .collect())
}
