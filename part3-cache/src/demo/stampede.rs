//! Experiment 9: a stampede. The most read article expires while a hundred
//! readers want it; how many times is it assembled from the database?
//!
//! For each protection (`STAMPEDE=none|single-flight|lease|xfetch`, see
//! [`crate::stampede`]) three `part3-server` clones run behind HAProxy
//! with `CACHE_TTL_SECS=1` and no jitter, on a cache prefix of their own.
//! The assemblies are counted twice: by the clones themselves (each
//! serves its loader runs at `GET /cache/stats`, summed here: measured),
//! and by MariaDB (`Com_select` on the primary plus the replica, divided
//! by the SELECTs of one assembly, measured once on cold reads: computed;
//! it is the whole server's count, so other work on the lab shows up in
//! it as extra assemblies, never fewer).
//!
//! 1. **The herd.** 100 readers ask for the article at the same instant,
//!    through HAProxy (about 33 per clone), while it is not in the cache.
//!    The clones are fresh, on a key prefix of their own, so the article's
//!    key is absent: the state an expiry leaves (the cache cannot tell
//!    "expired" from "never stored"), without waiting two or three seconds
//!    for one on Memcached's whole-second clock. A first herd on *another*
//!    article opens the readers' connections and the clones' database
//!    pools, so the measured herd arrives at once, as it would on a warm
//!    server. Expected: about 100 assemblies with no protection, at most 3
//!    with single-flight (one per clone), 1 with the lease; XFetch does
//!    nothing for a key that is already gone, so it is like none here.
//! 2. **Steady traffic.** 100 readers read the article in a loop for a few
//!    seconds while it expires every second: real expiries, one a second.
//!    `Com_select` is sampled every 50 ms: the peak of SELECTs per second
//!    is the herd's shape (Facebook: 17K/s at peak without leases, 1.3K/s
//!    with). XFetch shines here: a reader of each clone refreshes the
//!    value just before it expires, the others keep hitting.
//!
//! The four protections run one after the other, never side by side: the
//! SELECTs are counted by MariaDB for the whole server, and one cluster's
//! traffic (or its health checks) would count as another's assemblies.
//! The experiment prints its wall time and where it went.
//!
//! With single-flight, the readers that waited for their clone's load
//! answer `X-Cache: miss` too (they got a loaded value, not a cached
//! one): count assemblies with the counters, not with the header.
//!
//! Run it alone: `DEMO_ONLY=9 cargo run -p part3-cache --bin part3-demo`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;
use tokio::sync::Barrier;

use super::Demo;
use super::no_cache::{hot_articles, ok, x_cache};
use crate::stampede::Stampede;

/// Readers in the herd.
const READERS: usize = 100;
/// The clones' cache timeout here. The default (50 ms) is right for a
/// server with cores to spare; on the lab's shared two cores, 100 readers
/// against three debug clones push some cache calls past it, and each of
/// those is a bypass (served from the database), which is not what this
/// experiment counts. Experiment 11 runs with the default.
const CACHE_TIMEOUT_MS: &str = "1000";
/// How often `Com_select` is sampled during steady traffic.
const SAMPLE: Duration = Duration::from_millis(50);

/// The herd and the steady traffic, for each protection.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let pop = demo.spec.article_popularity();
    let started = Instant::now();
    let ranks = hot_articles(&pop, 5);
    let hot = ranks[0];
    let cold = ranks[1..4].to_vec();
    // The warm-up herd's article: neither the hot one nor one the SELECTs
    // of an assembly are measured on (those must be cold reads).
    let other = ranks[4];
    // Two expiries by default (DEMO_SECONDS=3), up to four with longer runs.
    let steady_for = demo
        .seconds()
        .saturating_sub(Duration::from_secs(1))
        .clamp(Duration::from_secs(2), Duration::from_secs(4));
    let (mut starting, mut steadying, mut stopping) =
        (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    common::demo::line(format!(
        "article {hot} (the most read), 3 clones behind HAProxy, CACHE_TTL_SECS=1, CACHE_JITTER=0, CACHE_TIMEOUT_MS={CACHE_TIMEOUT_MS} (so a slow cache call on this busy machine is not a bypass load); {READERS} readers; assemblies counted by the clones (GET /cache/stats) and by MariaDB (Com_select, primary + replica: the whole server's, others' work included)"
    ));
    let http = part1_clones::client::http();
    let mut per_assembly = None;
    let cmp = "stampede: database assemblies of one hot article";
    let mut peaks = Vec::new();
    for policy in [
        Stampede::None,
        Stampede::SingleFlight,
        Stampede::Lease,
        Stampede::XFetch,
    ] {
        let t = Instant::now();
        let cluster = demo
            .cluster(
                3,
                &[
                    ("STAMPEDE", policy.as_str()),
                    ("CACHE_TTL_SECS", "1"),
                    ("CACHE_JITTER", "0"),
                    ("CACHE_TIMEOUT_MS", CACHE_TIMEOUT_MS),
                ],
            )
            .await?;
        starting += t.elapsed();
        let lb = cluster.lb_url();
        let per = match per_assembly {
            Some(p) => p,
            None => {
                let p = selects_per_assembly(demo, &http, &lb, &cold).await?;
                figure(
                    Kind::Measured,
                    format!(
                        "one assembly of an article = {p} SELECTs (Com_select delta of a cold read, the fewest of {})",
                        cold.len()
                    ),
                );
                demo.results.measured(
                    cmp,
                    "SELECTs per assembly",
                    p as f64,
                    "SELECTs",
                    "Com_select delta of one cold read of an article (the fewest of three)",
                );
                per_assembly = Some(p);
                p
            }
        };
        let url = format!("{lb}/articles/{hot}");

        // 1. The herd on the absent key. A first herd, on another article,
        // opens the readers' connections and grows the clones' database
        // pools (so the measured one arrives at once, not one TCP handshake
        // or database login after another).
        herd(&http, &format!("{lb}/articles/{other}")).await;
        let (before, loads_before) = (demo.com_select().await?, loads(&http, &cluster).await?);
        let tally = herd(&http, &url).await;
        let selects = demo.com_select().await?.saturating_sub(before);
        let loaded = loads(&http, &cluster).await?.saturating_sub(loads_before);
        let assemblies = selects as f64 / per as f64;
        figure(
            Kind::Measured,
            format!(
                "{:<13} herd: {loaded:>3} assemblies (the clones' own count); X-Cache hit {} miss {} bypass {}, failed {}",
                policy.as_str(),
                tally.hit,
                tally.miss,
                tally.bypass,
                tally.failed
            ),
        );
        figure(
            Kind::Computed,
            format!(
                "{:<13} herd: {assemblies:>5.1} assemblies by MariaDB's count = {selects} Com_select / {per}",
                policy.as_str(),
            ),
        );
        let r = &mut demo.results;
        r.measured(
            cmp,
            &format!("{}: herd assemblies (clones' count)", policy.as_str()),
            loaded as f64,
            "assemblies",
            "loader runs the three clones counted (GET /cache/stats, loads) while 100 readers asked at once for the article, absent from the cache",
        );
        r.measured(
            cmp,
            &format!("{}: herd Com_select", policy.as_str()),
            selects as f64,
            "SELECTs",
            "SELECTs MariaDB counted while 100 readers asked at once for the article, absent from the cache",
        );
        r.computed(
            cmp,
            &format!("{}: herd assemblies", policy.as_str()),
            assemblies,
            "assemblies",
            "the herd's Com_select delta divided by the SELECTs of one assembly",
        );
        r.measured(
            cmp,
            &format!("{}: herd X-Cache miss", policy.as_str()),
            tally.miss as f64,
            "answers",
            "answers saying miss (single-flight followers and lease waiters that got the loaded value say miss or hit)",
        );

        // 2. Steady traffic across expiries: the peak.
        let loads_before = loads(&http, &cluster).await?;
        let t = Instant::now();
        let steady = steady(demo, &http, &url, steady_for).await?;
        steadying += t.elapsed();
        let loaded = loads(&http, &cluster).await?.saturating_sub(loads_before);
        let expiries = steady_for.as_secs_f64(); // one per second (TTL 1 s)
        figure(
            Kind::Measured,
            format!(
                "{:<13} steady: {} reads in {:.1} s, X-Cache miss {} bypass {}, {loaded} assemblies (the clones' count); peak {:.0} SELECTs/s (Com_select sampled every {} ms)",
                policy.as_str(),
                steady.reads,
                steady_for.as_secs_f64(),
                steady.misses,
                steady.bypasses,
                steady.peak_qps,
                SAMPLE.as_millis()
            ),
        );
        figure(
            Kind::Computed,
            format!(
                "{:<13} steady: about {:.1} assemblies per expiry ({loaded} / ~{expiries:.0} expiries); by MariaDB's count {:.1} ({} Com_select / {per})",
                policy.as_str(),
                loaded as f64 / expiries,
                steady.selects as f64 / per as f64,
                steady.selects,
            ),
        );
        let r = &mut demo.results;
        r.measured(
            cmp,
            &format!("{}: steady assemblies (clones' count)", policy.as_str()),
            loaded as f64,
            "assemblies",
            "loader runs the clones counted (GET /cache/stats) during the steady traffic",
        );
        r.measured(
            cmp,
            &format!("{}: steady peak SELECTs/s", policy.as_str()),
            steady.peak_qps,
            "SELECTs/s",
            "the highest Com_select rate over 50 ms windows while 100 readers read the article as it expired every second",
        );
        r.computed(
            cmp,
            &format!("{}: steady assemblies per expiry", policy.as_str()),
            loaded as f64 / expiries,
            "assemblies",
            "the clones' loads during the steady traffic / its seconds (TTL 1 s: one expiry a second)",
        );
        r.measured(
            cmp,
            &format!("{}: steady X-Cache miss", policy.as_str()),
            steady.misses as f64,
            "answers",
            "answers saying miss during the steady traffic, counted by the client",
        );
        peaks.push((policy, steady.peak_qps));
        let t = Instant::now();
        cluster.stop().await;
        stopping += t.elapsed();
    }
    if let (Some((_, none)), Some((_, lease))) = (
        peaks.iter().find(|(p, _)| *p == Stampede::None),
        peaks.iter().find(|(p, _)| *p == Stampede::Lease),
    ) && *lease > 0.0
    {
        figure(
            Kind::Computed,
            format!(
                "the herd's peak: {none:.0} SELECTs/s without protection, {lease:.0} with the lease: {:.1}x lower (Facebook: 17K/s to 1.3K/s, 13x)",
                none / lease
            ),
        );
    }
    common::demo::line(format!(
        "where the time went: clusters started in {:.1} s, steady traffic {:.1} s, clusters stopped in {:.1} s, the herds and the counters {:.1} s (wall times of this run, not figures of the lesson)",
        starting.as_secs_f64(),
        steadying.as_secs_f64(),
        stopping.as_secs_f64(),
        started
            .elapsed()
            .saturating_sub(starting + steadying + stopping)
            .as_secs_f64()
    ));
    Ok(())
}

/// `GET url`, answer read.
async fn get(http: &reqwest::Client, url: &str) -> anyhow::Result<Option<String>> {
    let res = ok(http.get(url).send().await)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let x = x_cache(&res);
    res.bytes().await.with_context(|| format!("GET {url}"))?;
    Ok(x)
}

/// Loader runs (database assemblies) of every clone since it started,
/// summed: each clone's own count, `GET /cache/stats`.
async fn loads(
    http: &reqwest::Client,
    cluster: &part1_clones::cluster::Cluster,
) -> anyhow::Result<u64> {
    let mut sum = 0;
    for i in 0..cluster.len() {
        let url = format!("{}/cache/stats", cluster.clone_url(i));
        let res = ok(http.get(&url).send().await)
            .await
            .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
        let stats: serde_json::Value = res.json().await.with_context(|| format!("GET {url}"))?;
        sum += stats["loads"]
            .as_u64()
            .with_context(|| format!("GET {url}: no loads in {stats}"))?;
    }
    Ok(sum)
}

/// The SELECTs of one assembly: the `Com_select` delta of a cold read of
/// each of `ids`, the fewest (other work on the server only adds).
async fn selects_per_assembly(
    demo: &Demo,
    http: &reqwest::Client,
    lb: &str,
    ids: &[u64],
) -> anyhow::Result<u64> {
    let mut fewest = u64::MAX;
    for id in ids {
        let before = demo.com_select().await?;
        let x = get(http, &format!("{lb}/articles/{id}")).await?;
        let delta = demo.com_select().await?.saturating_sub(before);
        anyhow::ensure!(
            x.as_deref() == Some("miss"),
            "a cold read of article {id} answered X-Cache {x:?}, not miss"
        );
        fewest = fewest.min(delta);
    }
    anyhow::ensure!(
        fewest > 0 && fewest != u64::MAX,
        "a cold read counted no SELECT"
    );
    Ok(fewest)
}

#[derive(Default, Debug)]
struct Tally {
    hit: u64,
    miss: u64,
    bypass: u64,
    failed: u64,
}

/// `READERS` requests released at the same instant.
async fn herd(http: &reqwest::Client, url: &str) -> Tally {
    let start = Arc::new(Barrier::new(READERS));
    let reads = (0..READERS).map(|_| {
        let (http, url, start) = (http.clone(), url.to_owned(), start.clone());
        tokio::spawn(async move {
            start.wait().await;
            get(&http, &url).await
        })
    });
    let mut tally = Tally::default();
    for r in futures::future::join_all(reads).await {
        match r {
            Ok(Ok(x)) => match x.as_deref() {
                Some("hit") => tally.hit += 1,
                Some("miss") => tally.miss += 1,
                _ => tally.bypass += 1,
            },
            _ => tally.failed += 1,
        }
    }
    tally
}

struct Steady {
    reads: u64,
    misses: u64,
    bypasses: u64,
    selects: u64,
    peak_qps: f64,
}

/// `READERS` readers in a loop for `length`, `Com_select` sampled every
/// [`SAMPLE`].
async fn steady(
    demo: &Demo,
    http: &reqwest::Client,
    url: &str,
    length: Duration,
) -> anyhow::Result<Steady> {
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let misses = Arc::new(AtomicU64::new(0));
    let bypasses = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..READERS)
        .map(|_| {
            let (http, url) = (http.clone(), url.to_owned());
            let (stop, reads, misses, bypasses) = (
                stop.clone(),
                reads.clone(),
                misses.clone(),
                bypasses.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(x) = get(&http, &url).await {
                        reads.fetch_add(1, Ordering::Relaxed);
                        match x.as_deref() {
                            Some("miss") => misses.fetch_add(1, Ordering::Relaxed),
                            Some("hit") => 0,
                            _ => bypasses.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            })
        })
        .collect();
    // From here on an early `?` (or a panic, or a dropped future) stops the
    // readers too: they would spin on failing requests until the process ends.
    let readers = Readers {
        stop: stop.clone(),
        tasks,
    };
    let first = demo.com_select().await?;
    let (mut last, mut at) = (first, Instant::now());
    let end = at + length;
    let mut peak: f64 = 0.0;
    while Instant::now() < end {
        tokio::time::sleep(SAMPLE).await;
        let now = demo.com_select().await?;
        let dt = at.elapsed().as_secs_f64();
        peak = peak.max(now.saturating_sub(last) as f64 / dt);
        (last, at) = (now, Instant::now());
    }
    readers.finish().await;
    Ok(Steady {
        reads: reads.load(Ordering::Relaxed),
        misses: misses.load(Ordering::Relaxed),
        bypasses: bypasses.load(Ordering::Relaxed),
        selects: last.saturating_sub(first),
        peak_qps: peak,
    })
}

/// The steady readers: stopped on every path (told to stop and aborted on
/// drop; [`Readers::finish`] lets them end their request).
struct Readers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Readers {
    /// Tells them to stop and waits for each to end its request.
    async fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.tasks {
            t.abort();
        }
    }
}
