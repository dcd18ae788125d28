//! The end of `hone jobs watch`: a finished job's status, model, training and
//! evaluation (accuracy, macro-F1, per class) as lines of text, from the job's `result`.

use serde::Deserialize;
use serde_json::Value;

use crate::output;

/// What the summary reads of a job; anything missing is left out of it.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Job {
    id: String,
    status: String,
    fine_tuned_model: Option<String>,
    started_at: Option<i64>,
    finished_at: Option<i64>,
    method: Option<Method>,
    result: Option<JobResult>,
    error: Option<JobError>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Method {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JobError {
    code: Option<String>,
    message: String,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct JobResult {
    train_loss: Option<f64>,
    trained_examples: Option<u64>,
    epochs_run: Option<u32>,
    best_epoch: Option<u32>,
    stopped_early: bool,
    evaluation: Option<Evaluation>,
    quantization: Option<Quantization>,
}

/// How the model serves when not in fp32, and what that changed on validation data.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Quantization {
    #[serde(rename = "type")]
    kind: String,
    validation_fp32: Option<Brief>,
    validation_quantized: Option<Brief>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Brief {
    accuracy: f64,
    macro_f1: f64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Evaluation {
    validation: Option<Report>,
    multi_label: Option<MultiLabel>,
    tasks: Vec<TaskReport>,
    generalization: Option<Generalization>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Report {
    examples: u64,
    accuracy: f64,
    macro_f1: f64,
    weighted_f1: f64,
    log_loss: Option<f64>,
    per_class: Vec<ClassMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct MultiLabel {
    examples: u64,
    micro_f1: f64,
    macro_f1: f64,
    subset_accuracy: f64,
    threshold: f64,
    per_label: Vec<ClassMetrics>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct TaskReport {
    task: String,
    report: Report,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ClassMetrics {
    label: String,
    precision: f64,
    recall: f64,
    f1: f64,
    support: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Generalization {
    train_accuracy: f64,
    validation_accuracy: f64,
    overfitting: bool,
}

/// The summary of a finished job, line by line.
pub fn lines(raw: &Value) -> Vec<String> {
    let job = Job::deserialize(raw).unwrap_or_default();
    let mut out = Vec::new();
    let took = match (job.started_at, job.finished_at) {
        (Some(s), Some(f)) if f >= s => format!(" in {}", output::duration((f - s) as f64)),
        _ => String::new(),
    };
    match (&job.error, job.status.as_str()) {
        (Some(e), _) => out.push(format!(
            "Job {} {}{took}: {}{}",
            job.id,
            job.status,
            e.message,
            e.code
                .as_ref()
                .map_or_else(String::new, |c| format!(" ({c})"))
        )),
        _ => out.push(format!("Job {} {}{took}", job.id, job.status)),
    }
    if let Some(model) = &job.fine_tuned_model {
        out.push(format!("Fine-tuned model: {model}"));
    }
    let Some(result) = &job.result else {
        return out;
    };
    out.push(training_line(result, job.method.as_ref()));
    if let Some(q) = &result.quantization {
        out.push(quantization_line(q));
    }
    let Some(evaluation) = &result.evaluation else {
        return out;
    };
    if let Some(report) = &evaluation.validation {
        report_lines(&mut out, "Validation", report);
    }
    if let Some(m) = &evaluation.multi_label {
        out.push(format!(
            "Validation ({} examples, threshold {:.2}): micro-F1 {:.3}  macro-F1 {:.3}  \
             subset accuracy {:.3}",
            m.examples, m.threshold, m.micro_f1, m.macro_f1, m.subset_accuracy
        ));
        class_table(&mut out, "LABEL", &m.per_label);
    }
    for task in &evaluation.tasks {
        report_lines(&mut out, &format!("Task {}", task.task), &task.report);
    }
    if let Some(g) = &evaluation.generalization {
        out.push(format!(
            "Accuracy on training data {:.3}, on validation data {:.3}{}",
            g.train_accuracy,
            g.validation_accuracy,
            if g.overfitting { " (overfitting)" } else { "" }
        ));
    }
    out
}

fn training_line(result: &JobResult, method: Option<&Method>) -> String {
    let mut parts = Vec::new();
    if let Some(m) = method.filter(|m| !m.kind.is_empty()) {
        parts.push(format!("method {}", m.kind));
    }
    if let Some(n) = result.epochs_run {
        parts.push(format!("{n} epochs"));
    }
    if let Some(n) = result.trained_examples {
        parts.push(format!("{n} examples"));
    }
    if let Some(l) = result.train_loss {
        parts.push(format!("final training loss {l:.4}"));
    }
    if let Some(b) = result.best_epoch {
        parts.push(format!("best epoch {b}"));
    }
    if result.stopped_early {
        parts.push("stopped early".to_owned());
    }
    format!("Training: {}", parts.join(", "))
}

fn quantization_line(q: &Quantization) -> String {
    match (&q.validation_fp32, &q.validation_quantized) {
        (Some(a), Some(b)) => format!(
            "Served in {}: validation accuracy {:.3} (fp32 {:.3}), macro-F1 {:.3} (fp32 {:.3})",
            q.kind, b.accuracy, a.accuracy, b.macro_f1, a.macro_f1
        ),
        _ => format!(
            "Served in {} (no validation data to compare with fp32)",
            q.kind
        ),
    }
}

fn report_lines(out: &mut Vec<String>, title: &str, r: &Report) {
    let loss = r
        .log_loss
        .map_or_else(String::new, |l| format!("  log-loss {l:.4}"));
    out.push(format!(
        "{title} ({} examples): accuracy {:.3}  macro-F1 {:.3}  weighted-F1 {:.3}{loss}",
        r.examples, r.accuracy, r.macro_f1, r.weighted_f1
    ));
    class_table(out, "CLASS", &r.per_class);
}

/// Per-class precision, recall, F1 and support, aligned under a header.
fn class_table(out: &mut Vec<String>, first: &str, classes: &[ClassMetrics]) {
    if classes.is_empty() {
        return;
    }
    let width = classes
        .iter()
        .map(|c| c.label.chars().count())
        .chain([first.len()])
        .max()
        .unwrap_or(first.len());
    out.push(format!(
        "  {first:<width$}  PRECISION  RECALL  F1     SUPPORT"
    ));
    for c in classes {
        out.push(format!(
            "  {:<width$}  {:<9.3}  {:<6.3}  {:<5.3}  {}",
            c.label, c.precision, c.recall, c.f1, c.support
        ));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::lines;

    #[test]
    fn a_succeeded_job_reads_as_its_evaluation() {
        let job = json!({
            "id": "ftjob-1", "status": "succeeded", "started_at": 100, "finished_at": 130,
            "fine_tuned_model": "ft:m:x:1", "method": {"type": "feature_extraction"},
            "result": {"train_loss": 0.25, "trained_examples": 32, "epochs_run": 2,
                "best_epoch": 2, "stopped_early": false, "training_seconds": 3.0,
                "evaluation": {
                    "validation": {"examples": 8, "accuracy": 0.875, "macro_f1": 0.8,
                        "weighted_f1": 0.81, "log_loss": 0.3, "confusion_matrix": [],
                        "per_class": [
                            {"label": "negative", "precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4},
                            {"label": "positive", "precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4}]},
                    "generalization": {"train_accuracy": 1.0, "validation_accuracy": 0.875,
                        "gap": 0.125, "overfitting": true}}}});
        let text = lines(&job).join("\n");
        for expected in [
            "Job ftjob-1 succeeded in 30s",
            "Fine-tuned model: ft:m:x:1",
            "Training: method feature_extraction, 2 epochs, 32 examples, final training loss 0.2500, best epoch 2",
            "Validation (8 examples): accuracy 0.875  macro-F1 0.800  weighted-F1 0.810  log-loss 0.3000",
            "  CLASS     PRECISION  RECALL  F1     SUPPORT",
            "  negative  1.000      0.750   0.857  4",
            "(overfitting)",
        ] {
            assert!(text.contains(expected), "{expected:?} in\n{text}");
        }
        assert!(!text.contains("Served in"), "{text}");
    }

    #[test]
    fn an_int8_job_says_what_int8_changed() {
        let job = json!({"id": "ftjob-3", "status": "succeeded",
            "result": {"epochs_run": 1, "quantization": {"type": "int8",
                "validation_fp32": {"loss": 0.6, "accuracy": 0.654, "macro_f1": 0.652, "examples": 52},
                "validation_quantized": {"loss": 0.61, "accuracy": 0.673, "macro_f1": 0.672, "examples": 52}}}});
        let text = lines(&job).join("\n");
        assert!(
            text.contains(
                "Served in int8: validation accuracy 0.673 (fp32 0.654), macro-F1 0.672 (fp32 0.652)"
            ),
            "{text}"
        );
        let without = json!({"id": "ftjob-4", "status": "succeeded",
            "result": {"quantization": {"type": "int8", "validation_fp32": null,
                "validation_quantized": null}}});
        assert!(lines(&without)
            .join("\n")
            .contains("Served in int8 (no validation data to compare with fp32)"));
    }

    #[test]
    fn a_failed_job_says_why_and_odd_jobs_still_summarize() {
        let job = json!({"id": "ftjob-2", "status": "failed",
            "error": {"code": "invalid_data", "message": "too few examples", "param": null}});
        assert_eq!(
            lines(&job),
            ["Job ftjob-2 failed: too few examples (invalid_data)"]
        );
        assert_eq!(lines(&json!([1])), ["Job  "]);
    }
}
