//! Experiment 1: no cache. Three `part3-server` clones with `CACHE=none`
//! behind HAProxy, on the default dataset: a Zipf load on the article page
//! (`GET /articles/{id}`, popular articles far more often than the rest),
//! then on `GET /feed` as a logged-in user of median friend count.
//!
//! What each request costs the database is counted by the database:
//! `Com_select` (MariaDB's own count of SELECTs) on the primary plus the
//! replica, read before and after each run. SELECTs per request is that
//! difference divided by the requests the load sent: a computed figure
//! from two measured counters. This is the baseline experiments 2 and 3
//! cache against.
//!
//! Run it alone: `DEMO_ONLY=1 cargo run -p part3-cache --bin part3-demo`.
//!
//! This file also holds what experiments 1 to 4 share: the Zipf load on
//! the article page (optionally with comments mixed in), the `X-Cache`
//! tally, the stale-read check against the database, Memcached's own
//! `stats`, the median user and a login.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::dataset::{DATASET_PASSWORD, Popularity};
use common::demo::figure;
use common::measure::{self, Latencies, Load, LoadReport};
use common::results::Kind;
use futures::future::BoxFuture;
use rand::SeedableRng;
use rand::rngs::StdRng;
use sqlx::MySqlPool;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::Demo;

/// Simultaneous clients of every load run of experiments 1 to 3.
pub const CONCURRENCY: usize = 16;
/// The seed of the Zipf draws: every run of experiments 1 to 3 reads the
/// same sequence of articles.
pub const SEED: u64 = 3;
/// One request in this many is a comment, in the read/write mix.
pub const WRITE_EVERY: u64 = 20;

/// Both loads, once each.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let cluster = demo.cluster(3, &[("CACHE", "none")]).await?;
    let lb = cluster.lb_url();
    let http = part1_clones::client::http();
    let (user, name, friends) = median_user(&demo.primary).await?;
    let cookie = login(&lb, &name).await?;
    common::demo::line(format!(
        "3 clones, CACHE=none, {CONCURRENCY} concurrent clients through HAProxy; the feed as {name} (user {user}, {friends} friends: the median)"
    ));
    let cmp = "no cache: the article page and the feed (3 clones, Zipf load)";
    let idle = background_selects(demo, Duration::from_secs(1)).await?;
    figure(
        Kind::Measured,
        format!(
            "background: {idle:.0} SELECTs/s on the primary + replica with the cluster idle (its health checks and any other client of the shared servers; included in the counts below)"
        ),
    );
    demo.results.measured(
        cmp,
        "background Com_select, cluster idle",
        idle,
        "SELECTs/s",
        "Com_select (primary + replica) per second with no load: noise in every count of this part",
    );

    let tally = Arc::new(XCache::default());
    let reads = article_reads(
        http.clone(),
        lb.clone(),
        demo.spec.article_popularity(),
        tally,
    );
    let (report, selects) = counted(demo, "article page, no cache", demo.seconds(), reads).await?;
    print_and_record(demo, cmp, &report, selects, idle);

    let feed = {
        let (http, lb, cookie) = (http.clone(), lb.clone(), cookie.clone());
        move |_: u64| -> BoxFuture<'static, Result<(), String>> {
            let req = http
                .get(format!("{lb}/feed"))
                .header("cookie", cookie.clone());
            Box::pin(async move { ok(req.send().await).await.map(|_| ()) })
        }
    };
    let (report, selects) = counted(demo, "feed, no cache", demo.seconds(), feed).await?;
    print_and_record(demo, cmp, &report, selects, idle);
    cluster.stop().await;
    Ok(())
}

/// `Com_select` (primary + replica) per second over `window` with no load
/// from the demo: what the per-request counts carry as noise.
pub async fn background_selects(demo: &Demo, window: Duration) -> anyhow::Result<f64> {
    let before = demo.com_select().await?;
    tokio::time::sleep(window).await;
    let after = demo.com_select().await?;
    Ok(after.saturating_sub(before) as f64 / window.as_secs_f64())
}

/// Runs `request` for `seconds` at [`CONCURRENCY`], with `Com_select`
/// (primary + replica) read before and after: the report and the delta.
pub async fn counted<F>(
    demo: &Demo,
    name: &str,
    seconds: Duration,
    request: F,
) -> anyhow::Result<(LoadReport, u64)>
where
    F: Fn(u64) -> BoxFuture<'static, Result<(), String>> + Send + Sync + 'static,
{
    let before = demo.com_select().await?;
    let report = measure::run_load(name, Load::closed(CONCURRENCY, seconds), request).await;
    let after = demo.com_select().await?;
    Ok((report, after.saturating_sub(before)))
}

/// Prints a run and its SELECTs per request, and records both: the load's
/// figures and the `Com_select` delta (measured), the ratio (computed).
///
/// `idle` is the background rate ([`background_selects`]): the count net
/// of it is printed and recorded too (computed), as an estimate.
pub fn print_and_record(demo: &mut Demo, cmp: &str, report: &LoadReport, selects: u64, idle: f64) {
    figure(Kind::Measured, report.line());
    let per = per_request(selects, report.requests);
    figure(
        Kind::Computed,
        format!(
            "{:<32} {per:>6.2} SELECTs a request = {selects} Com_select (primary + replica, counted by MariaDB) / {} requests",
            report.name, report.requests
        ),
    );
    let net = (selects as f64 - idle * report.elapsed_secs).max(0.0);
    let net_per = if report.requests == 0 {
        0.0
    } else {
        net / report.requests as f64
    };
    figure(
        Kind::Computed,
        format!(
            "{:<32} {net_per:>6.2} SELECTs a request net of the background ({idle:.0}/s x {:.1} s subtracted: an estimate)",
            report.name, report.elapsed_secs
        ),
    );
    demo.results.load_figures(cmp, report);
    demo.results.computed(
        cmp,
        &format!(
            "{}: SELECTs per request, net of the background",
            report.name
        ),
        net_per,
        "SELECTs/request",
        "(Com_select delta - idle rate x run time) / requests: an estimate",
    );
    demo.results.measured(
        cmp,
        &format!("{}: Com_select", report.name),
        selects as f64,
        "SELECTs",
        "SELECTs MariaDB counted on the primary and the replica during the run (SHOW GLOBAL STATUS)",
    );
    demo.results.computed(
        cmp,
        &format!("{}: SELECTs per request", report.name),
        per,
        "SELECTs/request",
        "the Com_select delta divided by the requests sent",
    );
}

/// `selects / requests`, 0 for no requests.
pub fn per_request(selects: u64, requests: u64) -> f64 {
    if requests == 0 {
        0.0
    } else {
        selects as f64 / requests as f64
    }
}

/// What the server said it did (`X-Cache`), counted by the client, with
/// the latency of each kind of answer.
#[derive(Default)]
pub struct XCache {
    /// `X-Cache: hit`.
    pub hit: AtomicU64,
    /// `X-Cache: miss`.
    pub miss: AtomicU64,
    /// `X-Cache: bypass` (or no header).
    pub bypass: AtomicU64,
    /// Comments written (the mix).
    pub writes: AtomicU64,
    /// Latencies of the hits.
    pub hit_latency: Mutex<Latencies>,
    /// Latencies of the misses.
    pub miss_latency: Mutex<Latencies>,
}

impl XCache {
    /// Counts one answer and its latency.
    pub fn count(&self, x_cache: Option<&str>, took: Duration) {
        match x_cache {
            Some("hit") => {
                self.hit.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.hit_latency.lock() {
                    l.record(took);
                }
            }
            Some("miss") => {
                self.miss.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = self.miss_latency.lock() {
                    l.record(took);
                }
            }
            _ => {
                self.bypass.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// (hits, misses, bypasses).
    pub fn counts(&self) -> (u64, u64, u64) {
        (
            self.hit.load(Ordering::Relaxed),
            self.miss.load(Ordering::Relaxed),
            self.bypass.load(Ordering::Relaxed),
        )
    }

    /// Hits / (hits + misses + bypasses), in %.
    pub fn hit_ratio(&self) -> f64 {
        let (h, m, b) = self.counts();
        ratio_pct(h, h + m + b)
    }
}

/// `part / whole` in %, 0 for an empty whole.
pub fn ratio_pct(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        100.0 * part as f64 / whole as f64
    }
}

/// The article of request `i`: a Zipf draw, the same for the same `i` in
/// every run (so two runs read the same articles in the same order).
pub fn zipf_article(pop: &Popularity, i: u64) -> u64 {
    let mut rng = StdRng::seed_from_u64(SEED.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i);
    pop.sample(&mut rng)
}

/// The Zipf load on `GET /articles/{id}` (JSON), tallying `X-Cache`.
pub fn article_reads(
    http: reqwest::Client,
    base: String,
    pop: Popularity,
    tally: Arc<XCache>,
) -> impl Fn(u64) -> BoxFuture<'static, Result<(), String>> + Clone + Send + Sync + 'static {
    article_mix(http, base, None, pop, tally)
}

/// The same load with one request in [`WRITE_EVERY`] a comment on a Zipf
/// article (so popular articles are commented most, as in the dataset),
/// when `cookie` is given.
pub fn article_mix(
    http: reqwest::Client,
    base: String,
    cookie: Option<String>,
    pop: Popularity,
    tally: Arc<XCache>,
) -> impl Fn(u64) -> BoxFuture<'static, Result<(), String>> + Clone + Send + Sync + 'static {
    move |i: u64| -> BoxFuture<'static, Result<(), String>> {
        let id = zipf_article(&pop, i);
        let tally = tally.clone();
        match &cookie {
            Some(c) if i % WRITE_EVERY == WRITE_EVERY - 1 => {
                let req = http
                    .post(format!("{base}/articles/{id}/comments"))
                    .header("cookie", c.clone())
                    .json(&serde_json::json!({ "body": format!("mix comment {i}") }));
                Box::pin(async move {
                    ok(req.send().await).await?;
                    tally.writes.fetch_add(1, Ordering::Relaxed);
                    Ok(())
                })
            }
            _ => {
                let req = http.get(format!("{base}/articles/{id}"));
                Box::pin(async move {
                    let t = Instant::now();
                    let res = ok(req.send().await).await?;
                    tally.count(x_cache(&res).as_deref(), t.elapsed());
                    Ok(())
                })
            }
        }
    }
}

/// The `X-Cache` header of an answer.
pub fn x_cache(res: &reqwest::Response) -> Option<String> {
    res.headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A 2xx answer, or why not.
pub async fn ok(
    res: Result<reqwest::Response, reqwest::Error>,
) -> Result<reqwest::Response, String> {
    let res = res.map_err(|e| e.to_string())?;
    if res.status().is_success() {
        Ok(res)
    } else {
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        Err(format!(
            "{status}: {}",
            body.chars().take(200).collect::<String>()
        ))
    }
}

/// The user whose friend count is the median among users who have
/// friends: (id, username, friends).
pub async fn median_user(pool: &MySqlPool) -> anyhow::Result<(u64, String, i64)> {
    let with_friends: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT user_id) FROM friendships")
        .fetch_one(pool)
        .await?;
    anyhow::ensure!(
        with_friends > 0,
        "the dataset has no friendships: is it loaded?"
    );
    let (id, friends): (u64, i64) = sqlx::query_as(
        "SELECT user_id, COUNT(*) AS n FROM friendships GROUP BY user_id ORDER BY n, user_id LIMIT 1 OFFSET ?",
    )
    .bind(with_friends / 2)
    .fetch_one(pool)
    .await?;
    let name: String = sqlx::query_scalar("SELECT username FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(pool)
        .await?;
    Ok((id, name, friends))
}

/// Logs `username` in through `base` with the dataset's password: the
/// `Cookie` header value to send.
pub async fn login(base: &str, username: &str) -> anyhow::Result<String> {
    let user = part1_clones::client::UserClient::new(part1_clones::client::http(), base);
    user.login(username, DATASET_PASSWORD)
        .await
        .with_context(|| format!("logging in as {username} through {base}"))?;
    let c = user.cookie().context("login answered no session cookie")?;
    Ok(format!("{}={c}", part1_clones::app::COOKIE_NAME))
}

/// The `count` most read articles of the dataset (Zipf ranks 1..=count).
pub fn hot_articles(pop: &Popularity, count: u64) -> Vec<u64> {
    (1..=count.min(pop.len()))
        .map(|r| pop.id_of_rank(r))
        .collect()
}

/// What the stale-read check saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stale {
    /// Articles checked.
    pub checked: u32,
    /// Of those, served from the cache just before the comment (warm).
    pub warm: u32,
    /// Reads after the comment that missed it while the database had it.
    pub stale: u32,
}

/// Warms `ids` through `read_base` (two reads each), posts one comment to
/// each through `write_base` as `cookie`'s user, then reads each again
/// through `read_base`, and compares with the primary: a read is stale if
/// the comment is in the database but the answer's comment count is
/// lower, or the comment is not among its comments.
pub async fn stale_reads(
    primary: &MySqlPool,
    read_base: &str,
    write_base: &str,
    cookie: &str,
    ids: &[u64],
) -> anyhow::Result<Stale> {
    let http = part1_clones::client::http();
    let mut s = Stale::default();
    let marker = common::testing::unique_name("stale");
    for &id in ids {
        let url = format!("{read_base}/articles/{id}");
        get_article(&http, &url).await?;
        let (_, x) = get_article(&http, &url).await?;
        s.warm += u32::from(x.as_deref() == Some("hit"));
        let body = format!("{marker} {id}");
        ok(http
            .post(format!("{write_base}/articles/{id}/comments"))
            .header("cookie", cookie)
            .json(&serde_json::json!({ "body": body }))
            .send()
            .await)
        .await
        .map_err(|e| anyhow::anyhow!("commenting on article {id}: {e}"))?;
        let (page, _) = get_article(&http, &url).await?;
        s.checked += 1;
        s.stale += u32::from(is_stale(primary, id, &body, &page).await?);
    }
    Ok(s)
}

/// Whether `page` (an article's JSON) misses `body`, a comment the
/// primary holds for article `id`.
pub async fn is_stale(
    primary: &MySqlPool,
    id: u64,
    body: &str,
    page: &serde_json::Value,
) -> anyhow::Result<bool> {
    let (count, there): (i64, i64) = sqlx::query_as(
        "SELECT CAST(a.comment_count AS SIGNED), (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id AND c.body = ?) FROM articles a WHERE a.id = ?",
    )
    .bind(body)
    .bind(id)
    .fetch_one(primary)
    .await?;
    anyhow::ensure!(
        there > 0,
        "the comment on article {id} is not in the database"
    );
    let served = page["comment_count"].as_i64().unwrap_or(-1);
    let shown = page["comments"]
        .as_array()
        .is_some_and(|cs| cs.iter().any(|c| c["body"] == body));
    Ok(served < count || !shown)
}

/// `GET` an article's JSON: the page and its `X-Cache`.
pub async fn get_article(
    http: &reqwest::Client,
    url: &str,
) -> anyhow::Result<(serde_json::Value, Option<String>)> {
    let res = ok(http.get(url).send().await)
        .await
        .map_err(|e| anyhow::anyhow!("GET {url}: {e}"))?;
    let x = x_cache(&res);
    let page = res
        .json()
        .await
        .with_context(|| format!("GET {url}: not JSON"))?;
    Ok((page, x))
}

/// Memcached's own counters (`stats` over its text protocol) at `url`
/// (`memcache://host:port[?...]`, the form of `MEMCACHED_URL`).
pub async fn memcached_stats(url: &str) -> anyhow::Result<HashMap<String, u64>> {
    let addr = host_port(url);
    let stream = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(&addr),
    )
    .await
    .with_context(|| format!("memcached at {addr}: connect timed out"))?
    .with_context(|| format!("memcached at {addr} (./lab status; ./lab up starts it)"))?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"stats\r\n").await?;
    let mut lines = BufReader::new(read).lines();
    let mut out = HashMap::new();
    let until = Instant::now() + Duration::from_secs(2);
    loop {
        let line = tokio::time::timeout_at(until.into(), lines.next_line())
            .await
            .context("memcached stats timed out")??
            .context("memcached closed the connection during stats")?;
        if line == "END" {
            return Ok(out);
        }
        let mut parts = line.split_whitespace();
        if let (Some("STAT"), Some(name), Some(value)) = (parts.next(), parts.next(), parts.next())
            && let Ok(v) = value.parse::<u64>()
        {
            out.insert(name.to_owned(), v);
        }
    }
}

/// Memcached's `get_hits` and `get_misses` now.
pub async fn memcached_gets(url: &str) -> anyhow::Result<(u64, u64)> {
    let s = memcached_stats(url).await?;
    Ok((
        s.get("get_hits").copied().unwrap_or(0),
        s.get("get_misses").copied().unwrap_or(0),
    ))
}

/// `host:port` of `scheme://[user@]host:port[/...][?...]`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?', ','])
        .next()
        .unwrap_or(rest)
        .to_owned()
}
