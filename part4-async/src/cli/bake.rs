//! The baker: renders every article page and author page into static HTML
//! (with gzip copies) for nginx to serve. See `part4_async::bake`.
//!
//! ```text
//! cargo run -p part4-async --bin part4-bake -- --once                 # bake everything, exit
//! cargo run -p part4-async --bin part4-bake -- --interval-secs 300    # re-bake every 5 min
//! PORT=18190 cargo run -p part4-async --bin part4-bake -- --interval-secs 300  # + GET /health
//! ```
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `BAKE_DIR` | `--bake-dir` | `.lab/data/nginx/html` |
//! | `BAKE_INTERVAL_SECS` | `--interval-secs` | `0` (bake once and exit) |
//! | `BAKE_ONCE` | `--once` | `false` (bake once even with an interval) |
//! | `BAKE_FIRST_AFTER_SECS` | `--first-bake-after-secs` | `0` (with an interval: the first bake at once) |
//! | `PORT` | `--port` | `0` (no `/health`; only with an interval) |
//!
//! and `MARIADB_PRIMARY_URL` from the stack's configuration. Stops on
//! SIGTERM or Ctrl-C.
//!
//! The binary `part4-bake` is one line that calls [`main`].

use std::time::Duration;

use crate::bake::{BakeConfig, Baker, CONCURRENCY};
use anyhow::Context;
use clap::Parser;

/// The part 4 baker.
#[derive(Parser)]
#[command(
    version,
    about = "Part 4's baker: renders the article and author pages to static HTML for nginx."
)]
struct Args {
    #[command(flatten)]
    bake: BakeConfig,
    /// Bake everything once and exit (what happens anyway when the
    /// interval is 0).
    #[arg(long, env = "BAKE_ONCE")]
    once: bool,
    /// With an interval: seconds before the first full bake (0 = at once;
    /// `./lab` passes the interval, right after its own `--once` bake).
    #[arg(long, env = "BAKE_FIRST_AFTER_SECS", default_value_t = 0)]
    first_bake_after_secs: u64,
    /// With an interval: serve `GET /health` on 127.0.0.1:PORT (0 = none).
    #[arg(long, env = "PORT", default_value_t = 0)]
    port: u16,
    #[command(flatten)]
    stack: common::config::StackConfig,
}

/// `part4-bake`'s `main`: the binary is one line ([`common::entry`] says
/// why).
pub fn main() -> anyhow::Result<()> {
    common::entry::run(run)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(CONCURRENCY as u32 + 1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&args.stack.mariadb_primary_url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::config::redact(&args.stack.mariadb_primary_url)
            )
        })?;
    let baker = Baker::new(pool, args.bake.bake_dir);
    if args.once || args.bake.interval_secs == 0 {
        let stats = baker.all().await?;
        println!(
            "baked {}: {} pages written ({} articles, {} authors; {} bytes, {} gzipped), \
             {} unchanged, {} removed, {} refused, in {:.1} s",
            baker.dir().display(),
            stats.pages,
            stats.articles,
            stats.authors,
            stats.bytes,
            stats.gzip_bytes,
            stats.unchanged,
            stats.removed,
            stats.refused,
            stats.elapsed.as_secs_f64()
        );
        return Ok(());
    }
    let health = match args.port {
        0 => None,
        port => Some(
            tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on 127.0.0.1:{port} for /health: is another baker running?"
                    )
                })?,
        ),
    };
    tracing::info!(
        dir = %baker.dir().display(),
        interval_secs = args.bake.interval_secs,
        port = args.port,
        "baking everything on an interval"
    );
    baker
        .run_every(
            Duration::from_secs(args.first_bake_after_secs),
            Duration::from_secs(args.bake.interval_secs),
            health,
            common::signal::terminated(),
        )
        .await
}
