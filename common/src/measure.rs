//! Putting a number on a claim: latency histograms and a load driver.
//!
//! The article's two words, *performance* (slow for one user) and
//! *scalability* (slow under load), are told apart by two measurements:
//! latency at concurrency 1, and throughput and tail latency as concurrency
//! rises. [`run_load`] does both:
//!
//! - [`Load::Closed`]: `concurrency` users each send a request, wait for the
//!   answer, send the next. Throughput is what the system manages; this is
//!   how most benchmarks work.
//! - [`Load::Open`]: requests arrive at a fixed rate whether or not the
//!   system keeps up, like real users. A request is never held back
//!   behind another (one that finds every slot taken counts as an error),
//!   so a stall shows up in the tail instead of being hidden ("coordinated
//!   omission"); each latency is timed from the request's send.
//!
//! Latencies go into an HDR histogram (1 µs to 60 s, 3 significant digits):
//! constant memory, exact enough for p99, and mergeable across tasks.
//!
//! Every run is bounded in time and, optionally, in request count, so a
//! load run always stops by itself.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};
// tokio's clock, so tests can run a "30 s" load in paused time.
use tokio::time::Instant;

/// A latency histogram in microseconds.
#[derive(Debug, Clone)]
pub struct Latencies {
    hist: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Self {
        Self::new()
    }
}

impl Latencies {
    /// An empty histogram, 1 µs to 60 s.
    pub fn new() -> Self {
        Latencies {
            hist: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        }
    }

    /// Records one latency; values beyond 60 s count as 60 s.
    pub fn record(&mut self, d: Duration) {
        self.hist.saturating_record((d.as_micros() as u64).max(1));
    }

    /// Adds another histogram's samples to this one.
    pub fn merge(&mut self, other: &Latencies) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    /// How many samples.
    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Percentiles and extremes, in microseconds.
    pub fn summary(&self) -> LatencySummary {
        let q = |q: f64| {
            if self.hist.is_empty() {
                0
            } else {
                self.hist.value_at_quantile(q)
            }
        };
        LatencySummary {
            count: self.hist.len(),
            mean_us: if self.hist.is_empty() {
                0.0
            } else {
                self.hist.mean()
            },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            max_us: if self.hist.is_empty() {
                0
            } else {
                self.hist.max()
            },
        }
    }
}

/// Latency percentiles of a run, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Samples.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// How load is applied.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Load {
    /// `concurrency` workers, each sending the next request when the last
    /// one answered, for `duration` (or until `max_requests` in all).
    Closed {
        /// Simultaneous workers.
        concurrency: usize,
        /// How long.
        duration: Duration,
        /// Stop after this many requests in all, if set.
        max_requests: Option<u64>,
    },
    /// `rate` requests per second, sent on schedule whatever the answers,
    /// with at most `max_in_flight` outstanding; a request that finds no
    /// free slot is counted as an error ("client overloaded"), never held
    /// back until one frees. Each latency is timed from when the request
    /// was sent: no request waits behind another here (the "coordinated
    /// omission" that timing from the due instant corrects), and the
    /// timer that wakes the sender fires up to 1 ms after the due instant
    /// (tokio's granularity), which timing from it would add to every
    /// figure.
    Open {
        /// Requests per second.
        rate: f64,
        /// How long.
        duration: Duration,
        /// Cap on outstanding requests.
        max_in_flight: usize,
    },
}

impl Load {
    /// A closed loop with no request cap.
    pub fn closed(concurrency: usize, duration: Duration) -> Self {
        Load::Closed {
            concurrency,
            duration,
            max_requests: None,
        }
    }

    fn duration(&self) -> Duration {
        match self {
            Load::Closed { duration, .. } | Load::Open { duration, .. } => *duration,
        }
    }
}

/// What a load run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadReport {
    /// The run's name, as printed.
    pub name: String,
    /// Requests that completed, successfully or not.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Successful requests per second.
    pub throughput: f64,
    /// Latency of successful requests.
    pub latency: LatencySummary,
    /// The first few error messages, to say *why* requests failed.
    pub first_errors: Vec<String>,
}

impl LoadReport {
    /// One line for a terminal: throughput, percentiles, errors.
    pub fn line(&self) -> String {
        format!(
            "{:<28} {:>9.0} req/s  p50 {:>7}  p99 {:>7}  max {:>7}  errors {}/{}",
            self.name,
            self.throughput,
            fmt_us(self.latency.p50_us),
            fmt_us(self.latency.p99_us),
            fmt_us(self.latency.max_us),
            self.errors,
            self.requests
        )
    }
}

/// Formats microseconds as µs or ms, for terminal lines (see [`fmt_duration_us`]).
pub fn fmt_us(us: u64) -> String {
    fmt_duration_us(us as f64)
}

/// A duration given in microseconds, in the unit a reader takes in at a
/// glance, with about three significant digits: `56 µs`, `1.50 ms`,
/// `177 ms`, `2.40 s`. The report and every demo print durations with it.
pub fn fmt_duration_us(us: f64) -> String {
    if !us.is_finite() {
        return format!("{us}");
    }
    let sig = |v: f64, unit: &str| {
        let digits = if v.abs() >= 100.0 {
            0
        } else if v.abs() >= 10.0 {
            1
        } else {
            2
        };
        format!("{v:.digits$} {unit}")
    };
    let a = us.abs();
    if a >= 1_000_000.0 {
        sig(us / 1_000_000.0, "s")
    } else if a >= 1_000.0 {
        sig(us / 1_000.0, "ms")
    } else if us.fract() == 0.0 || a >= 100.0 {
        format!("{us:.0} µs")
    } else {
        sig(us, "µs")
    }
}

const KEPT_ERRORS: usize = 5;

struct Shared {
    latencies: Mutex<Latencies>,
    errors: AtomicU64,
    requests: AtomicU64,
    first_errors: Mutex<Vec<String>>,
}

impl Shared {
    async fn error(&self, msg: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kept = self.first_errors.lock().await;
        if kept.len() < KEPT_ERRORS {
            kept.push(msg);
        }
    }
}

/// Runs `request` under `load` and measures it. `request(i)` gets the
/// request's sequence number (use it to pick a user or a key
/// deterministically); an `Err` counts as a failed request and its message
/// is kept for the report.
///
/// A progress bar is drawn on stderr when it is a terminal, never in logs.
pub async fn run_load<F, Fut, E>(name: &str, load: Load, request: F) -> LoadReport
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    let request = Arc::new(request);
    let shared = Arc::new(Shared {
        latencies: Mutex::new(Latencies::new()),
        errors: AtomicU64::new(0),
        requests: AtomicU64::new(0),
        first_errors: Mutex::new(Vec::new()),
    });
    let progress = progress_bar(name, load.duration());
    let start = Instant::now();
    let deadline = start + load.duration();

    match load {
        Load::Closed {
            concurrency,
            max_requests,
            ..
        } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut workers = Vec::with_capacity(concurrency);
            for _ in 0..concurrency.max(1) {
                let (request, shared, next) = (request.clone(), shared.clone(), next.clone());
                workers.push(tokio::spawn(async move {
                    let mut local = Latencies::new();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if max_requests.is_some_and(|max| i >= max) {
                            break;
                        }
                        let sent = Instant::now();
                        let outcome = request(i).await;
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        match outcome {
                            Ok(()) => local.record(sent.elapsed()),
                            Err(e) => shared.error(e.to_string()).await,
                        }
                    }
                    shared.latencies.lock().await.merge(&local);
                }));
            }
            let ticker = tick_progress(progress.clone(), start);
            for w in workers {
                if let Err(e) = w.await {
                    shared.error(format!("load worker panicked: {e}")).await;
                }
            }
            ticker.abort();
        }
        Load::Open {
            rate,
            max_in_flight,
            ..
        } => {
            let slots = Arc::new(Semaphore::new(max_in_flight.max(1)));
            let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
            let ticker = tick_progress(progress.clone(), start);
            let mut i = 0u64;
            let mut tasks = tokio::task::JoinSet::new();
            loop {
                // The schedule, not the clock after the last answer, says
                // when request i is due.
                let due = start + interval.mul_f64(i as f64);
                if due >= deadline {
                    break;
                }
                tokio::time::sleep_until(due).await;
                match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (request, shared) = (request.clone(), shared.clone());
                        tasks.spawn(async move {
                            let sent = Instant::now();
                            let outcome = request(i).await;
                            shared.requests.fetch_add(1, Ordering::Relaxed);
                            match outcome {
                                Ok(()) => shared.latencies.lock().await.record(sent.elapsed()),
                                Err(e) => shared.error(e.to_string()).await,
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        shared.requests.fetch_add(1, Ordering::Relaxed);
                        shared
                            .error(format!(
                                "client overloaded: {max_in_flight} requests in flight"
                            ))
                            .await;
                    }
                }
                i += 1;
            }
            while let Some(joined) = tasks.join_next().await {
                if let Err(e) = joined {
                    shared.error(format!("load request panicked: {e}")).await;
                }
            }
            ticker.abort();
        }
    }
    progress.finish_and_clear();

    let elapsed = start.elapsed();
    let latencies = shared.latencies.lock().await;
    let errors = shared.errors.load(Ordering::Relaxed);
    let requests = shared.requests.load(Ordering::Relaxed);
    LoadReport {
        name: name.to_owned(),
        requests,
        errors,
        elapsed_secs: elapsed.as_secs_f64(),
        throughput: (requests - errors) as f64 / elapsed.as_secs_f64().max(1e-9),
        latency: latencies.summary(),
        first_errors: shared.first_errors.lock().await.clone(),
    }
}

fn progress_bar(name: &str, duration: Duration) -> ProgressBar {
    // Hidden automatically when stderr is not a terminal (CI, logs).
    let bar = ProgressBar::new(duration.as_millis() as u64);
    if let Ok(style) = ProgressStyle::with_template("  {prefix:<28} [{bar:30}] {elapsed}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_owned());
    bar
}

fn tick_progress(bar: ProgressBar, start: Instant) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            bar.set_position(start.elapsed().as_millis() as u64);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Measures `n` sequential calls of `f`: the latency one user sees, with no
/// contention (the article's *performance*).
pub async fn sequential<F, Fut, E>(n: u64, mut f: F) -> Result<Latencies, E>
where
    F: FnMut(u64) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut lat = Latencies::new();
    for i in 0..n {
        let t = Instant::now();
        f(i).await?;
        lat.record(t.elapsed());
    }
    Ok(lat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let mut l = Latencies::new();
        for us in 1..=1000u64 {
            l.record(Duration::from_micros(us));
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((499..=501).contains(&s.p50_us), "{s:?}");
        assert!((989..=991).contains(&s.p99_us), "{s:?}");
        assert_eq!(s.max_us, 1000);
        let mut other = Latencies::new();
        other.record(Duration::from_secs(120)); // beyond the bound: saturates
        l.merge(&other);
        assert_eq!(l.count(), 1001);
        assert!(l.summary().max_us >= 59_000_000);
        assert_eq!(Latencies::new().summary().p99_us, 0);
    }

    #[tokio::test]
    async fn closed_loop_counts_requests_and_errors() {
        let load = Load::Closed {
            concurrency: 4,
            duration: Duration::from_secs(30),
            max_requests: Some(200),
        };
        let report = run_load("test", load, |i| async move {
            if i % 10 == 0 {
                Err(format!("request {i} failed"))
            } else {
                Ok(())
            }
        })
        .await;
        assert_eq!(report.requests, 200);
        assert_eq!(report.errors, 20);
        assert_eq!(report.latency.count, 180);
        assert!(report.first_errors.len() <= KEPT_ERRORS);
        assert!(report.first_errors[0].contains("failed"));
        assert!(report.line().contains("errors 20/200"));
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_stops_at_its_deadline() {
        let report = run_load(
            "paused",
            Load::closed(2, Duration::from_secs(1)),
            |_| async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok::<(), String>(())
            },
        )
        .await;
        // Two workers, 100 ms per request, one second: about 20 requests.
        assert!((18..=22).contains(&report.requests), "{}", report.requests);
        assert_eq!(report.errors, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_its_schedule_and_counts_overload() {
        // 100 req/s for 1 s, each taking 50 ms, with room for 2 in flight:
        // only a fraction fit; the rest are counted, not silently dropped.
        let load = Load::Open {
            rate: 100.0,
            duration: Duration::from_secs(1),
            max_in_flight: 2,
        };
        let report = run_load("open", load, |_| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok::<(), String>(())
        })
        .await;
        assert_eq!(report.requests, 100);
        assert!(report.errors > 50, "{report:?}");
        assert!(report.first_errors[0].contains("overloaded"));
    }

    #[tokio::test]
    async fn sequential_measures_each_call() {
        let lat = sequential(5, |_| async { Ok::<(), ()>(()) }).await.unwrap();
        assert_eq!(lat.count(), 5);
        assert!(
            sequential(5, |i| async move { if i == 3 { Err(i) } else { Ok(()) } })
                .await
                .is_err()
        );
    }

    #[test]
    fn microseconds_read_well() {
        assert_eq!(fmt_us(56), "56 µs");
        assert_eq!(fmt_us(1500), "1.50 ms");
        assert_eq!(fmt_us(25_000), "25.0 ms");
        assert_eq!(fmt_us(176_895), "177 ms");
        assert_eq!(fmt_us(2_400_000), "2.40 s");
        assert_eq!(fmt_duration_us(404.4), "404 µs");
        assert_eq!(fmt_duration_us(2.5), "2.50 µs");
    }
}
