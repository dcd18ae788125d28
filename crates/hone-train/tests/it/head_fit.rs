//! `feature_extraction` with `HeadSolver::Lbfgs` through the trainer: the published
//! head is the tuned linear probe of the frozen features (the same fit
//! `hone_train::probe` gives on features extracted apart), reported as one epoch with
//! its regularisation in a notice; seeded runs are identical; multi-label and
//! multi-task heads are fitted per head.

use std::path::Path;

use hone_train::probe::Problem;
use hone_train::train::{fine_tune, Strategy, TrainConfig, TrainData};
use hone_train::{
    extract_image_features, Checkpoint, EpochMetrics, HeadSolver, Objective, StepProgress, Targets,
    TaskSpec, TrainObserver,
};
use tch::Device;

use crate::common::{cpu_job, torch_lock, weights};
use crate::efficientnet::{max_abs, tiny_image_base};
use crate::test_images::{read_digits, LabelledImage};

#[derive(Default)]
struct Notes {
    steps: usize,
    epochs: Vec<EpochMetrics>,
    notices: Vec<String>,
    checkpoints: usize,
}

impl TrainObserver for Notes {
    fn on_step(&mut self, _: &StepProgress) {
        self.steps += 1;
    }
    fn on_epoch(&mut self, m: &EpochMetrics) {
        self.epochs.push(m.clone());
    }
    fn on_notice(&mut self, message: &str) {
        self.notices.push(message.to_owned());
    }
    fn on_checkpoint(&mut self, _: &Checkpoint) {
        self.checkpoints += 1;
    }
    fn cancelled(&self) -> bool {
        false
    }
}

fn digits(classes: &[u8], per_class: usize, skip: usize) -> Vec<LabelledImage> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.deps/data/digits.csv.gz");
    let all = read_digits(&path).expect("digits; run scripts/setup");
    classes
        .iter()
        .flat_map(|&c| {
            all.iter()
                .filter(move |d| d.label == c)
                .skip(skip)
                .take(per_class)
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect()
}

fn pngs(images: &[LabelledImage]) -> Vec<Vec<u8>> {
    images.iter().map(|d| d.png().expect("png")).collect()
}

fn config() -> TrainConfig {
    TrainConfig {
        epochs: 5,
        strategy: Strategy::FeatureExtraction,
        head_solver: HeadSolver::Lbfgs,
        seed: 4,
        ..TrainConfig::default()
    }
}

#[test]
fn the_fitted_head_is_the_tuned_probe_of_the_frozen_features() {
    let _lock = torch_lock();
    let base = tiny_image_base(41);
    let classes = [0u8, 1, 7];
    let train_images = digits(&classes, 12, 0);
    let labels: Vec<usize> = train_images
        .iter()
        .map(|d| classes.iter().position(|&c| c == d.label).expect("class"))
        .collect();
    let names: Vec<String> = classes.iter().map(|c| c.to_string()).collect();
    let train = TrainData::images(pngs(&train_images), Targets::Single(labels.clone()));
    let validation_images = digits(&classes, 4, 12);
    let validation = TrainData::images(
        pngs(&validation_images),
        Targets::Single(
            validation_images
                .iter()
                .map(|d| classes.iter().position(|&c| c == d.label).expect("class"))
                .collect(),
        ),
    );
    let run = || {
        let mut notes = Notes::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let job = hone_train::TrainJob {
            checkpoint_dir: Some(dir.path()),
            ..cpu_job(
                base.path(),
                Objective::classification(names.clone()),
                train.clone(),
                Some(validation.clone()),
                config(),
            )
        };
        let model = fine_tune(job, &mut notes).expect("train");
        (model, notes)
    };
    let (model, notes) = run();
    // One fit, reported as epoch 1 with its validation scores and checkpoint; no steps.
    assert_eq!(notes.epochs.len(), 1, "{:?}", notes.epochs);
    assert!(notes.epochs[0].validation.is_some());
    assert_eq!((notes.steps, notes.checkpoints), (0, 1));
    let evaluation = model.evaluation().expect("evaluation");
    assert_eq!((evaluation.best_epoch, evaluation.epochs_run), (1, 1));
    let notice = notes
        .notices
        .iter()
        .find(|n| n.contains("logistic regression"))
        .unwrap_or_else(|| panic!("{:?}", notes.notices));
    assert!(notice.contains("by 5-fold cross-validation"), "{notice}");

    // The head is what the probe fits on the same features, extracted apart.
    let features =
        extract_image_features(base.path(), pngs(&train_images), 8, Device::Cpu, &|| false)
            .expect("features");
    let probe = Problem::softmax(&features, &labels, 3, false)
        .expect("problem")
        .fit(4)
        .expect("fit");
    assert!(notice.contains(&format!("C = {:.3e}", probe.c)), "{notice}");
    let published = weights(&model);
    assert!(max_abs(&published["head.weight"], &probe.weight) < 1e-5);
    assert!(max_abs(&published["head.bias"], &probe.bias) < 1e-5);

    // Seeded: a second run publishes the same head.
    let again = weights(&run().0);
    assert_eq!(
        max_abs(&again["head.weight"], &published["head.weight"]),
        0.0
    );

    // AdamW stays what it was: epochs of steps.
    let mut notes = Notes::default();
    let adamw = TrainConfig {
        head_solver: HeadSolver::AdamW,
        ..config()
    };
    fine_tune(
        cpu_job(
            base.path(),
            Objective::classification(names.clone()),
            train.clone(),
            None,
            adamw,
        ),
        &mut notes,
    )
    .expect("adamw");
    assert_eq!(notes.epochs.len(), 5);
    assert!(notes.steps > 0);
}

#[test]
fn multi_label_and_multi_task_heads_are_fitted_per_head() {
    let _lock = torch_lock();
    let base = tiny_image_base(43);
    let classes = [0u8, 1, 6, 8];
    let images = digits(&classes, 8, 0);
    // Multi-label: "round" (0, 6, 8), "has-loop-top" (0, 8).
    let tags = |d: &LabelledImage| {
        let mut t = Vec::new();
        if [0, 6, 8].contains(&d.label) {
            t.push(0);
        }
        if [0, 8].contains(&d.label) {
            t.push(1);
        }
        t
    };
    let data = TrainData::images(
        pngs(&images),
        Targets::Multi(images.iter().map(tags).collect()),
    );
    let mut notes = Notes::default();
    let model = fine_tune(
        cpu_job(
            base.path(),
            Objective::multi_label(vec!["round".into(), "loop-top".into()]),
            data,
            None,
            config(),
        ),
        &mut notes,
    )
    .expect("multi-label");
    assert_eq!(notes.epochs.len(), 1);
    assert_eq!(weights(&model)["head.weight"].size(), [2, 320]);

    // Multi-task: the digit, and its parity on half the rows only.
    let tasks = vec![
        TaskSpec {
            name: "digit".into(),
            labels: classes.iter().map(|c| c.to_string()).collect(),
            weight: 1.0,
        },
        TaskSpec {
            name: "parity".into(),
            labels: vec!["even".into(), "odd".into()],
            weight: 1.0,
        },
    ];
    let table = images
        .iter()
        .enumerate()
        .map(|(i, d)| {
            vec![
                classes.iter().position(|&c| c == d.label),
                (i % 2 == 0).then_some(usize::from(d.label % 2 == 1)),
            ]
        })
        .collect();
    let data = TrainData::images(pngs(&images), Targets::Tasks(table));
    let mut notes = Notes::default();
    let model = fine_tune(
        cpu_job(
            base.path(),
            Objective::multi_task(tasks),
            data,
            None,
            config(),
        ),
        &mut notes,
    )
    .expect("multi-task");
    let notice = notes
        .notices
        .iter()
        .find(|n| n.contains("logistic regression"))
        .expect("notice");
    assert!(
        notice.contains("task \"digit\"") && notice.contains("task \"parity\""),
        "{notice}"
    );
    let w = weights(&model);
    let sizes: Vec<Vec<i64>> = ["head.0.weight", "head.1.weight"]
        .iter()
        .map(|n| w[*n].size())
        .collect();
    assert_eq!(sizes, [vec![4, 320], vec![2, 320]]);
    assert_eq!(w["head.1.bias"].size(), [2]);
}
