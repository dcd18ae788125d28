//! What a published model records of its job: the manifest written beside its weights.

use std::path::Path;

use hone_domain::dataset::TaskType;
use hone_domain::job::Method;
use hone_domain::resources::JobResult;
use hone_train::Objective;

/// A multi-task model's tasks and their labels, as the model object lists them.
pub(super) fn model_tasks(
    objective: &Objective,
) -> Option<std::collections::BTreeMap<String, Vec<String>>> {
    (objective.task_type == TaskType::MultiTask).then(|| {
        objective
            .heads
            .iter()
            .map(|h| (h.name.clone(), h.labels.clone()))
            .collect()
    })
}

pub(super) fn write_manifest(
    dir: &Path,
    job: &hone_domain::resources::FineTuningJob,
    method: &Method,
    model_id: &str,
    objective: &Objective,
    result: &JobResult,
) -> std::io::Result<()> {
    let manifest = serde_json::json!({
        "format_version": 2,
        "model_id": model_id,
        "job_id": job.id,
        "base_model": job.base_model,
        "task_type": objective.task_type,
        "labels": objective.labels(),
        "tasks": model_tasks(objective),
        "method": method,
        "hyperparameters": job.hyperparameters,
        "seed": job.seed,
        "training_file": job.training_file,
        "validation_file": job.validation_file,
        "metrics": result,
        "created_at": chrono::Utc::now(),
        "hone_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(&manifest)?,
    )
}
