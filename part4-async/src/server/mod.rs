//! Part 4's server: part 3's server, plus jobs.
//!
//! The lesson in three moves: **answer at once, let workers do it, tell
//! the user when it is done.**
//!
//! 1. `POST /jobs` with `{"kind": "export"}` writes a `queued` row,
//!    answers `202 Accepted` with the job and `Location: /jobs/{id}`, and
//!    puts the job's id on the queue right after: the request costs one
//!    insert, whatever the job costs. It never waits for the work (and,
//!    by default, not for the broker either: see "When the answer goes
//!    out" below).
//! 2. A worker (`part4-worker`, another process; see [`crate::worker`])
//!    takes the job, does it, writes progress and then the result to the
//!    row.
//! 3. The user's page keeps checking: `GET /jobs/{id}` (polling) or
//!    `GET /jobs/{id}/events` (one long-lived response, Server-Sent Events,
//!    see [`events`]); when it says `done`, `GET /jobs/{id}/result` is the
//!    document.
//!
//! `--jobs sync` is the anti-pattern beside it: the same job done inside
//! the request, which answers `200` with the result only when the job is
//! done. The request then lasts as long as the job (its p99 is the job's
//! duration), and every waiting user holds a connection, and the clone's
//! CPU for the real work, that long; a retry after a timeout starts the
//! work again unless it carries an `Idempotency-Key`. (The demo puts the
//! two side by side: [`crate::demo`].)
//!
//! ## Routes
//!
//! Every route of part 3's server ([`part3_cache::server`]), plus, for a
//! logged-in user (`401` otherwise):
//!
//! | route | answer |
//! |---|---|
//! | `POST /jobs` `{"kind":"export"}` | `202` + `Location: /jobs/{id}` + the job (`--jobs sync`: `200` + the result) |
//! | `GET /jobs` | the user's latest [`RECENT`] jobs, newest first: `{"jobs": [...]}` |
//! | `GET /jobs/{id}` | the job: `status` `queued` \| `running` (with `progress`) \| `done` (with `result_url`) \| `failed` (with `error`, the reason) |
//! | `GET /jobs/{id}/result` | the export document (`409` until the job is done) |
//! | `GET /jobs/{id}/events` | `text/event-stream`: `progress` events, then one `done` or `failed`, then the stream ends |
//! | `GET /timeline` | the precomputed timeline ([`crate::fanout`]): the same JSON as `GET /feed`, `X-Timeline: precomputed` |
//!
//! and, for anyone (no login): `GET /app`, the page that starts a job and
//! keeps checking until it is done ([`page`]).
//!
//! With `--jobs async`, every committed write is also published, after
//! part 3's invalidation, as a change on `<QUEUE_NAME>.changes` for the
//! workers (best effort, never the user's error: see [`crate::changes`]).
//!
//! A job is its owner's alone: anyone else, and any id that is not one
//! (malformed, forged, unknown), gets the same `404`, so ids cannot be
//! probed.
//!
//! ## What `POST /jobs` refuses, and how
//!
//! Nothing is written or enqueued in any of these cases:
//!
//! - not logged in: `401`;
//! - not JSON, or not `{"kind": ..., "params"?: ...}` (extra fields
//!   included): `400` (`415` without `Content-Type: application/json`);
//! - a kind this server does not run, or parameters for a kind that takes
//!   none: `400`;
//! - a body over [`JOB_BODY_LIMIT`] bytes: `413`;
//! - a malformed `Idempotency-Key`: `400`; a key reused for another kind:
//!   `409`;
//! - **backpressure**: the queue already holds `MAX_QUEUE_DEPTH` waiting
//!   jobs: `503` with `Retry-After`. A queue that only grows means the
//!   workers cannot keep up; refusing at the door keeps the waiting time
//!   of the accepted jobs bounded and tells clients to come back, instead
//!   of accepting work that will be hours late;
//! - the queue is unreachable when its depth is read: `503`, nothing
//!   written (a broker known to be down is refused at once: a failed
//!   read is kept as the reading until a read succeeds).
//!
//! ## When the answer goes out: `ANSWER`
//!
//! The row is committed before anything is published, so once it is
//! there the job cannot be lost: a job published from its row is an
//! *outbox*. When the `202` goes out is a choice (`--answer`):
//!
//! - `after-insert` (the default): right after the insert. The clone
//!   publishes on a task of its own (a client hanging up does not cancel
//!   it) and waits for the broker's confirm there. The request costs one
//!   insert: measured in experiment 1, p50 3.2 ms at 32 jobs/s against
//!   7.3 ms when it also waited for the confirm (a quorum queue's write
//!   to disk and its Raft round; 3 to 4 ms under load here). If the
//!   broker refuses the job for good (RabbitMQ returns it: the queue is
//!   gone), the row is marked `failed` with the reason, which the user
//!   sees by polling. If the broker is unreachable or slow, the depth
//!   reading is dropped, so the next `POST` asks the broker and answers
//!   `503` while it is down, and the clone tries the publish again for
//!   30 s (backing off to 5 s apart): a job answered just before the
//!   broker went away is published as soon as it is back. Past that the
//!   row stays `queued`, and the sweeper below publishes it.
//! - `after-confirm`: after the broker's confirm. A publish that fails
//!   (the broker went away after the depth check, refused the job, or did
//!   not confirm within `QUEUE_TIMEOUT_MS`) marks the row `failed` with
//!   the reason (never left `queued` for ever), releases its idempotency
//!   key (a retry starts a fresh job), and the answer is `503` with the
//!   job's id and that reason. If a publish that timed out did reach the
//!   queue after all, the worker that gets it finds the row `failed`,
//!   finished, and acks it without doing anything: the user was told
//!   "failed", and it stays so.
//!
//! Either way a broker known to be down gives `503` before anything is
//! written: the depth check asks it (above).
//!
//! A clone stopped (`SIGTERM`, a roll) a moment after a `202` still owes
//! that job's publish: once it has finished the requests in flight, it
//! waits for the publishes it owes and writes the last `published_at`
//! marks ([`Jobs::drain`], at most [`SHUTDOWN_DRAIN`] each) before it
//! exits. A publish still failing by then (the broker is down) is left to
//! the sweeper: the job is late (after `STALE_QUEUED_SECS`, 60 s by
//! default, plus up to 15 s between its passes), never lost.
//!
//! A clone that dies between the insert and the publish leaves its row
//! `queued` with nothing on the queue (a retry with the same key finds
//! that row). The workers' sweeper closes that gap. Once the broker
//! confirmed the publish, the clone records it in the row
//! (`published_at`), off the request's path and many rows per `UPDATE`
//! (`record_published`: one commit per job would double the disk's work
//! per `POST`); the sweeper publishes only `queued` rows where it is still
//! NULL after `STALE_QUEUED_SECS` (60 by default), at most `SWEEP_LIMIT` a
//! pass, each taken by one conditional `UPDATE` so that only one worker
//! sends it (see [`crate::worker`]). A job waiting its turn behind a
//! backlog was published, and is never sent twice. If the clone dies
//! after the confirm but before that write (or the write fails), the
//! sweeper sends a copy of a job that is on the queue already: harmless,
//! the claim makes the effect happen once, and a worker that finds the row
//! finished acks it without work (the first worker to start the job also
//! sets `published_at`, which usually closes that window first). With
//! `--jobs sync` there is no queue and nothing to record.
//!
//! ## Retries: `Idempotency-Key`
//!
//! A client that lost the answer to its `POST` sends it again with the
//! same `Idempotency-Key` header and gets the *same* job back (`202`,
//! `Idempotent-Replayed: true`), never a second one. The key is stored in
//! the job's row, unique per owner ([`crate::job::JobStore::create`]), so
//! two retries racing on two clones still make one job.
//!
//! ## Configuration
//!
//! Every flag and variable of part 3's server, the queue's settings as the
//! worker takes them (`QUEUE`, `QUEUE_NAME`, `MAX_DELIVERIES`, ...: see
//! the crate's docs), plus:
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `JOBS` | `--jobs` | `async` (`async` \| `sync`, the anti-pattern) |
//! | `ANSWER` | `--answer` | `after-insert` (\| `after-confirm`: when the `202` goes out, above) |
//! | `MAX_QUEUE_DEPTH` | `--max-queue-depth` | `1000` waiting jobs |
//! | `CHANGES_MAX_WAITING` | `--changes-max-waiting` | `10000` changes waiting for the workers, past which this clone publishes no more (`crate::changes`, **Bounded**) |
//! | `DEPTH_CHECK_MS` | `--depth-check-ms` | `100` (how often a task of the clone reads the depth; 0: every `POST` reads it) |
//! | `RETRY_AFTER_SECS` | `--retry-after-secs` | `5` (the `Retry-After` of a refused `POST`) |
//! | `QUEUE_TIMEOUT_MS` | `--queue-timeout-ms` | `2000` (the longest a depth read, or a publish and its confirm, may take) |
//! | `EVENTS_POLL_MS` | `--events-poll-ms` | `200` (how often an event stream reads its job's row) |
//! | `EVENTS_MAX_SECS` | `--events-max-secs` | `300` (the longest a stream stays open; the client reconnects) |
//! | `JOB_MIN_MS` | `--job-min-ms` | `1000` (`--jobs sync` only: the job's stated minimum, as the workers' `JOB_MIN_MS`) |
//! | `DRILL_JOBS` | `--drill-jobs` | `false` (accept the `fail` kind, the poison-job drill) |
//! | `TIMELINE_CAP` | `--timeline-cap` | `200` (a timeline `GET /timeline` builds from SQL keeps this many) |
//!
//! The depth is read from the broker (one passive declare on RabbitMQ,
//! one `LLEN` on Redis) every `DEPTH_CHECK_MS` by a task of the clone, so
//! no request waits for it: the limit can be overshot by what arrives
//! within that time (each clone adds the jobs it accepted since to its
//! own reading, so mostly by what the *other* clones enqueued), a stated
//! price for not asking the broker on every request.
//!
//! Run it against the local stack (with a worker beside it):
//!
//! ```text
//! cargo run -p part4-async --bin part4-server -- --port 18081 --queue rabbitmq
//! cargo run -p part4-async --bin part4-worker -- --queue rabbitmq
//! ```

pub mod events;
pub mod page;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::header::{
    CONTENT_DISPOSITION, CONTENT_LOCATION, CONTENT_TYPE, LOCATION, RETRY_AFTER,
};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use part1_clones::app::{AppPart, AppState, Application, Body, current};
use part1_clones::error::ApiError;
use part1_clones::idempotency::IdempotencyKey;
use part1_clones::session::SessionStore;
use part3_cache::server::{CacheLayer, Part3Config};
use serde::Deserialize;
use sqlx::MySqlPool;

use crate::gate::DepthGate;
use crate::job::{Envelope, Job, JobId, JobKind, JobStatus, JobStore};
use crate::queue::{AnyQueue, JobQueue, QueueConfig, QueueError};
use crate::worker::{Outcome, Worker, WorkerConfig};

/// The largest `POST /jobs` body, in bytes: `{"kind":"export"}` is 17;
/// anything near this limit is not a job request.
pub const JOB_BODY_LIMIT: usize = 1024;

/// How many jobs `GET /jobs` lists.
pub const RECENT: u32 = 20;

/// The header that marks an answer replayed for a reused
/// `Idempotency-Key`.
pub const REPLAYED: &str = "idempotent-replayed";

/// Where jobs are done (`--jobs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum JobsMode {
    /// Queued and done by workers; the request answers `202` at once.
    Async,
    /// Done inside the request, which answers when the job is done: the
    /// anti-pattern, for comparison.
    Sync,
}

impl JobsMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            JobsMode::Async => "async",
            JobsMode::Sync => "sync",
        }
    }
}

/// When `POST /jobs` answers, against the job's publish (`--answer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AnswerMode {
    /// After the row's insert: the row is the promise, the clone publishes
    /// it on a task of its own right after answering, and the workers'
    /// sweeper publishes any row whose publish was never confirmed (the
    /// row is an outbox). The request costs one insert.
    AfterInsert,
    /// After the broker confirmed the publish: the request also waits for
    /// the broker's round trip and its write to disk; a publish that fails
    /// marks the row failed and answers 503.
    AfterConfirm,
}

impl AnswerMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            AnswerMode::AfterInsert => "after-insert",
            AnswerMode::AfterConfirm => "after-confirm",
        }
    }
}

/// `MAX_QUEUE_DEPTH`'s default: waiting jobs past which `POST /jobs` answers 503.
pub const DEFAULT_MAX_QUEUE_DEPTH: u64 = 1000;

/// Part 4's server: part 3's flags, the queue's, and the jobs API's.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "part4-server",
    version,
    about = "Part 4: part 3's server plus jobs: answer at once, let workers do it, tell the user when it is done"
)]
pub struct Part4Config {
    /// Everything part 3's server takes.
    #[command(flatten)]
    pub part3: Part3Config,
    /// Where jobs are done: by workers (`async`) or inside the request
    /// (`sync`, the anti-pattern).
    #[arg(long, env = "JOBS", value_enum, default_value_t = JobsMode::Async)]
    pub jobs: JobsMode,
    /// The queue, as the workers see it (unused with `--jobs sync`).
    #[command(flatten)]
    pub queue: QueueConfig,
    /// When `POST /jobs` answers: once its row is inserted (the job is
    /// published right after) or once the broker confirmed the publish.
    #[arg(long, env = "ANSWER", value_enum, default_value_t = AnswerMode::AfterInsert)]
    pub answer: AnswerMode,
    /// Past this many waiting jobs, `POST /jobs` answers 503 with
    /// `Retry-After` and enqueues nothing.
    #[arg(long, env = "MAX_QUEUE_DEPTH", default_value_t = DEFAULT_MAX_QUEUE_DEPTH)]
    pub max_queue_depth: u64,
    /// Changes waiting for the workers past which this clone publishes no
    /// more (the changes queue's bound; what is skipped is caught up as
    /// `crate::changes` says).
    /// At least 1.
    #[arg(
        long,
        env = "CHANGES_MAX_WAITING",
        default_value_t = crate::changes::MAX_WAITING,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub changes_max_waiting: u64,
    /// How old the queue depth read from the broker may be, in ms (0: read
    /// it on every `POST /jobs`).
    #[arg(long, env = "DEPTH_CHECK_MS", default_value_t = 100)]
    pub depth_check_ms: u64,
    /// The `Retry-After` (seconds) of a `POST /jobs` refused for
    /// backpressure or an unreachable queue.
    #[arg(long, env = "RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,
    /// The longest `POST /jobs` waits for the queue (the depth reading,
    /// then the publish and its confirm), in ms; past it, 503.
    #[arg(long, env = "QUEUE_TIMEOUT_MS", default_value_t = 2000)]
    pub queue_timeout_ms: u64,
    /// How often an event stream reads its job's row, in ms.
    #[arg(long, env = "EVENTS_POLL_MS", default_value_t = 200)]
    pub events_poll_ms: u64,
    /// The longest an event stream stays open, in seconds (the client
    /// reconnects; see [`events`]).
    #[arg(long, env = "EVENTS_MAX_SECS", default_value_t = 300)]
    pub events_max_secs: u64,
    /// With `--jobs sync`: the job's stated minimum duration in ms (the
    /// workers' `JOB_MIN_MS`, see [`crate::export`]).
    #[arg(long, env = "JOB_MIN_MS", default_value_t = 1000)]
    pub job_min_ms: u64,
    /// Accept the `fail` kind (always fails: the poison-job drill).
    #[arg(long, env = "DRILL_JOBS", default_value_t = false)]
    pub drill_jobs: bool,
    /// The timelines `GET /timeline` reads (see [`crate::fanout`]).
    #[command(flatten)]
    pub fanout: crate::fanout::FanoutConfig,
}

/// `part4-server`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): what part 1's [`part1_clones::app::serve`] does (`.env`,
/// logging, the flags, [`build_with_jobs`], serve until `SIGTERM`), then
/// [`Jobs::drain`]: the publishes this clone owes go out before it exits.
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async {
        let (app, jobs) = build_with_jobs(clap::Parser::parse()).await?;
        app.run_until_stopped().await?;
        jobs.drain(SHUTDOWN_DRAIN).await;
        Ok(())
    })
}

/// How long a stopping clone waits for the publishes it owes, and then
/// for their `published_at` marks. The drain starts once the requests in
/// flight are done, and a job's event stream can keep one open for
/// minutes (`EVENTS_MAX_SECS`): the lab kills a clone 30 s after its
/// `SIGTERM`. Nothing is lost then either: the publishes and the marks
/// went on meanwhile, on the clone's runtime (a mark waits 50 ms); the
/// drain is for the last moment.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(10);

/// Connects and binds: part 3's layer, the jobs store (migrated), the
/// queue (`--jobs async`), and the jobs routes.
pub async fn build(config: Part4Config) -> anyhow::Result<Application> {
    Ok(build_with_jobs(config).await?.0)
}

/// [`build`], and the jobs API's state, for [`Jobs::drain`] once the
/// server has stopped.
pub async fn build_with_jobs(config: Part4Config) -> anyhow::Result<(Application, Arc<Jobs>)> {
    let mut inner = part3_cache::server::cache_layer(&config.part3).await?;
    let store = JobStore::new(inner.data.db.primary().clone());
    JobStore::migrate(store.pool()).await?;
    let server = &config.part3.part2.server;
    let (queue, worker) = match config.jobs {
        JobsMode::Async => {
            let queue = AnyQueue::connect(&config.queue, &server.stack).await?;
            // After part 3's invalidation, each committed write is
            // published as a change for the workers (best effort: see
            // crate::changes).
            let changes =
                AnyQueue::connect(&crate::changes::queue_config(&config.queue), &server.stack)
                    .await?;
            inner.data.after_commit = Some(crate::changes::after_commit(
                inner.data.after_commit.take(),
                Arc::new(changes),
                Duration::from_millis(config.queue_timeout_ms.max(1)),
                Arc::new(crate::changes::PublishStats::default()),
                config.changes_max_waiting,
            ));
            (Some(queue), None)
        }
        JobsMode::Sync => {
            let job_min = Duration::from_millis(config.job_min_ms);
            let worker_config = WorkerConfig::new(&server.clone_name(), job_min);
            let worker = Worker::new(store.clone(), &worker_config, 1);
            (None, Some(Arc::new(worker)))
        }
    };
    println!(
        "part4-server: --jobs {}{} --max-queue-depth {} (depth read every {} ms) --events-poll-ms {}{}",
        config.jobs.as_str(),
        match config.jobs {
            JobsMode::Async => format!(
                " --queue {} --queue-name {} --answer {}",
                config.queue.backend.as_str(),
                config.queue.queue_name,
                config.answer.as_str()
            ),
            JobsMode::Sync => format!(" --job-min-ms {}", config.job_min_ms),
        },
        config.max_queue_depth,
        config.depth_check_ms,
        config.events_poll_ms,
        if config.drill_jobs {
            " --drill-jobs"
        } else {
            ""
        },
    );
    let (published_tx, published_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(record_published(store.clone(), published_rx));
    let jobs = Jobs {
        store,
        published_tx,
        queue,
        worker,
        // A reading is renewed every DEPTH_CHECK_MS by `refresh_depth`,
        // and trusted until that task is overdue by a whole read.
        gate: DepthGate::new(
            config.max_queue_depth,
            Duration::from_millis(config.depth_check_ms),
            Duration::from_millis(config.depth_check_ms + config.queue_timeout_ms.max(1) + 100),
        ),
        answer: config.answer,
        queue_timeout: Duration::from_millis(config.queue_timeout_ms.max(1)),
        retry_after_secs: config.retry_after_secs.max(1),
        events_poll: Duration::from_millis(config.events_poll_ms.max(10)),
        events_max: Duration::from_secs(config.events_max_secs),
        drill_jobs: config.drill_jobs,
    };
    let jobs = Arc::new(jobs);
    if jobs.queue.is_some() && !jobs.gate.every.is_zero() {
        tokio::spawn(refresh_depth(Arc::downgrade(&jobs)));
    }
    let timelines =
        crate::fanout::Timelines::new(inner.data.redis.clone(), &server.key_prefix, &config.fanout);
    let app = Application::build_with(
        config.part3.part2.server,
        JobsLayer {
            inner,
            jobs: jobs.clone(),
            timelines,
        },
    )
    .await?;
    Ok((app, jobs))
}

/// The jobs' [`DepthGate`]'s task: reads the broker's depth every `DEPTH_CHECK_MS`
/// (each read bounded by `QUEUE_TIMEOUT_MS`) until the jobs API is gone.
async fn refresh_depth(jobs: std::sync::Weak<Jobs>) {
    loop {
        let Some(j) = jobs.upgrade() else { return };
        let Some(queue) = &j.queue else { return };
        let started = tokio::time::Instant::now();
        let got = bounded(queue, j.queue_timeout, queue.ready()).await;
        j.gate.record(&got, started);
        let every = j.gate.every;
        drop(j);
        tokio::time::sleep(every).await;
    }
}

/// `call` on the queue, or an error if it takes longer than `limit`.
async fn bounded<T>(
    queue: &AnyQueue,
    limit: Duration,
    call: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(QueueError::Other {
            backend: queue.backend().as_str(),
            reason: format!("no answer within {} ms", limit.as_millis()),
        })
    })
}

/// The jobs API's state.
pub struct Jobs {
    store: JobStore,
    /// `--jobs async`: where jobs go.
    queue: Option<AnyQueue>,
    /// `--jobs sync`: who does them, inside the request.
    worker: Option<Arc<Worker>>,
    gate: DepthGate,
    answer: AnswerMode,
    /// Confirmed publishes, for [`record_published`].
    published_tx: tokio::sync::mpsc::UnboundedSender<Mark>,
    queue_timeout: Duration,
    retry_after_secs: u64,
    events_poll: Duration,
    events_max: Duration,
    drill_jobs: bool,
}

/// Part 4's part of the app: part 3's (routes and hooks), plus the jobs
/// routes.
pub struct JobsLayer {
    /// Part 3's cache layer, over part 2's data layer.
    pub inner: CacheLayer,
    /// The jobs API.
    pub jobs: Arc<Jobs>,
    /// The precomputed timelines (`GET /timeline`).
    pub timelines: crate::fanout::Timelines,
}

impl AppPart for JobsLayer {
    fn routes<S: SessionStore>(&self, app: Arc<AppState<S>>) -> Router {
        let ctx = Arc::new(Ctx {
            app: app.clone(),
            jobs: self.jobs.clone(),
        });
        Router::new()
            .route(
                "/jobs",
                post(create::<S>)
                    .layer(DefaultBodyLimit::max(JOB_BODY_LIMIT))
                    .get(list::<S>),
            )
            .route("/jobs/{id}", get(status::<S>))
            .route("/jobs/{id}/result", get(result::<S>))
            .route("/jobs/{id}/events", get(events::<S>))
            .with_state(ctx)
            .merge(
                Router::new()
                    .route("/timeline", get(timeline::<S>))
                    .with_state(Arc::new(TimelineCtx {
                        app: app.clone(),
                        layer: self.inner.clone(),
                        timelines: self.timelines.clone(),
                    })),
            )
            .merge(page::routes())
            .merge(self.inner.routes(app))
    }

    fn after_write(&self, user_id: u64) -> impl Future<Output = ()> + Send {
        AppPart::after_write(&self.inner, user_id)
    }

    fn user_read_pool(&self) -> impl Future<Output = Option<MySqlPool>> + Send {
        AppPart::user_read_pool(&self.inner)
    }
}

/// What `GET /timeline` needs.
struct TimelineCtx<S> {
    app: Arc<AppState<S>>,
    layer: CacheLayer,
    timelines: crate::fanout::Timelines,
}

/// `GET /timeline`: the logged-in user's precomputed timeline, the same
/// JSON as `GET /feed`, with `X-Timeline: precomputed` (and
/// `X-Timeline-Built: true` on the read that built it from SQL, once).
async fn timeline<S: SessionStore>(
    State(ctx): State<Arc<TimelineCtx<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = current(&ctx.app, &headers).await?.1.user_id;
    let read = crate::fanout::read(&ctx.layer, &ctx.timelines, user).await?;
    let mut res = axum::Json(read.articles).into_response();
    let h = res.headers_mut();
    h.insert("x-timeline", HeaderValue::from_static("precomputed"));
    if read.built {
        h.insert("x-timeline-built", HeaderValue::from_static("true"));
    }
    h.insert("x-timeline-merged", HeaderValue::from(read.merged_authors));
    Ok(res)
}

/// What the jobs routes share.
struct Ctx<S> {
    app: Arc<AppState<S>>,
    jobs: Arc<Jobs>,
}

impl<S: SessionStore> Ctx<S> {
    /// The logged-in user's id, or 401.
    async fn user(&self, headers: &HeaderMap) -> Result<u64, ApiError> {
        Ok(current(&self.app, headers).await?.1.user_id)
    }

    /// The job `raw` names, if it exists and `user` owns it; otherwise the
    /// same 404 for every case (malformed, forged, unknown, someone
    /// else's), so an answer tells nothing about other users' jobs.
    async fn owned(&self, user: u64, raw: &str) -> Result<Job, ApiError> {
        let not_found = || ApiError::NotFound("no such job".into());
        let id: JobId = raw.parse().map_err(|_| not_found())?;
        match self.jobs.store.get(&id).await.map_err(db_down)? {
            Some(job) if job.owner_id == user => Ok(job),
            _ => Err(not_found()),
        }
    }
}

fn db_down(e: anyhow::Error) -> ApiError {
    ApiError::Unavailable {
        what: "the jobs database",
        cause: format!("{e:#}"),
    }
}

/// `{"kind": "export", "params"?: {}}`: a job request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewJob {
    /// What to do: `export` (and `fail` with `--drill-jobs`).
    pub kind: String,
    /// The job's parameters: the export takes none (absent, `null` or
    /// `{}`).
    #[serde(default)]
    pub params: Option<serde_json::Value>,
}

impl Jobs {
    /// The kind and parameters of a request, or a 400 that says what is
    /// accepted.
    fn validate(&self, req: &NewJob) -> Result<(JobKind, serde_json::Value), ApiError> {
        let known = if self.drill_jobs {
            "export, fail"
        } else {
            "export"
        };
        let kind = match req.kind.parse::<JobKind>() {
            Ok(JobKind::Fail) if !self.drill_jobs => None,
            Ok(k) => Some(k),
            Err(_) => None,
        }
        .ok_or_else(|| {
            let shown: String = req.kind.chars().take(40).collect();
            ApiError::BadRequest(format!(
                "unknown job kind {shown:?}: this server runs {known}"
            ))
        })?;
        match &req.params {
            None | Some(serde_json::Value::Null) => {}
            Some(serde_json::Value::Object(m)) if m.is_empty() => {}
            Some(_) => {
                return Err(ApiError::BadRequest(format!(
                    "a {kind} job takes no parameters: send {{\"kind\":\"{kind}\"}}"
                )));
            }
        }
        Ok((kind, serde_json::json!({})))
    }
}

/// A job as the API shows it.
pub fn view(job: &Job) -> serde_json::Value {
    let url = format!("/jobs/{}", job.id);
    let mut v = serde_json::json!({
        "id": job.id,
        "kind": job.kind,
        "status": job.status.as_str(),
        "progress": job.progress,
        "attempts": job.attempts,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "url": url,
        "events_url": format!("{url}/events"),
    });
    if job.status == JobStatus::Done {
        v["result_url"] = format!("{url}/result").into();
    }
    if let Some(e) = &job.error {
        // `failed`: why it was given up; `queued`: why the last attempt
        // failed (it will be tried again).
        v["error"] = e.clone().into();
    }
    v
}

/// `202` (or `status`) with the job and `Location`.
fn accepted(status: StatusCode, job: &Job, replayed: bool) -> Response {
    let mut res = (status, axum::Json(view(job))).into_response();
    if let Ok(loc) = HeaderValue::from_str(&format!("/jobs/{}", job.id)) {
        res.headers_mut().insert(LOCATION, loc);
    }
    if replayed {
        res.headers_mut()
            .insert(REPLAYED, HeaderValue::from_static("true"));
    }
    res
}

/// `503` with `Retry-After` and a JSON body that explains.
fn unavailable(retry_after_secs: u64, body: serde_json::Value) -> Response {
    let mut res = (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    res.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    res
}

/// `POST /jobs`.
async fn create<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    body: Result<Body<serde_json::Map<String, serde_json::Value>>, ApiError>,
) -> Result<Response, ApiError> {
    // Who first: an anonymous request gets 401 whatever its body.
    let user = ctx.user(&headers).await?;
    // An object first (serde would also take `["export"]` as a struct),
    // then its fields.
    let Body(object) = body?;
    let req: NewJob = serde_json::from_value(serde_json::Value::Object(object)).map_err(|e| {
        ApiError::BadRequest(format!("a job request is {{\"kind\":\"export\"}}: {e}"))
    })?;
    let jobs = &ctx.jobs;
    let (kind, params) = jobs.validate(&req)?;
    let key = IdempotencyKey::from_headers(&headers)?;
    // A retry finds its job before anything is counted or written: even
    // a full queue answers a retry with the job it already accepted.
    if let Some(key) = &key
        && let Some(job) = jobs
            .store
            .find_by_key(user, key.as_str())
            .await
            .map_err(db_down)?
    {
        return replay(jobs, job, kind).await;
    }
    // This job's place under MAX_QUEUE_DEPTH, held until its publish.
    let mut slot = None;
    if let Some(queue) = &jobs.queue {
        match bounded(queue, jobs.queue_timeout, jobs.gate.admit(queue)).await {
            Ok(Err(waiting)) => {
                tracing::info!(waiting, max = jobs.gate.max, "backpressure: refusing a job");
                return Ok(unavailable(
                    jobs.retry_after_secs,
                    serde_json::json!({
                        "error": format!(
                            "the job queue is full ({waiting} jobs waiting, the limit is {}): nothing was queued; try again in {} s",
                            jobs.gate.max, jobs.retry_after_secs
                        ),
                        "waiting": waiting,
                        "max_queue_depth": jobs.gate.max,
                    }),
                ));
            }
            Ok(Ok(admitted)) => slot = Some(admitted),
            Err(e) => {
                tracing::warn!(error = %e, "the queue's depth cannot be read: refusing a job");
                return Ok(unavailable(
                    jobs.retry_after_secs,
                    serde_json::json!({
                        "error": format!(
                            "the job queue ({}) is unreachable: nothing was queued; try again in {} s",
                            queue.backend().as_str(),
                            jobs.retry_after_secs
                        ),
                    }),
                ));
            }
        }
    }
    let (job, created) = jobs
        .store
        .create(
            user,
            kind,
            &params,
            key.as_ref().map(IdempotencyKey::as_str),
        )
        .await
        .map_err(db_down)?;
    if !created {
        // Another request with this key inserted first (a race of two
        // retries): its job is the job.
        return replay(jobs, job, kind).await;
    }
    let envelope = Envelope::new(job.id.clone(), kind.as_str(), params);
    match (&jobs.queue, &jobs.worker) {
        (Some(_), _) if jobs.answer == AnswerMode::AfterInsert => {
            // The row is committed: the job cannot be lost any more, so
            // the user hears 202 now and the publish happens after (see
            // `Jobs::publish_after_answer`). On a task of its own, which
            // a client hanging up does not cancel.
            if let Some(s) = slot {
                s.keep();
            }
            // The kept slot counts it until the publish settles, so a
            // clone stopping from now on waits for it (`Jobs::drain`).
            let later = jobs.clone();
            tokio::spawn(async move { later.publish_after_answer(envelope).await });
            Ok(accepted(StatusCode::ACCEPTED, &job, false))
        }
        (Some(queue), _) => {
            // The slot stays this request's across the publish: a request
            // cancelled meanwhile (the client hung up) gives it back as it
            // drops.
            let sent = bounded(queue, jobs.queue_timeout, queue.enqueue(&envelope)).await;
            if sent.is_ok() {
                jobs.gate.enqueued();
            }
            drop(slot);
            match sent {
                Ok(()) => {
                    jobs.published(envelope.id);
                    Ok(accepted(StatusCode::ACCEPTED, &job, false))
                }
                Err(e) => {
                    jobs.abandon(queue, &job.id, &e).await;
                    Ok(unavailable(
                        jobs.retry_after_secs,
                        serde_json::json!({
                            "error": format!(
                                "the job queue ({}) did not take the job: job {} is marked failed and nothing is queued; try again in {} s",
                                queue.backend().as_str(), job.id, jobs.retry_after_secs
                            ),
                            "id": job.id,
                            "status": JobStatus::Failed.as_str(),
                        }),
                    ))
                }
            }
        }
        (None, Some(worker)) => run_here(jobs, worker, &envelope).await,
        (None, None) => Err(ApiError::Internal(
            "the jobs API has neither a queue nor a worker".into(),
        )),
    }
}

impl Jobs {
    /// `ANSWER=after-insert`: publishes a job whose `202` is already sent.
    /// Confirmed: `published_at` is set. Refused for good (RabbitMQ
    /// returned it: the queue is gone): the row is marked failed, so the
    /// user polling it is told. Anything else (the broker is unreachable,
    /// slow, or nacked it): the depth reading is dropped, so the next
    /// `POST` asks the broker and answers 503 while it is down, and this
    /// publish is tried again (from 100 ms apart, doubling, up to 5 s) for
    /// [`PUBLISH_RETRY_FOR`]: a job answered just before a broker went
    /// away is published as soon as it is back. Past that, the row stays
    /// `queued` with `published_at` NULL for the workers' sweeper (after
    /// `STALE_QUEUED_SECS`).
    async fn publish_after_answer(&self, envelope: Envelope) {
        let Some(queue) = &self.queue else { return };
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(100);
        loop {
            match bounded(queue, self.queue_timeout, queue.enqueue(&envelope)).await {
                Ok(()) => {
                    // The mark before the slot goes: a drain that finds
                    // nothing in flight finds the mark already sent.
                    self.published(envelope.id);
                    return self.gate.sent(true);
                }
                Err(e @ QueueError::Unroutable { .. }) => {
                    self.gate.sent(false);
                    return self.abandon(queue, &envelope.id, &e).await;
                }
                Err(e) => {
                    self.gate.forget();
                    if started.elapsed() + pause > PUBLISH_RETRY_FOR {
                        self.gate.sent(false);
                        metrics::counter!(common::metrics::JOBS, "event" => "publish_deferred")
                            .increment(1);
                        tracing::warn!(job = %envelope.id, error = %e, "publish failed after the 202, and again for {} s: the row stays queued for the sweeper", PUBLISH_RETRY_FOR.as_secs());
                        return;
                    }
                    tracing::info!(job = %envelope.id, error = %e, retry_in = ?pause, "publish failed after the 202: trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// The broker confirmed `id`: counted, and said so in the row, so the
    /// sweeper never sends this job again. Off the request's path, by the
    /// [`record_published`] task: if it never happens, the cost is one
    /// harmless copy later.
    fn published(&self, id: JobId) {
        metrics::counter!(common::metrics::JOBS, "event" => "enqueued").increment(1);
        if self.published_tx.send(Mark::Published(id.clone())).is_err() {
            tracing::warn!(job = %id, "the published-jobs recorder has stopped: the sweeper will send a harmless copy");
        }
    }

    /// For a clone that has stopped serving: waits up to `limit` for the
    /// publishes it owes (`ANSWER=after-insert`), then up to `limit` for
    /// their `published_at` marks to be written. What is still owed after
    /// that is left to the sweeper, and logged.
    pub async fn drain(&self, limit: Duration) {
        // Every request is done: what the gate still counts as sending are
        // the after-insert publishes, each on its task.
        let owed = self.gate.in_flight();
        if owed > 0 {
            tracing::info!(
                owed,
                "stopping: waiting for the publishes of jobs already answered"
            );
        }
        if tokio::time::timeout(limit, self.gate.settled())
            .await
            .is_err()
        {
            tracing::warn!(
                owed = self.gate.in_flight(),
                "stopping with publishes still failing after {} s: their jobs are left to the sweeper",
                limit.as_secs()
            );
        }
        let (done, written) = tokio::sync::oneshot::channel();
        if self.published_tx.send(Mark::Flush(done)).is_ok()
            && !matches!(tokio::time::timeout(limit, written).await, Ok(Ok(())))
        {
            tracing::warn!(
                "stopping before the last published_at marks were written: the sweeper will send harmless copies"
            );
        }
    }

    /// A publish failed with `error`: marks job `id` failed with a reason
    /// for its user (what happened, without the broker's address; the
    /// cause goes to the log).
    async fn abandon(&self, queue: &AnyQueue, id: &JobId, error: &QueueError) {
        let reason = format!(
            "the job could not be queued: {} did not take it, so no worker will run it; start a new one",
            queue.backend().as_str()
        );
        tracing::warn!(job = %id, %error, "enqueue failed: marking the job failed");
        if let Err(e) = self.store.abandon(id, &reason).await {
            tracing::warn!(job = %id, error = %e, "could not mark the unqueued job failed");
        }
    }
}

/// Writes `published_at` for the jobs whose publish the broker confirmed,
/// many rows per `UPDATE`: each statement is a commit, and each commit
/// waits for the database's log to reach the disk (about 0.7 ms on this
/// kind of machine), the same disk the next `POST`'s insert waits for. One
/// commit per job doubled the disk's work per `POST`; here the first id
/// waits [`RECORD_LINGER`] for others, and every id that arrived meanwhile
/// goes in the same `UPDATE` (at most [`RECORD_BATCH`]): at most about 20
/// commits a second for any number of jobs. The sweeper's window is a
/// minute, so 50 ms later changes nothing. The channel is unbounded: what
/// waits in it is what is confirmed during one linger and one `UPDATE`.
/// Ends when every sender is gone.
///
/// A [`Mark::Flush`] (a stopping clone, [`Jobs::drain`]) writes at once
/// what it has, then answers.
async fn record_published(store: JobStore, mut marks: tokio::sync::mpsc::UnboundedReceiver<Mark>) {
    let mut got = Vec::new();
    while marks.recv_many(&mut got, RECORD_BATCH).await > 0 {
        if !got.iter().any(|m| matches!(m, Mark::Flush(_))) {
            tokio::time::sleep(RECORD_LINGER).await;
        }
        // Whatever came meanwhile (try_recv never waits; recv_many would).
        while got.len() < RECORD_BATCH
            && let Ok(m) = marks.try_recv()
        {
            got.push(m);
        }
        let mut batch = Vec::with_capacity(got.len());
        let mut flushes = Vec::new();
        for m in got.drain(..) {
            match m {
                Mark::Published(id) => batch.push(id),
                Mark::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty()
            && let Err(e) = store.mark_published_many(&batch).await
        {
            tracing::warn!(jobs = batch.len(), error = %e, "could not record confirmed publishes: the sweeper will send harmless copies");
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// What [`record_published`] is sent.
enum Mark {
    /// The broker confirmed this job.
    Published(JobId),
    /// Write what you have now, then say so (a stopping clone).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The most `published_at` rows one `UPDATE` of [`record_published`] sets.
const RECORD_BATCH: usize = 500;
/// How long a clone keeps trying a publish that failed after its `202`
/// (`ANSWER=after-insert`) before leaving the row to the sweeper.
const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(30);
/// How long [`record_published`] waits for more confirms before an `UPDATE`.
const RECORD_LINGER: Duration = Duration::from_millis(50);

/// `--jobs sync`: does the job in this request and answers with its
/// result, or with why it failed.
async fn run_here(
    jobs: &Jobs,
    worker: &Arc<Worker>,
    envelope: &Envelope,
) -> Result<Response, ApiError> {
    // On a task of its own: a client that gives up (a timeout, a closed
    // tab) drops this request, and a job dropped mid-way would leave its
    // row `running` for ever, with no queue to redeliver it. The task
    // finishes the job; the client's retry (same key) gets the result.
    let (w, e) = (worker.clone(), envelope.clone());
    let outcome = tokio::spawn(async move { w.perform(&e).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the job's task failed: {e}")))?;
    match outcome {
        Outcome::Done | Outcome::AlreadyDone => result_of(jobs, &envelope.id, false).await,
        Outcome::DeadLettered { reason } | Outcome::Retried { reason } => Ok((
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(serde_json::json!({
                "error": format!("the job failed: {reason}"),
                "id": envelope.id,
                "status": JobStatus::Failed.as_str(),
            })),
        )
            .into_response()),
        Outcome::Returned => Err(ApiError::Internal("the job was returned unfinished".into())),
    }
}

/// A reused `Idempotency-Key`: the job it made, as it is now.
async fn replay(jobs: &Jobs, job: Job, kind: JobKind) -> Result<Response, ApiError> {
    if job.kind != kind.as_str() {
        return Err(ApiError::Conflict(format!(
            "this Idempotency-Key was used for a {} job: use a new key for a new job",
            job.kind
        )));
    }
    if jobs.worker.is_some() && job.status == JobStatus::Done {
        return result_of(jobs, &job.id, true).await;
    }
    Ok(accepted(StatusCode::ACCEPTED, &job, true))
}

/// `200` with a finished job's result document.
async fn result_of(jobs: &Jobs, id: &JobId, replayed: bool) -> Result<Response, ApiError> {
    let (content_type, body) = jobs
        .store
        .result(id)
        .await
        .map_err(db_down)?
        .ok_or_else(|| ApiError::Internal(format!("job {id} is done but has no result")))?;
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_str(&content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"export-{id}.json\"")) {
        h.insert(CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("/jobs/{id}/result")) {
        h.insert(CONTENT_LOCATION, v);
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        h.insert("x-job-id", v);
    }
    if replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(res)
}

/// `GET /jobs`.
async fn list<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user = ctx.user(&headers).await?;
    let jobs = ctx.jobs.store.recent(user, RECENT).await.map_err(db_down)?;
    let jobs: Vec<serde_json::Value> = jobs.iter().map(view).collect();
    Ok(axum::Json(serde_json::json!({ "jobs": jobs })).into_response())
}

/// `GET /jobs/{id}`.
async fn status<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let user = ctx.user(&headers).await?;
    let job = ctx.owned(user, &raw).await?;
    Ok(axum::Json(view(&job)).into_response())
}

/// `GET /jobs/{id}/result`.
async fn result<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let user = ctx.user(&headers).await?;
    let job = ctx.owned(user, &raw).await?;
    match job.status {
        JobStatus::Done => result_of(&ctx.jobs, &job.id, false).await,
        JobStatus::Failed => Err(ApiError::Conflict(format!(
            "job {} failed, there is no result: {}",
            job.id,
            job.error.as_deref().unwrap_or("no reason recorded")
        ))),
        s => Err(ApiError::Conflict(format!(
            "job {} is {} ({} %): its result is not ready yet; GET /jobs/{} says when it is",
            job.id,
            s.as_str(),
            job.progress,
            job.id
        ))),
    }
}

/// `GET /jobs/{id}/events`.
async fn events<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let user = ctx.user(&headers).await?;
    let job = ctx.owned(user, &raw).await?;
    Ok(events::stream(
        ctx.jobs.store.clone(),
        job,
        ctx.jobs.events_poll,
        ctx.jobs.events_max,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn flags_and_defaults() {
        let c = Part4Config::try_parse_from(["part4-server"]).unwrap();
        assert_eq!(c.jobs, JobsMode::Async);
        assert_eq!(c.max_queue_depth, 1000);
        assert_eq!(c.changes_max_waiting, 10_000);
        assert!(
            Part4Config::try_parse_from(["part4-server", "--changes-max-waiting", "0"]).is_err()
        );
        assert_eq!(c.queue.backend, crate::queue::Backend::RabbitMq);
        let c = Part4Config::try_parse_from([
            "part4-server",
            "--jobs",
            "sync",
            "--queue",
            "redis",
            "--max-queue-depth",
            "3",
            "--cache",
            "none",
        ])
        .unwrap();
        assert_eq!(c.jobs, JobsMode::Sync);
        assert_eq!(c.queue.backend, crate::queue::Backend::Redis);
        assert_eq!(c.max_queue_depth, 3);
        assert_eq!(c.part3.cache, part3_cache::server::CacheMode::None);
    }

    fn jobs(drill_jobs: bool) -> Jobs {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .connect_lazy("mysql://nobody@127.0.0.1:1/none")
            .unwrap();
        Jobs {
            store: JobStore::new(pool),
            queue: None,
            worker: None,
            gate: DepthGate::new(1, Duration::ZERO, Duration::from_secs(1)),
            answer: AnswerMode::AfterInsert,
            published_tx: tokio::sync::mpsc::unbounded_channel().0,
            queue_timeout: Duration::from_secs(1),
            retry_after_secs: 1,
            events_poll: Duration::from_millis(200),
            events_max: Duration::from_secs(1),
            drill_jobs,
        }
    }

    fn req(json: &str) -> NewJob {
        serde_json::from_str(json).unwrap()
    }

    #[tokio::test]
    async fn requests_are_validated() {
        let j = jobs(false);
        assert_eq!(
            j.validate(&req(r#"{"kind":"export"}"#)).unwrap().0,
            JobKind::Export
        );
        assert!(j.validate(&req(r#"{"kind":"export","params":{}}"#)).is_ok());
        assert!(
            j.validate(&req(r#"{"kind":"export","params":null}"#))
                .is_ok()
        );
        for bad in [
            r#"{"kind":"Export"}"#,
            r#"{"kind":"fail"}"#,
            r#"{"kind":""}"#,
            r#"{"kind":"export","params":{"a":1}}"#,
            r#"{"kind":"export","params":[]}"#,
        ] {
            let e = j.validate(&req(bad)).unwrap_err();
            assert_eq!(e.status_code(), StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(serde_json::from_str::<NewJob>(r#"{"kind":"export","x":1}"#).is_err());
        assert_eq!(
            jobs(true).validate(&req(r#"{"kind":"fail"}"#)).unwrap().0,
            JobKind::Fail
        );
    }
}
