//! What a model predicts — one label per input, any set of labels, or one label for
//! each of several tasks — and everything that follows from it: the heads' sizes, the
//! training loss, the probabilities and the metrics.
//!
//! All task types share one layout: the heads' logits are concatenated along the last
//! dimension, head `t` owning the columns `span(t)`. Single-label classification is
//! one softmax head, multi-label one sigmoid per label, multi-task one softmax head
//! per task on the shared encoder.

use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Reduction, Tensor};

use std::collections::BTreeMap;

use hone_domain::dataset::{Example, Target, TaskType};
use hone_domain::job::ClassWeights;
use hone_domain::metrics::{
    tune_threshold, ClassificationReport, MultiLabelReport, TaskReport, DEFAULT_THRESHOLD,
};

use crate::error::TrainError;

/// One head: the labels it chooses from and its share of the joint loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// The task's name (multi-task); empty for a single-task model.
    pub name: String,
    /// Label names in the order of the head's outputs.
    pub labels: Vec<String>,
    /// Relative weight of the task's loss in the joint loss (multi-task).
    pub weight: f64,
}

/// The labels of a set of examples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// One label index per example.
    Single(Vec<usize>),
    /// The label indices each example has (possibly none).
    Multi(Vec<Vec<usize>>),
    /// For each example, for each task (in [`Objective::heads`] order), the label
    /// index within that task, or `None` where the example leaves the task out.
    Tasks(Vec<Vec<Option<usize>>>),
}

impl Default for Targets {
    fn default() -> Self {
        Targets::Single(Vec::new())
    }
}

impl From<Vec<usize>> for Targets {
    fn from(labels: Vec<usize>) -> Self {
        Targets::Single(labels)
    }
}

impl Targets {
    pub fn len(&self) -> usize {
        match self {
            Targets::Single(v) => v.len(),
            Targets::Multi(v) => v.len(),
            Targets::Tasks(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn task_type(&self) -> TaskType {
        match self {
            Targets::Single(_) => TaskType::Classification,
            Targets::Multi(_) => TaskType::MultiLabel,
            Targets::Tasks(_) => TaskType::MultiTask,
        }
    }

    /// The targets of the examples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Targets {
        match self {
            Targets::Single(v) => Targets::Single(rows.iter().map(|&i| v[i]).collect()),
            Targets::Multi(v) => Targets::Multi(rows.iter().map(|&i| v[i].clone()).collect()),
            Targets::Tasks(v) => Targets::Tasks(rows.iter().map(|&i| v[i].clone()).collect()),
        }
    }

    /// The label indices of single-label targets.
    pub fn as_single(&self) -> Option<&[usize]> {
        match self {
            Targets::Single(v) => Some(v),
            _ => None,
        }
    }

    /// The stratum of each example for a stratified split or sample: its label; for
    /// multi-label its rarest label (so rare labels reach every part), for multi-task
    /// its label of the first task it labels.
    pub fn strata(&self) -> Vec<(usize, usize)> {
        match self {
            Targets::Single(v) => v.iter().map(|&l| (0, l)).collect(),
            Targets::Multi(v) => {
                let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
                for &l in v.iter().flatten() {
                    *counts.entry(l).or_default() += 1;
                }
                v.iter()
                    .map(|set| {
                        set.iter()
                            .min_by_key(|l| (counts.get(l).copied().unwrap_or(0), **l))
                            .map_or((1, 0), |&l| (0, l))
                    })
                    .collect()
            }
            Targets::Tasks(v) => v
                .iter()
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .find_map(|(t, l)| l.map(|l| (t, l)))
                        .unwrap_or((usize::MAX, 0))
                })
                .collect(),
        }
    }

    /// Whether a transferability estimate has something to score: two classes of a
    /// single-label set, a label that some examples have and some lack, or a task
    /// with two labels.
    pub fn scorable(&self) -> bool {
        let distinct = |labels: &mut dyn Iterator<Item = usize>| {
            labels.collect::<std::collections::BTreeSet<_>>().len()
        };
        match self {
            Targets::Single(v) => distinct(&mut v.iter().copied()) >= 2,
            Targets::Multi(v) => {
                let present: std::collections::BTreeSet<usize> =
                    v.iter().flatten().copied().collect();
                present.iter().any(|l| v.iter().any(|set| !set.contains(l)))
            }
            Targets::Tasks(v) => {
                let tasks = v.first().map_or(0, Vec::len);
                (0..tasks).any(|t| distinct(&mut v.iter().filter_map(|row| row[t])) >= 2)
            }
        }
    }

    /// The targets of a whole parsed file and the objective they index: labels (and
    /// tasks) sorted by name, every task weighing 1. The file's examples must all be
    /// of one task type, as the dataset parser guarantees.
    pub fn from_examples(examples: &[Example]) -> Result<(Objective, Targets), TrainError> {
        let mismatch = |i: usize| {
            TrainError::InvalidInput(format!(
                "example {i} is of another task type than example 0"
            ))
        };
        let index = |names: &std::collections::BTreeSet<&str>| -> BTreeMap<String, usize> {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| ((*n).to_owned(), i))
                .collect()
        };
        let task_type = examples
            .first()
            .map_or(TaskType::Classification, |e| e.target.task_type());
        match task_type {
            TaskType::Classification | TaskType::MultiLabel => {
                let mut names = std::collections::BTreeSet::new();
                for e in examples {
                    match &e.target {
                        Target::Single(l) => {
                            names.insert(l.as_str());
                        }
                        Target::Multi(ls) => names.extend(ls.iter().map(String::as_str)),
                        Target::Tasks(_) => {}
                    }
                }
                let map = index(&names);
                let labels: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
                if task_type == TaskType::Classification {
                    let targets = examples
                        .iter()
                        .enumerate()
                        .map(|(i, e)| match &e.target {
                            Target::Single(l) => Ok(map[l.as_str()]),
                            _ => Err(mismatch(i)),
                        })
                        .collect::<Result<_, _>>()?;
                    Ok((Objective::classification(labels), Targets::Single(targets)))
                } else {
                    let targets = examples
                        .iter()
                        .enumerate()
                        .map(|(i, e)| match &e.target {
                            Target::Multi(ls) => Ok(ls.iter().map(|l| map[l.as_str()]).collect()),
                            _ => Err(mismatch(i)),
                        })
                        .collect::<Result<_, _>>()?;
                    Ok((Objective::multi_label(labels), Targets::Multi(targets)))
                }
            }
            TaskType::MultiTask => {
                let mut tasks: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
                for e in examples {
                    if let Target::Tasks(map) = &e.target {
                        for (task, label) in map {
                            tasks
                                .entry(task.as_str())
                                .or_default()
                                .insert(label.as_str());
                        }
                    }
                }
                let slots: BTreeMap<&str, (usize, BTreeMap<String, usize>)> = tasks
                    .iter()
                    .enumerate()
                    .map(|(t, (task, labels))| (*task, (t, index(labels))))
                    .collect();
                let targets = examples
                    .iter()
                    .enumerate()
                    .map(|(i, e)| match &e.target {
                        Target::Tasks(map) => {
                            let mut row = vec![None; slots.len()];
                            for (task, label) in map {
                                let (t, labels) = &slots[task.as_str()];
                                row[*t] = Some(labels[label.as_str()]);
                            }
                            Ok(row)
                        }
                        _ => Err(mismatch(i)),
                    })
                    .collect::<Result<_, _>>()?;
                let heads = tasks
                    .into_iter()
                    .map(|(name, labels)| TaskSpec {
                        name: name.to_owned(),
                        labels: labels.into_iter().map(str::to_owned).collect(),
                        weight: 1.0,
                    })
                    .collect();
                Ok((Objective::multi_task(heads), Targets::Tasks(targets)))
            }
        }
    }
}

/// What a model's heads output and how they are trained and read.
#[derive(Debug, Clone, PartialEq)]
pub struct Objective {
    pub task_type: TaskType,
    /// One entry per head; exactly one unless multi-task.
    pub heads: Vec<TaskSpec>,
}

impl Objective {
    /// One label per input, from `labels`.
    pub fn classification(labels: Vec<String>) -> Self {
        Self::single(TaskType::Classification, labels)
    }

    /// Any subset of `labels` per input.
    pub fn multi_label(labels: Vec<String>) -> Self {
        Self::single(TaskType::MultiLabel, labels)
    }

    /// One label for each task; the heads in the order of `tasks`.
    pub fn multi_task(tasks: Vec<TaskSpec>) -> Self {
        Self {
            task_type: TaskType::MultiTask,
            heads: tasks,
        }
    }

    fn single(task_type: TaskType, labels: Vec<String>) -> Self {
        Self {
            task_type,
            heads: vec![TaskSpec {
                name: String::new(),
                labels,
                weight: 1.0,
            }],
        }
    }

    /// Outputs of each head.
    pub fn sizes(&self) -> Vec<usize> {
        self.heads.iter().map(|h| h.labels.len()).collect()
    }

    /// Outputs of all heads together.
    pub fn width(&self) -> usize {
        self.sizes().iter().sum()
    }

    /// The labels of a single-task model (empty for multi-task).
    pub fn labels(&self) -> &[String] {
        match (self.task_type, self.heads.first()) {
            (TaskType::MultiTask, _) | (_, None) => &[],
            (_, Some(h)) => &h.labels,
        }
    }

    /// `(first column, columns)` of each head.
    pub(crate) fn spans(&self) -> Vec<(i64, i64)> {
        let mut offset = 0i64;
        self.sizes()
            .into_iter()
            .map(|n| {
                let span = (offset, n as i64);
                offset += n as i64;
                span
            })
            .collect()
    }

    /// Refuses an objective no model can have.
    pub(crate) fn validate(&self) -> Result<(), TrainError> {
        let invalid = |m: String| Err(TrainError::InvalidInput(m));
        if self.heads.is_empty() {
            return invalid("a model needs at least one task".into());
        }
        if self.task_type != TaskType::MultiTask && self.heads.len() != 1 {
            return invalid(format!("a {} model has one head", self.task_type));
        }
        for head in &self.heads {
            let what = if head.name.is_empty() {
                "a classifier".to_owned()
            } else {
                format!("task {:?}", head.name)
            };
            let least = if self.task_type == TaskType::MultiLabel {
                1
            } else {
                2
            };
            if head.labels.len() < least {
                return invalid(format!(
                    "{what} needs at least {least} labels, got {}",
                    head.labels.len()
                ));
            }
            if !(head.weight.is_finite() && head.weight > 0.0) {
                return invalid(format!("{what} has weight {}; it must be > 0", head.weight));
            }
        }
        Ok(())
    }

    /// Checks that `targets` are of this task type and index existing labels; `name`
    /// names the data in messages.
    pub(crate) fn check(&self, targets: &Targets, name: &str) -> Result<(), TrainError> {
        let invalid = |m: String| Err(TrainError::InvalidInput(m));
        if targets.task_type() != self.task_type {
            return invalid(format!(
                "the {name} set holds {} targets but the model is {}",
                targets.task_type(),
                self.task_type
            ));
        }
        let width = self.heads[0].labels.len();
        match targets {
            Targets::Single(v) => {
                if let Some((i, l)) = v.iter().enumerate().find(|(_, &l)| l >= width) {
                    return invalid(format!(
                        "{name} example {i} has label index {l}, but there are {width} labels"
                    ));
                }
            }
            Targets::Multi(v) => {
                if let Some((i, l)) = v
                    .iter()
                    .enumerate()
                    .find_map(|(i, set)| set.iter().find(|&&l| l >= width).map(|&l| (i, l)))
                {
                    return invalid(format!(
                        "{name} example {i} has label index {l}, but there are {width} labels"
                    ));
                }
            }
            Targets::Tasks(v) => {
                for (i, row) in v.iter().enumerate() {
                    if row.len() != self.heads.len() {
                        return invalid(format!(
                            "{name} example {i} has {} task slots, the model {} tasks",
                            row.len(),
                            self.heads.len()
                        ));
                    }
                    if row.iter().all(Option::is_none) {
                        return invalid(format!("{name} example {i} labels no task"));
                    }
                    for (slot, head) in row.iter().zip(&self.heads) {
                        if let Some(l) = slot.filter(|&l| l >= head.labels.len()) {
                            return invalid(format!(
                                "{name} example {i} has label index {l} for task {:?}, \
                                 which has {} labels",
                                head.name,
                                head.labels.len()
                            ));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Per-head loss weights for `class_weights`, from the training targets:
    /// scikit-learn's `compute_class_weight("balanced")` (`n / (classes · count)`) for
    /// softmax heads over the examples that label the task, and `negatives / positives`
    /// as BCE's `pos_weight` for each sigmoid label.
    pub(crate) fn loss_weights(
        &self,
        class_weights: ClassWeights,
        targets: &Targets,
        device: Device,
    ) -> Result<Vec<Option<Tensor>>, TrainError> {
        if class_weights == ClassWeights::None {
            return Ok(self.heads.iter().map(|_| None).collect());
        }
        let balanced = |labels: &mut dyn Iterator<Item = usize>, classes: usize| {
            let mut counts = vec![0usize; classes];
            let mut n = 0usize;
            for l in labels {
                counts[l] += 1;
                n += 1;
            }
            counts
                .iter()
                .map(|&c| {
                    if c == 0 {
                        0.0
                    } else {
                        (n as f64 / (classes as f64 * c as f64)) as f32
                    }
                })
                .collect::<Vec<f32>>()
        };
        let weights: Vec<Vec<f32>> = match targets {
            Targets::Single(v) => vec![balanced(&mut v.iter().copied(), self.width())],
            Targets::Multi(v) => {
                let width = self.width();
                let mut positives = vec![0usize; width];
                for set in v {
                    for &l in set {
                        positives[l] += 1;
                    }
                }
                vec![positives
                    .iter()
                    .map(|&p| {
                        if p == 0 {
                            1.0
                        } else {
                            ((v.len() - p) as f64 / p as f64) as f32
                        }
                    })
                    .collect()]
            }
            Targets::Tasks(v) => self
                .heads
                .iter()
                .enumerate()
                .map(|(t, head)| {
                    balanced(&mut v.iter().filter_map(|row| row[t]), head.labels.len())
                })
                .collect(),
        };
        weights
            .iter()
            .map(|w| Ok(Some(Tensor::f_from_slice(w)?.f_to_device(device)?)))
            .collect()
    }

    /// The mean loss of `logits` (rows = the examples at `rows` of `targets`):
    /// cross-entropy for softmax heads, binary cross-entropy for sigmoid labels, and for
    /// multi-task the weighted mean of the tasks' cross-entropies over the tasks this
    /// batch labels (a task a row leaves out adds nothing for that row).
    pub(crate) fn loss(
        &self,
        logits: &Tensor,
        targets: &Targets,
        rows: &[usize],
        weights: &[Option<Tensor>],
        label_smoothing: f64,
    ) -> Result<Tensor, TrainError> {
        let device = logits.device();
        let indices = |v: Vec<i64>| -> Result<Tensor, TrainError> {
            Ok(Tensor::f_from_slice(&v)?.f_to_device(device)?)
        };
        let weight = |t: usize| weights.get(t).and_then(Option::as_ref);
        Ok(match targets {
            Targets::Single(labels) => {
                let t = indices(rows.iter().map(|&i| labels[i] as i64).collect())?;
                logits.f_cross_entropy_loss(
                    &t,
                    weight(0),
                    Reduction::Mean,
                    -100,
                    label_smoothing,
                )?
            }
            Targets::Multi(sets) => {
                let width = self.width();
                let (on, off) = (
                    (1.0 - label_smoothing / 2.0) as f32,
                    (label_smoothing / 2.0) as f32,
                );
                let mut flat = vec![off; rows.len() * width];
                for (r, &i) in rows.iter().enumerate() {
                    for &l in &sets[i] {
                        flat[r * width + l] = on;
                    }
                }
                let target = Tensor::f_from_slice(&flat)?
                    .f_view([rows.len() as i64, width as i64])?
                    .f_to_device(device)?;
                logits.f_binary_cross_entropy_with_logits(
                    &target,
                    None::<&Tensor>,
                    weight(0),
                    Reduction::Mean,
                )?
            }
            Targets::Tasks(table) => {
                let mut total: Option<Tensor> = None;
                let mut weight_sum = 0.0;
                for (t, (offset, size)) in self.spans().into_iter().enumerate() {
                    let labels: Vec<i64> = rows
                        .iter()
                        .map(|&i| table[i][t].map_or(-100, |l| l as i64))
                        .collect();
                    if labels.iter().all(|&l| l == -100) {
                        continue;
                    }
                    let part = logits
                        .f_narrow(1, offset, size)?
                        .f_cross_entropy_loss(
                            &indices(labels)?,
                            weight(t),
                            Reduction::Mean,
                            -100,
                            label_smoothing,
                        )?
                        .f_mul_scalar(self.heads[t].weight)?;
                    weight_sum += self.heads[t].weight;
                    total = Some(match total {
                        Some(sum) => sum.f_add(&part)?,
                        None => part,
                    });
                }
                match total {
                    Some(sum) => sum.f_div_scalar(weight_sum)?,
                    // No row of the batch labels any task: nothing to learn from it.
                    None => logits.f_sum(Kind::Float)?.f_mul_scalar(0.0)?,
                }
            }
        })
    }

    /// Probabilities `[rows, width]`: a softmax per head, or a sigmoid per label.
    pub(crate) fn probabilities(&self, logits: &Tensor) -> Result<Tensor, TrainError> {
        Ok(match self.task_type {
            TaskType::Classification => logits.f_softmax(-1, Kind::Float)?,
            TaskType::MultiLabel => logits.f_to_kind(Kind::Float)?.f_sigmoid()?,
            TaskType::MultiTask => {
                let parts = self
                    .spans()
                    .into_iter()
                    .map(|(offset, size)| {
                        logits.f_narrow(1, offset, size)?.f_softmax(-1, Kind::Float)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                Tensor::f_cat(&parts, 1)?
            }
        })
    }

    /// How probabilities `probs` (rows as [`Objective::probabilities`] gives them) score
    /// against `targets`. A multi-label model decides at `threshold`, or, when `None`,
    /// at the threshold with the best micro-F1 on these very rows.
    pub fn report(&self, targets: &Targets, probs: &[Vec<f32>], threshold: Option<f32>) -> Report {
        match targets {
            Targets::Single(truth) => {
                Report::Classification(ClassificationReport::compute(self.labels(), truth, probs))
            }
            Targets::Multi(sets) => {
                let width = self.width();
                let truth: Vec<Vec<bool>> = sets
                    .iter()
                    .map(|set| {
                        let mut row = vec![false; width];
                        for &l in set {
                            if let Some(cell) = row.get_mut(l) {
                                *cell = true;
                            }
                        }
                        row
                    })
                    .collect();
                let threshold = threshold.unwrap_or_else(|| tune_threshold(&truth, probs));
                Report::MultiLabel(MultiLabelReport::compute(
                    self.labels(),
                    &truth,
                    probs,
                    threshold,
                ))
            }
            Targets::Tasks(table) => Report::MultiTask(
                self.heads
                    .iter()
                    .zip(self.spans())
                    .enumerate()
                    .map(|(t, (head, (offset, size)))| {
                        let (truth, task_probs): (Vec<usize>, Vec<Vec<f32>>) = table
                            .iter()
                            .zip(probs)
                            .filter_map(|(row, p)| {
                                let label = row.get(t).copied().flatten()?;
                                let span = p.get(offset as usize..(offset + size) as usize)?;
                                Some((label, span.to_vec()))
                            })
                            .unzip();
                        TaskReport {
                            task: head.name.clone(),
                            weight: head.weight,
                            report: ClassificationReport::compute(
                                &head.labels,
                                &truth,
                                &task_probs,
                            ),
                        }
                    })
                    .collect(),
            ),
        }
    }
}

/// How a model scores on labelled data, in the terms of its task type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Report {
    Classification(ClassificationReport),
    MultiLabel(MultiLabelReport),
    /// One report per task, in head order.
    MultiTask(Vec<TaskReport>),
}

impl Report {
    /// Accuracy for single-label, subset accuracy (the exact label set) for
    /// multi-label, the mean of the tasks' accuracies for multi-task.
    pub fn accuracy(&self) -> f64 {
        match self {
            Report::Classification(r) => r.accuracy,
            Report::MultiLabel(r) => r.subset_accuracy,
            Report::MultiTask(tasks) => mean(tasks.iter().map(|t| t.report.accuracy)),
        }
    }

    /// Macro-F1, for multi-task the mean of the tasks' macro-F1.
    pub fn macro_f1(&self) -> f64 {
        match self {
            Report::Classification(r) => r.macro_f1,
            Report::MultiLabel(r) => r.macro_f1,
            Report::MultiTask(tasks) => mean(tasks.iter().map(|t| t.report.macro_f1)),
        }
    }

    /// The multi-label decision threshold the report used.
    pub fn threshold(&self) -> Option<f32> {
        match self {
            Report::MultiLabel(r) => Some(r.threshold as f32),
            _ => None,
        }
    }
}

fn mean(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The threshold a multi-label model decides at when nothing tuned it.
pub const UNTUNED_THRESHOLD: f32 = DEFAULT_THRESHOLD;

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, labels: &[&str], weight: f64) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            labels: labels.iter().map(|l| (*l).to_owned()).collect(),
            weight,
        }
    }

    fn logits(rows: &[[f32; 4]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, 4])
    }

    /// -log softmax(row)[target], by hand.
    fn ce(row: &[f32], target: usize) -> f64 {
        let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
        let sum: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
        -(row[target] as f64 - max - sum.ln())
    }

    #[test]
    fn multi_task_loss_weighs_tasks_and_skips_what_rows_leave_out() {
        let objective = Objective::multi_task(vec![
            spec("a", &["x", "y"], 2.0),
            spec("b", &["u", "v"], 1.0),
        ]);
        let rows = [
            [0.5, -1.0, 2.0, 0.0],
            [1.5, 0.25, -0.5, 1.0],
            [0.0, 1.0, 0.3, 0.2],
        ];
        let targets = Targets::Tasks(vec![
            vec![Some(1), None],
            vec![None, Some(0)],
            vec![Some(0), Some(1)],
        ]);
        let loss = objective
            .loss(&logits(&rows), &targets, &[0, 1, 2], &[], 0.0)
            .expect("loss")
            .double_value(&[]);
        // Task a: rows 0 and 2; task b: rows 1 and 2; each a mean over its rows.
        let a = (ce(&rows[0][..2], 1) + ce(&rows[2][..2], 0)) / 2.0;
        let b = (ce(&rows[1][2..], 0) + ce(&rows[2][2..], 1)) / 2.0;
        assert!((loss - (2.0 * a + b) / 3.0).abs() < 1e-6, "{loss}");

        // A batch where only task b is labelled is task b's loss alone.
        let only_b = objective
            .loss(&logits(&rows[1..2]), &targets, &[1], &[], 0.0)
            .expect("loss")
            .double_value(&[]);
        assert!((only_b - ce(&rows[1][2..], 0)).abs() < 1e-6);

        let probs = objective.probabilities(&logits(&rows)).expect("probs");
        let sums = probs
            .narrow(1, 0, 2)
            .sum_dim_intlist(1, false, tch::Kind::Float);
        assert!(sums.allclose(
            &Tensor::ones([3], (tch::Kind::Float, Device::Cpu)),
            1e-6,
            1e-6,
            false
        ));
    }

    #[test]
    fn multi_label_loss_is_binary_cross_entropy_per_label() {
        let objective =
            Objective::multi_label(vec!["a".into(), "b".into(), "c".into(), "d".into()]);
        let rows = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.25, -0.5, 1.0]];
        let targets = Targets::Multi(vec![vec![0, 2], vec![]]);
        let loss = objective
            .loss(&logits(&rows), &targets, &[0, 1], &[], 0.0)
            .expect("loss")
            .double_value(&[]);
        let bce = |x: f32, y: f64| {
            let p = 1.0 / (1.0 + (-(x as f64)).exp());
            -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        };
        let truth = [[1.0, 0.0, 1.0, 0.0], [0.0; 4]];
        let expected: f64 = rows
            .iter()
            .zip(&truth)
            .flat_map(|(r, t)| r.iter().zip(t).map(|(&x, &y)| bce(x, y)))
            .sum::<f64>()
            / 8.0;
        assert!((loss - expected).abs() < 1e-6, "{loss} vs {expected}");
    }

    #[test]
    fn balanced_weights_follow_each_task_type() {
        let device = Device::Cpu;
        let values =
            |w: &Option<Tensor>| Vec::<f32>::try_from(w.as_ref().expect("weights")).expect("vec");
        let single = Objective::classification(vec!["a".into(), "b".into()]);
        let w = single
            .loss_weights(
                ClassWeights::Balanced,
                &Targets::Single(vec![0, 0, 0, 1]),
                device,
            )
            .expect("weights");
        assert_eq!(values(&w[0]), [4.0 / 6.0, 2.0]);

        let multi = Objective::multi_label(vec!["a".into(), "b".into()]);
        let w = multi
            .loss_weights(
                ClassWeights::Balanced,
                &Targets::Multi(vec![vec![0], vec![0, 1], vec![], vec![0]]),
                device,
            )
            .expect("weights");
        assert_eq!(values(&w[0]), [1.0 / 3.0, 3.0]); // negatives / positives

        let tasks = Objective::multi_task(vec![
            spec("a", &["x", "y"], 1.0),
            spec("b", &["u", "v"], 1.0),
        ]);
        let w = tasks
            .loss_weights(
                ClassWeights::Balanced,
                &Targets::Tasks(vec![
                    vec![Some(0), None],
                    vec![Some(1), Some(1)],
                    vec![Some(1), None],
                ]),
                device,
            )
            .expect("weights");
        assert_eq!(values(&w[0]), [1.5, 0.75]);
        assert_eq!(values(&w[1]), [0.0, 0.5]); // only "v" occurs: n / (2 · 1)
        assert!(tasks
            .loss_weights(ClassWeights::None, &Targets::Tasks(vec![]), device)
            .expect("none")
            .iter()
            .all(Option::is_none));
    }

    #[test]
    fn targets_must_fit_the_objective() {
        let tasks = Objective::multi_task(vec![
            spec("a", &["x", "y"], 1.0),
            spec("b", &["u", "v"], 1.0),
        ]);
        assert!(tasks
            .check(&Targets::Tasks(vec![vec![Some(1), None]]), "t")
            .is_ok());
        let err = |t: Targets| {
            tasks
                .check(&t, "training")
                .expect_err("refused")
                .to_string()
        };
        assert!(err(Targets::Tasks(vec![vec![None, None]])).contains("labels no task"));
        assert!(err(Targets::Tasks(vec![vec![Some(2), None]])).contains("task \"a\""));
        assert!(err(Targets::Tasks(vec![vec![Some(0)]])).contains("task slots"));
        assert!(err(Targets::Single(vec![0])).contains("multi_task"));
        let multi = Objective::multi_label(vec!["a".into()]);
        assert!(multi.validate().is_ok());
        assert!(multi.check(&Targets::Multi(vec![vec![1]]), "x").is_err());
        assert!(Objective::classification(vec!["a".into()])
            .validate()
            .is_err());
        assert!(Objective::multi_task(vec![]).validate().is_err());
    }

    #[test]
    fn reports_score_each_task_on_the_rows_that_label_it() {
        let tasks = Objective::multi_task(vec![
            spec("a", &["x", "y"], 1.0),
            spec("b", &["u", "v"], 2.0),
        ]);
        let targets = Targets::Tasks(vec![
            vec![Some(0), Some(1)],
            vec![Some(1), None],
            vec![None, Some(0)],
        ]);
        let probs = vec![
            vec![0.9, 0.1, 0.2, 0.8], // a right, b right
            vec![0.8, 0.2, 0.5, 0.5], // a wrong
            vec![0.5, 0.5, 0.3, 0.7], // b wrong
        ];
        let report = tasks.report(&targets, &probs, None);
        let Report::MultiTask(reports) = &report else {
            panic!("{report:?}")
        };
        assert_eq!(reports[0].report.examples, 2);
        assert_eq!(reports[0].report.accuracy, 0.5);
        assert_eq!(reports[1].report.examples, 2);
        assert_eq!(reports[1].weight, 2.0);
        assert_eq!(report.accuracy(), 0.5);

        let multi = Objective::multi_label(vec!["a".into(), "b".into()]);
        let report = multi.report(
            &Targets::Multi(vec![vec![0], vec![1]]),
            &[vec![0.3, 0.1], vec![0.1, 0.4]],
            Some(0.25),
        );
        assert_eq!(report.threshold(), Some(0.25));
        assert_eq!(report.accuracy(), 1.0);
    }

    #[test]
    fn files_become_targets_with_sorted_labels_and_tasks() {
        use hone_domain::dataset::{parse_examples, DatasetFormat};
        let file = br#"{"text": "a", "labels": {"topic": "sport", "mood": "sad"}}
{"text": "b", "labels": {"topic": "art"}}
{"text": "c", "labels": {"mood": "happy", "topic": "sport"}}
"#;
        let examples = parse_examples(DatasetFormat::Jsonl, file).expect("parse");
        let (objective, targets) = Targets::from_examples(&examples).expect("targets");
        let names: Vec<&str> = objective.heads.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["mood", "topic"]);
        assert_eq!(objective.heads[1].labels, ["art", "sport"]);
        assert_eq!(
            targets,
            Targets::Tasks(vec![
                vec![Some(1), Some(1)],
                vec![None, Some(0)],
                vec![Some(0), Some(1)]
            ])
        );
        assert_eq!(targets.strata(), [(0, 1), (1, 0), (0, 0)]);
        assert!(targets.scorable());
        assert!(!targets.select(&[1]).scorable());

        let file = br#"{"text": "a", "labels": ["x", "y"]}
{"text": "b", "labels": []}
{"text": "c", "labels": ["y"]}
"#;
        let examples = parse_examples(DatasetFormat::Jsonl, file).expect("parse");
        let (objective, targets) = Targets::from_examples(&examples).expect("targets");
        assert_eq!(objective.task_type, TaskType::MultiLabel);
        assert_eq!(targets, Targets::Multi(vec![vec![0, 1], vec![], vec![1]]));
        // Rarest label first: x (1 example) for row 0; no label is its own stratum.
        assert_eq!(targets.strata(), [(0, 0), (1, 0), (0, 1)]);
        assert!(targets.scorable());
        assert!(!Targets::Multi(vec![vec![0], vec![0]]).scorable());
        assert!(!Targets::Single(vec![1, 1]).scorable());
    }
}
