//! From a file's examples to what the trainer takes: the objective (labels, or tasks
//! with their labels and weights, in sorted order so that a rerun builds the same
//! heads) and each example's targets as indices.

use std::collections::{BTreeMap, BTreeSet};

use hone_domain::dataset::{Example, Target, TaskType};
use hone_domain::job::Hyperparameters;
use hone_train::{Objective, Targets, TaskSpec};

use super::failure::{user, Failure};

/// The objective of a training file of `task_type`: every label (or task and label)
/// it uses.
pub(super) fn objective_of(
    examples: &[Example],
    task_type: TaskType,
    hp: &Hyperparameters,
) -> Result<Objective, Failure> {
    match task_type {
        TaskType::Classification | TaskType::MultiLabel => {
            let mut labels = BTreeSet::new();
            for e in examples {
                match &e.target {
                    Target::Single(l) => {
                        labels.insert(l.clone());
                    }
                    Target::Multi(ls) => labels.extend(ls.iter().cloned()),
                    Target::Tasks(_) => {}
                }
            }
            let labels: Vec<String> = labels.into_iter().collect();
            Ok(if task_type == TaskType::MultiLabel {
                Objective::multi_label(labels)
            } else {
                Objective::classification(labels)
            })
        }
        TaskType::MultiTask => {
            let mut tasks: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for e in examples {
                if let Target::Tasks(map) = &e.target {
                    for (task, label) in map {
                        tasks.entry(task.clone()).or_default().insert(label.clone());
                    }
                }
            }
            if let Some(unknown) = hp.task_weights.keys().find(|t| !tasks.contains_key(*t)) {
                return Err(user(
                    "unknown_task",
                    format!("task_weights names {unknown:?}, which the training file lacks"),
                    Some("hyperparameters.task_weights"),
                ));
            }
            if let Some((task, _)) = tasks.iter().find(|(_, labels)| labels.len() < 2) {
                return Err(user(
                    "too_few_labels",
                    format!(
                        "task {task:?} has a single label in the training file; every task \
                         needs at least 2"
                    ),
                    Some("training_file"),
                ));
            }
            Ok(Objective::multi_task(
                tasks
                    .into_iter()
                    .map(|(name, labels)| TaskSpec {
                        weight: hp.task_weight(&name),
                        labels: labels.into_iter().collect(),
                        name,
                    })
                    .collect(),
            ))
        }
    }
}

/// One example's targets as indices.
pub(super) enum Indexed {
    Single(usize),
    Multi(Vec<usize>),
    Tasks(Vec<Option<usize>>),
}

/// Label (and task) names to indices of an objective.
pub(super) struct Indexer {
    task_type: TaskType,
    tasks: BTreeMap<String, usize>,
    /// One map per head.
    labels: Vec<BTreeMap<String, usize>>,
}

impl Indexer {
    pub(super) fn new(objective: &Objective) -> Self {
        let index = |names: &[String]| {
            names
                .iter()
                .enumerate()
                .map(|(i, n)| (n.clone(), i))
                .collect::<BTreeMap<_, _>>()
        };
        Self {
            task_type: objective.task_type,
            tasks: objective
                .heads
                .iter()
                .enumerate()
                .map(|(i, h)| (h.name.clone(), i))
                .collect(),
            labels: objective.heads.iter().map(|h| index(&h.labels)).collect(),
        }
    }

    /// `target` as indices; a target of another task type, or a label (or task) the
    /// training file does not have, is the user's error in `param`.
    pub(super) fn index(&self, target: &Target, param: &str) -> Result<Indexed, Failure> {
        let unknown = |what: String| {
            user(
                "unknown_label",
                format!("{what} of the {param} does not occur in the training file"),
                Some(param),
            )
        };
        let label = |head: usize, l: &str| {
            self.labels[head]
                .get(l)
                .copied()
                .ok_or_else(|| unknown(format!("label {l:?}")))
        };
        match (self.task_type, target) {
            (TaskType::Classification, Target::Single(l)) => Ok(Indexed::Single(label(0, l)?)),
            (TaskType::MultiLabel, Target::Multi(ls)) => Ok(Indexed::Multi(
                ls.iter().map(|l| label(0, l)).collect::<Result<_, _>>()?,
            )),
            (TaskType::MultiTask, Target::Tasks(map)) => {
                let mut row = vec![None; self.labels.len()];
                for (task, l) in map {
                    let &t = self
                        .tasks
                        .get(task)
                        .ok_or_else(|| unknown(format!("task {task:?}")))?;
                    row[t] = Some(
                        label(t, l)
                            .map_err(|_| unknown(format!("label {l:?} of task {task:?}")))?,
                    );
                }
                Ok(Indexed::Tasks(row))
            }
            (expected, other) => Err(user(
                "task_mismatch",
                format!(
                    "the {param} holds {} data but the training file {expected}",
                    other.task_type()
                ),
                Some(param),
            )),
        }
    }

    /// The indexed targets of a whole file, as the trainer takes them.
    pub(super) fn collect(&self, rows: Vec<Indexed>) -> Targets {
        match self.task_type {
            TaskType::Classification => Targets::Single(
                rows.into_iter()
                    .filter_map(|r| match r {
                        Indexed::Single(l) => Some(l),
                        _ => None,
                    })
                    .collect(),
            ),
            TaskType::MultiLabel => Targets::Multi(
                rows.into_iter()
                    .filter_map(|r| match r {
                        Indexed::Multi(l) => Some(l),
                        _ => None,
                    })
                    .collect(),
            ),
            TaskType::MultiTask => Targets::Tasks(
                rows.into_iter()
                    .filter_map(|r| match r {
                        Indexed::Tasks(l) => Some(l),
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }
}

/// Example `i`'s (task, label) pairs for the data report.
pub(super) fn report_labels<'a>(
    objective: &'a Objective,
    targets: &Targets,
    i: usize,
) -> Vec<(Option<&'a str>, &'a str)> {
    let head = |t: usize| &objective.heads[t];
    match targets {
        Targets::Single(v) => vec![(None, head(0).labels[v[i]].as_str())],
        Targets::Multi(v) => v[i]
            .iter()
            .map(|&l| (None, head(0).labels[l].as_str()))
            .collect(),
        Targets::Tasks(v) => v[i]
            .iter()
            .enumerate()
            .filter_map(|(t, l)| {
                l.map(|l| (Some(head(t).name.as_str()), head(t).labels[l].as_str()))
            })
            .collect(),
    }
}

/// What `auto` weighs: the number of classes (the largest head's) and the examples of
/// the rarest label of any head.
pub(super) fn class_evidence(objective: &Objective, targets: &Targets) -> (usize, usize) {
    let mut counts: Vec<Vec<usize>> = objective
        .heads
        .iter()
        .map(|h| vec![0; h.labels.len()])
        .collect();
    match targets {
        Targets::Single(v) => v.iter().for_each(|&l| counts[0][l] += 1),
        Targets::Multi(v) => v.iter().flatten().for_each(|&l| counts[0][l] += 1),
        Targets::Tasks(v) => {
            for row in v {
                for (t, l) in row.iter().enumerate() {
                    if let Some(l) = l {
                        counts[t][*l] += 1;
                    }
                }
            }
        }
    }
    let classes = objective.sizes().into_iter().max().unwrap_or(0);
    let smallest = counts.iter().flatten().copied().min().unwrap_or(0);
    (classes, smallest)
}

/// How the objective reads in a job event.
pub(super) fn describe(objective: &Objective) -> String {
    match objective.task_type {
        TaskType::Classification => format!("{} labels", objective.width()),
        TaskType::MultiLabel => format!("{} labels, any number per example", objective.width()),
        TaskType::MultiTask => format!(
            "{} tasks ({})",
            objective.heads.len(),
            objective
                .heads
                .iter()
                .map(|h| format!("{}: {} labels, weight {}", h.name, h.labels.len(), h.weight))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    }
}
