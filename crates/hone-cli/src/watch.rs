//! `hone jobs watch`: a job's live events (`GET …/events?stream=true`, Server-Sent
//! Events) drawn as a progress bar, then the job's summary.
//!
//! The server ends the stream after the job's terminal event; any other end (a dropped
//! connection, a server restarting) is followed by a reconnect with `Last-Event-ID`,
//! which resumes after the last event received, nothing lost or repeated. Whether the
//! job is over is asked of the job itself once a stream ends, not guessed from events.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::Method;
use serde::Deserialize;
use serde_json::Value;

use crate::client::Client;
use crate::error::{chain, CliError};
use crate::jobs::job_path;
use crate::{output, summary};

/// Failed connections in a row before watching gives up (about a minute of backoff).
const MAX_FAILURES: u32 = 8;

pub async fn watch(client: &Client, id: &str) -> Result<ExitCode, CliError> {
    let mut view = View::new(std::io::stdout().is_terminal());
    let mut last_event: Option<String> = None;
    let mut failures = 0;
    loop {
        match follow(client, id, &mut last_event, &mut view).await {
            Ok(()) => failures = 0,
            Err(e) if e.is_transient() && failures < MAX_FAILURES => {
                failures += 1;
                view.note(&format!("{e}; reconnecting"));
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(e) => {
                view.clear();
                return Err(e);
            }
        }
        let job: Value = match client.get(&job_path(id, ""), &[]).await {
            Ok(job) => job,
            Err(e) if e.is_transient() && failures < MAX_FAILURES => {
                failures += 1;
                tokio::time::sleep(backoff(failures)).await;
                continue;
            }
            Err(e) => {
                view.clear();
                return Err(e);
            }
        };
        let status = output::text(&job, "status");
        if matches!(status.as_str(), "succeeded" | "failed" | "cancelled") {
            view.clear();
            for line in summary::lines(&job) {
                output::line(&line)?;
            }
            return Ok(if status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        // The stream ended while the job goes on (the server is shutting down): wait a
        // moment, then resume after the last event.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(4))
}

/// One stream, from after `last_event` to its end; each event is shown as it comes and
/// its id kept, so that a reconnect resumes after it.
async fn follow(
    client: &Client,
    id: &str,
    last_event: &mut Option<String>,
    view: &mut View,
) -> Result<(), CliError> {
    let mut request = client
        .request(Method::GET, &job_path(id, "/events"))
        .query(&[("stream", "true")]);
    if let Some(last) = last_event.as_deref() {
        request = request.header("Last-Event-ID", last);
    }
    let response = client.send(request).await?;
    let url = response.url().to_string();
    let mut events = response.bytes_stream().eventsource();
    while let Some(message) = events.next().await {
        let message = message.map_err(|e| CliError::Interrupted {
            url: url.clone(),
            cause: chain(&e),
        })?;
        if message.data.is_empty() {
            continue;
        }
        let event: Event =
            serde_json::from_str(&message.data).map_err(|e| CliError::Unexpected {
                url: url.clone(),
                detail: format!("an event that is not JSON ({e})"),
            })?;
        view.show(&event);
        if !message.id.is_empty() {
            *last_event = Some(message.id);
        }
    }
    Ok(())
}

/// What a watch reads of an event.
#[derive(Deserialize)]
struct Event {
    #[serde(default)]
    level: String,
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    data: Value,
}

impl Event {
    /// A step's metrics: `metrics` events whose data has `step` and `total_steps`
    /// (an epoch's, or the transferability estimate, have not).
    fn step(&self) -> Option<(Step, u64, u64)> {
        if self.kind != "metrics" {
            return None;
        }
        let s = Step::deserialize(&self.data).ok()?;
        let (step, total) = (s.step?, s.total_steps?);
        Some((s, step, total))
    }
}

#[derive(Deserialize)]
struct Step {
    step: Option<u64>,
    total_steps: Option<u64>,
    epoch: Option<u64>,
    total_epochs: Option<u64>,
    train_loss: Option<f64>,
    eta_seconds: Option<f64>,
}

/// A progress bar on a terminal; plain lines on stdout otherwise (a pipe, a log, a
/// test), where a bar would be hidden.
struct View {
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl View {
    fn new(terminal: bool) -> Self {
        Self {
            terminal,
            bar: None,
        }
    }

    fn show(&mut self, event: &Event) {
        match event.step() {
            Some((s, step, total)) => self.step(&s, step, total),
            None => self.note(&message_line(event)),
        }
    }

    fn step(&mut self, s: &Step, step: u64, total: u64) {
        let epoch = match (s.epoch, s.total_epochs) {
            (Some(e), Some(t)) => format!("epoch {e}/{t}"),
            (Some(e), None) => format!("epoch {e}"),
            _ => String::new(),
        };
        let loss = s
            .train_loss
            .map_or_else(String::new, |l| format!("loss {l:.4}"));
        let eta = s
            .eta_seconds
            .map_or_else(String::new, |e| format!("ETA {}", output::duration(e)));
        if !self.terminal {
            let parts = [epoch, format!("step {step}/{total}"), loss, eta];
            let text: Vec<&str> = parts
                .iter()
                .map(String::as_str)
                .filter(|p| !p.is_empty())
                .collect();
            // A closed stdout ends nothing here: the summary's write reports it.
            let _ = output::line(&text.join("  "));
            return;
        }
        let created = self.bar.is_none();
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden());
            if let Ok(style) = ProgressStyle::with_template(
                "{prefix} [{wide_bar:.cyan/blue}] step {pos}/{len}  {msg}",
            ) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar
        });
        let msg: Vec<String> = [loss, eta].into_iter().filter(|p| !p.is_empty()).collect();
        bar.set_prefix(epoch);
        bar.set_message(msg.join("  "));
        bar.set_length(total);
        bar.set_position(step);
        if created {
            // Drawn from the first step's values on, not from an empty first frame.
            bar.set_draw_target(ProgressDrawTarget::stdout());
        }
    }

    /// A line above the bar, or on its own without one.
    fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => {
                let _ = output::line(text);
            }
        }
    }

    fn clear(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn message_line(event: &Event) -> String {
    match event.level.as_str() {
        "warn" | "warning" => format!("warning: {}", event.message),
        "error" => format!("error: {}", event.message),
        _ => event.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex};

    use secrecy::SecretString;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::{message_line, watch, Event};
    use crate::client::Client;

    /// A server that answers each request with the next of `answers` (status line and
    /// body, then closes), recording each request's head.
    async fn scripted(answers: Vec<(&'static str, String)>) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let heads = Arc::new(Mutex::new(Vec::new()));
        let seen = heads.clone();
        tokio::spawn(async move {
            for (content_type, body) in answers {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if socket.read(&mut byte).await.unwrap_or(0) == 0 {
                        break;
                    }
                    head.push(byte[0]);
                }
                seen.lock()
                    .expect("lock")
                    .push(String::from_utf8_lossy(&head).to_lowercase());
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\nconnection: close\r\n\r\n{body}"
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.shutdown().await;
            }
        });
        (url, heads)
    }

    fn sse(events: &[(&str, &str)]) -> String {
        events
            .iter()
            .map(|(id, data)| format!("id: {id}\ndata: {data}\n\n"))
            .collect()
    }

    #[tokio::test]
    async fn a_stream_that_ends_before_the_job_does_resumes_after_the_last_event() {
        let step = |n: u32| {
            format!(
                r#"{{"level":"info","type":"metrics","message":"Step {n}/2","data":{{"step":{n},"total_steps":2,"epoch":1,"total_epochs":1,"train_loss":0.5,"eta_seconds":1.0}}}}"#
            )
        };
        let queued =
            r#"{"level":"info","type":"message","message":"Job created and queued","data":null}"#;
        let done = r#"{"level":"info","type":"message","message":"Job succeeded","data":null}"#;
        let (url, heads) = scripted(vec![
            (
                "text/event-stream",
                sse(&[("e1", queued), ("e2", &step(1))]),
            ),
            (
                "application/json",
                r#"{"id":"ftjob-x","status":"running"}"#.to_owned(),
            ),
            ("text/event-stream", sse(&[("e3", &step(2)), ("e4", done)])),
            (
                "application/json",
                r#"{"id":"ftjob-x","status":"succeeded"}"#.to_owned(),
            ),
        ])
        .await;
        let client = Client::new(&url, SecretString::from("hone_sk_test")).expect("client");
        let code = watch(&client, "ftjob-x").await.expect("watched to the end");
        assert_eq!(code, ExitCode::SUCCESS);
        let heads = heads.lock().expect("lock").clone();
        assert_eq!(heads.len(), 4, "{heads:?}");
        assert!(heads[0].starts_with("get /v1/fine_tuning/jobs/ftjob-x/events?stream=true"));
        assert!(!heads[0].contains("last-event-id"), "{}", heads[0]);
        assert!(heads[2].contains("last-event-id: e2\r\n"), "{}", heads[2]);
        assert!(heads
            .iter()
            .all(|h| h.contains("authorization: bearer hone_sk_test")));
    }

    #[test]
    fn events_read_leniently() {
        let step: Event = serde_json::from_str(
            r#"{"level":"info","type":"metrics","message":"Step 4/12","data":{"step":4,"total_steps":12,"epoch":1,"total_epochs":3,"train_loss":0.5,"eta_seconds":9.1,"learning_rate":1e-3}}"#,
        )
        .expect("a step");
        let (s, step, total) = step.step().expect("a step's metrics");
        assert_eq!(
            (step, total, s.epoch, s.total_epochs),
            (4, 12, Some(1), Some(3))
        );
        let epoch: Event = serde_json::from_str(
            r#"{"level":"info","type":"metrics","message":"Epoch 1/3 done","data":{"epoch":1,"train_loss":0.4}}"#,
        )
        .expect("an epoch");
        assert!(epoch.step().is_none());
        let warn: Event =
            serde_json::from_str(r#"{"level":"warn","type":"message","message":"few examples","data":null,"new_field":1}"#)
                .expect("a warning");
        assert_eq!(message_line(&warn), "warning: few examples");
        let odd: Event =
            serde_json::from_str(r#"{"type":"metrics","data":[1,2]}"#).expect("any data");
        assert!(odd.step().is_none());
    }
}
