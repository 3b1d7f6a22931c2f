//! The servers' and demos' `main`: `.env` and logging first
//! ([`crate::telemetry`]), then a multi-threaded Tokio runtime (what
//! `#[tokio::main]` builds) that runs the binary's work to the end.
//!
//! Why the work is called from the *library* (`part4_async::server::main`,
//! `part4_async::demo::main`...) and the binary is one line: an `async fn`
//! compiles to a state machine, and Rust generates its code in the crate
//! that polls it. A binary that awaits `part4_async::demo::run` therefore
//! compiles the demo's whole call tree again, in each binary that awaits
//! it: in a release build a 6-line `part4-demo` took 167 s, longer than
//! the whole part 4 library (111 s). Polled inside the library, each call
//! tree is compiled once per library, and every binary only links it. Every
//! async binary of the workspace is built this way (`lab-report` is
//! synchronous and small).

use std::future::Future;

/// Loads `.env`, starts logging, then runs `work()` on a new
/// multi-threaded runtime until it ends. `work` is a closure so that a
/// caller cannot parse its flags (clap, with their environment variables)
/// before `.env` is loaded, as `run(demo::run(Parser::parse()))` would.
pub fn run<W, F>(work: W) -> anyhow::Result<()>
where
    W: FnOnce() -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    crate::telemetry::init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(work())
}
