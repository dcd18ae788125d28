//! The final fit (`refit_on_validation`): once a run has chosen its epochs on the
//! validation data, the same recipe trains again from the start on the training and
//! validation examples together for that many epochs, and that model is published.
//! It has no held-out data left, so the job reports the first run's validation
//! metrics, and a multi-label model keeps the threshold the first run tuned. It writes
//! no checkpoints: an attempt that dies during the refit resumes the first run from
//! its last checkpoint (which ends at once) and refits again.

use hone_domain::job::Hyperparameters;
use hone_domain::resources::EventLevel;
use hone_train::model_dir::ModelMeta;
use hone_train::train::{
    fine_tune_with, EncoderInit, Features, Strategy, TrainConfig, TrainError, TrainJob,
    TrainedModel,
};
use tch::Tensor;

use super::{Run, Update, Validation};

/// The refitted model and the examples it trained on.
pub(super) struct Refit {
    pub(super) model: TrainedModel,
    pub(super) examples: usize,
}

impl Run<'_> {
    /// The final fit of `first` when the job asks for one and has validation data.
    pub(super) fn refit(
        &self,
        strategy: Strategy,
        hp: &Hyperparameters,
        first: &TrainedModel,
        features: Option<&Features>,
    ) -> Result<Option<Refit>, TrainError> {
        if !hp.refit_on_validation {
            return Ok(None);
        }
        let Some(validation) = &self.validation else {
            self.send(Update::Notice(
                EventLevel::Info,
                "No final fit: the job has no validation data to add to its training data"
                    .to_owned(),
            ));
            return Ok(None);
        };
        let data = match &self.input.validation {
            Validation::Split(rows) => {
                let rows: Vec<usize> = self.input.train_rows.iter().chain(rows).copied().collect();
                self.input.file.select(&rows)
            }
            _ => self.train.concat(validation)?,
        };
        let features = features
            .map(|f| -> Result<Features, TrainError> {
                let train = match &f.validation {
                    Some(v) => Tensor::f_cat(&[&f.train, v], 0)?,
                    None => f.train.shallow_clone(),
                };
                Ok(Features {
                    train,
                    validation: None,
                })
            })
            .transpose()?;
        let epochs = first.final_metrics().map_or(hp.epochs, |m| m.epoch);
        let refit_hp = Hyperparameters {
            epochs,
            // Nothing is held out to stop on.
            early_stopping_patience: 0,
            ..hp.clone()
        };
        self.send(Update::Notice(
            EventLevel::Info,
            format!(
                "Final fit: training again from the start on {} training and validation \
                 examples for {epochs} epoch{} (the epochs the first run chose); the \
                 validation metrics reported are the first run's",
                data.len(),
                if epochs == 1 { "" } else { "s" }
            ),
        ));
        let examples = data.len();
        let job = TrainJob {
            base_model_dir: &self.input.base_dir,
            objective: self.input.objective.clone(),
            train: data,
            validation: None,
            config: TrainConfig::from_hyperparameters(&refit_hp, strategy, self.input.seed),
            device: self.input.device,
            features,
            checkpoint_dir: None,
            resume_from: None,
            frozen_cache_bytes: self.input.frozen_cache_bytes,
        };
        let init = if self.input.method.from_scratch {
            EncoderInit::Random
        } else {
            EncoderInit::Pretrained
        };
        let model = fine_tune_with(job, init, &mut self.observer(true))?;
        Ok(Some(Refit { model, examples }))
    }
}

/// Saves the refitted model to `dir` with the first run's tuned multi-label threshold.
pub(super) fn save_refit(
    refit: &TrainedModel,
    first: &TrainedModel,
    dir: &std::path::Path,
) -> Result<(), TrainError> {
    refit.save(dir)?;
    if let Some(threshold) = first.meta().threshold {
        let mut meta = ModelMeta::read(dir)?;
        meta.threshold = Some(threshold);
        meta.write(dir)?;
    }
    Ok(())
}
