//! One worker process: takes jobs from the queue until SIGTERM (or
//! Ctrl-C), then finishes or returns the job in hand and exits 0.
//!
//! ```text
//! cargo run -p part4-async --bin part4-worker -- --queue redis --job-min-ms 2000
//! ```
//!
//! Every setting is in the crate's docs (`part4_async`).

use anyhow::Context;
use clap::Parser;
use part4_async::job::JobStore;
use part4_async::queue::{AnyQueue, JobQueue, QueueConfig};
use part4_async::worker::{Worker, WorkerConfig};

/// A part 4 worker.
#[derive(Parser)]
#[command(
    version,
    about = "A part 4 worker: takes jobs off the queue and does them."
)]
struct Args {
    #[command(flatten)]
    queue: QueueConfig,
    #[command(flatten)]
    worker: WorkerConfig,
    #[command(flatten)]
    stack: common::config::StackConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = Args::parse();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(&args.stack.mariadb_primary_url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::config::redact(&args.stack.mariadb_primary_url)
            )
        })?;
    JobStore::migrate(&pool).await?;
    let queue = AnyQueue::connect(&args.queue, &args.stack).await?;
    let worker = Worker::new(JobStore::new(pool), &args.worker, args.queue.max_deliveries);
    let consumer = queue.consume(worker.name()).await?;
    tracing::info!(
        worker = worker.name(),
        queue = args.queue.backend.as_str(),
        name = %args.queue.queue_name,
        job_min_ms = args.worker.job_min_ms,
        "taking jobs"
    );
    worker.run_until_stopped(consumer, stopped()).await?;
    Ok(())
}

/// Resolves on SIGTERM (what `./lab stop` and process managers send) or
/// Ctrl-C.
async fn stopped() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!("cannot listen for SIGTERM ({e}): only Ctrl-C stops this worker");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
