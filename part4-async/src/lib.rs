//! # Part 4: Asynchronism
//!
//! > Do heavy work ahead of time (precompute static pages) or, when it is
//! > asked for, put it on a queue, answer at once, let workers do it and
//! > tell the user when it is done.
//!
//! This crate builds the second half of that sentence from the bottom up:
//! jobs on RabbitMQ or on Redis lists, workers that take them, and the
//! guarantees that make it safe to answer "your job is in work" before the
//! work is done: nothing acknowledged is lost, nothing is done twice, and
//! nothing loops forever.
//!
//! ## Reading order
//!
//! 1. [`bake`]: way 1, do it in advance. The article and author pages
//!    rendered to static files (atomically, with gzip copies) for nginx
//!    to serve, re-baked on change and on a schedule (`part4-bake`).
//! 2. [`job`]: what a job is. A row in MariaDB the user watches
//!    (`queued`, `running` with progress, `done`, `failed` with a reason),
//!    an [`job::Envelope`] on the queue, and the claim that makes a job's
//!    effect happen once under at-least-once delivery.
//! 3. [`export`]: the heavy job itself: a user's articles with their
//!    comments as one document, with a stated minimum duration.
//! 4. [`queue`]: one trait, [`queue::JobQueue`], what it promises (durable
//!    hand-off, acks, redelivery, dead letters, a delivery limit) and two
//!    backends chosen by `--queue rabbitmq|redis`:
//!    [`queue::rabbitmq`] (a quorum queue with confirms, the recommended
//!    one) and [`queue::redis`] (the reliable-queue pattern on lists).
//! 5. [`worker`]: decode, start, work, commit with the claim, then ack;
//!    retries, poison jobs, and a graceful stop on SIGTERM.
//! 6. [`server`]: the frontend. Part 3's server plus `POST /jobs`, which
//!    answers `202 Accepted` at once, `GET /jobs/{id}` and its result, and
//!    [`server::events`], which tells the user when it is done; with
//!    backpressure (its depth gate in `gate.rs`, which bounds the changes
//!    queue too), idempotent retries, and `--jobs sync`, the
//!    anti-pattern, beside it. [`server::page`] is the page the user has
//!    open (`GET /app`): start an export, watch it, be told it is done
//!    (tested in a headless Chromium).
//! 7. [`changes`]: every committed write published (after part 3's
//!    invalidation) as a change the workers do: the cached article
//!    re-filled (the async fill), the pages re-baked, the post fanned out.
//! 8. [`fanout`]: precomputed activity streams: fan-out on write into
//!    capped Redis timelines, its write amplification, the hybrid that
//!    merges the big authors at read time, and `GET /timeline`.
//! 9. [`demo`]: every claim above as a measured experiment (`part4-demo`,
//!    part of `./lab tour`), one file each, figures labelled measured,
//!    computed or modelled, written to `target/lab/results/part4.json`.
//!
//! Binaries: `part4-server` (one clone: part 3's server plus jobs; its
//! flags in [`server`]), `part4-worker` (one worker process; `./lab up
//! part4` starts `LAB_WORKERS` of them), `part4-bake` (the baker:
//! `--once`, or a full re-bake every `--interval-secs`; see [`bake`]) and
//! `part4-demo` (the experiments, in [`demo`]).
//!
//! Run a clone and a worker against the local stack, then start a job and
//! watch it:
//!
//! ```text
//! cargo run -p part4-async --bin part4-server -- --port 18081
//! cargo run -p part4-async --bin part4-worker
//! curl -si -c jar -H 'content-type: application/json' \
//!      -d '{"username":"user2","password":"correct-horse-battery"}' localhost:18081/login
//! curl -si -b jar -H 'content-type: application/json' \
//!      -d '{"kind":"export"}' localhost:18081/jobs        # 202, Location
//! curl -N -b jar localhost:18081/jobs/<id>/events         # progress ... done
//! curl -b jar localhost:18081/jobs/<id>/result
//! # or in a browser: http://localhost:18081/app (log in, export, watch it)
//! ```
//!
//! ## Configuration
//!
//! Flags, environment variables and defaults, written once:
//!
//! | variable | default | what |
//! |---|---|---|
//! | `QUEUE` | `rabbitmq` | the backend, `rabbitmq` or `redis` |
//! | `QUEUE_NAME` | `part4.jobs` | RabbitMQ's queue (and `.dlx`, `.dead`, `.parked`), or the Redis keys' prefix |
//! | `MAX_DELIVERIES` | `3` | deliveries before a job is dead-lettered |
//! | `PREFETCH` | `1` | jobs a consumer holds ahead: RabbitMQ's unacknowledged deliveries; Redis's jobs per take |
//! | `CONSUMER_TTL_MS` | `5000` | Redis: a consumer silent this long is dead, its jobs reaped |
//! | `WORKER_NAME` | `worker-<pid>` | in logs and in the claim rows |
//! | `JOB_MIN_MS` | `1000` | the stated minimum duration of a job |
//! | `SHUTDOWN_GRACE_MS` | `10000` | on SIGTERM, time for the job in hand |
//! | `STALE_QUEUED_SECS` | `60` | the sweeper publishes `queued` rows whose publish was never confirmed after this long; jobs waiting in the queue are left alone (0: off) |
//! | `SWEEP_LIMIT` | `100` | rows the sweeper publishes per pass |
//! | `BAKE_DIR` | `.lab/data/nginx/html` | the baked tree nginx serves ([`bake`]) |
//! | `BAKE_INTERVAL_SECS` | `0` | `part4-bake`: seconds between full re-bakes (0: once) |
//! | `CHANGES` | `true` | `part4-worker`: also consume `<QUEUE_NAME>.changes` ([`changes`]) |
//! | `PORT` | `0` | `part4-worker`: `GET /health` on this port (0: none) |
//! | `TIMELINE_CAP` | `200` | articles kept per precomputed timeline ([`fanout`]) |
//! | `FANOUT_MAX_FRIENDS` | `1000` | authors with more friends are merged at read time, not fanned out |
//!
//! and the stack's `RABBITMQ_URL`, `REDIS_URL` and `MARIADB_PRIMARY_URL`,
//! as everywhere ([`common::config`]).
//!
pub mod bake;
pub mod changes;
pub mod cli;
pub mod demo;
pub mod export;
pub mod fanout;
pub(crate) mod gate;
pub mod job;
pub mod queue;
pub mod server;
pub mod worker;

/// The part's number.
pub const PART: u8 = 4;
/// The part's title.
pub const TITLE: &str = "Asynchronism";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "Do heavy work ahead of time (precompute static pages) or, when it is asked for, put it on a queue, answer at once, let workers do it and tell the user when it is done.";
