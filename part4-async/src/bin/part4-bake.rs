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
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part4_async::cli::bake::main()
}
