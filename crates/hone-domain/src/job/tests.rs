//! Tests of the job vocabulary: request validation, defaults and stored forms.

use super::*;

/// A request's hyperparameters from their JSON.
fn input(v: serde_json::Value) -> HyperparametersInput {
    serde_json::from_value(v).expect("input")
}

/// `hp` as a job stored before `fields` existed reads back.
fn stored_without(hp: &Hyperparameters, fields: &[&str]) -> Hyperparameters {
    let mut stored = serde_json::to_value(hp).expect("json");
    let object = stored.as_object_mut().expect("object");
    for field in fields {
        object.remove(*field);
    }
    serde_json::from_value(stored).expect("reads")
}

#[test]
fn image_models_refuse_text_fields_and_take_augment() {
    let hp = HyperparametersInput::default()
        .validate_image(MethodType::Full)
        .expect("defaults are valid");
    assert_eq!((hp.max_seq_len, hp.augment), (0, true));
    let off = HyperparametersInput {
        augment: Some(false),
        ..HyperparametersInput::default()
    };
    assert!(!off.validate_image(MethodType::Full).expect("valid").augment);
    let err = off.validate(512, MethodType::Full).expect_err("text");
    assert_eq!(err.param, "hyperparameters.augment");
    for (input, param) in [
        (
            HyperparametersInput {
                max_seq_len: Some(64),
                ..HyperparametersInput::default()
            },
            "hyperparameters.max_seq_len",
        ),
        (
            HyperparametersInput {
                pooling: Some(PoolingType::Cls),
                ..HyperparametersInput::default()
            },
            "hyperparameters.pooling",
        ),
        (
            HyperparametersInput {
                head: Some(HeadType::Mlp),
                ..HyperparametersInput::default()
            },
            "hyperparameters.head",
        ),
        (
            HyperparametersInput {
                group_by_length: Some(true),
                ..HyperparametersInput::default()
            },
            "hyperparameters.group_by_length",
        ),
    ] {
        let err = input
            .validate_image(MethodType::Full)
            .expect_err("text-only field");
        assert_eq!(err.param, param);
    }
    // Text jobs never augment, nor did any job stored before the field existed.
    let text = HyperparametersInput::default()
        .validate(512, MethodType::Full)
        .expect("valid");
    assert!(!text.augment);
    let back = stored_without(&Hyperparameters::default(), &["augment"]);
    assert!(!back.augment);
}

#[test]
fn text_jobs_group_by_length_unless_told_not_to() {
    let text = HyperparametersInput::default()
        .validate(512, MethodType::Partial)
        .expect("valid");
    assert!(text.group_by_length);
    let off = HyperparametersInput {
        group_by_length: Some(false),
        ..HyperparametersInput::default()
    };
    assert!(
        !off.validate(512, MethodType::Full)
            .expect("valid")
            .group_by_length
    );
    let image = HyperparametersInput::default()
        .validate_image(MethodType::Full)
        .expect("valid");
    assert!(!image.group_by_length);
    // A job stored before the field existed keeps its random batches, so its
    // checkpoints resume as they were taken.
    let back = stored_without(&text, &["group_by_length"]);
    assert!(!back.group_by_length);
}

#[test]
fn defaults_fill_missing_fields() {
    let hp = HyperparametersInput::default()
        .validate(512, MethodType::Full)
        .expect("defaults are valid");
    assert_eq!(
        hp,
        Hyperparameters {
            defaulted: vec![
                "epochs".into(),
                "learning_rate".into(),
                "refit_on_validation".into()
            ],
            group_by_length: true,
            ..Hyperparameters::default()
        }
    );
    let hp = HyperparametersInput::default()
        .validate(64, MethodType::Full)
        .expect("clamped to model");
    assert_eq!(hp.max_seq_len, 64);
    let head = HyperparametersInput::default()
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
    // A head alone is fitted once, as a tuned linear probe, and fitted again on the
    // validation data too.
    assert_eq!((head.epochs, head.head_solver), (1, HeadSolver::Lbfgs));
    assert!(head.refit_on_validation);
}

#[test]
fn a_fitted_probe_refits_on_the_validation_data_unless_told_not_to() {
    let fe = |v| {
        input(v)
            .validate(512, MethodType::FeatureExtraction)
            .expect("valid")
    };
    assert!(fe(serde_json::json!({})).refit_on_validation);
    assert!(!fe(serde_json::json!({"refit_on_validation": false})).refit_on_validation);
    // A head trained over epochs chose its epoch on the validation data.
    assert!(!fe(serde_json::json!({"epochs": 5})).refit_on_validation);
    assert!(!fe(serde_json::json!({"head": "mlp"})).refit_on_validation);
    for method in [MethodType::Full, MethodType::Partial] {
        let hp = input(serde_json::json!({}))
            .validate(512, method)
            .expect("valid");
        assert!(!hp.refit_on_validation, "{method:?}");
    }
    // `auto` re-derives the default for its choice, and keeps what was asked.
    let auto = input(serde_json::json!({}))
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert!(
        auto.rebased_on(MethodType::FeatureExtraction)
            .refit_on_validation
    );
    assert!(!auto.rebased_on(MethodType::Full).refit_on_validation);
    let asked = input(serde_json::json!({"refit_on_validation": true}))
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert!(asked.rebased_on(MethodType::Full).refit_on_validation);
    let off = input(serde_json::json!({"refit_on_validation": false}))
        .validate_image(MethodType::Auto)
        .expect("valid");
    assert!(
        !off.rebased_on(MethodType::FeatureExtraction)
            .refit_on_validation
    );
    // Jobs stored before the default read as they ran.
    let old: Hyperparameters = serde_json::from_value(serde_json::json!({
        "epochs": 1, "batch_size": 16, "learning_rate": 1e-3, "warmup_ratio": 0.1,
        "weight_decay": 0.01, "max_seq_len": 128, "head_solver": "lbfgs",
        "defaulted": ["epochs", "learning_rate"]
    }))
    .expect("old row");
    assert!(
        !old.rebased_on(MethodType::FeatureExtraction)
            .refit_on_validation
    );
}

#[test]
fn auto_adopts_the_defaults_of_its_choice_but_keeps_what_the_user_set() {
    // A head trained with AdamW keeps the epochs asked for (a fitted one, auto's
    // default, is one fit: see `auto_fits_its_floor_and_takes_a_search_budget`).
    let hp = HyperparametersInput {
        epochs: Some(4),
        head_solver: Some(HeadSolver::AdamW),
        ..Default::default()
    }
    .validate(512, MethodType::Auto)
    .expect("valid");
    let rebased = hp.rebased_on(MethodType::FeatureExtraction);
    assert_eq!(rebased.epochs, 4);
    assert_eq!(rebased.learning_rate, 1e-3);
    assert_eq!(hp.rebased_on(MethodType::Full).learning_rate, 5e-5);
}

#[test]
fn image_models_default_to_a_higher_rate_for_their_backbone() {
    let image = |method| {
        HyperparametersInput::default()
            .validate_image(method)
            .expect("defaults are valid")
    };
    let full = image(MethodType::Full);
    assert_eq!(full.modality, crate::dataset::Modality::Image);
    assert_eq!(full.learning_rate, IMAGE_FINE_TUNE_LEARNING_RATE);
    assert_eq!(image(MethodType::Partial).learning_rate, 3e-4);
    // A head alone is a head alone, whatever feeds it.
    assert_eq!(image(MethodType::FeatureExtraction).learning_rate, 1e-3);
    // auto adopts the image defaults of its choice, and a multiplier scales them.
    let auto = image(MethodType::Auto);
    assert_eq!(auto.rebased_on(MethodType::Partial).learning_rate, 3e-4);
    let doubled = HyperparametersInput {
        learning_rate_multiplier: Some(AutoOr::Value(2.0)),
        ..HyperparametersInput::default()
    }
    .validate_image(MethodType::Auto)
    .expect("valid");
    assert!((doubled.rebased_on(MethodType::Full).learning_rate - 6e-4).abs() < 1e-12);
    // A rate given outright stays, on images as on text.
    let given = HyperparametersInput {
        learning_rate: Some(AutoOr::Value(1e-4)),
        ..HyperparametersInput::default()
    }
    .validate_image(MethodType::Full)
    .expect("valid");
    assert_eq!(given.learning_rate, 1e-4);
    // Text keeps transformers' default, and a job stored before the field existed
    // reads back as text.
    let text = HyperparametersInput::default()
        .validate(512, MethodType::Full)
        .expect("valid");
    assert_eq!(
        (text.modality, text.learning_rate),
        (crate::dataset::Modality::Text, 5e-5)
    );
    let old: Hyperparameters = serde_json::from_value(serde_json::json!({
        "epochs": 3, "batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.1,
        "weight_decay": 0.01, "max_seq_len": 0, "defaulted": ["learning_rate"]
    }))
    .expect("old row");
    assert_eq!(old.rebased_on(MethodType::Full).learning_rate, 5e-5);
}

#[test]
fn task_weights_are_positive_and_default_to_one() {
    let with = |weights: &[(&str, f64)]| HyperparametersInput {
        task_weights: Some(weights.iter().map(|&(t, w)| (t.to_owned(), w)).collect()),
        ..HyperparametersInput::default()
    };
    let hp = with(&[("topic", 0.5)])
        .validate(512, MethodType::Full)
        .expect("valid");
    assert_eq!(hp.task_weight("topic"), 0.5);
    assert_eq!(hp.task_weight("sentiment"), 1.0);
    for bad in [0.0, -1.0, f64::NAN, 101.0] {
        let err = with(&[("topic", bad)])
            .validate(512, MethodType::Full)
            .expect_err("refused");
        assert_eq!(err.param, "hyperparameters.task_weights.topic", "{bad}");
    }
    // Stored jobs from before task weights read back with none.
    let old: Hyperparameters = serde_json::from_value(serde_json::json!({
        "epochs": 3, "batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.1,
        "weight_decay": 0.01, "max_seq_len": 128
    }))
    .expect("old row");
    assert!(old.task_weights.is_empty());
}

#[test]
fn methods_check_frozen_layers_against_the_model() {
    let partial = |k| Method {
        kind: MethodType::Partial,
        frozen_layers: k,
        ..Method::default()
    };
    assert_eq!(
        partial(None).validate(6).expect("ok").frozen_layers,
        Some(3)
    );
    assert!(partial(Some(6)).validate(6).is_ok());
    assert_eq!(
        partial(Some(7)).validate(6).expect_err("too deep").param,
        "method.frozen_layers"
    );
    let full = Method {
        frozen_layers: Some(1),
        ..Method::default()
    };
    assert_eq!(
        full.validate(6).expect_err("full").param,
        "method.frozen_layers"
    );
    let chosen = Method {
        kind: MethodType::Auto,
        chosen: Some(ChosenMethod {
            kind: MethodType::Full,
            frozen_layers: None,
            reason: "x".into(),
            candidates: Vec::new(),
        }),
        ..Method::default()
    };
    assert_eq!(
        chosen.validate(6).expect_err("chosen").param,
        "method.chosen"
    );
    let scratch = |kind| Method {
        kind,
        from_scratch: true,
        ..Method::default()
    };
    assert!(scratch(MethodType::Full).validate(6).is_ok());
    assert_eq!(
        scratch(MethodType::Auto)
            .validate(6)
            .expect_err("auto")
            .param,
        "method.from_scratch"
    );
}

#[test]
fn each_bound_names_its_field() {
    let cases = [
        (
            HyperparametersInput {
                epochs: Some(0),
                ..Default::default()
            },
            "hyperparameters.epochs",
        ),
        (
            HyperparametersInput {
                batch_size: Some(AutoOr::Value(513)),
                ..Default::default()
            },
            "hyperparameters.batch_size",
        ),
        (
            HyperparametersInput {
                learning_rate: Some(AutoOr::Value(0.0)),
                ..Default::default()
            },
            "hyperparameters.learning_rate",
        ),
        (
            HyperparametersInput {
                learning_rate: Some(AutoOr::Value(f64::NAN)),
                ..Default::default()
            },
            "hyperparameters.learning_rate",
        ),
        (
            HyperparametersInput {
                warmup_ratio: Some(0.9),
                ..Default::default()
            },
            "hyperparameters.warmup_ratio",
        ),
        (
            HyperparametersInput {
                weight_decay: Some(-1.0),
                ..Default::default()
            },
            "hyperparameters.weight_decay",
        ),
        (
            HyperparametersInput {
                layer_lr_decay: Some(0.0),
                ..Default::default()
            },
            "hyperparameters.layer_lr_decay",
        ),
        (
            HyperparametersInput {
                label_smoothing: Some(0.5),
                ..Default::default()
            },
            "hyperparameters.label_smoothing",
        ),
        (
            HyperparametersInput {
                validation_split: Some(0.6),
                ..Default::default()
            },
            "hyperparameters.validation_split",
        ),
        (
            HyperparametersInput {
                early_stopping_patience: Some(101),
                ..Default::default()
            },
            "hyperparameters.early_stopping_patience",
        ),
        (
            HyperparametersInput {
                max_seq_len: Some(1024),
                ..Default::default()
            },
            "hyperparameters.max_seq_len",
        ),
    ];
    for (input, param) in cases {
        assert_eq!(
            input
                .validate(512, MethodType::Full)
                .expect_err(param)
                .param,
            param
        );
    }
}

#[test]
fn statuses_round_trip_and_know_terminal_ones() {
    for s in JobStatus::ALL {
        assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        assert_eq!(serde_json::to_value(s).expect("serialize"), s.as_str());
    }
    assert!(JobStatus::Cancelled.is_terminal());
    assert!(!JobStatus::Running.is_terminal());
}

#[test]
fn suffixes_are_path_safe() {
    assert!(validate_suffix("reviews-v2_1").is_ok());
    assert!(validate_suffix("").is_err());
    assert!(validate_suffix("a/b").is_err());
    assert!(validate_suffix(&"x".repeat(41)).is_err());
}

#[test]
fn the_head_solver_is_feature_extractions_and_a_fitted_probe_unless_a_schedule_is_asked() {
    let lbfgs: HyperparametersInput =
        serde_json::from_value(serde_json::json!({"head_solver": "lbfgs"})).expect("input");
    for method in [MethodType::FeatureExtraction, MethodType::Auto] {
        let hp = lbfgs.validate(512, method).expect("valid");
        assert_eq!(hp.head_solver, HeadSolver::Lbfgs);
        let hp = lbfgs.validate_image(method).expect("valid");
        assert_eq!(hp.head_solver, HeadSolver::Lbfgs);
    }
    for method in [MethodType::Full, MethodType::Partial] {
        let err = lbfgs.validate(512, method).expect_err("not head-only");
        assert_eq!(err.param, "hyperparameters.head_solver");
    }
    // The fitted probe is the default, for text and images; jobs stored before the
    // field existed read as `adamw`, spelled so.
    let hp = HyperparametersInput::default()
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
    assert_eq!(hp.head_solver, HeadSolver::Lbfgs);
    let image = HyperparametersInput::default()
        .validate_image(MethodType::FeatureExtraction)
        .expect("valid");
    assert_eq!(image.head_solver, HeadSolver::Lbfgs);
    let stored = serde_json::to_value(&hp).expect("json");
    assert_eq!(stored["head_solver"], "lbfgs");
    let back = stored_without(&hp, &["head_solver"]);
    assert_eq!(back.head_solver, HeadSolver::AdamW);
    // What only a head trained over epochs uses, or an `mlp` head, makes it `adamw`,
    // with the epochs asked for; `auto`'s epochs are its choice's, and its floor stays
    // fitted.
    for body in [
        serde_json::json!({"epochs": 4}),
        serde_json::json!({"n_epochs": 4}),
        serde_json::json!({"learning_rate": 1e-2}),
        serde_json::json!({"learning_rate_multiplier": 2}),
        serde_json::json!({"head": "mlp"}),
    ] {
        let input: HyperparametersInput = serde_json::from_value(body.clone()).expect("input");
        let hp = input
            .validate(512, MethodType::FeatureExtraction)
            .expect("valid");
        assert_eq!(hp.head_solver, HeadSolver::AdamW, "{body}");
        assert_ne!(hp.epochs, 1, "{body}");
        let auto = input.validate(512, MethodType::Auto).expect("valid");
        assert_eq!(auto.head_solver, HeadSolver::Lbfgs, "{body}");
    }
    let adamw: HyperparametersInput =
        serde_json::from_value(serde_json::json!({"head_solver": "adamw"})).expect("input");
    assert!(adamw.validate(512, MethodType::Full).is_ok());
}

#[test]
fn a_fitted_head_is_one_epoch_and_refuses_a_number_of_them() {
    let hp = input(serde_json::json!({"head_solver": "lbfgs"}))
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
    assert_eq!(hp.epochs, 1);
    for (body, param) in [
        (
            serde_json::json!({"head_solver": "lbfgs", "epochs": 5}),
            "hyperparameters.epochs",
        ),
        (
            serde_json::json!({"head_solver": "lbfgs", "n_epochs": 5}),
            "hyperparameters.n_epochs",
        ),
    ] {
        let err = input(body)
            .validate_image(MethodType::FeatureExtraction)
            .expect_err("epochs with a fitted head");
        assert_eq!(err.param, param);
    }
    // `auto` may pick a strategy that trains for epochs: they stay.
    let hp = input(serde_json::json!({"head_solver": "lbfgs", "epochs": 5}))
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert_eq!(hp.epochs, 5);
}

#[test]
fn int8_serving_is_for_text_models_and_fp32_unless_asked() {
    let int8: HyperparametersInput =
        serde_json::from_value(serde_json::json!({"quantization": "int8"})).expect("input");
    let hp = int8.validate(512, MethodType::Full).expect("text");
    assert_eq!(hp.quantization, Quantization::Int8);
    let err = int8
        .validate_image(MethodType::Full)
        .expect_err("images have no int8 path");
    assert_eq!(err.param, "hyperparameters.quantization");
    let none: HyperparametersInput =
        serde_json::from_value(serde_json::json!({"quantization": "none"})).expect("input");
    assert_eq!(
        none.validate_image(MethodType::Full)
            .expect("none is fine")
            .quantization,
        Quantization::None
    );
    let hp = HyperparametersInput::default()
        .validate(512, MethodType::Full)
        .expect("defaults");
    assert_eq!(hp.quantization, Quantization::None);
    // Jobs stored before the field existed read as fp32.
    let back = stored_without(&hp, &["quantization"]);
    assert_eq!(back.quantization, Quantization::None);
    assert!(serde_json::from_value::<HyperparametersInput>(
        serde_json::json!({"quantization": "int4"})
    )
    .is_err());
}

#[test]
fn auto_fits_its_floor_and_takes_a_search_budget() {
    // The head alone, auto's floor, is fitted as a tuned probe unless told otherwise;
    // chosen, it is one fit.
    let hp = HyperparametersInput::default()
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert_eq!(hp.head_solver, HeadSolver::Lbfgs);
    assert_eq!(hp.auto_budget, AUTO_DEFAULT_BUDGET);
    assert!(!hp.refit_on_validation);
    assert_eq!(hp.rebased_on(MethodType::FeatureExtraction).epochs, 1);
    assert_eq!(hp.rebased_on(MethodType::Partial).epochs, 3);
    let adamw = input(serde_json::json!({"head_solver": "adamw"}))
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert_eq!(adamw.rebased_on(MethodType::FeatureExtraction).epochs, 10);

    let hp = input(serde_json::json!({"auto_budget": 0.5, "refit_on_validation": true}))
        .validate_image(MethodType::Auto)
        .expect("valid");
    assert_eq!((hp.auto_budget, hp.refit_on_validation), (0.5, true));
    for (body, method) in [
        (serde_json::json!({"auto_budget": -0.1}), MethodType::Auto),
        (serde_json::json!({"auto_budget": 10.5}), MethodType::Auto),
        (serde_json::json!({"auto_budget": 1.0}), MethodType::Full),
    ] {
        let err = input(body).validate(512, method).expect_err("refused");
        assert_eq!(err.param, "hyperparameters.auto_budget");
    }
    // Every method may refit.
    let full = input(serde_json::json!({"refit_on_validation": true}))
        .validate(512, MethodType::Full)
        .expect("valid");
    assert!(full.refit_on_validation);

    // Jobs stored before the fields existed read with the defaults.
    let back = stored_without(&hp, &["auto_budget", "refit_on_validation"]);
    assert_eq!((back.auto_budget, back.refit_on_validation), (1.0, false));
    let chosen: ChosenMethod = serde_json::from_value(serde_json::json!({
        "type": "partial", "frozen_layers": 3, "reason": "stored before trials"
    }))
    .expect("reads");
    assert!(chosen.candidates.is_empty());
}

#[test]
fn learning_rate_auto_searches_for_methods_that_train_the_encoder() {
    let auto = input(serde_json::json!({"learning_rate": "auto"}));
    for method in [MethodType::Full, MethodType::Partial, MethodType::Auto] {
        let hp = auto.validate(512, method).expect("valid");
        assert!(hp.learning_rate_search, "{method:?}");
        assert!(hp.defaulted.iter().any(|f| f == "learning_rate"));
    }
    let full = auto.validate(512, MethodType::Full).expect("valid");
    assert_eq!(full.learning_rate, 5e-5, "centred on the method's default");
    let err = auto
        .validate(512, MethodType::FeatureExtraction)
        .expect_err("a head has its own default");
    assert_eq!(err.param, "hyperparameters.learning_rate");
    let err = input(serde_json::json!({"learning_rate": "auto", "learning_rate_multiplier": 2}))
        .validate(512, MethodType::Full)
        .expect_err("one or the other");
    assert_eq!(err.param, "hyperparameters.learning_rate_multiplier");
    // A number is a number, and OpenAI's multiplier "auto" is the default, not a search.
    let fixed =
        input(serde_json::json!({"learning_rate": 1e-4, "learning_rate_multiplier": "auto"}))
            .validate(512, MethodType::Full)
            .expect("valid");
    assert!(!fixed.learning_rate_search);
    assert_eq!(fixed.learning_rate, 1e-4);
    // Jobs stored before the field existed do not search.
    let back = stored_without(&fixed, &["learning_rate_search"]);
    assert!(!back.learning_rate_search);
}

#[test]
fn default_epochs_grow_on_a_small_training_set_to_a_floor_of_steps() {
    let full = |v| input(v).validate(512, MethodType::Full).expect("valid");
    let defaults = full(serde_json::json!({}));
    assert_eq!(defaults.epochs, 3);
    // 102 rows at batch 16 are 7 steps an epoch: 15 epochs reach 100 steps.
    assert_eq!(defaults.sized_for(MethodType::Full, 102).epochs, 15);
    assert_eq!(defaults.sized_for(MethodType::Partial, 102).epochs, 15);
    // Batch 8: 13 steps an epoch, 8 epochs.
    let batch8 = full(serde_json::json!({"batch_size": 8}));
    assert_eq!(batch8.sized_for(MethodType::Full, 102).epochs, 8);
    // Two steps an epoch stop at the cap; a large set keeps the default.
    assert_eq!(
        defaults.sized_for(MethodType::Full, 26).epochs,
        MAX_DEFAULT_EPOCHS
    );
    assert_eq!(defaults.sized_for(MethodType::Full, 5_000).epochs, 3);
    assert_eq!(
        defaults
            .sized_for(MethodType::Full, 16 * MIN_DEFAULT_STEPS as usize / 3)
            .epochs,
        3
    );
    // Sizing twice (a resumed attempt) gives the same count.
    let once = defaults.sized_for(MethodType::Full, 102);
    assert_eq!(once.sized_for(MethodType::Full, 102), once);
    // Epochs the request set are kept, `n_epochs: "auto"` is the default.
    let asked = full(serde_json::json!({"epochs": 2}));
    assert_eq!(asked.sized_for(MethodType::Full, 102).epochs, 2);
    let openai = full(serde_json::json!({"n_epochs": "auto"}));
    assert_eq!(openai.sized_for(MethodType::Full, 102).epochs, 15);
    // A fitted probe has one fit; an AdamW head starts from its own default of 10.
    let probe = input(serde_json::json!({}))
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
    assert_eq!(
        probe.sized_for(MethodType::FeatureExtraction, 102).epochs,
        probe.epochs
    );
    let adamw = input(serde_json::json!({"learning_rate": 1e-3}))
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
    assert_eq!(adamw.epochs, 10);
    assert_eq!(
        adamw.sized_for(MethodType::FeatureExtraction, 102).epochs,
        15
    );
    assert_eq!(
        adamw.sized_for(MethodType::FeatureExtraction, 400).epochs,
        10
    );
    // `auto` is sized once it has chosen, through the recipe of its choice.
    let auto = input(serde_json::json!({}))
        .validate(512, MethodType::Auto)
        .expect("valid");
    assert_eq!(auto.sized_for(MethodType::Auto, 102), auto);
    let chosen = auto.rebased_on(MethodType::Full);
    assert_eq!(chosen.sized_for(MethodType::Full, 102).epochs, 15);
    let probe = auto.rebased_on(MethodType::FeatureExtraction);
    assert_eq!(
        probe.sized_for(MethodType::FeatureExtraction, 102).epochs,
        1
    );
}
