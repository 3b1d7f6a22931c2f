//! Experiment 2: cached queries, the anti-pattern. `CACHE=query` keys
//! each result by the hash of its SQL and parameters
//! ([`QueryCache`](crate::pattern::QueryCache)), in the shared Memcached.
//!
//! 1. **Stale reads.** The ten most read articles are read twice (cached),
//!    a logged-in user comments on each, and each is read again through
//!    HAProxy. The answer is compared with the primary: the comment is in
//!    the database, but the cached result does not have it. Nothing the
//!    write knows (an article id) names the hashed query, so nothing was
//!    deleted: stale until the TTL.
//! 2. **Flush on every write.** The correct fix for cached queries is to
//!    drop them all on any write (`QUERY_FLUSH_ON_WRITE=true`: a new key
//!    generation). Under a read/write mix (one request in 20 a comment) the
//!    hit ratio collapses against the same mix without the flush.
//! 3. **MariaDB's own query cache** (off by default in 10.11, and in the
//!    lab) under the same mix with `CACHE=none`, on the primary *and* the
//!    replica (`CACHE=none` reads like part 2: both servers answer reads):
//!    the server drops every cached result of a table on any write to it
//!    (a replicated write too), so it has the same problem. Turning it on
//!    changes the *shared* servers, so it is done by
//!    [`with_mariadb_query_cache`], a guard that puts back the lab's
//!    configuration ([`LAB_QUERY_CACHE_TYPE`], [`LAB_QUERY_CACHE_SIZE`]) on
//!    every path (Ok, Err, panic, a cancelled future), serialised across
//!    processes by the named lock [`QUERY_CACHE_LOCK`]. It puts back the
//!    lab's values, not the ones it found: a demo killed mid-drill runs no
//!    undo, and the next drill then heals the servers instead of keeping
//!    the cache on for ever. MariaDB 10.11 allows it at runtime:
//!    `SET GLOBAL query_cache_size = N`, then
//!    `SET GLOBAL query_cache_type = ON`; sessions opened after that use it
//!    (the clones are started inside the guard).
//!
//! Hit ratios come from `X-Cache`, the server's own account of each read,
//! counted by the client; Memcached's `get_hits` / `get_misses` deltas are
//! printed beside them (the shared server's counters: other clients and the
//! flush generation's own lookups count too). MariaDB's from
//! `Qcache_hits`, `Qcache_inserts` and `Com_select` of both servers (a read
//! answered by the query cache is not counted in `Com_select`): a ratio
//! *per statement*, recorded with MariaDB's comparison, not beside the
//! per-request `X-Cache` ratios.
//!
//! Run it alone: `DEMO_ONLY=2 cargo run -p part3-cache --bin part3-demo`.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::demo::figure;
use common::measure::LoadReport;
use common::results::Kind;
use futures::FutureExt;
use sqlx::{Acquire, MySqlConnection, MySqlPool};

use super::Demo;
use super::no_cache::{self, Stale, XCache, per_request, ratio_pct};

/// The named lock (on the primary) that serialises query-cache drills.
pub const QUERY_CACHE_LOCK: &str = "lab_query_cache_drill";
/// How long a drill waits for another one holding the lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);
/// The query cache's size during the drill.
pub const QUERY_CACHE_BYTES: u64 = 32 * 1024 * 1024;
/// Articles the stale-read check comments on.
pub const STALE_CHECKED: u64 = 10;

/// The three parts.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let cluster = demo.cluster(3, &[("CACHE", "query")]).await?;
    let lb = cluster.lb_url();
    let (_, name, _) = no_cache::median_user(&demo.primary).await?;
    let cookie = no_cache::login(&lb, &name).await?;
    let hot = no_cache::hot_articles(&demo.spec.article_popularity(), STALE_CHECKED);
    let s = no_cache::stale_reads(&demo.primary, &lb, &lb, &cookie, &hot).await?;
    record_stale(demo, "query cache", s);

    let cmp = "read/write mix (1 request in 20 a comment): hit ratio by pattern";
    let kept = mix(demo, "query cache, no flush", &lb, &cookie).await?;
    kept.record(demo, cmp);
    cluster.stop().await;

    let cluster = demo
        .cluster(3, &[("CACHE", "query"), ("QUERY_FLUSH_ON_WRITE", "true")])
        .await?;
    let lb = cluster.lb_url();
    let cookie = no_cache::login(&lb, &name).await?;
    let flushed = mix(demo, "query cache, flush on write", &lb, &cookie).await?;
    flushed.record(demo, cmp);
    cluster.stop().await;
    figure(
        Kind::Computed,
        format!(
            "flush on write: hit ratio {:.1}% against {:.1}% without (the same mix, the same articles)",
            flushed.tally.hit_ratio(),
            kept.tally.hit_ratio()
        ),
    );

    let admin =
        common::testing::mariadb_at("MariaDB primary (admin)", &demo.args.primary_admin_url)
            .await?;
    let replica_admin =
        common::testing::mariadb_at("MariaDB replica (admin)", &demo.args.replica_admin_url)
            .await?;
    let d: &Demo = demo;
    // On both servers: `CACHE=none` reads like part 2 (the replica for
    // what a viewer may read a little late, the primary for the rest).
    let servers = [("the primary", &admin), ("the replica", &replica_admin)];
    let q = with_mariadb_query_cache(&servers, QUERY_CACHE_BYTES, || async move {
        let cluster = d.cluster(3, &[("CACHE", "none")]).await?;
        let lb = cluster.lb_url();
        let cookie = no_cache::login(&lb, &name).await?;
        let before = Qcache::both(d).await?;
        let m = mix(d, "MariaDB query cache, CACHE=none", &lb, &cookie).await;
        let after = Qcache::both(d).await?;
        cluster.stop().await;
        Ok((m?, after.minus(&before)))
    })
    .await?;
    let (m, delta) = q;
    figure(Kind::Measured, m.report.line());
    let served = delta.hits + delta.com_select;
    figure(
        Kind::Measured,
        format!(
            "MariaDB query cache ({} MB on the primary and on the replica, the lab's {LAB_QUERY_CACHE_TYPE} put back after): Qcache_hits {}  Qcache_inserts {}  Com_select {}, both servers  ({} comments written)",
            QUERY_CACHE_BYTES >> 20,
            delta.hits,
            delta.inserts,
            delta.com_select,
            m.tally.writes.load(std::sync::atomic::Ordering::Relaxed)
        ),
    );
    figure(
        Kind::Computed,
        format!(
            "MariaDB query cache hit ratio per statement {:.1}% = Qcache_hits / (Qcache_hits + Com_select), both servers (a SELECT, not a request: an article read runs several): every write to a table drops all its cached results",
            ratio_pct(delta.hits, served)
        ),
    );
    let cmp_db = "MariaDB's own query cache under the same mix (CACHE=none)";
    demo.results.load_figures(cmp_db, &m.report);
    for (name, v) in [
        ("Qcache_hits", delta.hits),
        ("Qcache_inserts", delta.inserts),
        ("Com_select (primary + replica)", delta.com_select),
    ] {
        demo.results.measured(
            cmp_db,
            name,
            v as f64,
            "queries",
            "the servers' own counters (primary + replica), delta over the run (the whole servers: keep the lab idle)",
        );
    }
    demo.results.computed(
        cmp_db,
        "MariaDB query cache: hit ratio per statement",
        ratio_pct(delta.hits, served),
        "%",
        "Qcache_hits / (Qcache_hits + Com_select), primary + replica, over the mix: per SELECT, not per request (not comparable with the X-Cache ratios)",
    );
    Ok(())
}

/// Prints and records a stale-read check.
pub fn record_stale(demo: &mut Demo, pattern: &str, s: Stale) {
    figure(
        Kind::Measured,
        format!(
            "{pattern}: {} of {} reads after a comment were stale (the comment in MariaDB, not in the answer); {} of {} were cached before the write",
            s.stale, s.checked, s.warm, s.checked
        ),
    );
    demo.results.measured(
        "stale reads after a comment, through HAProxy (checked against the primary)",
        &format!("{pattern}: stale reads"),
        f64::from(s.stale),
        &format!("of {}", s.checked),
        "reads after a comment that did not show it, while MariaDB had it",
    );
}

/// A read/write mix run with its counts.
pub struct Mix {
    /// The load.
    pub report: LoadReport,
    /// `X-Cache` as the client counted it.
    pub tally: Arc<XCache>,
    /// `Com_select` (primary + replica) delta.
    pub selects: u64,
    /// Memcached's `get_hits` and `get_misses` deltas.
    pub memcached: (u64, u64),
}

/// The read/write mix ([`no_cache::article_mix`]) through `lb` for the
/// demo's seconds, with the servers' counters read around it.
pub async fn mix(demo: &Demo, name: &str, lb: &str, cookie: &str) -> anyhow::Result<Mix> {
    let tally = Arc::new(XCache::default());
    let request = no_cache::article_mix(
        part1_clones::client::http(),
        lb.to_owned(),
        Some(cookie.to_owned()),
        demo.spec.article_popularity(),
        tally.clone(),
    );
    let url = &demo.stack().memcached_url;
    let (h0, m0) = no_cache::memcached_gets(url).await?;
    let (report, selects) = no_cache::counted(demo, name, demo.seconds(), request).await?;
    let (h1, m1) = no_cache::memcached_gets(url).await?;
    Ok(Mix {
        report,
        tally,
        selects,
        memcached: (h1.saturating_sub(h0), m1.saturating_sub(m0)),
    })
}

impl Mix {
    /// Prints the run, its hit ratio and counters, and records them.
    pub fn record(&self, demo: &mut Demo, cmp: &str) {
        let name = &self.report.name;
        let (h, m, b) = self.tally.counts();
        let writes = self.tally.writes.load(std::sync::atomic::Ordering::Relaxed);
        figure(Kind::Measured, self.report.line());
        figure(
            Kind::Measured,
            format!(
                "{name}: X-Cache hit {h} / miss {m} / bypass {b} (counted by the client), {writes} comments; Memcached get_hits +{} get_misses +{} (its own stats, the whole server)",
                self.memcached.0, self.memcached.1
            ),
        );
        let reads = self.report.requests.saturating_sub(writes);
        figure(
            Kind::Computed,
            format!(
                "{name}: hit ratio {:.1}% = hits / reads; {:.2} SELECTs a request = {} Com_select / {} requests",
                self.tally.hit_ratio(),
                per_request(self.selects, self.report.requests),
                self.selects,
                self.report.requests
            ),
        );
        demo.results.load_figures(cmp, &self.report);
        demo.results.measured(
            cmp,
            &format!("{name}: X-Cache hits"),
            h as f64,
            &format!("of {reads} reads"),
            "reads the server answered X-Cache: hit, counted by the client",
        );
        demo.results.computed(
            cmp,
            &format!("{name}: hit ratio"),
            self.tally.hit_ratio(),
            "%",
            "X-Cache hits / reads",
        );
        demo.results.measured(
            cmp,
            &format!("{name}: Com_select"),
            self.selects as f64,
            "SELECTs",
            "SELECTs MariaDB counted on the primary and the replica during the run",
        );
        demo.results.computed(
            cmp,
            &format!("{name}: SELECTs per request"),
            per_request(self.selects, self.report.requests),
            "SELECTs/request",
            "the Com_select delta divided by the requests sent",
        );
    }
}

/// MariaDB's query-cache counters on one server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Qcache {
    /// `Qcache_hits`: reads answered from the query cache.
    pub hits: u64,
    /// `Qcache_inserts`: results stored.
    pub inserts: u64,
    /// `Com_select`: SELECTs executed (query-cache hits are not counted).
    pub com_select: u64,
}

impl Qcache {
    /// The counters now.
    pub async fn read(pool: &MySqlPool) -> anyhow::Result<Qcache> {
        Ok(Qcache {
            hits: Demo::global_status(pool, "Qcache_hits").await?,
            inserts: Demo::global_status(pool, "Qcache_inserts").await?,
            com_select: Demo::global_status(pool, "Com_select").await?,
        })
    }

    /// The counters of the primary plus the replica (the demo's pools).
    pub async fn both(demo: &Demo) -> anyhow::Result<Qcache> {
        let (p, r) = (
            Self::read(&demo.primary).await?,
            Self::read(&demo.replica).await?,
        );
        Ok(Qcache {
            hits: p.hits + r.hits,
            inserts: p.inserts + r.inserts,
            com_select: p.com_select + r.com_select,
        })
    }

    /// `self - before`, each counter.
    pub fn minus(&self, before: &Qcache) -> Qcache {
        Qcache {
            hits: self.hits.saturating_sub(before.hits),
            inserts: self.inserts.saturating_sub(before.inserts),
            com_select: self.com_select.saturating_sub(before.com_select),
        }
    }
}

/// The stack's own query-cache type: `lab.d/services.sh` writes no
/// `query_cache_*` line into the servers' `my.cnf`, so MariaDB 10.11's
/// default (`OFF`) is the lab's configuration. The drill always puts this
/// back, never "what it found": a drill killed half-way (Ctrl-C, `kill`,
/// a crash: no undo runs) leaves the cache on, and the next drill heals it.
pub const LAB_QUERY_CACHE_TYPE: &str = "OFF";
/// The stack's own `query_cache_size` (MariaDB 10.11's default, 1 MiB:
/// what a fresh lab server reports).
pub const LAB_QUERY_CACHE_SIZE: u64 = 1024 * 1024;

/// A server's query-cache settings: `@@GLOBAL.query_cache_type` (`OFF`,
/// `ON`, `DEMAND`) and `@@GLOBAL.query_cache_size` in bytes.
pub async fn query_cache_settings(admin: &MySqlPool) -> anyhow::Result<(String, u64)> {
    let (kind, size): (String, u64) =
        sqlx::query_as("SELECT CAST(@@GLOBAL.query_cache_type AS CHAR), @@GLOBAL.query_cache_size")
            .fetch_one(admin)
            .await
            .context("reading @@GLOBAL.query_cache_type and query_cache_size")?;
    Ok((kind, size))
}

/// The lab's configuration, as [`query_cache_settings`] reports it.
pub fn lab_query_cache() -> (String, u64) {
    (LAB_QUERY_CACHE_TYPE.to_owned(), LAB_QUERY_CACHE_SIZE)
}

/// Sets the query cache's type and size (`SET GLOBAL`). `kind` must be
/// `OFF`, `ON` or `DEMAND` (the only values it is built from).
async fn set_query_cache(admin: &MySqlPool, kind: &str, size: u64) -> anyhow::Result<()> {
    let kind = kind.to_ascii_uppercase();
    anyhow::ensure!(
        matches!(kind.as_str(), "OFF" | "ON" | "DEMAND" | "0" | "1" | "2"),
        "query_cache_type {kind:?} is not OFF, ON or DEMAND"
    );
    // Turning it on: the size first (a type of ON with a size of 0 is
    // refused); turning it off: the type first.
    let type_sql = format!("SET GLOBAL query_cache_type = {kind}");
    let size_sql = format!("SET GLOBAL query_cache_size = {size}");
    let order = if kind == "OFF" || kind == "0" {
        [type_sql, size_sql]
    } else {
        [size_sql, type_sql]
    };
    for sql in order {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(admin)
            .await
            .with_context(|| sql.clone())?;
    }
    Ok(())
}

/// Puts the lab's configuration back on every server, trying each one
/// even when an earlier one fails.
async fn undo(servers: &[(String, MySqlPool)]) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (name, pool) in servers {
        if let Err(e) = set_query_cache(pool, LAB_QUERY_CACHE_TYPE, LAB_QUERY_CACHE_SIZE).await {
            failed.push(format!("{name}: {e:#}"));
        }
    }
    anyhow::ensure!(
        failed.is_empty(),
        "putting back query_cache_type = {LAB_QUERY_CACHE_TYPE}, query_cache_size = {LAB_QUERY_CACHE_SIZE} failed ({}): set it by hand",
        failed.join("; ")
    );
    Ok(())
}

/// The named lock [`QUERY_CACHE_LOCK`], held on a connection of its own
/// to the primary (a process that dies mid-drill frees it as the
/// connection closes). Take it with [`DrillLock::take`]; give it back with
/// [`DrillLock::release`].
pub struct DrillLock {
    conn: Option<MySqlConnection>,
}

impl DrillLock {
    /// Waits up to [`LOCK_WAIT`] for the lock (another drill, in this
    /// process or any other, may hold it; a cancelled drill holds it until
    /// its undo has run).
    pub async fn take(primary_admin: &MySqlPool) -> anyhow::Result<DrillLock> {
        let mut conn = primary_admin
            .acquire()
            .await
            .context("a connection for the query-cache drill's lock")?
            .detach();
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(QUERY_CACHE_LOCK)
            .bind(LOCK_WAIT.as_secs())
            .fetch_one(conn.acquire().await?)
            .await
            .with_context(|| format!("GET_LOCK('{QUERY_CACHE_LOCK}')"))?;
        anyhow::ensure!(
            got == Some(1),
            "another query-cache drill held the lock {QUERY_CACHE_LOCK} for {LOCK_WAIT:?}: is a demo or test stuck?"
        );
        Ok(DrillLock { conn: Some(conn) })
    }

    /// Whether this still holds the lock (a drill cancelled while holding
    /// it hands it to its undo).
    pub fn held(&self) -> bool {
        self.conn.is_some()
    }

    /// Releases the lock and closes its connection.
    pub async fn release(mut self) {
        if let Some(conn) = self.conn.take() {
            release(conn).await;
        }
    }
}

async fn release(mut conn: MySqlConnection) {
    let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(QUERY_CACHE_LOCK)
        .execute(&mut conn)
        .await;
    let _ = sqlx::Connection::close(conn).await;
}

/// What the guard puts back: run on every normal path; if the guarded
/// future is dropped before it ends, spawned on the runtime *with the
/// lock*, so no other drill starts before the undo has run.
struct Restore<'a> {
    servers: Vec<(String, MySqlPool)>,
    lock: &'a mut DrillLock,
    armed: bool,
}

impl Restore<'_> {
    async fn run(mut self) -> anyhow::Result<()> {
        self.armed = false;
        undo(&self.servers).await
    }
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let servers = std::mem::take(&mut self.servers);
        let lock = self.lock.conn.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = undo(&servers).await {
                        tracing::error!("a cancelled query-cache drill could not be undone: {e:#}");
                    }
                    if let Some(conn) = lock {
                        release(conn).await;
                    }
                });
            }
            // The lock's connection closes as `lock` drops here.
            Err(_) => tracing::error!(
                "a cancelled query-cache drill was left undone (no runtime): set query_cache_type = {LAB_QUERY_CACHE_TYPE}, query_cache_size = {LAB_QUERY_CACHE_SIZE} by hand (the next drill does it too)"
            ),
        }
    }
}

/// Turns MariaDB's query cache on (`bytes` of it) on every server of
/// `servers` (`(name, admin pool)`, a login allowed `SET GLOBAL`, the
/// lab's `labadmin`; the first is the primary, where the lock lives), runs
/// `f`, then puts back the lab's configuration ([`LAB_QUERY_CACHE_TYPE`],
/// [`LAB_QUERY_CACHE_SIZE`]) whatever `f` did: returned `Ok`, returned
/// `Err` (`f`'s error wins; an undo error is added as context), panicked
/// (the panic goes on after the undo) or was dropped (the undo is spawned
/// and keeps the lock until it is done). Serialised across processes by
/// [`QUERY_CACHE_LOCK`].
pub async fn with_mariadb_query_cache<T, F, Fut>(
    servers: &[(&str, &MySqlPool)],
    bytes: u64,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let (_, primary) = servers
        .first()
        .context("with_mariadb_query_cache needs at least the primary")?;
    let mut lock = DrillLock::take(primary).await?;
    let out = query_cache_drill(&mut lock, servers, bytes, f).await;
    lock.release().await;
    out
}

/// [`with_mariadb_query_cache`] under a lock the caller holds (a test that
/// checks the settings before and after, inside one hold). If this future
/// is dropped mid-drill, the lock goes with the spawned undo: `lock` is
/// then empty, and taking the lock again waits for the undo.
pub async fn query_cache_drill<T, F, Fut>(
    lock: &mut DrillLock,
    servers: &[(&str, &MySqlPool)],
    bytes: u64,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    anyhow::ensure!(
        lock.held(),
        "the query-cache drill's lock is not held (a cancelled drill took it)"
    );
    let owned: Vec<(String, MySqlPool)> = servers
        .iter()
        .map(|(n, p)| ((*n).to_owned(), (*p).clone()))
        .collect();
    for (name, pool) in &owned {
        let found = query_cache_settings(pool)
            .await
            .with_context(|| format!("the query cache's settings on {name}"))?;
        if found != lab_query_cache() {
            tracing::warn!(
                "{name}: query_cache_type = {}, query_cache_size = {} found (an interrupted drill?); the drill puts back the lab's {LAB_QUERY_CACHE_TYPE} / {LAB_QUERY_CACHE_SIZE}",
                found.0,
                found.1
            );
        }
    }
    let restore = Restore {
        servers: owned.clone(),
        lock,
        armed: true,
    };
    // The change is inside the guard: one that failed half-way is undone too.
    let outcome = AssertUnwindSafe(async move {
        for (name, pool) in &owned {
            set_query_cache(pool, "ON", bytes)
                .await
                .with_context(|| format!("turning the query cache on, on {name}"))?;
        }
        f().await
    })
    .catch_unwind()
    .await;
    let undone = restore.run().await;
    match outcome {
        Err(panic) => {
            if let Err(e) = undone {
                tracing::error!("{e:#}");
            }
            std::panic::resume_unwind(panic)
        }
        Ok(Err(e)) => Err(match undone {
            Err(u) => e.context(format!("{u:#}")),
            Ok(()) => e,
        }),
        Ok(Ok(v)) => undone.map(|()| v),
    }
}
