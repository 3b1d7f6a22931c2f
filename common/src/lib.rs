//! # common: what every part of the course stands on
//!
//! "Scalability for Dummies" is taught here as four running systems, one per
//! chapter. They share one small social blog (users, friendships, articles,
//! comments, likes, an activity feed) and one way to measure, so a figure in
//! part 3 can be compared with one from part 1.
//!
//! Reading order:
//!
//! 1. [`config`]: every setting is a flag, an environment variable and a
//!    default, written once; the defaults point at `./lab up`'s local stack.
//! 2. [`domain`] and [`dataset`]: the social blog and its deterministic,
//!    Zipf-skewed generator (the same seed always gives the same data).
//! 3. [`measure`]: latency histograms and the load driver (closed loop and
//!    open loop) that every demo uses to put a number on a claim.
//! 4. [`results`] and [`report`]: each demo writes `target/lab/results/partN.json`;
//!    the report (`target/lab/report/`) is built from those files alone.
//! 5. [`testing`]: connect to the real stack, isolate each test by a unique
//!    name, and fail at once with the command that starts a missing service.
//! 6. [`capacity`]: a stated, modelled server capacity, so scaling laws
//!    show on a 2-core machine (figures measured against it are "modelled").
//! 7. [`demo`]: what every part's demo shares: its arguments (`--seconds`,
//!    `--repeat`, the stack's URLs) and the way it prints a lesson.
//! 8. [`telemetry`]: `tracing` with `RUST_LOG`, and `.env` loading: the
//!    first thing every binary does.
//! 9. [`metrics`]: every server's `/metrics`, in Prometheus's text format,
//!    for the live page.
//! 10. [`signal`]: SIGTERM or Ctrl-C, what every binary stops on.
//! 11. [`entry`]: the servers' and demos' `main`, and why their binaries
//!     are one line.

pub mod capacity;
pub mod config;
pub mod dataset;
pub mod demo;
pub mod domain;
pub mod entry;
pub mod measure;
pub mod metrics;
pub mod report;
pub mod results;
pub mod signal;
pub mod telemetry;
pub mod testing;
