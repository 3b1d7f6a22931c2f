//! Replication: writes to the primary, reads from replicas, and the
//! consequences.
//!
//! [`SplitPool`] sends writes to the primary and reads to a replica that is
//! *in rotation* (round robin), and falls back to the primary when none is:
//! a replica that dies costs latency, never a failed read. A background
//! task checks each replica every [`HEALTH_INTERVAL`] and ends with the
//! pool (it holds only a `Weak` reference). A replica is in rotation when
//!
//! - it answers (a read that fails on it with a connection error also
//!   takes it out at once, and the read is retried on the primary);
//! - both replication threads run (`SHOW SLAVE STATUS`: `Slave_IO_Running`
//!   and `Slave_SQL_Running` are `Yes`); a stopped SQL thread means the
//!   replica falls further behind with every write;
//! - its lag is within a stated bound, [`DEFAULT_MAX_LAG`] unless told
//!   (`REPLICA_MAX_LAG_MS`). The lag is measured by GTID positions, not by
//!   `Seconds_Behind_Master` (whole seconds, and 0 while the SQL thread is
//!   idle): each check reads the primary's `@@gtid_binlog_pos` and
//!   remembers when it first saw each position; the replica's lag is how
//!   long ago the primary reached the oldest position the replica's
//!   `@@gtid_slave_pos` has not reached yet. Its resolution is the check
//!   interval: a lag is seen at most one interval late.
//!
//! It comes back into rotation at the first check that finds it caught up.
//! One exception: when the primary itself does not answer, a replica whose
//! SQL thread runs stays in rotation even though its IO thread cannot reach
//! the primary: it holds everything the primary sent before it died, and a
//! slightly old answer beats no answer.
//!
//! Replication is asynchronous, so a replica within the bound still lags a
//! little: a user who writes and then reads may not see their write.
//! [`ReadYourWrites`] is the choice:
//!
//! - `Naive`: read any replica that answers, fresh or not (stale reads
//!   possible; this is also the old `SELECT 1` health check: alive is
//!   enough);
//! - `PinToPrimary`: after a write, read that user's data from the primary
//!   for a window (cheap, but the primary takes those reads);
//! - `WaitForGtid`: remember the write's GTID and, on the replica, wait for
//!   it (`MASTER_GTID_WAIT`) up to a timeout, then fall back to the primary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySqlPool, Row};

/// How often replicas are health-checked, unless told otherwise.
pub const HEALTH_INTERVAL: Duration = Duration::from_millis(500);

/// The largest lag a replica may have and stay in rotation, unless told
/// otherwise (`REPLICA_MAX_LAG_MS`).
pub const DEFAULT_MAX_LAG: Duration = Duration::from_millis(1000);

/// How long one check of one server may take before it counts as down.
const CHECK_TIMEOUT: Duration = Duration::from_millis(400);

/// Where a read went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFrom {
    /// The primary (by choice or by fallback).
    Primary,
    /// Replica number `i`.
    Replica(usize),
}

impl ReadFrom {
    /// `primary` or `replica-<i>`, as the server's `X-Read-From` header says.
    pub fn label(self) -> String {
        match self {
            ReadFrom::Primary => "primary".into(),
            ReadFrom::Replica(i) => format!("replica-{i}"),
        }
    }
}

/// How the health check treats replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Out of rotation above this lag.
    pub max_lag: Duration,
    /// How often the background task checks.
    pub interval: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            max_lag: DEFAULT_MAX_LAG,
            interval: HEALTH_INTERVAL,
        }
    }
}

/// What the last check found about one replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaHealth {
    /// It answered.
    pub alive: bool,
    /// In rotation: alive, replicating, within the lag bound.
    pub in_rotation: bool,
    /// The measured lag (lower bound, check-interval resolution), if known.
    pub lag: Option<Duration>,
    /// Why it is out of rotation, if it is.
    pub reason: Option<String>,
}

struct Replica {
    pool: MySqlPool,
    /// Answers queries (what `SELECT 1` checked).
    alive: AtomicBool,
    /// Alive, replicating, and within the lag bound.
    fresh: AtomicBool,
    /// The last measured lag in ms, `u64::MAX` when unknown.
    lag_ms: AtomicU64,
    reason: Mutex<Option<String>>,
}

/// A GTID position: per replication domain, the highest sequence number
/// (`0-1-100,1-2-7` is domain 0 at 100, domain 1 at 7).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GtidPos(BTreeMap<u32, u64>);

impl GtidPos {
    /// Parses `@@gtid_binlog_pos` / `@@gtid_slave_pos`; unknown parts are skipped.
    pub fn parse(s: &str) -> GtidPos {
        GtidPos(
            s.split(',')
                .filter_map(|g| {
                    let mut it = g.trim().split('-');
                    let domain = it.next()?.parse().ok()?;
                    let _server = it.next()?;
                    let seq = it.next()?.parse().ok()?;
                    Some((domain, seq))
                })
                .collect(),
        )
    }

    /// Whether this position has reached `other` in every domain of `other`.
    pub fn contains(&self, other: &GtidPos) -> bool {
        other
            .0
            .iter()
            .all(|(d, seq)| self.0.get(d).is_some_and(|s| s >= seq))
    }
}

struct Inner {
    primary: MySqlPool,
    replicas: Vec<Replica>,
    next: AtomicUsize,
    policy: HealthPolicy,
    /// The primary's positions, each with when a check first saw it.
    seen: Mutex<VecDeque<(Instant, GtidPos)>>,
    /// Closed when the health task ends (see [`SplitPool::health_task_ended`]).
    task_alive: tokio::sync::watch::Receiver<()>,
    /// Checks in a row in which the primary did not answer. One slow
    /// answer (a busy primary's pool) is not a dead primary: only after
    /// [`PRIMARY_DOWN_AFTER`] misses does a replica with a running SQL
    /// thread count as the best copy left.
    primary_misses: AtomicU64,
}

/// Missed primary checks in a row before the primary counts as down.
const PRIMARY_DOWN_AFTER: u64 = 3;

/// A primary and its replicas, with reads split off and fallback.
#[derive(Clone)]
pub struct SplitPool {
    inner: Arc<Inner>,
}

/// Connects lazily with short timeouts, so a dead server is a fast error.
pub fn lazy_pool(url: &str, max: u32) -> Result<MySqlPool, sqlx::Error> {
    lazy_pool_with(url, max, Duration::from_secs(2))
}

/// The same with a stated acquire timeout: how long a query waits for a
/// connection, including connecting. A stopped server refuses at once, but
/// sqlx keeps retrying the connect until this timeout, so it is the time a
/// write takes to fail when the primary is down (`DB_ACQUIRE_TIMEOUT_MS`).
pub fn lazy_pool_with(
    url: &str,
    max: u32,
    acquire_timeout: Duration,
) -> Result<MySqlPool, sqlx::Error> {
    lazy_options(max, acquire_timeout).connect_lazy(url)
}

/// [`lazy_pool_with`], counted on `/metrics` as `lab_db_queries_total{pool}`
/// (the live page's "queries by pool": a server's pools are counted, a
/// demo's need not be).
pub fn counted_pool(
    url: &str,
    max: u32,
    acquire_timeout: Duration,
    pool: &'static str,
) -> Result<MySqlPool, sqlx::Error> {
    common::metrics::count_queries(lazy_options(max, acquire_timeout), pool).connect_lazy(url)
}

fn lazy_options(max: u32, acquire_timeout: Duration) -> MySqlPoolOptions {
    MySqlPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(acquire_timeout)
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
    /// A split pool over a primary and replicas, with the default
    /// [`HealthPolicy`] and a health checker on the current tokio runtime.
    pub fn new(primary: MySqlPool, replicas: Vec<MySqlPool>) -> Self {
        Self::with_policy(primary, replicas, HealthPolicy::default())
    }

    /// The same with a stated lag bound and check interval. Replicas start
    /// in rotation; the first check runs after one interval.
    pub fn with_policy(primary: MySqlPool, replicas: Vec<MySqlPool>, policy: HealthPolicy) -> Self {
        let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
        let inner = Arc::new(Inner {
            primary,
            replicas: replicas
                .into_iter()
                .map(|pool| Replica {
                    pool,
                    alive: AtomicBool::new(true),
                    fresh: AtomicBool::new(true),
                    lag_ms: AtomicU64::new(u64::MAX),
                    reason: Mutex::new(None),
                })
                .collect(),
            next: AtomicUsize::new(0),
            policy,
            seen: Mutex::new(VecDeque::new()),
            task_alive: alive_rx,
            primary_misses: AtomicU64::new(0),
        });
        // The task holds a Weak: when the last SplitPool is dropped, the
        // next upgrade fails and the task ends (and drops `alive_tx`).
        let weak: Weak<Inner> = Arc::downgrade(&inner);
        tokio::spawn(async move {
            let _alive = alive_tx;
            // The first check runs at once, so a replica that is already
            // stale when the pool is built leaves rotation within one check.
            loop {
                let Some(inner) = weak.upgrade() else { break };
                SplitPool { inner }.check_replicas().await;
                tokio::time::sleep(policy.interval).await;
            }
        });
        SplitPool { inner }
    }

    /// Resolves once the background health task has ended (it ends within
    /// one interval of the last clone of this pool being dropped).
    pub fn health_task_ended(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.task_alive.clone();
        async move { while rx.changed().await.is_ok() {} }
    }

    /// Checks every replica once (the background task calls this).
    pub async fn check_replicas(&self) {
        let inner = &self.inner;
        let now = Instant::now();
        let primary_pos = tokio::time::timeout(
            CHECK_TIMEOUT,
            sqlx::query_scalar::<_, String>("SELECT @@gtid_binlog_pos").fetch_one(&inner.primary),
        )
        .await
        .ok()
        .and_then(Result::ok)
        .map(|s| GtidPos::parse(&s));
        let primary_down = if primary_pos.is_some() {
            inner.primary_misses.store(0, Ordering::Relaxed);
            false
        } else {
            inner.primary_misses.fetch_add(1, Ordering::Relaxed) + 1 >= PRIMARY_DOWN_AFTER
        };
        if let Some(pos) = &primary_pos {
            let mut seen = inner.seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.back().is_none_or(|(_, last)| last != pos) {
                seen.push_back((now, pos.clone()));
            }
            // Bounded, in case a replica stays behind for hours.
            while seen.len() > 10_000 {
                seen.pop_front();
            }
        }
        let mut reached = Vec::new();
        for (i, r) in inner.replicas.iter().enumerate() {
            let status = tokio::time::timeout(CHECK_TIMEOUT, replica_status(&r.pool))
                .await
                .map_err(|_| "timed out".to_string())
                .and_then(|s| s.map_err(|e| e.to_string()));
            let (alive, fresh, lag, reason) = match status {
                Err(e) => (false, false, None, Some(format!("does not answer: {e}"))),
                Ok(s) => {
                    let lag = primary_pos.as_ref().map(|_| self.lag_of(&s.pos, now));
                    reached.push(s.pos.clone());
                    let (mut fresh, mut reason) = judge(&s, lag, primary_down, inner.policy);
                    if fresh && lag.is_none() && !primary_down && !r.fresh.load(Ordering::Relaxed) {
                        // The primary missed this check, so the lag is
                        // unknown: a replica out of rotation stays out
                        // until a check can measure that it caught up.
                        fresh = false;
                        reason = Some("its lag is unknown: the primary missed the check".into());
                    }
                    (true, fresh, lag, reason)
                }
            };
            r.alive.store(alive, Ordering::Relaxed);
            let was = r.fresh.swap(fresh, Ordering::Relaxed);
            r.lag_ms.store(
                lag.map_or(u64::MAX, |l| l.as_millis() as u64),
                Ordering::Relaxed,
            );
            // The live page's "as the app sees it" line: NaN (a gap) while
            // the lag cannot be measured.
            metrics::gauge!(common::metrics::REPLICA_LAG, "replica" => i.to_string())
                .set(lag.map_or(f64::NAN, |l| l.as_secs_f64()));
            if was != fresh {
                match &reason {
                    Some(why) => tracing::warn!(replica = i, why, "replica out of rotation"),
                    None => tracing::info!(replica = i, "replica back in rotation"),
                }
            }
            *r.reason.lock().unwrap_or_else(|p| p.into_inner()) = reason;
        }
        // Forget positions every replica has reached, keeping the newest.
        let mut seen = inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        while seen.len() > 1
            && reached.len() == inner.replicas.len()
            && seen
                .front()
                .is_some_and(|(_, p)| reached.iter().all(|r| r.contains(p)))
        {
            seen.pop_front();
        }
    }

    /// How long ago the primary reached the oldest position `pos` lacks.
    fn lag_of(&self, pos: &GtidPos, now: Instant) -> Duration {
        let seen = self.inner.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.iter()
            .find(|(_, p)| !pos.contains(p))
            .map_or(Duration::ZERO, |(at, _)| now.saturating_duration_since(*at))
    }

    /// What the last check found about replica `i`.
    pub fn replica_health(&self, i: usize) -> Option<ReplicaHealth> {
        let r = self.inner.replicas.get(i)?;
        let lag = r.lag_ms.load(Ordering::Relaxed);
        Some(ReplicaHealth {
            alive: r.alive.load(Ordering::Relaxed),
            in_rotation: r.fresh.load(Ordering::Relaxed) && r.alive.load(Ordering::Relaxed),
            lag: (lag != u64::MAX).then(|| Duration::from_millis(lag)),
            reason: r.reason.lock().unwrap_or_else(|p| p.into_inner()).clone(),
        })
    }

    /// The pool for writes.
    pub fn primary(&self) -> &MySqlPool {
        &self.inner.primary
    }

    /// The health policy in force.
    pub fn policy(&self) -> HealthPolicy {
        self.inner.policy
    }

    /// Replicas currently in rotation.
    pub fn healthy_replicas(&self) -> usize {
        (0..self.inner.replicas.len())
            .filter(|i| self.in_rotation(*i, true))
            .count()
    }

    fn in_rotation(&self, i: usize, need_fresh: bool) -> bool {
        let r = &self.inner.replicas[i];
        r.alive.load(Ordering::Relaxed) && (!need_fresh || r.fresh.load(Ordering::Relaxed))
    }

    fn pick(&self, need_fresh: bool) -> (ReadFrom, &MySqlPool) {
        let n = self.inner.replicas.len();
        for _ in 0..n {
            let i = self.inner.next.fetch_add(1, Ordering::Relaxed) % n;
            if self.in_rotation(i, need_fresh) {
                return (ReadFrom::Replica(i), &self.inner.replicas[i].pool);
            }
        }
        (ReadFrom::Primary, &self.inner.primary)
    }

    /// The next replica in rotation, or the primary if none is.
    pub fn reader(&self) -> (ReadFrom, &MySqlPool) {
        self.pick(true)
    }

    /// The next replica that answers, however far behind: the naive read.
    pub fn any_live_reader(&self) -> (ReadFrom, &MySqlPool) {
        self.pick(false)
    }

    /// Runs a read on a replica in rotation; on a connection error, marks
    /// it down and runs it on the primary. Returns where it was answered.
    pub async fn read<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let picked = self.reader();
        self.read_at(picked, query).await
    }

    /// Runs a read on any live replica, stale or not (the naive policy),
    /// with the same fallback.
    pub async fn read_naive<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let picked = self.any_live_reader();
        self.read_at(picked, query).await
    }

    async fn read_at<T, F, Fut>(
        &self,
        (from, pool): (ReadFrom, &MySqlPool),
        query: F,
    ) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        match query(pool.clone()).await {
            Err(e) if is_connection_error(&e) && from != ReadFrom::Primary => {
                self.mark_down(from, &e);
                Ok((query(self.inner.primary.clone()).await?, ReadFrom::Primary))
            }
            other => other.map(|v| (v, from)),
        }
    }

    /// Takes a replica out of rotation after a failed read (logged once per
    /// outage, not once per read); the next check that reaches it puts it back.
    pub fn mark_down(&self, from: ReadFrom, error: &sqlx::Error) {
        if let ReadFrom::Replica(i) = from
            && let Some(r) = self.inner.replicas.get(i)
            && r.alive.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(replica = i, %error, "replica down: reading from the primary");
        }
    }

    /// Reads on the primary (for read-your-writes).
    pub async fn read_primary<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        Ok((query(self.inner.primary.clone()).await?, ReadFrom::Primary))
    }
}

/// What `SHOW SLAVE STATUS` and `@@gtid_slave_pos` say about a replica.
#[derive(Debug, Clone)]
struct SlaveStatus {
    /// `None` when the server is not a replica at all.
    io_running: Option<String>,
    sql_running: Option<String>,
    seconds_behind: Option<u64>,
    pos: GtidPos,
}

async fn replica_status(pool: &MySqlPool) -> Result<SlaveStatus, sqlx::Error> {
    // The app's user has SLAVE MONITOR, which SHOW SLAVE STATUS needs.
    let row = sqlx::raw_sql("SHOW SLAVE STATUS")
        .fetch_optional(pool)
        .await?;
    let pos: String = sqlx::query_scalar("SELECT @@gtid_slave_pos")
        .fetch_one(pool)
        .await?;
    let text = |name: &str| -> Option<String> {
        let row = row.as_ref()?;
        row.try_get::<String, _>(name).ok().or_else(|| {
            row.try_get::<Vec<u8>, _>(name)
                .ok()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        })
    };
    Ok(SlaveStatus {
        io_running: text("Slave_IO_Running"),
        sql_running: text("Slave_SQL_Running"),
        seconds_behind: text("Seconds_Behind_Master").and_then(|s| s.parse().ok()),
        pos: GtidPos::parse(&pos),
    })
}

/// In rotation or not, and why not.
fn judge(
    s: &SlaveStatus,
    lag: Option<Duration>,
    primary_down: bool,
    policy: HealthPolicy,
) -> (bool, Option<String>) {
    let yes = |v: &Option<String>| v.as_deref() == Some("Yes");
    if s.sql_running.is_none() {
        return (
            false,
            Some("is not replicating (no SHOW SLAVE STATUS)".into()),
        );
    }
    if !yes(&s.sql_running) {
        return (
            false,
            Some("its SQL thread is stopped: it applies no more writes".into()),
        );
    }
    if primary_down {
        // The IO thread cannot reach a dead primary either; what the
        // replica holds is the newest copy left.
        return (true, None);
    }
    if !yes(&s.io_running) {
        return (
            false,
            Some(format!(
                "its IO thread is {}",
                s.io_running.as_deref().unwrap_or("?")
            )),
        );
    }
    if let Some(lag) = lag
        && lag > policy.max_lag
    {
        return (
            false,
            Some(format!(
                "it lags {} ms (bound {} ms)",
                lag.as_millis(),
                policy.max_lag.as_millis()
            )),
        );
    }
    // Whole seconds only, but it sees a lag our samples might not cover yet.
    if s.seconds_behind
        .is_some_and(|sec| Duration::from_secs(sec) > policy.max_lag)
    {
        return (
            false,
            Some(format!(
                "Seconds_Behind_Master is {}",
                s.seconds_behind.unwrap_or(0)
            )),
        );
    }
    (true, None)
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
        ReadYourWrites::Naive => pool.read_naive(query).await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gtid_positions_compare_per_domain() {
        let primary = GtidPos::parse("0-1-100,1-2-7");
        assert!(GtidPos::parse("0-1-100,1-2-7").contains(&primary));
        assert!(GtidPos::parse("1-2-9,0-1-120").contains(&primary));
        assert!(!GtidPos::parse("0-1-99,1-2-7").contains(&primary));
        assert!(
            !GtidPos::parse("0-1-100").contains(&primary),
            "domain 1 missing"
        );
        assert!(GtidPos::parse("").contains(&GtidPos::parse("")));
        assert_eq!(GtidPos::parse("junk,0-1-5"), GtidPos::parse("0-1-5"));
    }

    fn status(io: &str, sql: &str, behind: Option<u64>) -> SlaveStatus {
        SlaveStatus {
            io_running: Some(io.into()),
            sql_running: Some(sql.into()),
            seconds_behind: behind,
            pos: GtidPos::default(),
        }
    }

    #[test]
    fn a_replica_is_in_rotation_only_when_replicating_within_the_bound() {
        let p = HealthPolicy::default();
        let ms = Duration::from_millis;
        assert!(judge(&status("Yes", "Yes", Some(0)), Some(ms(10)), false, p).0);
        assert!(!judge(&status("Yes", "No", Some(0)), Some(ms(0)), false, p).0);
        assert!(!judge(&status("Connecting", "Yes", None), Some(ms(0)), false, p).0);
        assert!(!judge(&status("Yes", "Yes", Some(0)), Some(ms(1500)), false, p).0);
        assert!(!judge(&status("Yes", "Yes", Some(5)), Some(ms(0)), false, p).0);
        // The primary is gone: the replica's copy is the newest there is.
        assert!(judge(&status("Connecting", "Yes", None), None, true, p).0);
        assert!(!judge(&status("Connecting", "No", None), None, true, p).0);
        let not_a_replica = SlaveStatus {
            io_running: None,
            sql_running: None,
            seconds_behind: None,
            pos: GtidPos::default(),
        };
        assert!(!judge(&not_a_replica, None, false, p).0);
    }
}
