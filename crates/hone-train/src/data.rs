//! The examples a run trains and is evaluated on ([`TrainData`]) and the pooled
//! features of a frozen encoder that can stand in for them ([`Features`]). Training,
//! evaluation and the predictor's `evaluate` all take these, so they live in a leaf
//! that none of those import back.

use tch::Tensor;

use crate::error::TrainError;
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

    /// These examples followed by `other`'s, as a final fit trains on training and
    /// validation data together; both must be of one kind (texts, pairs or images,
    /// and the same kind of targets).
    pub fn concat(&self, other: &Self) -> Result<Self, TrainError> {
        let mismatch = || {
            TrainError::InvalidInput(
                "the training and validation examples are not of one kind".into(),
            )
        };
        let join = |a: &[String], b: &[String]| [a, b].concat();
        let text_pairs = match (&self.text_pairs, &other.text_pairs) {
            (Some(a), Some(b)) => Some(join(a, b)),
            (None, None) => None,
            _ => return Err(mismatch()),
        };
        if self.texts.is_empty() != other.texts.is_empty()
            || self.images.is_empty() != other.images.is_empty()
        {
            return Err(mismatch());
        }
        let labels = match (&self.labels, &other.labels) {
            (Targets::Single(a), Targets::Single(b)) => Targets::Single([&a[..], b].concat()),
            (Targets::Multi(a), Targets::Multi(b)) => Targets::Multi([&a[..], b].concat()),
            (Targets::Tasks(a), Targets::Tasks(b)) => Targets::Tasks([&a[..], b].concat()),
            _ => return Err(mismatch()),
        };
        Ok(Self {
            texts: join(&self.texts, &other.texts),
            text_pairs,
            images: [&self.images[..], &other.images].concat(),
            labels,
        })
    }
}

/// Pooled encoder outputs `[examples, hidden]` (f32, any device), row `i` for input `i`.
#[derive(Debug)]
pub struct Features {
    pub train: Tensor,
    pub validation: Option<Tensor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_keeps_the_order_and_refuses_two_kinds() {
        let a = TrainData {
            texts: vec!["a".into(), "b".into()],
            labels: Targets::Single(vec![0, 1]),
            ..TrainData::default()
        };
        let b = TrainData {
            texts: vec!["c".into()],
            labels: Targets::Single(vec![1]),
            ..TrainData::default()
        };
        let both = a.concat(&b).expect("one kind");
        assert_eq!(both.texts, ["a", "b", "c"]);
        assert_eq!(both.labels, Targets::Single(vec![0, 1, 1]));
        let images = TrainData::images(vec![vec![1]], Targets::Single(vec![0]));
        assert!(a.concat(&images).is_err());
        let multi = TrainData {
            labels: Targets::Multi(vec![vec![0]]),
            ..b
        };
        assert!(a.concat(&multi).is_err());
    }
}
