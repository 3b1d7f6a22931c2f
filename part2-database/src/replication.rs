//! Replication: writes to the primary, reads from replicas, and the
//! consequences.
//!
//! [`SplitPool`] sends writes to the primary and reads to a healthy
//! replica (round robin), and falls back to the primary when no replica
//! answers: a replica that dies costs latency, never a failed read. A
//! background task checks each replica every [`HEALTH_INTERVAL`]; a read
//! that fails on a replica with a connection error marks it down at once
//! and is retried on the primary.
//!
//! Replication is asynchronous, so a replica lags: a user who writes and
//! then reads may not see their write. [`ReadYourWrites`] is the choice:
//!
//! - `Naive`: read the replica anyway (stale reads possible);
//! - `PinToPrimary`: after a write, read that user's data from the primary
//!   for a window (cheap, but the primary takes those reads);
//! - `WaitForGtid`: remember the write's GTID and, on the replica, wait for
//!   it (`MASTER_GTID_WAIT`) up to a timeout, then fall back to the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::MySqlPool;
use sqlx::mysql::MySqlPoolOptions;

/// How often replicas are health-checked.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// Where a read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary (by choice or by fallback).
    Primary,
    /// Replica number `i`.
    Replica(usize),
}

struct Replica {
    pool: MySqlPool,
    healthy: AtomicBool,
}

/// A primary and its replicas, with reads split off and fallback.
#[derive(Clone)]
pub struct SplitPool {
    primary: MySqlPool,
    replicas: Arc<Vec<Replica>>,
    next: Arc<AtomicUsize>,
}

/// Connects lazily with short timeouts, so a dead server is a fast error.
pub fn lazy_pool(url: &str, max: u32) -> Result<MySqlPool, sqlx::Error> {
    MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(Duration::from_secs(2))
        .connect_lazy(url)
}

/// Errors that mean "this server is not answering", as opposed to a bad query.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    )
}

impl SplitPool {
    /// A split pool over a primary and replicas, with a health checker
    /// running on the current tokio runtime.
    pub fn new(primary: MySqlPool, replicas: Vec<MySqlPool>) -> Self {
        let pool = SplitPool {
            primary,
            replicas: Arc::new(
                replicas
                    .into_iter()
                    .map(|pool| Replica {
                        pool,
                        healthy: AtomicBool::new(true),
                    })
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
        };
        let checker = pool.clone();
        tokio::spawn(async move {
            loop {
                checker.check_replicas().await;
                tokio::time::sleep(HEALTH_INTERVAL).await;
            }
        });
        pool
    }

    /// Checks every replica once (the background task calls this).
    pub async fn check_replicas(&self) {
        for r in self.replicas.iter() {
            let ok = tokio::time::timeout(
                Duration::from_millis(400),
                sqlx::query("SELECT 1").execute(&r.pool),
            )
            .await
            .is_ok_and(|res| res.is_ok());
            r.healthy.store(ok, Ordering::Relaxed);
        }
    }

    /// The pool for writes.
    pub fn primary(&self) -> &MySqlPool {
        &self.primary
    }

    /// Replicas currently healthy.
    pub fn healthy_replicas(&self) -> usize {
        self.replicas
            .iter()
            .filter(|r| r.healthy.load(Ordering::Relaxed))
            .count()
    }

    /// The next healthy replica, or the primary if none is.
    pub fn reader(&self) -> (ReadFrom, &MySqlPool) {
        let n = self.replicas.len();
        for _ in 0..n {
            let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
            if self.replicas[i].healthy.load(Ordering::Relaxed) {
                return (ReadFrom::Replica(i), &self.replicas[i].pool);
            }
        }
        (ReadFrom::Primary, &self.primary)
    }

    /// Runs a read on a replica; on a connection error, marks it down and
    /// runs it on the primary. Returns where it was answered.
    pub async fn read<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let (from, pool) = self.reader();
        match query(pool.clone()).await {
            Err(e) if is_connection_error(&e) && from != ReadFrom::Primary => {
                // Logged once per outage, not once per read.
                if let ReadFrom::Replica(i) = from
                    && self.replicas[i].healthy.swap(false, Ordering::Relaxed)
                {
                    tracing::warn!(replica = i, error = %e, "replica down: reading from the primary");
                }
                Ok((query(self.primary.clone()).await?, ReadFrom::Primary))
            }
            other => other.map(|v| (v, from)),
        }
    }

    /// Reads on the primary (for read-your-writes).
    pub async fn read_primary<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        Ok((query(self.primary.clone()).await?, ReadFrom::Primary))
    }
}

/// The read-your-writes policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadYourWrites {
    /// Read any replica: fast, possibly stale.
    Naive,
    /// Read from the primary for `window` after the user's last write.
    PinToPrimary {
        /// How long after a write.
        window: Duration,
    },
    /// Wait on the replica for the write's GTID, up to `timeout`, then fall
    /// back to the primary.
    WaitForGtid {
        /// The longest wait.
        timeout: Duration,
    },
}

impl ReadYourWrites {
    /// The policy's name, as the demo prints it.
    pub fn name(&self) -> &'static str {
        match self {
            ReadYourWrites::Naive => "naive",
            ReadYourWrites::PinToPrimary { .. } => "pin to primary",
            ReadYourWrites::WaitForGtid { .. } => "wait for GTID",
        }
    }
}

/// What a user last wrote: when, and the GTID of that write. A real app
/// keeps this in the user's session (part 1), so every clone knows it.
#[derive(Debug, Clone, Default)]
pub struct LastWrite {
    /// When the write committed.
    pub at: Option<Instant>,
    /// `@@last_gtid` of the write's connection after commit, e.g. `1-1-42`.
    pub gtid: Option<String>,
}

/// Runs `write` on the primary on one connection and records its GTID.
pub async fn write_tracked<T, F, Fut>(
    pool: &SplitPool,
    last: &mut LastWrite,
    write: F,
) -> Result<T, sqlx::Error>
where
    F: FnOnce(sqlx::pool::PoolConnection<sqlx::MySql>) -> Fut,
    Fut: Future<Output = Result<(T, sqlx::pool::PoolConnection<sqlx::MySql>), sqlx::Error>>,
{
    let conn = pool.primary().acquire().await?;
    let (value, mut conn) = write(conn).await?;
    let gtid: String = sqlx::query_scalar("SELECT @@last_gtid")
        .fetch_one(&mut *conn)
        .await?;
    *last = LastWrite {
        at: Some(Instant::now()),
        gtid: (!gtid.is_empty()).then_some(gtid),
    };
    Ok(value)
}

/// Reads under a read-your-writes policy.
pub async fn read_own<T, F, Fut>(
    pool: &SplitPool,
    policy: ReadYourWrites,
    last: &LastWrite,
    query: F,
) -> Result<(T, ReadFrom), sqlx::Error>
where
    F: Fn(MySqlPool) -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    match policy {
        ReadYourWrites::Naive => pool.read(query).await,
        ReadYourWrites::PinToPrimary { window } => {
            if last.at.is_some_and(|t| t.elapsed() < window) {
                pool.read_primary(query).await
            } else {
                pool.read(query).await
            }
        }
        ReadYourWrites::WaitForGtid { timeout } => {
            let Some(gtid) = &last.gtid else {
                return pool.read(query).await;
            };
            let (from, replica) = pool.reader();
            if from == ReadFrom::Primary {
                return pool.read_primary(query).await;
            }
            // Each replica has its own pool, so once this connection has
            // seen the GTID, any connection of that pool reads the same server.
            let mut conn = match replica.acquire().await {
                Ok(c) => c,
                Err(_) => return pool.read_primary(query).await,
            };
            let waited: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
                .bind(gtid)
                .bind(timeout.as_secs_f64())
                .fetch_one(&mut *conn)
                .await
                .unwrap_or(Some(-1));
            drop(conn);
            if waited == Some(0) {
                Ok((query(replica.clone()).await?, from))
            } else {
                pool.read_primary(query).await
            }
        }
    }
}

/// Replication lag, measured: bump the heartbeat on the primary, then poll
/// the replica until it shows it. Returns the lag, or `None` after `deadline`.
pub async fn measure_lag(
    primary: &MySqlPool,
    replica: &MySqlPool,
    deadline: Duration,
) -> Result<Option<Duration>, sqlx::Error> {
    let beat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64);
    sqlx::query("REPLACE INTO heartbeat (id, beat, at_us) VALUES (1, ?, 0)")
        .bind(beat)
        .execute(primary)
        .await?;
    let start = Instant::now();
    loop {
        let seen: Option<u64> = sqlx::query_scalar("SELECT beat FROM heartbeat WHERE id = 1")
            .fetch_optional(replica)
            .await?;
        if seen == Some(beat) {
            return Ok(Some(start.elapsed()));
        }
        if start.elapsed() > deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}
