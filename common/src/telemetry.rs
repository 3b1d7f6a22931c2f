//! Logging for every binary: `tracing` filtered by `RUST_LOG`.
//!
//! The default level is `info` for our crates and `warn` for dependencies, so
//! a demo's output is the lesson, not the noise of a connection pool. Set
//! `RUST_LOG=debug` to see every request.

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset.
pub const DEFAULT_FILTER: &str = "warn,sqlx=error,common=info,part1_clones=info,part2_database=info,part3_cache=info,part4_async=info";

/// Installs the global subscriber (logs go to stderr). Calling it twice is harmless.
pub fn init() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
