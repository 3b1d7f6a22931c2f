//! The first thing every binary does: read `.env`, then set up logging.
//!
//! `.env`: copy `.env.example` to `.env` and edit it, and every binary
//! (servers, loaders, demos, the report) sees those settings as if they
//! were exported in the shell. It is read from the current directory or
//! the nearest parent that has one. A variable already set in the
//! environment wins over the file, so `REDIS_URL=... cargo run` still
//! overrides it, and a missing `.env` is no error: the defaults point at
//! `./lab up`'s local stack.
//!
//! Logging: `tracing` filtered by `RUST_LOG`. The default level is `info`
//! for our crates and `warn` for dependencies, so a demo's output is the
//! lesson, not the noise of a connection pool. Set `RUST_LOG=debug` to see
//! every request.

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "warn,sqlx=error,common=info,part1_clones=info,part2_database=info,part3_cache=info,part4_async=info";

/// Loads `.env` (see the module docs), then installs the global subscriber
/// (logs go to stderr). Call it before parsing arguments, so `clap` sees
/// the variables `.env` sets. Calling it twice is harmless.
pub fn init() {
    // Before the filter is built, so RUST_LOG may come from .env too.
    let dotenv = dotenvy::dotenv();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    match dotenv {
        Ok(path) => tracing::debug!(path = %path.display(), "settings read from .env"),
        // No .env is the usual case: the defaults are the local stack's.
        Err(e) if e.not_found() => {}
        // A .env that cannot be read or parsed is the user's mistake: say
        // so loudly rather than run with half their settings.
        Err(e) => tracing::warn!("ignoring .env: {e}"),
    }
}
