//! The shapes of OpenAI's fine-tuning API that hone also accepts, so that the official
//! SDKs work unchanged: `"auto"` hyperparameter values, `method={"type": "supervised",
//! "supervised": {"hyperparameters": …}}`, `model` beside `base_model`, and an empty
//! `integrations` list. Each is read here into hone's own types; where the two
//! spellings of one thing are both given and disagree, the request is refused by name
//! rather than one of them silently winning.

use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::{ChosenMethod, HyperparametersInput, Method, MethodType, ValidationError};

/// A hyperparameter that may be `"auto"`: the server decides (its default; for
/// `learning_rate`, a search).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum AutoOr<T> {
    Auto,
    Value(T),
}

impl<T: Copy> AutoOr<T> {
    /// The number given, `None` for `"auto"`.
    pub fn value(self) -> Option<T> {
        match self {
            AutoOr::Auto => None,
            AutoOr::Value(v) => Some(v),
        }
    }
}

impl<'de, T: serde::de::DeserializeOwned> Deserialize<'de> for AutoOr<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = serde_json::Value::deserialize(d)?;
        if raw.as_str() == Some("auto") {
            return Ok(AutoOr::Auto);
        }
        T::deserialize(raw)
            .map(AutoOr::Value)
            .map_err(|e| serde::de::Error::custom(format!("expected \"auto\" or a number: {e}")))
    }
}

/// The OpenAI-style method a job was requested with, kept so the job says how its
/// request was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RequestedMethod {
    /// OpenAI's plain supervised fine-tuning, which hone runs as `auto`.
    Supervised,
}

/// The method types a request may name: hone's four and OpenAI's `supervised`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum MethodInputType {
    #[default]
    Full,
    Partial,
    FeatureExtraction,
    Auto,
    /// OpenAI's name for plain supervised fine-tuning: runs as `auto`, with the
    /// hyperparameters of `supervised.hyperparameters`.
    Supervised,
}

/// `method.supervised`, as OpenAI's API puts it.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SupervisedInput {
    #[serde(default)]
    pub hyperparameters: Option<HyperparametersInput>,
}

/// `method` as a request sends it: hone's shape (`{"type": "partial",
/// "frozen_layers": 3}`) or OpenAI's (`{"type": "supervised", "supervised":
/// {"hyperparameters": {"n_epochs": 3}}}`).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 3}}}))]
pub struct MethodInput {
    #[serde(rename = "type", default)]
    pub kind: MethodInputType,
    /// `partial` only: encoder layers frozen from the bottom (0 to the model's layer
    /// count). Default: half of the layers, rounded down.
    pub frozen_layers: Option<u32>,
    /// Set by the server; a request that sends it is refused.
    #[schema(value_type = Option<Object>)]
    pub chosen: Option<ChosenMethod>,
    /// The from-scratch baseline (see the job's `method.from_scratch`). Default `false`.
    #[serde(default)]
    pub from_scratch: bool,
    /// `supervised` only: OpenAI's place for the hyperparameters.
    pub supervised: Option<SupervisedInput>,
}

impl MethodInput {
    /// hone's method, and the hyperparameters wherever the request put them: at the
    /// top level (hone's place, and OpenAI's older one) or in
    /// `method.supervised.hyperparameters` (OpenAI's current one); both at once is
    /// refused, since one would have to be ignored.
    pub fn resolve(
        self,
        top_level: Option<HyperparametersInput>,
    ) -> Result<(Method, HyperparametersInput), ValidationError> {
        let kind = match self.kind {
            MethodInputType::Full => MethodType::Full,
            MethodInputType::Partial => MethodType::Partial,
            MethodInputType::FeatureExtraction => MethodType::FeatureExtraction,
            MethodInputType::Auto | MethodInputType::Supervised => MethodType::Auto,
        };
        let supervised = self.kind == MethodInputType::Supervised;
        let nested = match self.supervised {
            Some(_) if !supervised => {
                return Err(ValidationError::new(
                    "method.supervised",
                    "only applies to `\"type\": \"supervised\"`",
                ))
            }
            Some(s) => s.hyperparameters,
            None => None,
        };
        let hyperparameters = match (top_level, nested) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "method.supervised.hyperparameters",
                    "hyperparameters are given both here and at the top level; give them \
                     in one place",
                ))
            }
            (Some(h), None) | (None, Some(h)) => h,
            (None, None) => HyperparametersInput::default(),
        };
        let method = Method {
            kind,
            frozen_layers: self.frozen_layers,
            chosen: self.chosen,
            from_scratch: self.from_scratch,
            requested_as: supervised.then_some(RequestedMethod::Supervised),
        };
        Ok((method, hyperparameters))
    }
}

impl Method {
    /// This `auto` method with the worker's choice recorded; a job requested as
    /// OpenAI's `supervised` says that it ran as `auto` in the reason.
    pub fn with_choice(mut self, mut chosen: ChosenMethod) -> Self {
        if self.requested_as == Some(RequestedMethod::Supervised) {
            chosen.reason = format!(
                "OpenAI's `supervised` method runs as hone's `auto`, which chose {}",
                chosen.reason
            );
        }
        self.chosen = Some(chosen);
        self
    }
}

/// The base model of a request: `model` (OpenAI's name) or `base_model` (hone's);
/// both may be given only when they name the same model.
pub fn base_model_of(
    model: Option<String>,
    base_model: Option<String>,
) -> Result<String, ValidationError> {
    match (model, base_model) {
        (Some(m), Some(b)) if m != b => Err(ValidationError::new(
            "model",
            format!(
                "`model` ({m:?}) and `base_model` ({b:?}) name different models; they are \
                 two names for the same field, so give one"
            ),
        )),
        (Some(m), _) | (None, Some(m)) => Ok(m),
        (None, None) => Err(ValidationError::new(
            "model",
            "missing: name the base model to fine-tune (`model`, or `base_model`); see \
             GET /v1/models or GET /v1/base-models",
        )),
    }
}

/// OpenAI's `integrations` (Weights & Biases and the like): hone sends runs nowhere,
/// so only an empty list is accepted.
pub fn check_integrations(
    integrations: Option<&[serde_json::Value]>,
) -> Result<(), ValidationError> {
    match integrations {
        None | Some([]) => Ok(()),
        Some(list) => {
            let kinds: Vec<&str> = list
                .iter()
                .map(|i| i.get("type").and_then(|t| t.as_str()).unwrap_or("?"))
                .collect();
            Err(ValidationError::new(
                "integrations",
                format!(
                    "hone has no integrations (asked for {kinds:?}); send an empty list or \
                     leave the field out, and follow a job with its events and \
                     GET /v1/fine_tuning/jobs/{{id}}/metrics"
                ),
            ))
        }
    }
}

/// Two spellings of one hyperparameter (hone's and OpenAI's): the value given, `None`
/// when neither was, an error naming both when they disagree.
pub(super) fn one_of<T: PartialEq + Copy + std::fmt::Debug>(
    hone: (&str, Option<T>),
    openai: (&str, Option<AutoOr<T>>),
) -> Result<Option<T>, ValidationError> {
    match (hone.1, openai.1) {
        (Some(h), Some(o)) if o != AutoOr::Value(h) => Err(ValidationError::new(
            format!("hyperparameters.{}", openai.0),
            format!(
                "is {}, but hyperparameters.{} is {h:?}; they are two names for one \
                 setting, so give one",
                match o {
                    AutoOr::Auto => "\"auto\"".to_owned(),
                    AutoOr::Value(v) => format!("{v:?}"),
                },
                hone.0
            ),
        )),
        (Some(h), _) => Ok(Some(h)),
        (None, o) => Ok(o.and_then(AutoOr::value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::{ChosenMethod, Hyperparameters};

    fn input(json: serde_json::Value) -> HyperparametersInput {
        serde_json::from_value(json).expect("parses")
    }

    fn request(json: serde_json::Value) -> Result<(Method, HyperparametersInput), String> {
        let method: MethodInput = serde_json::from_value(json["method"].clone()).expect("method");
        let top = json
            .get("hyperparameters")
            .map(|h| serde_json::from_value(h.clone()).expect("hyperparameters"));
        method.resolve(top).map_err(|e| e.param)
    }

    #[test]
    fn openai_names_and_auto_values_are_hone_hyperparameters() {
        let hp = input(serde_json::json!({
            "n_epochs": 4, "batch_size": "auto", "learning_rate_multiplier": 2
        }))
        .validate(512, MethodType::Full)
        .expect("valid");
        assert_eq!(hp.epochs, 4);
        assert_eq!(hp.batch_size, 16, "auto is the default");
        assert!(
            (hp.learning_rate - 1e-4).abs() < 1e-12,
            "{}",
            hp.learning_rate
        );
        assert_eq!(hp.learning_rate_multiplier, 2.0);

        let auto = input(serde_json::json!({
            "n_epochs": "auto", "batch_size": 8, "learning_rate_multiplier": "auto"
        }))
        .validate(512, MethodType::FeatureExtraction)
        .expect("valid");
        // `"auto"` asks for nothing: the head is the fitted probe, one fit.
        assert_eq!((auto.epochs, auto.batch_size), (1, 8));
        assert_eq!(auto.head_solver, crate::job::HeadSolver::Lbfgs);
        assert_eq!(auto.learning_rate, 1e-3);
        assert_eq!(auto.learning_rate_multiplier, 1.0);

        let err =
            serde_json::from_value::<HyperparametersInput>(serde_json::json!({"n_epochs": "many"}))
                .expect_err("not a number");
        assert!(err.to_string().contains("\"auto\" or a number"), "{err}");
    }

    #[test]
    fn two_names_of_one_setting_must_agree() {
        let check = |json| {
            input(json)
                .validate(512, MethodType::Full)
                .map_err(|e| e.param)
        };
        assert_eq!(
            check(serde_json::json!({"epochs": 3, "n_epochs": 3})).map(|h| h.epochs),
            Ok(3)
        );
        assert_eq!(
            check(serde_json::json!({"epochs": 3, "n_epochs": 4})),
            Err("hyperparameters.n_epochs".to_owned())
        );
        assert_eq!(
            check(serde_json::json!({"epochs": 3, "n_epochs": "auto"})),
            Err("hyperparameters.n_epochs".to_owned())
        );
        assert_eq!(
            check(serde_json::json!({"learning_rate": 1e-4, "learning_rate_multiplier": 2}))
                .map(|h| h.learning_rate_multiplier),
            Ok(2.0)
        );
        assert_eq!(
            check(serde_json::json!({"learning_rate": 1e-4, "learning_rate_multiplier": 3})),
            Err("hyperparameters.learning_rate_multiplier".to_owned())
        );
        for bad in [0.0, -1.0, 101.0] {
            assert_eq!(
                check(serde_json::json!({"learning_rate_multiplier": bad})),
                Err("hyperparameters.learning_rate_multiplier".to_owned()),
                "{bad}"
            );
        }
        assert_eq!(
            check(serde_json::json!({"n_epochs": 0})),
            Err("hyperparameters.n_epochs".to_owned())
        );
    }

    #[test]
    fn the_multiplier_follows_autos_choice_and_an_explicit_rate_stays() {
        let by_multiplier = input(serde_json::json!({"learning_rate_multiplier": 2}))
            .validate(512, MethodType::Auto)
            .expect("valid");
        let chosen = by_multiplier.rebased_on(MethodType::FeatureExtraction);
        assert!((chosen.learning_rate - 2e-3).abs() < 1e-12);
        assert_eq!(chosen.learning_rate_multiplier, 2.0);

        let explicit = input(serde_json::json!({"learning_rate": 1e-4}))
            .validate(512, MethodType::Auto)
            .expect("valid");
        let chosen = explicit.rebased_on(MethodType::FeatureExtraction);
        assert_eq!(chosen.learning_rate, 1e-4);
        assert!((chosen.learning_rate_multiplier - 0.1).abs() < 1e-12);

        // Jobs stored before the field read back with a multiplier of 1.
        let old: Hyperparameters = serde_json::from_value(serde_json::json!({
            "epochs": 3, "batch_size": 16, "learning_rate": 5e-5, "warmup_ratio": 0.1,
            "weight_decay": 0.01, "max_seq_len": 128
        }))
        .expect("old row");
        assert_eq!(old.learning_rate_multiplier, 1.0);
    }

    #[test]
    fn supervised_runs_as_auto_with_openais_hyperparameters() {
        let (method, hp) = request(serde_json::json!({"method": {
            "type": "supervised",
            "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}
        }}))
        .expect("valid");
        assert_eq!(method.kind, MethodType::Auto);
        assert_eq!(method.requested_as, Some(RequestedMethod::Supervised));
        let hp = hp.validate(512, method.kind).expect("valid");
        assert_eq!((hp.epochs, hp.batch_size), (2, 4));

        // Top-level hyperparameters with `supervised` are fine; in both places not.
        let (_, hp) = request(serde_json::json!({
            "method": {"type": "supervised"}, "hyperparameters": {"n_epochs": 5}
        }))
        .expect("valid");
        assert_eq!(hp.validate(512, MethodType::Auto).map(|h| h.epochs), Ok(5));
        assert_eq!(
            request(serde_json::json!({
                "method": {"type": "supervised", "supervised": {"hyperparameters": {}}},
                "hyperparameters": {"n_epochs": 5}
            }))
            .err(),
            Some("method.supervised.hyperparameters".to_owned())
        );
        assert_eq!(
            request(serde_json::json!({
                "method": {"type": "full", "supervised": {"hyperparameters": {}}}
            }))
            .err(),
            Some("method.supervised".to_owned())
        );
        // hone's own method shape is unchanged.
        let (partial, _) =
            request(serde_json::json!({"method": {"type": "partial", "frozen_layers": 2}}))
                .expect("valid");
        assert_eq!(
            (partial.kind, partial.frozen_layers, partial.requested_as),
            (MethodType::Partial, Some(2), None)
        );
    }

    #[test]
    fn the_choice_of_a_supervised_job_says_it_ran_as_auto() {
        let chosen = ChosenMethod {
            kind: MethodType::FeatureExtraction,
            frozen_layers: None,
            reason: "feature_extraction: 12 examples".into(),
            candidates: Vec::new(),
        };
        let (supervised, _) =
            request(serde_json::json!({"method": {"type": "supervised"}})).expect("valid");
        let reason = supervised
            .with_choice(chosen.clone())
            .chosen
            .expect("chosen")
            .reason;
        assert!(reason.starts_with("OpenAI's `supervised`"), "{reason}");
        assert!(
            reason.ends_with("feature_extraction: 12 examples"),
            "{reason}"
        );
        let (auto, _) = request(serde_json::json!({"method": {"type": "auto"}})).expect("valid");
        assert_eq!(auto.with_choice(chosen.clone()).chosen, Some(chosen));
    }

    #[test]
    fn model_and_base_model_name_one_field() {
        let m = |s: &str| Some(s.to_owned());
        assert_eq!(base_model_of(m("a"), None), Ok("a".to_owned()));
        assert_eq!(base_model_of(None, m("a")), Ok("a".to_owned()));
        assert_eq!(base_model_of(m("a"), m("a")), Ok("a".to_owned()));
        let err = base_model_of(m("a"), m("b")).expect_err("disagree");
        assert_eq!(err.param, "model");
        assert!(err.message.contains("\"b\""), "{}", err.message);
        assert_eq!(
            base_model_of(None, None).expect_err("missing").param,
            "model"
        );
    }

    #[test]
    fn only_an_empty_integrations_list_is_accepted() {
        assert!(check_integrations(None).is_ok());
        assert!(check_integrations(Some(&[])).is_ok());
        let err =
            check_integrations(Some(&[serde_json::json!({"type": "wandb"})])).expect_err("refused");
        assert_eq!(err.param, "integrations");
        assert!(err.message.contains("wandb"), "{}", err.message);
    }
}
