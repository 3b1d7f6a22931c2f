//! `GET /jobs/{id}/events`: telling the user when it is done, without the
//! user asking again and again.
//!
//! One long-lived response in the Server-Sent Events format
//! (`text/event-stream`, what a browser's `EventSource` reads): the server
//! writes an event whenever the job changes, and the connection ends after
//! the last one. The events:
//!
//! ```text
//! event: progress          (queued, or running with "progress": 0..100)
//! data: {"id":"...","status":"running","progress":40,...}
//!
//! event: done              (last; "result_url" says where the result is)
//! data: {"id":"...","status":"done","progress":100,"result_url":"/jobs/.../result",...}
//! ```
//!
//! or a last `failed` event with `error`, the reason. Each `data` is the
//! same JSON as `GET /jobs/{id}`. The reason is a worker's (a poison job:
//! "gave up after 3 deliveries: ...") or, for a job whose last delivery
//! died with its worker, the dead-letter watcher's ("dead-lettered after 3
//! deliveries: the worker holding it died", see [`crate::worker`]): either
//! way the row changes, and the stream tells it like any other change.
//!
//! **How it knows: by polling the row.** The stream reads the job's row
//! every `EVENTS_POLL_MS` (200 ms by default) and sends an event only
//! when the status or the progress changed. A worker on another machine
//! writes the row; the clone holding the stream is not told. Polling the
//! primary costs one indexed read per open stream per interval (5 a
//! second each at 200 ms); a notification channel (Redis pub/sub, or a
//! RabbitMQ fanout the workers publish to) would cost nothing while
//! nothing happens, at the price of one more moving part that can drop a
//! message: the row stays the truth either way, so a stream would still
//! re-read it on connect. At this scale the poll is the simple, honest
//! choice; it also means an event can be up to one interval late.
//!
//! Between events the server sends a comment line (`: keep-alive`) every
//! [`KEEP_ALIVE`], so proxies with an idle timeout (HAProxy's
//! `timeout server`, nginx's `proxy_read_timeout`) do not cut a quiet
//! stream; `X-Accel-Buffering: no` asks nginx not to buffer it.
//!
//! **A stream lives at most `EVENTS_MAX_SECS`** (300 s by default), then
//! ends without a last event. Every open stream is a connection the clone
//! holds, and a clone stopping for a deploy waits for its open responses:
//! a job stuck in the queue for an hour must not pin either. The first
//! event carries `retry: 1000`, so a browser's `EventSource` reconnects a
//! second after any end that was not `done` or `failed` (the page closes
//! it on those), and a stream's first event is always the job as it is
//! now: nothing is missed across a reconnect.
//!
//! Polling `GET /jobs/{id}` works as well: the stream is the same answer,
//! pushed.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::HeaderValue;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};

use crate::job::{Job, JobId, JobStatus, JobStore};

/// How often a quiet stream sends a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The event name for a job in this state.
pub fn event_name(status: JobStatus) -> &'static str {
    match status {
        JobStatus::Queued | JobStatus::Running => "progress",
        JobStatus::Done => "done",
        JobStatus::Failed => "failed",
    }
}

struct Poll {
    store: JobStore,
    id: JobId,
    every: Duration,
    /// The row as read first, sent at once.
    first: Option<Job>,
    /// When the stream ends, finished or not.
    until: tokio::time::Instant,
    /// What the last event said.
    last: Option<(JobStatus, u8)>,
    finished: bool,
}

/// How long a client waits before reconnecting to a stream that ended
/// early (the `retry` field of the first event).
pub const RECONNECT: Duration = Duration::from_secs(1);

/// The event stream of `job` (already checked to be the caller's),
/// reading its row every `every`, for at most `max_life`.
pub fn stream(store: JobStore, job: Job, every: Duration, max_life: Duration) -> Response {
    let state = Poll {
        store,
        id: job.id.clone(),
        every,
        until: tokio::time::Instant::now() + max_life,
        first: Some(job),
        last: None,
        finished: false,
    };
    let events = futures::stream::unfold(state, |mut st| async move {
        if st.finished {
            return None;
        }
        loop {
            let first = st.first.take();
            let job = match first {
                Some(job) => job,
                None => {
                    if tokio::time::Instant::now() + st.every > st.until {
                        // Lived long enough: the client reconnects.
                        return None;
                    }
                    tokio::time::sleep(st.every).await;
                    match st.store.get(&st.id).await {
                        Ok(Some(job)) => job,
                        Ok(None) => {
                            st.finished = true;
                            let data = serde_json::json!({
                                "id": st.id,
                                "status": JobStatus::Failed.as_str(),
                                "error": "the job's row is gone",
                            });
                            let event = Event::default().event("failed").data(data.to_string());
                            return Some((Ok::<_, Infallible>(event), st));
                        }
                        Err(e) => {
                            // The database is away: say nothing, try again
                            // (keep-alives still flow; the client may also
                            // give up and reconnect).
                            tracing::debug!(job = %st.id, error = %e, "an event stream could not read its job");
                            continue;
                        }
                    }
                }
            };
            let now = (job.status, job.progress);
            if st.last == Some(now) {
                continue;
            }
            st.finished = job.status.is_finished();
            let mut event = Event::default()
                .event(event_name(job.status))
                .data(super::view(&job).to_string());
            if st.last.is_none() {
                event = event.retry(RECONNECT);
            }
            st.last = Some(now);
            return Some((Ok(event), st));
        }
    });
    let mut res = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
        .into_response();
    res.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    res
}
