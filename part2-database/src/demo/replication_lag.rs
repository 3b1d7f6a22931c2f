//! Experiment 1: Replication lag, measured with a stated resolution.
//!
//! A heartbeat row carries the primary's clock (`NOW(6)`, microseconds) at
//! the moment of the write; replication copies the row, value and all. The
//! replica is then polled in a tight loop on one connection (no sleep: a
//! timer's millisecond granularity would swamp a sub-millisecond lag), each
//! poll reading the row and the replica's own `NOW(6)`. The first poll that
//! sees the row gives the lag: its `NOW(6)` minus the row's. The truth lies
//! between the previous poll and that one, so the interval between two
//! polls is the resolution, printed with the figures.
//!
//! Both servers read the same machine's clock here. Across machines the
//! clocks differ by their NTP error, which a production lag monitor
//! (pt-heartbeat, MaxScale) must add to its resolution.

use std::time::Duration;

use anyhow::Context;
use common::demo::figure;
use common::measure::{Latencies, fmt_us};
use common::results::Kind;
use sqlx::MySqlPool;

use super::Demo;

/// Heartbeat samples taken.
const SAMPLES: u32 = 300;
/// The heartbeat row's id (row 1 is the library's `measure_lag`).
const ROW: u8 = 2;
/// The server's clock as integer microseconds since the epoch.
const NOW_US: &str = "CAST(UNIX_TIMESTAMP(NOW(6)) * 1000000 AS SIGNED)";

/// One heartbeat's lag and the resolution it was seen with.
#[derive(Debug, Clone, Copy)]
pub struct LagSample {
    /// From the write on the primary to the first replica read that saw it.
    pub lag: Duration,
    /// Between the poll that missed it and the one that saw it.
    pub resolution: Duration,
    /// The write's own round trip, commit included (timed by the client):
    /// part of the lag, since the row's clock is read as the write starts.
    pub write: Duration,
}

/// Writes one heartbeat on the primary and polls the replica for it.
pub async fn sample(
    primary: &MySqlPool,
    replica: &mut sqlx::MySqlConnection,
    beat: u64,
    deadline: Duration,
) -> anyhow::Result<LagSample> {
    let t = std::time::Instant::now();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "REPLACE INTO heartbeat (id, beat, at_us) VALUES (?, ?, {NOW_US})"
    )))
    .bind(ROW)
    .bind(beat)
    .execute(primary)
    .await?;
    let write = t.elapsed();
    // The row's `at_us` is the primary's clock, copied as is (row-based
    // replication): reading it on the replica costs the primary nothing.
    let poll = format!("SELECT beat, at_us, {NOW_US} FROM heartbeat WHERE id = {ROW}");
    let started = std::time::Instant::now();
    let mut previous_us = None;
    loop {
        let row: Option<(u64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(poll.clone()))
            .fetch_optional(&mut *replica)
            .await?;
        if let Some((seen, written_us, now_us)) = row {
            if seen == beat {
                let micros = |us: i64| Duration::from_micros(us.max(0) as u64);
                return Ok(LagSample {
                    lag: micros(now_us - written_us),
                    resolution: micros(now_us - previous_us.unwrap_or(written_us)),
                    write,
                });
            }
            previous_us = Some(now_us);
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "the replica did not show a heartbeat within {deadline:?}: is replication running? ./lab status"
        );
    }
}

/// Samples the lag and records p50 / p99 / max and the resolution.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let mut replica = demo
        .replica
        .acquire()
        .await
        .context("a connection to the replica")?;
    let (mut lag, mut resolution, mut write) =
        (Latencies::new(), Latencies::new(), Latencies::new());
    let first = common::demo::now() as u64 * 1_000_000;
    for i in 0..u64::from(SAMPLES) {
        let s = sample(
            &demo.primary,
            &mut replica,
            first + i,
            Duration::from_secs(10),
        )
        .await?;
        lag.record(s.lag);
        resolution.record(s.resolution);
        write.record(s.write);
    }
    let (l, r, w) = (lag.summary(), resolution.summary(), write.summary());
    figure(
        Kind::Measured,
        format!(
            "a write on the primary is readable on the replica p50 {} / p99 {} / max {} later ({SAMPLES} heartbeats)",
            fmt_us(l.p50_us),
            fmt_us(l.p99_us),
            fmt_us(l.max_us)
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "resolution: one poll of the replica every {} (p50): each lag is true to within that",
            fmt_us(r.p50_us)
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "the write itself (sent, committed, answered) took p50 {}: the lag counts from its start",
            fmt_us(w.p50_us)
        ),
    );
    let cmp = "replication lag (heartbeat row with NOW(6), tight polling)";
    let shows = "the write's NOW(6) on the primary to the first replica read that sees it";
    demo.measured(cmp, "lag p50", l.p50_us as f64, "µs", shows);
    demo.measured(cmp, "lag p99", l.p99_us as f64, "µs", shows);
    demo.measured(cmp, "lag max", l.max_us as f64, "µs", shows);
    demo.measured(
        cmp,
        "resolution p50",
        r.p50_us as f64,
        "µs",
        "time between two polls of the replica: the lag is known to within this",
    );
    demo.measured(
        cmp,
        "write p50",
        w.p50_us as f64,
        "µs",
        "the heartbeat write's round trip on the primary, commit included",
    );
    Ok(())
}
