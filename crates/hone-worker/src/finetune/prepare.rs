//! Preparing a job: read and check its files, index their targets, hold out the
//! validation rows and gather the data report. No tensors here: what the training thread
//! gets is plain data.

use std::path::PathBuf;
use std::sync::Arc;

use hone_domain::data_report::DataReportBuilder;
use hone_domain::dataset::images::read_image_examples;
use hone_domain::dataset::{parse_examples, Example, Modality};
use hone_domain::split::stratified_split;
use hone_store::queue::ClaimedJob;
use hone_store::{ArtifactStore, Db};
use hone_train::model_dir::CONFIG_FILE;
use hone_train::train::TrainData;
use hone_train::Objective;
use sha2::{Digest, Sha256};

use super::failure::{transient, user, Failure};
use super::targets::{objective_of, report_labels, Indexer};
use crate::WorkerSettings;

pub(super) struct Prepared {
    pub(super) base_dir: PathBuf,
    pub(super) objective: Objective,
    /// The training file's texts and label indices, every row.
    pub(super) file: TrainData,
    /// Its SHA-256, part of the feature-cache key.
    pub(super) file_sha256: String,
    /// Rows of `file` trained on.
    pub(super) train_rows: Vec<usize>,
    pub(super) validation: Validation,
    pub(super) data_report: DataReportBuilder,
}

/// Where validation data comes from.
pub(super) enum Validation {
    None,
    /// Rows of the training file held out (stratified).
    Split(Vec<usize>),
    /// A validation file, with its SHA-256.
    File(TrainData, String),
}

/// A file's examples: for an image file, `images[i]` is example `i`'s encoded image and
/// its `text` is empty.
pub(super) struct FileExamples {
    pub(super) examples: Vec<Example>,
    pub(super) images: Vec<Vec<u8>>,
    pub(super) sha256: String,
}

pub(super) async fn read_examples(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    file_id: &str,
    param: &str,
) -> Result<FileExamples, Failure> {
    let file = db.get_file_of_job(file_id).await.map_err(|e| match e {
        hone_store::StoreError::NotFound => user(
            "file_not_found",
            format!("{param} {file_id} was deleted"),
            Some(param),
        ),
        other => transient("storage_error", other.to_string()),
    })?;
    let bytes = artifacts
        .read(&file.storage_key)
        .await
        .map_err(|e| transient("storage_error", format!("cannot read {file_id}: {e}")))?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != file.object.sha256 {
        return Err(user(
            "file_corrupted",
            format!("{file_id} no longer matches the checksum it was uploaded with"),
            Some(param),
        ));
    }
    let invalid = |e: hone_domain::dataset::DatasetError| {
        user("invalid_file", format!("{file_id}: {e}"), Some(param))
    };
    let (examples, images) = match file.object.modality {
        Modality::Text => (
            parse_examples(file.object.format, &bytes).map_err(invalid)?,
            Vec::new(),
        ),
        Modality::Image => read_image_examples(file.object.format, &bytes)
            .map_err(invalid)?
            .into_iter()
            .map(|e| {
                let example = Example {
                    text: String::new(),
                    text_pair: None,
                    target: e.target,
                };
                (example, e.image)
            })
            .unzip(),
    };
    Ok(FileExamples {
        examples,
        images,
        sha256: digest,
    })
}

pub(super) async fn prepare(
    db: &Db,
    artifacts: &Arc<dyn ArtifactStore>,
    settings: &WorkerSettings,
    claimed: &ClaimedJob,
) -> Result<Prepared, Failure> {
    let job = &claimed.job;
    let base_dir = settings.models_dir.join(&job.base_model);
    if !base_dir.join(CONFIG_FILE).is_file() {
        return Err(user(
            "base_model_unavailable",
            format!(
                "base model {} is not installed on this worker",
                job.base_model
            ),
            Some("base_model"),
        ));
    }
    let FileExamples {
        examples: train_examples,
        images: train_images,
        sha256: file_sha256,
    } = read_examples(db, artifacts, &job.training_file, "training_file").await?;
    let task_type = train_examples
        .first()
        .map(|e| e.target.task_type())
        .unwrap_or_default();
    let pairs = train_examples
        .first()
        .is_some_and(|e| e.text_pair.is_some());
    let objective = objective_of(&train_examples, task_type, &job.hyperparameters)?;
    let indexer = Indexer::new(&objective);
    let to_data =
        |examples: Vec<Example>, images: Vec<Vec<u8>>, param: &str| -> Result<TrainData, Failure> {
            let mut texts = Vec::with_capacity(examples.len());
            let mut text_pairs = pairs.then(|| Vec::with_capacity(examples.len()));
            let mut targets = Vec::with_capacity(examples.len());
            for e in examples {
                match (&e.text_pair, &mut text_pairs) {
                    (Some(pair), Some(pairs)) => pairs.push(pair.clone()),
                    (None, None) => {}
                    _ => {
                        let what = if pairs { "text pairs" } else { "single texts" };
                        return Err(user(
                            "task_mismatch",
                            format!("the {param} is not made of {what} like the training file"),
                            Some(param),
                        ));
                    }
                }
                targets.push(indexer.index(&e.target, param)?);
                texts.push(e.text);
            }
            if !images.is_empty() {
                return Ok(TrainData::images(images, indexer.collect(targets)));
            }
            Ok(TrainData {
                texts,
                text_pairs,
                labels: indexer.collect(targets),
                ..TrainData::default()
            })
        };
    let file = to_data(train_examples, train_images, "training_file")?;
    let (train_rows, validation) = match &job.validation_file {
        Some(id) => {
            let v = read_examples(db, artifacts, id, "validation_file").await?;
            (
                (0..file.len()).collect(),
                Validation::File(to_data(v.examples, v.images, "validation_file")?, v.sha256),
            )
        }
        None => {
            let fraction = job.hyperparameters.validation_fraction(file.len());
            let (train, held) = stratified_split(&file.labels.strata(), fraction, job.seed as u64);
            if held.is_empty() {
                (train, Validation::None)
            } else {
                (train, Validation::Split(held))
            }
        }
    };
    let mut data_report = DataReportBuilder::new();
    let pair_of = |data: &TrainData, i: usize| -> Option<String> {
        data.text_pairs.as_ref().map(|p| p[i].clone())
    };
    // An image stands in the report as its digest: identical images count as leaked
    // into validation as identical texts do.
    let input_of = |data: &TrainData, i: usize| -> String {
        match data.images.get(i) {
            Some(image) => hex::encode(Sha256::digest(image)),
            None => data.texts[i].clone(),
        }
    };
    for &i in &train_rows {
        data_report.add_training(
            &input_of(&file, i),
            pair_of(&file, i).as_deref(),
            &report_labels(&objective, &file.labels, i),
        );
    }
    match &validation {
        Validation::None => {}
        Validation::Split(rows) => {
            for &i in rows {
                data_report.add_validation(&input_of(&file, i), pair_of(&file, i).as_deref());
            }
        }
        Validation::File(data, _) => {
            for i in 0..data.len() {
                data_report.add_validation(&input_of(data, i), pair_of(data, i).as_deref());
            }
        }
    }
    Ok(Prepared {
        base_dir,
        objective,
        file,
        file_sha256,
        train_rows,
        validation,
        data_report,
    })
}
