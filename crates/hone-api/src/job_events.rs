//! `/v1/fine_tuning/jobs/{id}/events`: a job's events, as a page (newest first) or, with
//! `stream=true`, live as Server-Sent Events.
//!
//! The stream: every event of the job, oldest first, then each new one as it is written, until the
//! job's terminal event; each message's `id:` is the event's id and its `data:` the
//! event as the non-streaming list gives it. `Last-Event-ID` resumes after that event.
//! Events come from Postgres, whichever worker wrote them: a stream reads the job's log
//! after the last `seq` it sent (a job's events are appended in commit order, see
//! `hone_store::events`), and waits for the `hone_job_events` notification of its job,
//! or a poll, before it reads again. One listener per process feeds every stream.
//!
//! Bounded: open streams are capped in all and per project (429 past either), a stream
//! holds at most one page of events, and it reads the next page only when the client
//! has taken the last one, so a slow reader slows its own stream and nothing else.
//! Streams end when the server shuts down.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::Stream;
use hone_domain::resources::JobEvent;
use hone_domain::{Page, ProjectId};
use hone_store::events::{SeqEvent, JOB_EVENTS_CHANNEL};
use hone_store::Db;
use serde::Deserialize;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::Project;
use crate::error::{ApiError, ErrorResponse};
use crate::jobs::{job_id, not_found_as};
use crate::params::ListParams;
use crate::slots::{Full, Slot, Slots};
use crate::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_events))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct EventsParams {
    /// Items per page, 1–100 (default 20). Not with `stream`.
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// The id of the last item of the previous page. Not with `stream`: a stream
    /// resumes after the event named by the `Last-Event-ID` header.
    after: Option<String>,
    /// `true`: answer `text/event-stream`, every event oldest first and then each new
    /// one as it happens, until the job's terminal event.
    stream: Option<bool>,
}

/// A job's events: messages (status changes, warnings, the `auto` choice and its
/// reason) and metrics (steps with epoch, loss and ETA; epochs with validation
/// metrics; the final evaluation).
///
/// By default a page, newest first. With `stream=true`, Server-Sent Events: each
/// message's `id` is the event's id and its `data` the event as the page gives it; the
/// events so far oldest first, then each new one as it is written, a `:` keep-alive
/// comment every 15 s while none comes, and the end of the stream after the job's
/// terminal event. Reconnect with the header `Last-Event-ID: <the last id received>` to
/// resume after it, nothing lost or repeated.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}/events", tag = "fine-tuning",
    params(("job_id" = String, Path, description = "The job's id"), EventsParams,
        ("Last-Event-ID" = Option<String>, Header,
            description = "With `stream=true`: resume after this event")),
    responses(
        (status = 200, description = "A page of events, or (`stream=true`) the event stream",
            content(
                (inline(Page<JobEvent>) = "application/json"),
                (String = "text/event-stream"))),
        (status = 400, description = "Invalid query, or a Last-Event-ID that is not an \
            event of this job", body = ErrorResponse),
        (status = 404, description = "No such job", body = ErrorResponse),
        (status = 429, description = "Too many open event streams", body = ErrorResponse)))]
async fn list_events(
    State(state): State<AppState>,
    project: Project,
    Path(raw): Path<String>,
    headers: HeaderMap,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(&raw)?;
    let params = query?.0;
    let list = ListParams {
        limit: params.limit,
        after: params.after,
    };
    if params.stream == Some(true) {
        if list.limit.is_some() || list.after.is_some() {
            let param = if list.limit.is_some() {
                "limit"
            } else {
                "after"
            };
            return Err(ApiError::invalid(
                param,
                "invalid_value",
                format!(
                    "{param} pages the list; a stream sends every event, and resumes after \
                     the one named by the Last-Event-ID header"
                ),
            ));
        }
        state
            .db
            .get_job(&project.id, id.as_str())
            .await
            .map_err(not_found_as(&raw))?;
        let after = resume_point(&state, &project.id, id.as_str(), &headers).await?;
        let start = Start {
            db: state.db.clone(),
            project: project.id.clone(),
            job_id: id.as_str().to_owned(),
            after,
        };
        let mut response = respond(&state.event_streams, start)?.into_response();
        // Proxies that buffer answers (nginx) would hold the events back.
        response.headers_mut().insert(
            "x-accel-buffering",
            axum::http::HeaderValue::from_static("no"),
        );
        return Ok(response);
    }
    let page = list.page()?;
    state
        .db
        .get_job(&project.id, id.as_str())
        .await
        .map_err(not_found_as(&raw))?;
    let rows = state
        .db
        .list_events(&project.id, id.as_str(), &page)
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |e| e.id.clone())).into_response())
}

/// The `seq` after which a stream starts: that of the event `Last-Event-ID` names.
async fn resume_point(
    state: &AppState,
    project: &ProjectId,
    job_id: &str,
    headers: &HeaderMap,
) -> Result<Option<i64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else {
        return Ok(None);
    };
    let refuse = || {
        ApiError::invalid(
            "Last-Event-ID",
            "invalid_value",
            "Last-Event-ID must be the id of an event of this job, as the stream sent it",
        )
    };
    let event_id = value.to_str().map_err(|_| refuse())?.trim();
    if event_id.is_empty() {
        // What EventSource sends when it has received no id yet.
        return Ok(None);
    }
    if event_id.len() > 256 || event_id.chars().any(char::is_control) {
        return Err(refuse());
    }
    state
        .db
        .event_seq(project, job_id, event_id)
        .await?
        .map(Some)
        .ok_or_else(refuse)
}

/// Events read from Postgres at a time, and so held by a stream at most.
const PAGE: i64 = 100;

/// How streams are bounded and paced.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Open streams on this process.
    pub max_streams: usize,
    /// Open streams of one project on this process.
    pub max_streams_per_project: usize,
    /// Between keep-alive comments while no event comes.
    pub keep_alive: Duration,
    /// Between reads of a job's log when no notification comes (a lost one only delays).
    pub poll: Duration,
}

impl Default for StreamLimits {
    fn default() -> Self {
        Self {
            max_streams: 1000,
            max_streams_per_project: 20,
            keep_alive: Duration::from_secs(15),
            poll: Duration::from_secs(30),
        }
    }
}

/// The streams of one process: their places, and the wake-ups of the one listener.
pub struct EventStreams {
    limits: StreamLimits,
    /// Ids of jobs with new events; `None` when notifications may have been lost.
    wake: broadcast::Sender<Option<Arc<str>>>,
    places: Arc<Slots>,
    shutdown: CancellationToken,
}

impl EventStreams {
    /// Starts the listener that wakes this process's streams; it and every stream stop
    /// at `shutdown`.
    pub fn start(db: Db, limits: StreamLimits, shutdown: CancellationToken) -> Arc<Self> {
        let (wake, _) = broadcast::channel(1024);
        let streams = Arc::new(Self {
            limits,
            wake: wake.clone(),
            places: Slots::new(limits.max_streams, limits.max_streams_per_project),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(hone_store::listener::listen_with(
            db,
            JOB_EVENTS_CHANNEL,
            shutdown,
            move |payload| {
                // No receiver is fine: no stream is open.
                let _ = wake.send(payload.map(Arc::from));
            },
        ));
        streams
    }

    /// A place for one more stream of `project`, or 429.
    fn admit(&self, project: &ProjectId) -> Result<Slot, ApiError> {
        self.places.take(project.as_str()).map_err(|full| {
            let message = match full {
                Full::Server => "this server has as many event streams open as it serves",
                Full::Project => "this project has as many event streams open as it may",
            };
            let mut e = ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!("{message}; close one, or poll the events list instead"),
            );
            e.retry_after = Some(5);
            e
        })
    }
}

/// Where a stream starts: the job and the `seq` of the last event the client has.
pub struct Start {
    pub db: Db,
    pub project: ProjectId,
    pub job_id: String,
    pub after: Option<i64>,
}

/// The SSE answer for `start`, or 429 when no place is free.
pub fn respond(
    streams: &Arc<EventStreams>,
    start: Start,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let place = streams.admit(&start.project)?;
    let follower = Follower {
        wake: streams.wake.subscribe(),
        shutdown: streams.shutdown.clone(),
        poll: streams.limits.poll,
        cursor: start.after,
        buffered: VecDeque::new(),
        finished: false,
        _place: place,
        start,
    };
    let stream = futures::stream::unfold(follower, |mut f| async move {
        let event = f.next().await?;
        Some((Ok::<_, Infallible>(event), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(streams.limits.keep_alive)))
}

/// One stream's state between the events it yields.
struct Follower {
    start: Start,
    wake: broadcast::Receiver<Option<Arc<str>>>,
    shutdown: CancellationToken,
    poll: Duration,
    /// The `seq` of the last event read.
    cursor: Option<i64>,
    buffered: VecDeque<SeqEvent>,
    /// The job was terminal when the log was last found read to its end.
    finished: bool,
    _place: Slot,
}

impl Follower {
    /// The next SSE message, or `None` when the stream ends: after the job's terminal
    /// event, at shutdown, or when the database fails (the client reconnects with
    /// `Last-Event-ID` and misses nothing).
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.buffered.pop_front() {
                return Some(message(&e));
            }
            if self.finished || self.shutdown.is_cancelled() {
                return None;
            }
            // The status first: once it is terminal, the terminal event is committed (in
            // the same transaction), so a read that then finds nothing new is the end.
            let terminal = match self.terminal().await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(error = %e, job = %self.start.job_id, "event stream ends");
                    return None;
                }
            };
            let page = match self.read().await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(error = %e, job = %self.start.job_id, "event stream ends");
                    return None;
                }
            };
            if let Some(last) = page.last() {
                self.cursor = Some(last.seq);
                self.buffered.extend(page);
                continue;
            }
            if terminal {
                self.finished = true;
                continue;
            }
            self.wait().await;
        }
    }

    async fn terminal(&self) -> Result<bool, hone_store::StoreError> {
        let job = self
            .start
            .db
            .get_job(&self.start.project, &self.start.job_id)
            .await?;
        Ok(job.status.is_terminal())
    }

    async fn read(&self) -> Result<Vec<SeqEvent>, hone_store::StoreError> {
        self.start
            .db
            .events_after(&self.start.project, &self.start.job_id, self.cursor, PAGE)
            .await
    }

    /// Until this job has a new event, notifications may have been lost, the poll
    /// interval passes, or the server shuts down.
    async fn wait(&mut self) {
        let deadline = tokio::time::sleep(self.poll);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                () = self.shutdown.cancelled() => return,
                woken = self.wake.recv() => match woken {
                    Ok(Some(job)) if *job != *self.start.job_id => {}
                    // This job, or a lost or skipped notification: read again.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return;
                    }
                },
            }
        }
    }
}

fn message(e: &SeqEvent) -> Event {
    // Event ids are `ftevent-` and hex: no line break, which `id` would refuse.
    Event::default()
        .id(e.event.id.clone())
        .json_data(&e.event)
        // A JobEvent always serializes; if it ever did not, say so in the stream.
        .unwrap_or_else(|err| Event::default().comment(format!("unserializable event: {err}")))
}
