//! `feature_extraction` with [`HeadSolver::Lbfgs`]: the linear heads fitted on the
//! cached frozen features as tuned linear probes ([`crate::probe`]), one head at a
//! time, and written into the network's head variables. The loop ([`crate::train`])
//! reports the fit as the run's one epoch.

use tch::{nn, Tensor};

use hone_domain::job::ClassWeights;

use crate::config::{HeadSolver, Strategy, TrainConfig};
use crate::error::TrainError;
use crate::layers::HEAD_PREFIX;
use crate::network::Network;
use crate::objective::{Objective, Targets};
use crate::probe::{FittedHead, Problem};

/// Whether a run fits its heads with [`crate::probe`] rather than training them over
/// epochs: `feature_extraction` asking for [`HeadSolver::Lbfgs`], with heads that are
/// linear on the features (an image model's always are; a text model's unless its
/// head is the MLP, which stays on AdamW).
pub(crate) fn fits_heads(config: &TrainConfig, network: &Network) -> bool {
    let linear = match network {
        Network::Image { .. } => true,
        Network::Text { .. } => config.head == hone_domain::job::HeadType::Linear,
    };
    config.strategy == Strategy::FeatureExtraction
        && config.head_solver == HeadSolver::Lbfgs
        && linear
}

/// Each head fitted on `features` `[n, d]` (row `i` for example `i` of `targets`)
/// and copied into its variables in `vs`: `head.` for one head, `head.{t}.` for task
/// `t`'s. Returns the fits in head order.
pub(crate) fn fit_heads(
    vs: &nn::VarStore,
    objective: &Objective,
    targets: &Targets,
    features: &Tensor,
    config: &TrainConfig,
) -> Result<Vec<FittedHead>, TrainError> {
    let balanced = config.class_weights == ClassWeights::Balanced;
    let fits = match targets {
        Targets::Single(labels) => {
            let problem = Problem::softmax(features, labels, objective.width(), balanced)?;
            vec![problem.fit(config.seed)?]
        }
        Targets::Multi(sets) => {
            let problem = Problem::sigmoid(features, sets, objective.width(), balanced)?;
            vec![problem.fit(config.seed)?]
        }
        Targets::Tasks(table) => {
            let mut fits = Vec::with_capacity(objective.heads.len());
            for (t, head) in objective.heads.iter().enumerate() {
                let (rows, labels): (Vec<i64>, Vec<usize>) = table
                    .iter()
                    .enumerate()
                    .filter_map(|(i, row)| Some((i as i64, row.get(t).copied().flatten()?)))
                    .unzip();
                if rows.is_empty() {
                    return Err(TrainError::InvalidInput(format!(
                        "no training example labels task {:?}",
                        head.name
                    )));
                }
                let rows = Tensor::f_from_slice(&rows)?.f_to_device(features.device())?;
                let task_features = features.f_index_select(0, &rows)?;
                let problem =
                    Problem::softmax(&task_features, &labels, head.labels.len(), balanced)?;
                fits.push(problem.fit(config.seed)?);
            }
            fits
        }
    };
    let per_task = matches!(targets, Targets::Tasks(_));
    let variables = vs.variables();
    tch::no_grad(|| -> Result<(), TrainError> {
        for (t, fit) in fits.iter().enumerate() {
            let prefix = if per_task {
                format!("{HEAD_PREFIX}.{t}")
            } else {
                HEAD_PREFIX.to_owned()
            };
            for (name, value) in [("weight", &fit.weight), ("bias", &fit.bias)] {
                let name = format!("{prefix}.{name}");
                let mut var = variables
                    .get(&name)
                    .map(Tensor::shallow_clone)
                    .ok_or_else(|| {
                        TrainError::InvalidInput(format!("the model has no linear head {name}"))
                    })?;
                if var.size() != value.size() {
                    return Err(TrainError::InvalidInput(format!(
                        "{name} is {:?}, the fitted head {:?}",
                        var.size(),
                        value.size()
                    )));
                }
                var.f_copy_(value)?;
            }
        }
        Ok(())
    })?;
    Ok(fits)
}

/// What the job's events say of the fits: the regularisation each head got and how.
pub(crate) fn describe(fits: &[FittedHead], objective: &Objective) -> String {
    let parts: Vec<String> = fits
        .iter()
        .zip(&objective.heads)
        .map(|(fit, head)| {
            let task = if head.name.is_empty() {
                String::new()
            } else {
                format!("task {:?}: ", head.name)
            };
            let chosen = if fit.folds == 0 {
                "C = 1 (too few examples per class to cross-validate)".to_owned()
            } else {
                format!("C = {:.3e} by {}-fold cross-validation", fit.c, fit.folds)
            };
            let solved = if fit.converged {
                format!("converged in {} L-BFGS iterations", fit.iterations)
            } else {
                format!("stopped after {} L-BFGS iterations", fit.iterations)
            };
            format!("{task}{chosen}, {solved}")
        })
        .collect();
    format!(
        "the head was fitted as L2-regularised logistic regression on the frozen features ({})",
        parts.join("; ")
    )
}
