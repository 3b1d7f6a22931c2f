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
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part4_async::cli::worker::main()
}
