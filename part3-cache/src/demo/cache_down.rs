//! Experiment 11: the cache goes down under load, and comes back.
//!
//! A cache is an optimisation, never a dependency: if Memcached stops,
//! every read must still be served, from the database, slower. Three
//! `part3-server` clones behind HAProxy read through a memcached of their
//! own (a private process on a free port, started here: the lab's shared
//! one is never stopped); a Zipf load reads `GET /articles/{id}`; half-way
//! the memcached process is killed, then started again on the same port.
//!
//! What it shows, measured by the client: the failed requests (0: every
//! cache call that fails is a bypass), the latency with the cache up and
//! down, and the hit ratio every half second, from each answer's `X-Cache`:
//! it drops to 0 while the cache is down, and climbs back from 0 after the
//! restart, because a restarted memcached is empty. The setting that keeps
//! a *hanging* cache from slowing every request is `CACHE_TIMEOUT_MS`
//! (50 ms by default, printed as set): a killed memcached refuses the
//! connection at once, so this drill does not wait for it; a cache that
//! stops answering would cost at most that much per call.
//!
//! Run it alone: `DEMO_ONLY=11 cargo run -p part3-cache --bin part3-demo`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::measure::{self, Latencies, Load, fmt_us};
use common::results::{Axis, Curve, Kind, Series};
use futures::future::BoxFuture;

use super::Demo;
use super::no_cache::{ok, x_cache, zipf_article};

/// Simultaneous clients.
const CONCURRENCY: usize = 16;
/// Width of one point of the hit-ratio curve.
const BUCKET: Duration = Duration::from_millis(500);
/// The clones' cache timeout, as set (the server's default).
const CACHE_TIMEOUT_MS: &str = "50";

/// Kill and restart a private memcached under a Zipf load.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let phase = demo.seconds().max(Duration::from_secs(2));
    let mut memcached = PrivateMemcached::start().await?;
    let url = memcached.url();
    let cluster = demo
        .cluster(
            3,
            &[
                ("MEMCACHED_URL", url.as_str()),
                ("CACHE_BACKEND", "memcached"),
                ("CACHE_TIMEOUT_MS", CACHE_TIMEOUT_MS),
            ],
        )
        .await?;
    let lb = cluster.lb_url();
    common::demo::line(format!(
        "3 clones on a private memcached ({url}), CACHE_TIMEOUT_MS={CACHE_TIMEOUT_MS} (the setting: the longest a cache call may take before the read bypasses it), {CONCURRENCY} clients, Zipf reads of GET /articles/{{id}}"
    ));
    let pop = demo.spec.article_popularity();
    let http = part1_clones::client::http();

    // Warm-up, not recorded: the cache holds the popular articles.
    let warm = reads(http.clone(), lb.clone(), pop.clone(), None);
    measure::run_load("warm-up", Load::closed(CONCURRENCY, phase), warm).await;

    // Up for one phase, down for one, back for two.
    let log = Arc::new(Log {
        start: Instant::now(),
        answers: Mutex::new(Vec::new()),
    });
    let load = reads(http, lb, pop, Some(log.clone()));
    let run = tokio::spawn(measure::run_load(
        "reads, memcached killed and restarted",
        Load::closed(CONCURRENCY, phase * 4),
        load,
    ));
    tokio::time::sleep(phase).await;
    memcached.kill().await?;
    let killed_at = log.start.elapsed(); // the process has exited
    common::demo::line(format!(
        "t = {:.1} s: memcached killed",
        killed_at.as_secs_f64()
    ));
    tokio::time::sleep(phase).await;
    let restart = memcached.restart().await;
    let restarted_at = log.start.elapsed();
    let report = run.await.context("the load task")?;
    restart?;
    common::demo::line(format!(
        "t = {:.1} s: memcached started again on the same port (empty)",
        restarted_at.as_secs_f64()
    ));
    cluster.stop().await;
    drop(memcached);

    figure(Kind::Measured, report.line());
    let answers = std::mem::take(&mut *log.answers.lock().unwrap_or_else(|p| p.into_inner()));
    let mut up = Latencies::new();
    let mut down = Latencies::new();
    let mut back = Latencies::new();
    let mut down_hits = 0u64;
    for a in &answers {
        let d = Duration::from_micros(a.took_us);
        if a.at < killed_at {
            up.record(d);
        } else if a.at < restarted_at {
            down.record(d);
            down_hits += u64::from(a.hit);
        } else {
            back.record(d);
        }
    }
    let (up, down, back) = (up.summary(), down.summary(), back.summary());
    let cmp = "memcached killed under load";
    let r = &mut demo.results;
    r.measured(
        cmp,
        "failed requests",
        report.errors as f64,
        "requests",
        "requests that got an error while memcached was up, down and back (the client's count)",
    );
    figure(
        Kind::Measured,
        format!(
            "failed requests: {} of {} (cache down = bypass: served from the database)",
            report.errors, report.requests
        ),
    );
    for (name, s) in [
        ("cache up", &up),
        ("cache down", &down),
        ("cache back", &back),
    ] {
        figure(
            Kind::Measured,
            format!(
                "{name:<10} {:>6} reads  p50 {:>8}  p99 {:>8}",
                s.count,
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ),
        );
        r.measured(
            cmp,
            &format!("{name}: p50"),
            s.p50_us as f64,
            "µs",
            &format!("median latency of GET /articles/{{id}} while {name} (the client's clock)"),
        );
        r.measured(
            cmp,
            &format!("{name}: p99"),
            s.p99_us as f64,
            "µs",
            &format!("99th percentile latency of GET /articles/{{id}} while {name}"),
        );
    }
    figure(
        Kind::Measured,
        format!("X-Cache: hit answers to reads sent while memcached was down: {down_hits}"),
    );

    // The hit ratio every half second.
    let buckets = (report.elapsed_secs.max(0.0) / BUCKET.as_secs_f64()).ceil() as usize;
    let mut tally = vec![(0u64, 0u64); buckets.max(1)];
    for a in &answers {
        let i = ((a.at.as_secs_f64() / BUCKET.as_secs_f64()) as usize).min(tally.len() - 1);
        tally[i].0 += u64::from(a.hit);
        tally[i].1 += 1;
    }
    // Only whole buckets inside the run (the requests still in flight at
    // its end are the slow ones: misses).
    let whole = ((phase * 4).as_secs_f64() / BUCKET.as_secs_f64()).floor() as usize;
    let points: Vec<(f64, f64)> = tally
        .iter()
        .enumerate()
        .take(whole)
        .filter(|(_, (_, n))| *n > 0)
        .map(|(i, (h, n))| {
            (
                (i as f64 + 0.5) * BUCKET.as_secs_f64(),
                100.0 * *h as f64 / *n as f64,
            )
        })
        .collect();
    let curve_line: Vec<String> = points
        .iter()
        .map(|(t, pct)| format!("{t:.2}s {pct:.0}%"))
        .collect();
    figure(
        Kind::Computed,
        format!(
            "hit ratio every {} ms = X-Cache hits / answers in each window (counted by the client): {}",
            BUCKET.as_millis(),
            curve_line.join("  ")
        ),
    );
    demo.results.curve(Curve {
        title: "hit ratio while memcached is killed and restarted".to_owned(),
        shows: format!(
            "X-Cache hits / answers of each {} ms (both counted by the client; the ratio computed); memcached killed at {:.1} s, started again (empty) at {:.1} s",
            BUCKET.as_millis(),
            killed_at.as_secs_f64(),
            restarted_at.as_secs_f64()
        ),
        kind: Kind::Computed,
        x: Axis::new("time", "s"),
        y: Axis::new("hit ratio", "%"),
        series: vec![Series {
            name: "3 clones, Zipf reads".to_owned(),
            points,
        }],
    });
    Ok(())
}

/// One answer: when it was asked (since the start), how long it took,
/// whether it was a hit.
struct Answer {
    at: Duration,
    took_us: u64,
    hit: bool,
}

struct Log {
    start: Instant,
    answers: Mutex<Vec<Answer>>,
}

/// Zipf reads of the article page through `base`, each answer logged.
fn reads(
    http: reqwest::Client,
    base: String,
    pop: common::dataset::Popularity,
    log: Option<Arc<Log>>,
) -> impl Fn(u64) -> BoxFuture<'static, Result<(), String>> + Clone + Send + Sync + 'static {
    move |i: u64| -> BoxFuture<'static, Result<(), String>> {
        let req = http.get(format!("{base}/articles/{}", zipf_article(&pop, i)));
        let log = log.clone();
        Box::pin(async move {
            let t = Instant::now();
            let at = log.as_ref().map(|l| l.start.elapsed());
            let res = ok(req.send().await).await?;
            let hit = x_cache(&res).as_deref() == Some("hit");
            res.bytes().await.map_err(|e| e.to_string())?;
            if let (Some(log), Some(at)) = (log, at) {
                let answer = Answer {
                    at,
                    took_us: t.elapsed().as_micros() as u64,
                    hit,
                };
                log.answers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(answer);
            }
            Ok(())
        })
    }
}

/// A memcached process of this program's own, on a free port of
/// 127.0.0.1, 64 MB, to kill and restart without touching the lab's shared
/// one. Killed when dropped. A thin face of
/// [`super::backends::PrivateMemcached`] (one way to start, check and stop
/// a private memcached in this part), kept for its callers.
pub struct PrivateMemcached(super::backends::PrivateMemcached);

impl PrivateMemcached {
    /// Starts `memcached` (from `PATH`) on a free port, 64 MB, and waits
    /// until it serves the port (its own `pid` in `stats`).
    pub async fn start() -> anyhow::Result<Self> {
        Ok(PrivateMemcached(
            super::backends::PrivateMemcached::start(64).await?,
        ))
    }

    /// `memcache://127.0.0.1:{port}`, the form of `MEMCACHED_URL`.
    pub fn url(&self) -> String {
        self.0.url()
    }

    /// `127.0.0.1:{port}`.
    pub fn addr(&self) -> String {
        self.0.addr()
    }

    /// Whether the process runs now.
    pub fn is_running(&self) -> bool {
        self.0.is_running()
    }

    /// Kills the process (SIGKILL: everything it held is gone) and waits
    /// for it to exit.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.0.kill().await
    }

    /// Kills it if it runs, then starts it again on the same port
    /// (retrying for up to 10 s while the port is not free yet).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.0.restart().await
    }
}
