//! Experiment 3: cached objects, the fix. `CACHE=object` keys the
//! assembled article by its name (`article:{id}`), and every write deletes
//! the objects it changed, after it commits.
//!
//! 1. **Stale reads: 0.** The same check as experiment 2 (the ten most
//!    read articles cached, a comment on each, read again through HAProxy,
//!    compared with the primary).
//! 2. **The same read/write mix** as experiment 2: the hit ratio with the
//!    writes deleting only what they changed, and the SELECTs per request
//!    (MariaDB's `Com_select`, primary + replica, over the requests sent).
//! 3. **A hit against an assembly, the same article.** For 100 articles
//!    from the tail (so none is cached yet): a `GET` through HAProxy that
//!    misses (assembled from MariaDB, then stored), then one that hits;
//!    and, underneath HTTP, the assembly itself (part 2's three queries on
//!    the primary) against one Memcached `get` of the stored object. The
//!    issue's goal: the hit's p50 at least 10x below the assembly's.
//! 4. **Throughput of the article page through HAProxy**: the Zipf load on
//!    three clones with the object cache warm, then on three clones with
//!    `CACHE=none`, back to back in the same run, each with its SELECTs per
//!    request: the queries the cache saved.
//!
//! Run it alone: `DEMO_ONLY=3 cargo run -p part3-cache --bin part3-demo`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::demo::figure;
use common::measure::{Latencies, Load, fmt_us};
use common::results::Kind;
use part2_database::articles::{self, Shape};

use super::Demo;
use super::no_cache::{self, CONCURRENCY, XCache, per_request};
use super::query_cache;
use crate::backend::{CacheBackend, Memcached};
use crate::server::cache::article_key;

/// Articles timed hit against miss.
pub const TIMED: u64 = 100;
/// The popularity rank the timed articles start at (far in the tail: not
/// read by the loads, so the first read of each is a miss). A dataset with
/// fewer articles (`DEMO_SCALE=tiny`) times its last [`TIMED`] instead.
pub const TIMED_FROM_RANK: u64 = 40_000;

/// The four parts.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let prefix = common::testing::unique_name("d3obj");
    let cluster = demo
        .cluster(3, &[("CACHE", "object"), ("KEY_PREFIX", &prefix)])
        .await?;
    let lb = cluster.lb_url();
    let (_, name, _) = no_cache::median_user(&demo.primary).await?;
    let cookie = no_cache::login(&lb, &name).await?;
    let pop = demo.spec.article_popularity();
    let hot = no_cache::hot_articles(&pop, query_cache::STALE_CHECKED);
    let s = no_cache::stale_reads(&demo.primary, &lb, &lb, &cookie, &hot).await?;
    query_cache::record_stale(demo, "object cache", s);

    let cmp = "read/write mix (1 request in 20 a comment): hit ratio by pattern";
    let mixed = query_cache::mix(demo, "object cache", &lb, &cookie).await?;
    mixed.record(demo, cmp);

    hit_against_assembly(demo, &lb, &prefix).await?;

    let cmp = "the article page through HAProxy, 3 clones: warm object cache against no cache";
    let tally = Arc::new(XCache::default());
    let reads = no_cache::article_reads(
        part1_clones::client::http(),
        lb.clone(),
        pop.clone(),
        tally.clone(),
    );
    let load = Load::closed(CONCURRENCY, demo.seconds());
    let before = demo.com_select().await?;
    let warm = demo
        .load_runs(
            Kind::Measured,
            cmp,
            "article page, warm object cache",
            load,
            reads,
        )
        .await;
    let warm_selects = demo.com_select().await?.saturating_sub(before);
    cluster.stop().await;
    figure(
        Kind::Computed,
        format!(
            "warm object cache: hit ratio {:.1}% (X-Cache, counted by the client)",
            tally.hit_ratio()
        ),
    );

    let cluster = demo.cluster(3, &[("CACHE", "none")]).await?;
    let reads = no_cache::article_reads(
        part1_clones::client::http(),
        cluster.lb_url(),
        pop,
        Arc::new(XCache::default()),
    );
    let before = demo.com_select().await?;
    let cold = demo
        .load_runs(Kind::Measured, cmp, "article page, no cache", load, reads)
        .await;
    let none_selects = demo.com_select().await?.saturating_sub(before);
    cluster.stop().await;

    let total = |runs: &[common::measure::LoadReport]| runs.iter().map(|r| r.requests).sum::<u64>();
    let median_tp = |runs: &[common::measure::LoadReport]| {
        let mut v: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let (warm_per, none_per) = (
        per_request(warm_selects, total(&warm)),
        per_request(none_selects, total(&cold)),
    );
    let (warm_tp, none_tp) = (median_tp(&warm), median_tp(&cold));
    figure(
        Kind::Computed,
        format!(
            "SELECTs a request: {warm_per:.3} with the warm object cache ({warm_selects} Com_select / {} requests) against {none_per:.2} with none ({none_selects} / {}): {:.0}x fewer",
            total(&warm),
            total(&cold),
            safe_div(none_per, warm_per)
        ),
    );
    figure(
        Kind::Computed,
        format!(
            "throughput: {warm_tp:.0} req/s warm against {none_tp:.0} req/s with no cache: {:.1}x (3 clones of the same binary, {}, back to back: same machine, same run)",
            safe_div(warm_tp, none_tp),
            demo.bin.display()
        ),
    );
    for (n, v) in [
        ("warm object cache: Com_select", warm_selects),
        ("no cache: Com_select", none_selects),
    ] {
        demo.results.measured(
            cmp,
            n,
            v as f64,
            "SELECTs",
            "MariaDB's Com_select, primary + replica, over the run",
        );
    }
    demo.results.computed(
        cmp,
        "warm object cache: SELECTs per request",
        warm_per,
        "SELECTs/request",
        "Com_select delta / requests",
    );
    demo.results.computed(
        cmp,
        "no cache: SELECTs per request",
        none_per,
        "SELECTs/request",
        "Com_select delta / requests",
    );
    demo.results.computed(
        cmp,
        "SELECTs per request, no cache / warm object cache",
        safe_div(none_per, warm_per),
        "x",
        "the database queries the object cache saved, as a factor",
    );
    demo.results.computed(
        cmp,
        "throughput, warm object cache / no cache",
        safe_div(warm_tp, none_tp),
        "x",
        "the two measured throughputs, divided",
    );
    Ok(())
}

/// `a / b`, 0 when `b` is 0.
fn safe_div(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

/// Part 3 of the experiment: the same articles missed then hit through
/// HAProxy, and underneath, assembled from MariaDB against got from
/// Memcached.
async fn hit_against_assembly(demo: &mut Demo, lb: &str, prefix: &str) -> anyhow::Result<()> {
    let http = part1_clones::client::http();
    let pop = demo.spec.article_popularity();
    let mc = Memcached::connect(
        &demo.stack().memcached_url,
        &format!("{prefix}:"),
        Duration::from_secs(1),
    )
    .await?;
    let (mut miss, mut hit) = (Latencies::new(), Latencies::new());
    let (mut assembly, mut get) = (Latencies::new(), Latencies::new());
    let mut pairs = 0u64;
    let mut ids = Vec::new();
    anyhow::ensure!(
        pop.len() >= 2 * TIMED,
        "the dataset has {} articles: timing {TIMED} distinct tail articles needs at least {}",
        pop.len(),
        2 * TIMED
    );
    // Ranks are 1-based: the timed ones are distinct and within the dataset.
    let from = TIMED_FROM_RANK.min(pop.len() - TIMED + 1);
    for rank in from..from + TIMED {
        let id = pop.id_of_rank(rank);
        let url = format!("{lb}/articles/{id}");
        let t = Instant::now();
        let (_, first) = no_cache::get_article(&http, &url).await?;
        let took_miss = t.elapsed();
        let t = Instant::now();
        let (_, second) = no_cache::get_article(&http, &url).await?;
        let took_hit = t.elapsed();
        if first.as_deref() == Some("miss") && second.as_deref() == Some("hit") {
            pairs += 1;
            miss.record(took_miss);
            hit.record(took_hit);
        }
        ids.push(id);
    }
    // Underneath HTTP: what a miss does to MariaDB, what a hit does to
    // Memcached, each timed in a loop of its own over the same articles
    // (interleaved with the HTTP calls above, each would be timed on a
    // core that had just gone idle, which is the machine's wake-up, not
    // the operation).
    for &id in &ids {
        let t = Instant::now();
        articles::page(&demo.primary, Shape::Denormalized, id).await?;
        assembly.record(t.elapsed());
    }
    for &id in &ids {
        let t = Instant::now();
        let stored = mc.get(&article_key(id)).await?;
        if stored.is_some() {
            get.record(t.elapsed());
        }
    }
    let (m, h) = (miss.summary(), hit.summary());
    let (a, g) = (assembly.summary(), get.summary());
    let cmp = "object cache: a hit against assembling the same article from MariaDB";
    figure(
        Kind::Measured,
        format!(
            "GET /articles/{{id}} through HAProxy, {pairs} articles missed then hit: miss p50 {}  hit p50 {}",
            fmt_us(m.p50_us),
            fmt_us(h.p50_us)
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "underneath, the same {} articles: assembled from MariaDB (3 queries, primary) p50 {}  Memcached get of the stored object p50 {} ({} found)",
            TIMED,
            fmt_us(a.p50_us),
            fmt_us(g.p50_us),
            g.count
        ),
    );
    let (http_x, inner_x) = (
        safe_div(m.p50_us as f64, h.p50_us as f64),
        safe_div(a.p50_us as f64, g.p50_us as f64),
    );
    figure(
        Kind::Computed,
        format!(
            "a hit is {http_x:.1}x faster than a miss end to end (HTTP and HAProxy in both), {inner_x:.1}x faster than the assembly underneath (goal: 10x)"
        ),
    );
    for (name, v, shows) in [
        (
            "HTTP miss p50",
            m.p50_us,
            "GET through HAProxy answered X-Cache: miss",
        ),
        (
            "HTTP hit p50",
            h.p50_us,
            "the same article's next GET, X-Cache: hit",
        ),
        (
            "assembly p50",
            a.p50_us,
            "the article's three queries on the primary",
        ),
        (
            "Memcached get p50",
            g.p50_us,
            "one get of the stored article",
        ),
    ] {
        demo.results.measured(cmp, name, v as f64, "µs", shows);
    }
    demo.results.computed(
        cmp,
        "miss / hit, end to end",
        http_x,
        "x",
        "HTTP miss p50 / HTTP hit p50",
    );
    demo.results.computed(
        cmp,
        "assembly / get",
        inner_x,
        "x",
        "assembly p50 / Memcached get p50 (goal: at least 10)",
    );
    Ok(())
}
