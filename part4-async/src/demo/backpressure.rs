//! Experiment 7: backpressure.
//!
//! A `part4-server` inside the demo with `MAX_QUEUE_DEPTH` = 20 and no
//! worker: nothing leaves the queue. [`POSTS`] export requests arrive,
//! [`CONCURRENCY`] at a time. Counted: the answers (`202`, and `503` with
//! a `Retry-After` header), the queue's depth by the broker's own count,
//! and the rows the refused requests left (jobs of the user beyond the
//! accepted ones: none). A task of the server reads the depth from the
//! broker every `DEPTH_CHECK_MS` (100 ms, the default) and the server
//! counts each job it admits on top of that reading, from its check until
//! its publish is confirmed. With several clones the limit can be
//! overshot by what the *other* clones admitted since the last reading:
//! the overshoot is counted too (one clone here).
//!
//! Run it alone: `DEMO_ONLY=7 cargo run -p part4-async --bin part4-demo`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use common::demo::figure;
use common::measure::{self, Load};
use common::results::Kind;

use super::{Demo, login, post_job, settled_ready};
use crate::queue::Backend;

/// The limit.
pub const MAX_QUEUE_DEPTH: u64 = 20;
/// Requests sent.
pub const POSTS: u64 = 200;
/// At once.
pub const CONCURRENCY: usize = 16;

/// What it counted.
#[derive(Debug, Clone, Copy)]
pub struct Backpressure {
    /// `202` answers.
    pub accepted: u64,
    /// `503` answers.
    pub refused: u64,
    /// `503` answers with `Retry-After`.
    pub with_retry_after: u64,
    /// Other answers.
    pub other: u64,
    /// The queue's depth afterwards, by the broker.
    pub depth: u64,
    /// Job rows the user has beyond the accepted ones.
    pub extra_rows: u64,
    /// Median latency of a refusal, µs.
    pub refusal_p50_us: u64,
}

/// Runs it, prints and records it.
pub async fn run(demo: &mut Demo) -> anyhow::Result<Backpressure> {
    let config = demo.queue_config(Backend::RabbitMq);
    let queue = demo.queue(&config).await?;
    let max = MAX_QUEUE_DEPTH.to_string();
    let server = demo
        .server(&config, None, &[("MAX_QUEUE_DEPTH", max.as_str())])
        .await?;
    let (user_id, username) = demo.users_with_articles(5).await?[4].clone();
    let out = async {
        let store = demo.store();
        let before = store.count_for(user_id).await?;
        let cookie = login(&server.url, &username).await?;
        let counts = Arc::new([
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
            AtomicU64::new(0),
        ]);
        let refusals = Arc::new(std::sync::Mutex::new(measure::Latencies::new()));
        let http = part1_clones::client::http();
        let (c, r, url) = (counts.clone(), refusals.clone(), server.url.clone());
        let request = move |_: u64| {
            let (http, cookie, c, r, url) = (
                http.clone(),
                cookie.clone(),
                c.clone(),
                r.clone(),
                url.clone(),
            );
            async move {
                let t = std::time::Instant::now();
                let (status, retry_after, _) = post_job(&http, &url, &cookie, "export").await?;
                let i = match (status, retry_after.is_some()) {
                    (202, _) => 0,
                    (503, true) => {
                        if let Ok(mut l) = r.lock() {
                            l.record(t.elapsed());
                        }
                        1
                    }
                    (503, false) => 2,
                    _ => 3,
                };
                c[i].fetch_add(1, Ordering::Relaxed);
                Ok::<(), String>(())
            }
        };
        let load = Load::Closed {
            concurrency: CONCURRENCY,
            duration: std::time::Duration::from_secs(60),
            max_requests: Some(POSTS),
        };
        measure::run_load("POST /jobs past the limit", load, request).await;
        let depth = settled_ready(&queue).await?;
        let accepted = counts[0].load(Ordering::Relaxed);
        let after = store.count_for(user_id).await?;
        let refusal_p50_us = refusals.lock().map_or(0, |l| l.summary().p50_us);
        Ok::<_, anyhow::Error>(Backpressure {
            accepted,
            refused: counts[1].load(Ordering::Relaxed) + counts[2].load(Ordering::Relaxed),
            with_retry_after: counts[1].load(Ordering::Relaxed),
            other: counts[3].load(Ordering::Relaxed),
            depth,
            extra_rows: (after - before).saturating_sub(accepted),
            refusal_p50_us,
        })
    }
    .await;
    server.stop().await;
    demo.forget_queues(&config).await;
    let b: Backpressure = out?;
    let cmp = "backpressure: MAX_QUEUE_DEPTH=20, no worker";
    figure(
        Kind::Measured,
        format!(
            "{POSTS} POST /jobs, {CONCURRENCY} at a time: {} accepted (202), {} refused (503, {} with Retry-After, p50 {}), {} other; the queue holds {} (RabbitMQ's count; limit {MAX_QUEUE_DEPTH}, overshoot {}); rows left by refused requests: {}",
            b.accepted,
            b.refused,
            b.with_retry_after,
            measure::fmt_us(b.refusal_p50_us),
            b.other,
            b.depth,
            b.depth.saturating_sub(MAX_QUEUE_DEPTH),
            b.extra_rows
        ),
    );
    for (name, value, unit, shows) in [
        (
            "accepted",
            b.accepted as f64,
            "requests",
            "202 answers: jobs queued",
        ),
        (
            "refused with Retry-After",
            b.with_retry_after as f64,
            "requests",
            "503 answers carrying Retry-After: nothing queued",
        ),
        (
            "queue depth",
            b.depth as f64,
            "jobs",
            "waiting jobs afterwards, by the broker's count",
        ),
        (
            "rows left by refused requests",
            b.extra_rows as f64,
            "rows",
            "job rows beyond the accepted jobs (0: a refusal writes nothing)",
        ),
        (
            "refusal p50",
            b.refusal_p50_us as f64,
            "µs",
            "how fast a refused client hears it",
        ),
    ] {
        demo.results.measured(cmp, name, value, unit, shows);
    }
    Ok(b)
}
