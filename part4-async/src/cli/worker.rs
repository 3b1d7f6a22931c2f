//! One worker process: takes jobs from the queue and, beside them, the
//! changes of committed writes (`<QUEUE_NAME>.changes`: re-fill part 3's
//! cache, re-bake pages, fan posts out; see `part4_async::changes`),
//! until SIGTERM (or Ctrl-C); then finishes or returns what it holds and
//! exits 0.
//!
//! ```text
//! cargo run -p part4-async --bin part4-worker -- --queue redis --job-min-ms 2000
//! cargo run -p part4-async --bin part4-worker -- --port 18181 --bake-dir .lab/data/nginx/html
//! curl localhost:18181/health
//! ```
//!
//! It takes part 3's flags and variables too (`KEY_PREFIX`, `CACHE`,
//! `CACHE_BACKEND`, ...): give it the clones' values, or its fills land
//! where the clones never look. Its own: `--changes true|false`
//! (`CHANGES`, default true), `--bake-dir` (`BAKE_DIR`), `--port`
//! (`PORT`, default 0: no health endpoint; otherwise `GET /health` on
//! `BIND_ADDR:PORT`, and `GET /metrics` beside it: `lab_jobs_total{event}`
//! for the live page), `TIMELINE_CAP`, `FANOUT_MAX_FRIENDS`. Every other
//! setting is in the crate's docs (`part4_async`).
//!
//! The binary `part4-worker` is one line that calls [`main`].

use std::path::PathBuf;
use std::time::Duration;

use crate::bake::{self, Baker};
use crate::changes::{self, ChangeWorker};
use crate::fanout::{FanoutConfig, Timelines};
use crate::job::JobStore;
use crate::queue::{AnyQueue, JobQueue, QueueConfig};
use crate::worker::{Worker, WorkerConfig, WorkerStats};
use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use part3_cache::server::Part3Config;

/// A part 4 worker.
#[derive(clap::Parser)]
#[command(
    name = "part4-worker",
    version,
    about = "A part 4 worker: takes jobs and changes off the queues and does them."
)]
struct Args {
    #[command(flatten)]
    queue: QueueConfig,
    #[command(flatten)]
    worker: WorkerConfig,
    /// Part 3's settings, as the clones have them (the cache to fill).
    #[command(flatten)]
    part3: Part3Config,
    #[command(flatten)]
    fanout: FanoutConfig,
    /// The baked tree's root (nginx serves it).
    #[arg(long = "bake-dir", env = "BAKE_DIR", default_value = bake::DEFAULT_DIR)]
    bake_dir: PathBuf,
    /// Also consume the changes queue (`<QUEUE_NAME>.changes`).
    #[arg(long, env = "CHANGES", default_value_t = true, action = clap::ArgAction::Set)]
    changes: bool,
}

/// `part4-worker`'s `main`: the binary is one line ([`common::entry`] says
/// why).
pub fn main() -> anyhow::Result<()> {
    common::entry::run(run)
}

async fn run() -> anyhow::Result<()> {
    let matches = Args::command()
        .mut_arg("port", |a| {
            a.default_value("0")
                .help("GET /health on BIND_ADDR:PORT (0: no health endpoint)")
        })
        .get_matches();
    let args = Args::from_arg_matches(&matches)?;
    let server = &args.part3.part2.server;
    let stack = &server.stack;
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&stack.mariadb_primary_url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::config::redact(&stack.mariadb_primary_url)
            )
        })?;
    JobStore::migrate(&pool).await?;
    let queue = AnyQueue::connect(&args.queue, stack).await?;
    let worker = Worker::new(
        JobStore::new(pool.clone()),
        &args.worker,
        args.queue.max_deliveries,
    );
    let consumer = queue.consume(worker.name()).await?;
    // Shared with `/metrics`, which reads the queue's depth at each scrape.
    let queue = std::sync::Arc::new(queue);
    let changes = if args.changes {
        let layer = part3_cache::server::cache_layer(&args.part3).await?;
        let timelines = Timelines::new(layer.data.redis.clone(), &server.key_prefix, &args.fanout);
        let queue = AnyQueue::connect(&changes::queue_config(&args.queue), stack).await?;
        let consumer = queue.consume(&format!("{}-changes", worker.name())).await?;
        let change_worker = ChangeWorker::new(
            layer,
            Baker::new(pool.clone(), &args.bake_dir),
            timelines,
            worker.name(),
            args.queue.max_deliveries,
            Duration::from_millis(args.worker.shutdown_grace_ms),
        );
        Some((change_worker, consumer))
    } else {
        None
    };
    tracing::info!(
        worker = worker.name(),
        queue = args.queue.backend.as_str(),
        name = %args.queue.queue_name,
        job_min_ms = args.worker.job_min_ms,
        changes = args.changes,
        bake_dir = %args.bake_dir.display(),
        "taking jobs"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        common::signal::terminated().await;
        let _ = stop_tx.send(true);
    });
    let stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if server.port != 0 {
        let addr = std::net::SocketAddr::new(server.bind_addr, server.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("the health endpoint cannot listen on {addr}"))?;
        common::metrics::install();
        let stats = worker.stats();
        let queue = queue.clone();
        let app = axum::Router::new()
            .route("/health", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let (stats, queue) = (stats.clone(), queue.clone());
                    async move { metrics_page(&stats, &queue).await }
                }),
            );
        let until = stop(stop_rx.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(until)
                .await
            {
                tracing::warn!(error = %e, "the health endpoint stopped");
            }
        });
        tracing::info!(%addr, "GET /health, GET /metrics");
    }
    let jobs = worker.run_until_stopped(consumer, stop(stop_rx.clone()));
    let changes = async {
        match changes {
            Some((w, c)) => w
                .run_until_stopped(c, stop(stop_rx.clone()))
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let (jobs, changes) = tokio::join!(jobs, changes);
    jobs?;
    changes?;
    Ok(())
}

/// `GET /metrics`: the worker's counts (its [`WorkerStats`], copied into
/// `lab_jobs_total{event}` and `lab_jobs_running` at each scrape) and the
/// queue's depth as read now (`lab_queue_depth{state}`; NaN if the queue
/// does not answer within a second), in Prometheus's text format. `failed`
/// is an attempt that failed and was put back for a retry.
async fn metrics_page(
    stats: &WorkerStats,
    queue: &AnyQueue,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    use std::sync::atomic::Ordering::Relaxed;
    for (event, n) in [
        ("done", &stats.done),
        ("failed", &stats.retried),
        ("dead_lettered", &stats.dead_lettered),
    ] {
        metrics::counter!(common::metrics::JOBS, "event" => event).absolute(n.load(Relaxed));
    }
    metrics::gauge!(common::metrics::JOBS_RUNNING).set(stats.running.load(Relaxed) as f64);
    let depth = tokio::time::timeout(Duration::from_secs(1), queue.depth())
        .await
        .ok()
        .and_then(Result::ok);
    let (ready, dead) = depth.map_or((f64::NAN, f64::NAN), |d| (d.ready as f64, d.dead as f64));
    metrics::gauge!(common::metrics::QUEUE_DEPTH, "state" => "ready").set(ready);
    metrics::gauge!(common::metrics::QUEUE_DEPTH, "state" => "dead").set(dead);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            common::metrics::CONTENT_TYPE,
        )],
        common::metrics::render(),
    )
}
