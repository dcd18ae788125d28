//! The examples a run trains and is evaluated on ([`TrainData`]) and the pooled
//! features of a frozen encoder that can stand in for them ([`Features`]). Training,
//! evaluation and the predictor's `evaluate` all take these, so they live in a leaf
//! that none of those import back.

use tch::Tensor;

use crate::objective::Targets;

/// Examples as parallel vectors; `labels` index the labels of [`TrainJob::objective`].
/// A text job fills `texts`, an image job `images`, never both.
///
/// [`TrainJob::objective`]: crate::job::TrainJob::objective
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrainData {
    pub texts: Vec<String>,
    /// The second text of every example, for pair tasks (paraphrase, entailment),
    /// encoded as a BERT pair.
    pub text_pairs: Option<Vec<String>>,
    /// The encoded PNG or JPEG of every example of an image job: decoded and resized
    /// by the loader as training needs them, so a dataset costs its file size in memory.
    pub images: Vec<Vec<u8>>,
    pub labels: Targets,
}

impl TrainData {
    /// Image examples with their targets.
    pub fn images(images: Vec<Vec<u8>>, labels: Targets) -> Self {
        Self {
            images,
            labels,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.texts.len().max(self.images.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The examples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        let pick = |v: &[String]| rows.iter().map(|&i| v[i].clone()).collect();
        Self {
            texts: if self.texts.is_empty() {
                Vec::new()
            } else {
                pick(&self.texts)
            },
            text_pairs: self.text_pairs.as_deref().map(pick),
            images: if self.images.is_empty() {
                Vec::new()
            } else {
                rows.iter().map(|&i| self.images[i].clone()).collect()
            },
            labels: self.labels.select(rows),
        }
    }
}

/// Pooled encoder outputs `[examples, hidden]` (f32, any device), row `i` for input `i`.
#[derive(Debug)]
pub struct Features {
    pub train: Tensor,
    pub validation: Option<Tensor>,
}
