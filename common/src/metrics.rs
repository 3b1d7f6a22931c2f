//! `/metrics`: every process of the lab in Prometheus's text format.
//!
//! The lesson's figures are printed at the end of a demo; the live page
//! (`live/`, served by `./lab up` on port 18099) shows them while they
//! happen, from Prometheus, which scrapes each clone's and worker's
//! `GET /metrics` every 2 s. The code records with the `metrics` crate's
//! macros (`metrics::counter!("lab_http_requests_total", "route" => ..)
//! .increment(1)`), a facade like `tracing`'s; [`install`] puts
//! `metrics-exporter-prometheus`'s recorder behind it once per process, and
//! [`render`] turns what was recorded into the text a scrape reads. There
//! is no exporter listener of its own: each server adds a `/metrics` route
//! that answers [`render`] (part 1's `Application` does it for every part's
//! clone). Labels stay bounded on purpose: a route is its template
//! (`/users/{username}/avatar`), never the raw path, or one series per user
//! would be born. Try it: `./lab up part1`, then
//! `curl -s localhost:<a clone's port>/metrics | grep lab_`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests served: counter {route, method, status}.
pub const HTTP_REQUESTS: &str = "lab_http_requests_total";
/// Time to answer: histogram {route}, in seconds.
pub const HTTP_DURATION: &str = "lab_http_request_duration_seconds";
/// Cache lookups: counter {backend, pattern, result = hit | miss | bypass}.
pub const CACHE_REQUESTS: &str = "lab_cache_requests_total";
/// Jobs by what happened to them: counter {event = enqueued (a clone) |
/// done | failed | dead_lettered (a worker)}.
pub const JOBS: &str = "lab_jobs_total";
/// Each change a clone's writes produced, by what became of it: counter
/// {result = published (on the changes queue) | failed (refused or timed
/// out) | dropped (too many publishes in flight) | over_bound (the queue
/// held `CHANGES_MAX_WAITING`)}. Part 4's clones.
pub const CHANGES: &str = "lab_changes_total";
/// Jobs a worker is running now: gauge.
pub const JOBS_RUNNING: &str = "lab_jobs_running";
/// The job queue as a worker reads it at each scrape: gauge {state =
/// ready | dead}.
pub const QUEUE_DEPTH: &str = "lab_queue_depth";
/// The baker's full bakes: counter {result = ok | failed}.
pub const BAKES: &str = "lab_bakes_total";
/// How long the baker's last full bake took: gauge, in seconds.
pub const BAKE_SECONDS: &str = "lab_bake_last_seconds";
/// Sessions: counter {store, event = created | found | missing | ended}.
/// `missing` is a request that brought a session cookie its clone could not
/// find: with `--sessions memory` behind a balancer, the lesson of part 1.
pub const SESSIONS: &str = "lab_sessions_total";
/// Database work by pool: counter {pool = primary | replica}. One per
/// connection handed back to the pool: a query run on the pool, or a whole
/// transaction (sqlx's `after_release`). Part 2's replica health check
/// counts too: every 500 ms one query on the primary and two on the
/// replica, so an idle clone shows about 2/s and 4/s.
pub const DB_QUERIES: &str = "lab_db_queries_total";
/// The replica's lag as the app measures it (part 2's health check: how
/// long ago the primary reached the oldest write the replica lacks): gauge
/// {replica}, in seconds; NaN while the replica does not answer.
pub const REPLICA_LAG: &str = "lab_replica_lag_seconds";

/// The latency histogram's buckets (seconds): from a cache hit to a
/// request that queued behind a full clone.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The content type of the text format, for a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder, once: later calls (tests build many
/// apps in one process) return the same handle. `None` if another
/// recorder was installed first (then `/metrics` answers an empty page and
/// says why in the log).
pub fn install() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.into()), LATENCY_BUCKETS)
                .and_then(|b| b.install_recorder());
            match builder {
                Ok(handle) => {
                    describe();
                    // Histogram samples wait in a buffer until a scrape or
                    // an upkeep drains them: bounded even if nobody scrapes.
                    let upkeep = handle.clone();
                    let _ = std::thread::Builder::new()
                        .name("metrics-upkeep".into())
                        .spawn(move || {
                            loop {
                                std::thread::sleep(Duration::from_secs(5));
                                upkeep.run_upkeep();
                            }
                        });
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no Prometheus recorder: /metrics will be empty");
                    None
                }
            }
        })
        .as_ref()
}

/// Everything recorded so far, in Prometheus's text format.
pub fn render() -> String {
    install().map(PrometheusHandle::render).unwrap_or_default()
}

fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by route template"
    );
    metrics::describe_counter!(
        CACHE_REQUESTS,
        "Cache lookups by backend, pattern and result (hit, miss, bypass)"
    );
    metrics::describe_counter!(
        JOBS,
        "Jobs by event: enqueued (counted by the clone), done, failed, dead_lettered (by the worker)"
    );
    metrics::describe_gauge!(JOBS_RUNNING, "Jobs this worker is running now");
    metrics::describe_counter!(
        CHANGES,
        "Changes this clone's writes produced, by result: published, failed, dropped, over_bound"
    );
    metrics::describe_counter!(BAKES, "The baker's full bakes, by result (ok, failed)");
    metrics::describe_gauge!(
        BAKE_SECONDS,
        metrics::Unit::Seconds,
        "How long the baker's last full bake took"
    );
    metrics::describe_gauge!(
        QUEUE_DEPTH,
        "The job queue as this worker reads it: ready (waiting) and dead (dead-lettered)"
    );
    metrics::describe_counter!(
        SESSIONS,
        "Sessions by store and event: created, found, missing (a cookie the store does not know), ended"
    );
    metrics::describe_counter!(
        DB_QUERIES,
        "Connections handed back to each database pool: one per query or transaction"
    );
    metrics::describe_gauge!(
        REPLICA_LAG,
        metrics::Unit::Seconds,
        "The replica's lag as the app's health check measures it"
    );
}

/// Counts each connection handed back to `pool_options`'s pool as one
/// [`DB_QUERIES`] of `pool` (the name the live page shows: `primary`,
/// `replica`).
pub fn count_queries(
    pool_options: sqlx::mysql::MySqlPoolOptions,
    pool: &'static str,
) -> sqlx::mysql::MySqlPoolOptions {
    pool_options.after_release(move |_conn, _meta| {
        metrics::counter!(DB_QUERIES, "pool" => pool).increment(1);
        Box::pin(async { Ok(true) })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installing_twice_gives_one_recorder_and_buckets() {
        let a = install().map(|h| h as *const _);
        let b = install().map(|h| h as *const _);
        assert!(a.is_some());
        assert_eq!(a, b);
        metrics::histogram!(HTTP_DURATION, "route" => "/unit").record(0.003);
        let text = render();
        assert!(
            text.contains(
                r#"lab_http_request_duration_seconds_bucket{route="/unit",le="0.005"} 1"#
            ),
            "{text}"
        );
    }
}
