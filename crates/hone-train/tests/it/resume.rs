//! A run stopped after a checkpoint and resumed from it in a fresh model and optimizer
//! ends as the uninterrupted run does: same losses, same metrics, same weights.

use std::path::Path;

use hone_domain::job::MonitorMetric;
use hone_train::train::{
    fine_tune, Checkpoint, EpochMetrics, StepProgress, Strategy, TrainJob, TrainObserver,
};
use hone_train::{Objective, TrainError};

use crate::common::{
    cpu_job, fast_config, labels, tiny_base_model, torch_lock, toy_data, weights, Naming,
};

/// Records steps, epochs and checkpoints; stops training once it has seen
/// `stop_after_checkpoints` of them.
#[derive(Default)]
pub struct Run {
    pub losses: Vec<f64>,
    pub epochs: Vec<EpochMetrics>,
    pub checkpoints: Vec<Checkpoint>,
    pub stop_after_checkpoints: Option<usize>,
}

impl TrainObserver for Run {
    fn on_step(&mut self, p: &StepProgress) {
        self.losses.push(p.loss);
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.epochs.push(m.clone());
    }
    fn cancelled(&self) -> bool {
        self.stop_after_checkpoints
            .is_some_and(|n| self.checkpoints.len() >= n)
    }
    fn on_checkpoint(&mut self, c: &Checkpoint) {
        self.checkpoints.push(c.clone());
    }
}

fn job<'a>(base: &'a Path, strategy: Strategy, checkpoints: &'a Path) -> TrainJob<'a> {
    let mut config = fast_config(7);
    config.strategy = strategy;
    config.epochs = 4;
    config.early_stopping_patience = 3;
    config.monitor = MonitorMetric::Accuracy;
    if strategy == Strategy::FeatureExtraction {
        config.learning_rate = 1e-2;
    }
    TrainJob {
        checkpoint_dir: Some(checkpoints),
        ..cpu_job(
            base,
            Objective::classification(labels()),
            toy_data(40, 1),
            Some(toy_data(16, 2)),
            config,
        )
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5
}

fn resumes_exactly(strategy: Strategy) {
    let _lock = torch_lock();
    let base = tiny_base_model(21, Naming::Plain);
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = |name: &str| scratch.path().join(name);
    let (straight_dir, stopped_dir, resumed_dir) = (dir("a"), dir("b"), dir("c"));

    let mut straight = Run::default();
    let expected = fine_tune(job(base.path(), strategy, &straight_dir), &mut straight)
        .expect("uninterrupted run");
    assert_eq!(straight.losses.len(), 20); // 4 epochs × ceil(40 / 8)

    // Stopped after the checkpoint of epoch 2 (as a killed worker would be, later).
    let mut stopped = Run {
        stop_after_checkpoints: Some(2),
        ..Run::default()
    };
    let err = fine_tune(job(base.path(), strategy, &stopped_dir), &mut stopped)
        .expect_err("stopped after epoch 2");
    assert!(matches!(err, TrainError::Cancelled), "{err}");
    let checkpoint = &stopped.checkpoints[1];
    assert_eq!((checkpoint.epoch, checkpoint.step), (2, 10));

    // A fresh model and optimizer, from that checkpoint.
    let mut resumed = Run::default();
    let mut again = job(base.path(), strategy, &resumed_dir);
    again.resume_from = Some(&checkpoint.dir);
    let model = fine_tune(again, &mut resumed).expect("resumed run");

    assert_eq!(resumed.losses.len(), 10, "only epochs 3 and 4 run again");
    for (a, b) in straight.losses[10..].iter().zip(&resumed.losses) {
        assert!(
            close(*a, *b),
            "{:?} vs {:?}",
            &straight.losses[10..],
            resumed.losses
        );
    }
    assert_eq!(resumed.epochs.len(), 2);
    assert_eq!(
        model.history().len(),
        4,
        "the history covers the epochs before too"
    );
    for (a, b) in expected.history().iter().zip(model.history()) {
        assert_eq!(a.epoch, b.epoch);
        assert!(close(a.train_loss, b.train_loss), "{a:?} vs {b:?}");
        let (va, vb) = (a.validation.as_ref(), b.validation.as_ref());
        let (va, vb) = (va.expect("validation"), vb.expect("validation"));
        assert!(close(va.loss, vb.loss) && close(va.accuracy, vb.accuracy));
    }
    let (ea, eb) = (expected.evaluation(), model.evaluation());
    let (ea, eb) = (ea.expect("evaluation"), eb.expect("evaluation"));
    assert_eq!(ea.best_epoch, eb.best_epoch);
    assert!(close(ea.train_accuracy, eb.train_accuracy));
    let (wa, wb) = (weights(&expected), weights(&model));
    assert_eq!(wa.len(), wb.len());
    for (name, a) in &wa {
        let diff = (a - &wb[name]).abs().max().double_value(&[]);
        assert!(diff <= 1e-5, "{name} differs by {diff}");
    }
    // And the resumed run's checkpoints are those of the uninterrupted run's last epochs.
    assert_eq!(resumed.checkpoints.len(), 2);
    assert_eq!(resumed.checkpoints[1].step, straight.checkpoints[3].step);
}

#[test]
fn full_fine_tuning_resumes_from_a_checkpoint_as_if_never_stopped() {
    resumes_exactly(Strategy::Full);
}

#[test]
fn feature_extraction_resumes_from_a_checkpoint_as_if_never_stopped() {
    resumes_exactly(Strategy::FeatureExtraction);
}

#[test]
fn a_checkpoint_of_other_settings_is_refused() {
    let _lock = torch_lock();
    let base = tiny_base_model(22, Naming::Plain);
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut first = Run {
        stop_after_checkpoints: Some(1),
        ..Run::default()
    };
    let first_dir = scratch.path().join("a");
    let _ = fine_tune(job(base.path(), Strategy::Full, &first_dir), &mut first);
    let second_dir = scratch.path().join("b");
    let mut other = job(base.path(), Strategy::Full, &second_dir);
    other.config.learning_rate *= 2.0;
    other.resume_from = Some(&first.checkpoints[0].dir);
    let err = fine_tune(other, &mut Run::default()).expect_err("refused");
    assert!(err.to_string().contains("other settings"), "{err}");
}
