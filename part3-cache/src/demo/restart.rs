//! Experiment 8: restarts, and sessions in a cache.
//!
//! Servers restart: an upgrade, a kernel patch, a crash. What a cache
//! holds then depends on the server:
//!
//! 1. **Keys across a restart.** The same objects stored in a private
//!    Redis told to persist (`appendonly yes`: every write appended to a
//!    file in its directory, replayed at start; stopped with `SHUTDOWN`,
//!    which flushes the file) and in a private Memcached (memory only).
//!    Count the keys before and after, by the servers' own counters
//!    (`DBSIZE`, `curr_items`): Redis keeps them, Memcached comes back
//!    with none.
//! 2. **What the cold start costs the database.** Three `part3-server`
//!    clones on a private Memcached, under a Zipf read load of the 1,000
//!    most read articles (each read once first, so the cache is warm):
//!    MariaDB's own `Com_select` (primary plus replica) over `--seconds`
//!    while the cache is warm, then again in the first `--seconds` after
//!    Memcached restarts, with the throughput and the `X-Cache` answers.
//!    Every miss is an article assembled from the database again.
//! 3. **Sessions in Memcached.** [`crate::sessions::MemcachedSessions`]
//!    (part 1's session store, on Memcached): users log in, Memcached
//!    restarts, count who is still logged in; and on a small Memcached,
//!    more users log in than it holds: count the first ones still logged
//!    in. The same with part 1's `RedisSessions` on a persisting Redis,
//!    restarted. A cache may drop anything at any time; a session dropped
//!    is a user logged out. That is why part 1 put sessions in Redis.
//!
//! Every server restarted here is the run's own ([`PrivateMemcached`],
//! [`PrivateRedis`]); the stack's are never touched.
//!
//! Run it alone: `DEMO_ONLY=8 target/debug/part3-demo` (see [`super`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::demo::{figure, line};
use common::measure::{Load, run_load};
use common::results::Kind;
use part1_clones::session::{Expiry, RedisSessions, SessionId, SessionStore};
use rand::{Rng, SeedableRng};

use super::eviction::{ZIPF_EXPONENT, zipf_probabilities};

use super::Demo;
use super::backends::{PrivateMemcached, PrivateRedis, article_json};
use crate::backend::CacheBackend;
use crate::key::Key;
use crate::sessions::MemcachedSessions;

/// Objects stored before the restart.
const OBJECTS: u64 = 1000;
/// Users logged in before the restart.
const USERS: u64 = 200;
/// Users who log in after them on the small Memcached.
const CROWD: u64 = 20_000;
const TTL: Duration = Duration::from_secs(3600);
/// The hot set of the cold-start load: the most read articles.
const HOT: u64 = 1000;

/// The expiry of the demo's sessions: long, so only the cache forgets them.
pub const EXPIRY: Expiry = Expiry {
    idle: Duration::from_secs(3600),
    absolute: Duration::from_secs(86_400),
};

/// Runs the experiment.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    keys_across_restart(demo).await?;
    cold_start(demo).await?;
    sessions(demo).await?;
    Ok(())
}

/// Retries `op` for a few seconds: a client's first call after its
/// server restarted may meet the dead connection.
async fn retrying<T, F, Fut>(mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if tokio::time::Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Part 1: Redis with persistence keeps its keys; Memcached loses them.
async fn keys_across_restart(demo: &mut Demo) -> anyhow::Result<()> {
    let value = article_json(demo).await?;
    let mut rd = PrivateRedis::start(true).await?;
    let mut mc = PrivateMemcached::start(64).await?;
    let redis = rd.client("").await?;
    let memcached = mc.client("").await?;
    let keys: Vec<Key> = (0..OBJECTS)
        .map(|i| Key::new("article", &[&i.to_string()]))
        .collect();
    for k in &keys {
        redis.set(k, &value, TTL).await?;
        memcached.set(k, &value, TTL).await?;
    }
    let (r_before, m_before) = (rd.dbsize().await?, mc.stat("curr_items").await?);
    rd.restart().await?;
    mc.restart().await?;
    let (r_after, m_after) = (rd.dbsize().await?, mc.stat("curr_items").await?);
    // And through the project's clients, which reconnect by themselves.
    let r_read =
        retrying(|| async { crate::demo::backends::read_count(&redis, &keys).await }).await?;
    let m_read =
        retrying(|| async { crate::demo::backends::read_count(&memcached, &keys).await }).await?;
    figure(
        Kind::Measured,
        format!(
            "redis (appendonly yes, SHUTDOWN, started again): {r_before} keys before, {r_after} after (DBSIZE); {r_read} of {OBJECTS} read back"
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "memcached (stopped, started again): {m_before} items before, {m_after} after (curr_items); {m_read} of {OBJECTS} read back: it comes back cold"
        ),
    );
    let cmp = "a restart: keys kept";
    let shows = "keys the server itself counts (redis DBSIZE, memcached curr_items)";
    demo.results.measured(
        cmp,
        "redis (persisting): keys before",
        r_before as f64,
        "keys",
        shows,
    );
    demo.results.measured(
        cmp,
        "redis (persisting): keys after",
        r_after as f64,
        "keys",
        shows,
    );
    demo.results.measured(
        cmp,
        "memcached: keys before",
        m_before as f64,
        "keys",
        shows,
    );
    demo.results
        .measured(cmp, "memcached: keys after", m_after as f64, "keys", shows);
    Ok(())
}

/// What one window of load cost the database.
struct Window {
    requests: u64,
    failed: u64,
    selects: u64,
    hits: u64,
    misses: u64,
    bypass: u64,
}

impl Window {
    fn per_request(&self) -> f64 {
        self.selects as f64 / self.requests.saturating_sub(self.failed).max(1) as f64
    }
}

/// Part 2: the database load of a cold start, by MariaDB's counters.
async fn cold_start(demo: &mut Demo) -> anyhow::Result<()> {
    let mut mc = PrivateMemcached::start(64).await?;
    let url = mc.url();
    let cluster = demo
        .cluster(
            3,
            &[
                ("MEMCACHED_URL", url.as_str()),
                ("CACHE", "object"),
                ("CACHE_BACKEND", "memcached"),
            ],
        )
        .await?;
    let base = cluster.lb_url();
    // The hot set: the HOT most read articles of the dataset, read with
    // the dataset's Zipf skew among them, in a sequence fixed by a seed.
    // The warm-up reads each of them once, so "warm" means warm.
    let articles = demo.spec.article_popularity();
    let cumulative: Vec<f64> = zipf_probabilities(HOT, ZIPF_EXPONENT)
        .iter()
        .scan(0.0, |sum, p| {
            *sum += p;
            Some(*sum)
        })
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut sequence: Vec<u64> = (1..=HOT).map(|rank| articles.id_of_rank(rank)).collect();
    let warm_up = sequence.len() as u64;
    sequence.extend((0..200_000).map(|_| {
        let u: f64 = rng.random();
        let rank = cumulative.partition_point(|&c| c < u) as u64 + 1;
        articles.id_of_rank(rank.min(HOT))
    }));
    let ids = Arc::new(sequence);
    let offset = Arc::new(AtomicU64::new(0));
    let http = part1_clones::client::http();
    let window = demo.seconds();
    let run_window = async |name: &str, max: Option<u64>| -> anyhow::Result<Window> {
        let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
        let s0 = demo.com_select().await?;
        let (http, base, ids, offset, c) = (
            http.clone(),
            base.clone(),
            ids.clone(),
            offset.clone(),
            counts.clone(),
        );
        let start = offset.load(Ordering::SeqCst);
        let load = Load::Closed {
            concurrency: 16,
            duration: if max.is_some() {
                Duration::from_secs(60)
            } else {
                window
            },
            max_requests: max,
        };
        let report = run_load(name, load, move |i| {
            let (http, base, ids, c) = (http.clone(), base.clone(), ids.clone(), c.clone());
            let id = ids[((start + i) % ids.len() as u64) as usize];
            async move {
                let res = http
                    .get(format!("{base}/articles/{id}"))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let slot = match res.headers().get("x-cache").and_then(|v| v.to_str().ok()) {
                    Some("hit") => 0,
                    Some("miss") => 1,
                    _ => 2,
                };
                c[slot].fetch_add(1, Ordering::Relaxed);
                if res.status().is_success() {
                    Ok(())
                } else {
                    Err(format!("status {}", res.status()))
                }
            }
        })
        .await;
        let selects = demo.com_select().await?.saturating_sub(s0);
        offset.fetch_add(report.requests, Ordering::SeqCst);
        Ok(Window {
            requests: report.requests,
            failed: report.errors,
            selects,
            hits: counts[0].load(Ordering::Relaxed),
            misses: counts[1].load(Ordering::Relaxed),
            bypass: counts[2].load(Ordering::Relaxed),
        })
    };
    // Warm the cache (every hot article once), then measure it warm.
    run_window("warming up", Some(warm_up)).await?;
    let warm = run_window("warm cache", None).await?;
    mc.restart().await?;
    let cold = run_window("cold, just restarted", None).await?;
    cluster.stop().await;
    let cmp = "the database load of a cold start (3 clones, object cache on a private memcached)";
    for (name, w) in [("warm cache", &warm), ("after the restart", &cold)] {
        figure(
            Kind::Measured,
            format!(
                "{name}: {} requests in {:?} ({} failed), X-Cache hit {} / miss {} / bypass {}, MariaDB Com_select +{}",
                w.requests, window, w.failed, w.hits, w.misses, w.bypass, w.selects,
            ),
        );
        figure(
            Kind::Computed,
            format!(
                "{name}: {:.2} SELECTs per request (Com_select delta / successful requests)",
                w.per_request()
            ),
        );
        demo.results.computed(
            cmp,
            &format!("{name}: SELECTs per request"),
            w.per_request(),
            "queries",
            "MariaDB Com_select delta (primary plus replica) / successful requests, over the window",
        );
        demo.results.measured(
            cmp,
            &format!("{name}: throughput"),
            (w.requests - w.failed) as f64 / window.as_secs_f64(),
            "req/s",
            "successful article reads per second through HAProxy, 16 at a time",
        );
        demo.results.measured(
            cmp,
            &format!("{name}: SELECTs"),
            w.selects as f64,
            "queries",
            "MariaDB Com_select delta over the window",
        );
        demo.results.measured(
            cmp,
            &format!("{name}: X-Cache hits"),
            w.hits as f64,
            &format!("of {} answers", w.hits + w.misses + w.bypass),
            "answers the clones marked X-Cache: hit, counted by the client",
        );
        demo.results.computed(
            cmp,
            &format!("{name}: hit ratio"),
            w.hits as f64 / (w.hits + w.misses + w.bypass).max(1) as f64 * 100.0,
            "%",
            "X-Cache hits / answers (hit + miss + bypass)",
        );
    }
    // A ratio of per-request counts would divide by almost nothing (a warm
    // cache sends next to no SELECT): the difference and the cost per miss
    // say it better.
    let extra = cold.selects as f64 - warm.selects as f64;
    let per_miss = cold.selects as f64 / cold.misses.max(1) as f64;
    figure(
        Kind::Computed,
        format!(
            "the first {window:?} after the restart cost the database {extra:.0} more SELECTs than {window:?} of a warm cache, about {per_miss:.1} per miss, and served {:.0} % of the warm throughput (from the measured counts; other databases on the same MariaDB count too)",
            (cold.requests - cold.failed) as f64 / (warm.requests - warm.failed).max(1) as f64
                * 100.0
        ),
    );
    demo.results.computed(
        cmp,
        "extra SELECTs of the cold window",
        extra,
        "queries",
        "cold window's Com_select delta minus the warm window's",
    );
    demo.results.computed(
        cmp,
        "SELECTs per miss after the restart",
        per_miss,
        "queries",
        "cold window's Com_select delta / its X-Cache misses",
    );
    Ok(())
}

/// Logs `n` users in (user ids from `first`), `concurrency` at a time.
async fn log_in<S: SessionStore>(store: &S, first: u64, n: u64) -> anyhow::Result<Vec<SessionId>> {
    let mut ids = Vec::with_capacity(n as usize);
    for chunk in (first..first + n).collect::<Vec<_>>().chunks(32) {
        let made = futures::future::join_all(
            chunk
                .iter()
                .map(|&u| async move { store.create(u, &format!("user{u}")).await }),
        )
        .await;
        for id in made {
            ids.push(id?);
        }
    }
    Ok(ids)
}

/// How many of `ids` are still logged in.
pub async fn logged_in<S: SessionStore>(store: &S, ids: &[SessionId]) -> anyhow::Result<u64> {
    let mut n = 0;
    for id in ids {
        n += u64::from(store.load(id).await?.is_some());
    }
    Ok(n)
}

/// Part 3: sessions in Memcached against sessions in a persisting Redis.
async fn sessions(demo: &mut Demo) -> anyhow::Result<()> {
    let cmp = "sessions in a cache: users still logged in";
    let shows = "sessions that still load (of the users logged in)";
    // Memcached, restarted.
    let mut mc = PrivateMemcached::start(64).await?;
    let store = MemcachedSessions::new(Arc::new(mc.client("s:").await?), EXPIRY);
    let ids = log_in(&store, 1, USERS).await?;
    let before = logged_in(&store, &ids).await?;
    mc.restart().await?;
    let after = retrying(|| async { logged_in(&store, &ids).await }).await?;
    figure(
        Kind::Measured,
        format!(
            "memcached sessions, restart: {before} of {USERS} users logged in before, {after} after"
        ),
    );
    demo.results.measured(
        cmp,
        "memcached, restarted: before",
        before as f64,
        "users",
        shows,
    );
    demo.results.measured(
        cmp,
        "memcached, restarted: after",
        after as f64,
        "users",
        shows,
    );
    drop(mc);

    // Memcached, full: more users log in than it holds.
    let small = PrivateMemcached::start(1).await?;
    let store = MemcachedSessions::new(Arc::new(small.client("s:").await?), EXPIRY);
    let ids = log_in(&store, 1, USERS).await?;
    let before = logged_in(&store, &ids).await?;
    let crowd = log_in(&store, USERS + 1, CROWD).await?;
    let after = logged_in(&store, &ids).await?;
    let evictions = small.stat("evictions").await?;
    figure(
        Kind::Measured,
        format!(
            "memcached sessions, -m 1 and {CROWD} more logins: {before} of the first {USERS} logged in before, {after} after ({evictions} evictions, memcached stats)"
        ),
    );
    demo.results.measured(
        cmp,
        "memcached, full (evicting): first users after the crowd",
        after as f64,
        "users",
        shows,
    );
    drop(crowd);
    drop(small);

    // Redis with persistence, restarted: part 1's store.
    let mut rd = PrivateRedis::start(true).await?;
    let prefix = common::testing::unique_name("s");
    let store = RedisSessions::new(rd.manager().await?, &prefix, EXPIRY);
    let ids = log_in(&store, 1, USERS).await?;
    let before = logged_in(&store, &ids).await?;
    rd.restart().await?;
    let after = retrying(|| async { logged_in(&store, &ids).await }).await?;
    figure(
        Kind::Measured,
        format!(
            "redis sessions (appendonly yes), restart: {before} of {USERS} users logged in before, {after} after"
        ),
    );
    demo.results.measured(
        cmp,
        "redis (persisting), restarted: before",
        before as f64,
        "users",
        shows,
    );
    demo.results.measured(
        cmp,
        "redis (persisting), restarted: after",
        after as f64,
        "users",
        shows,
    );
    line(
        "a cache may forget anything, any time: a session forgotten is a user logged out. That is why part 1 keeps sessions in Redis, told to persist.",
    );
    Ok(())
}
