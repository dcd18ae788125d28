//! A succeeded job's results file, as OpenAI's fine-tuning API gives one: a CSV of the
//! training curve, one row per point of the per-step loss curve, with each epoch's
//! validation metrics on the row of its last step. It is stored as a file of the
//! job's project (purpose `fine-tune-results`), so `GET /v1/files/{id}/content`
//! downloads it.

use std::fmt::Write as _;
use std::sync::Arc;

use hone_domain::FileId;
use hone_store::files::ResultsFile;
use hone_store::ArtifactStore;
use hone_train::train::EpochMetrics;
use sha2::{Digest, Sha256};

use super::progress::LossCurve;

pub(super) const HEADER: &str =
    "step,epoch,train_loss,learning_rate,valid_loss,valid_accuracy,valid_macro_f1";

/// The CSV and its number of data rows.
pub(super) fn csv(steps: &LossCurve, epochs: &[EpochMetrics]) -> (String, i64) {
    let mut out = format!("{HEADER}\n");
    let points = &steps.points;
    for (i, &(step, epoch, loss, lr)) in points.iter().enumerate() {
        let last_of_epoch = points.get(i + 1).is_none_or(|next| next.1 != epoch);
        let validation = epochs
            .iter()
            .find(|m| m.epoch == epoch)
            .and_then(|m| m.validation.as_ref())
            .filter(|_| last_of_epoch);
        let _ = write!(out, "{step},{epoch},{loss},{lr}");
        match validation {
            Some(v) => {
                let _ = writeln!(out, ",{},{},{}", v.loss, v.accuracy, v.macro_f1);
            }
            None => out.push_str(",,,\n"),
        }
    }
    (out, points.len() as i64)
}

/// Writes the results file of `job_id` to the artifact store; the caller records it
/// with the job's success (and deletes the key if that fails).
pub(super) async fn store(
    artifacts: &Arc<dyn ArtifactStore>,
    job_id: &str,
    steps: &LossCurve,
    epochs: &[EpochMetrics],
) -> std::io::Result<ResultsFile> {
    let (text, rows) = csv(steps, epochs);
    let id = FileId::generate();
    let mut pending = artifacts
        .create(&hone_store::files::storage_key(&id))
        .await?;
    pending.write(text.as_bytes()).await?;
    pending.commit().await?;
    Ok(ResultsFile {
        filename: format!("{job_id}-results.csv"),
        bytes: text.len() as i64,
        sha256: hex::encode(Sha256::digest(text.as_bytes())),
        rows,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hone_train::EvalMetrics;

    fn epoch(n: u32, validation: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch: n,
            train_loss: 0.5,
            validation: validation.map(|loss| EvalMetrics {
                loss,
                accuracy: 0.75,
                macro_f1: 0.5,
                examples: 4,
                threshold: None,
            }),
        }
    }

    #[test]
    fn validation_goes_on_each_epochs_last_step() {
        let curve = LossCurve {
            points: vec![
                (1, 1, 0.9, 1e-5),
                (2, 1, 0.8, 2e-5),
                (3, 2, 0.7, 3e-5),
                (4, 2, 0.6, 4e-5),
            ],
            bucket: 1,
            open: (0.0, 0),
        };
        let (text, rows) = csv(&curve, &[epoch(1, Some(0.4)), epoch(2, None)]);
        assert_eq!(rows, 4);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], HEADER);
        assert_eq!(lines[1], "1,1,0.9,0.00001,,,");
        assert_eq!(lines[2], "2,1,0.8,0.00002,0.4,0.75,0.5");
        assert_eq!(lines[3], "3,2,0.7,0.00003,,,");
        // An epoch without validation data leaves the columns empty.
        assert_eq!(lines[4], "4,2,0.6,0.00004,,,");
        assert_eq!(lines.len(), 5);
    }
}
