//! The best epoch and early stopping: the weights of the best epoch by the monitored
//! validation metric, copied aside and put back at the end ([`BestEpoch`]), and how
//! many epochs have gone by without improving on it.

use std::collections::BTreeMap;

use tch::{nn, Tensor};

use hone_domain::job::MonitorMetric;

use crate::config::TrainConfig;
use crate::error::TrainError;
use crate::metrics::EvalMetrics;
use crate::trainable::trainable;

pub(crate) fn monitor_name(m: MonitorMetric) -> &'static str {
    match m {
        MonitorMetric::Loss => "loss",
        MonitorMetric::Accuracy => "accuracy",
        MonitorMetric::MacroF1 => "macro-F1",
    }
}

/// The weights of the best epoch so far, copied aside (trainable variables only: the
/// frozen ones never change).
pub(crate) struct BestEpoch {
    monitor: MonitorMetric,
    names: Vec<String>,
    live: Vec<Tensor>,
    saved: Vec<Tensor>,
    pub(crate) best: Option<(u32, f64)>,
}

impl BestEpoch {
    pub(crate) fn new(vs: &nn::VarStore, monitor: MonitorMetric) -> Result<Self, TrainError> {
        let (names, live) = trainable(vs).into_iter().unzip();
        Ok(Self {
            monitor,
            names,
            live,
            saved: Vec::new(),
            best: None,
        })
    }

    /// The saved weights by name, for a checkpoint.
    pub(crate) fn saved_named(&self) -> Vec<(String, Tensor)> {
        self.names
            .iter()
            .cloned()
            .zip(self.saved.iter().map(Tensor::shallow_clone))
            .collect()
    }

    /// Takes back what a checkpoint saved of the tracker.
    pub(crate) fn load(
        &mut self,
        best: Option<(u32, f64)>,
        saved: &BTreeMap<String, Tensor>,
    ) -> Result<(), TrainError> {
        self.best = best;
        if best.is_none() {
            return Ok(());
        }
        self.saved = self
            .names
            .iter()
            .map(|name| {
                saved.get(name).map(Tensor::shallow_clone).ok_or_else(|| {
                    TrainError::InvalidInput(format!("the best epoch's {name} is missing"))
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(())
    }

    fn value(&self, m: &EvalMetrics) -> f64 {
        match self.monitor {
            MonitorMetric::Loss => m.loss,
            MonitorMetric::Accuracy => m.accuracy,
            MonitorMetric::MacroF1 => m.macro_f1,
        }
    }

    /// Keeps this epoch's weights if they are the best so far (ties keep the earlier);
    /// whether it did.
    pub(crate) fn offer(&mut self, epoch: u32, metrics: &EvalMetrics) -> Result<bool, TrainError> {
        let value = self.value(metrics);
        let better = match self.best {
            None => true,
            Some((_, best)) if self.monitor.higher_is_better() => value > best,
            Some((_, best)) => value < best,
        };
        if !better {
            return Ok(false);
        }
        self.best = Some((epoch, value));
        tch::no_grad(|| -> Result<(), TrainError> {
            if self.saved.is_empty() {
                self.saved = self
                    .live
                    .iter()
                    .map(Tensor::f_detach_copy)
                    .collect::<Result<_, _>>()?;
            } else {
                for (saved, live) in self.saved.iter_mut().zip(&self.live) {
                    saved.f_copy_(live)?;
                }
            }
            Ok(())
        })?;
        Ok(true)
    }

    fn epochs_since(&self, epoch: u32) -> u32 {
        self.best.map_or(0, |(best, _)| epoch - best)
    }

    /// Whether training ends after `epoch`: the patience (0: never) has run out
    /// without an improvement on the best epoch, and epochs are left to run.
    pub(crate) fn stops_after(&self, epoch: u32, config: &TrainConfig) -> bool {
        config.early_stopping_patience > 0
            && epoch < config.epochs
            && self.epochs_since(epoch) >= config.early_stopping_patience
    }

    /// Puts the best weights back; the best epoch, if any was scored.
    pub(crate) fn restore(mut self) -> Result<Option<u32>, TrainError> {
        tch::no_grad(|| -> Result<(), TrainError> {
            for (live, saved) in self.live.iter_mut().zip(&self.saved) {
                live.f_copy_(saved)?;
            }
            Ok(())
        })?;
        Ok(self.best.map(|(epoch, _)| epoch))
    }
}
