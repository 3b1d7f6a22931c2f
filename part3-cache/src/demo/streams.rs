//! Experiment 5: activity streams and the friend graph.
//!
//! Two clusters of three `part3-server` clones on the default dataset:
//! `CACHE=object` (its Memcached a private one of this experiment, so its
//! `stats` count only what this experiment does) and `CACHE=none`.
//!
//! 1. **The feed** (`GET /feed`) for the median user (22 friends at the
//!    default scale) and for the most connected one (`user1`, 8,846
//!    friendship rows), p50 and p99, warm object cache against part 2's
//!    JOIN. The object feed is merged at read time from per-author objects
//!    or, for a user with many friends, the site-wide window (see
//!    `server/feed.rs`): measured.
//! 2. **Mutual friends** of the two most connected users
//!    (`GET /users/{a}/mutual-friends?with={b}`): a Redis `SINTER` of two
//!    cached sets against the SQL self-join it replaces, p50: measured.
//! 3. **What one post costs the cache**: the deletes it sends, counted by
//!    Memcached itself (`delete_hits + delete_misses` on the private
//!    server, before and after one post): measured; beside the deletes
//!    that caching each user's finished feed would need (one per friend
//!    of the author: computed from the friendships table).
//!
//! Run it alone: `DEMO_ONLY=5 cargo run -p part3-cache --bin part3-demo`
//! (`DEMO_SECONDS=1` for a quick look; each run here lasts half of it).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use common::demo::{figure, line};
use common::measure::{self, Load, LoadReport};
use common::results::Kind;
use futures::future::BoxFuture;
use part2_database::server::Committed;

use super::Demo;
use super::backends::PrivateMemcached;
use super::no_cache::{login, median_user, memcached_stats, ok, x_cache};
use crate::server::cache::changed_by;

/// Simultaneous clients of each run.
const CONCURRENCY: usize = 4;

/// Runs the experiment.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let (_, median_name, median_friends) = median_user(&demo.primary).await?;
    let top: Vec<(u64, i64)> = sqlx::query_as(
        "SELECT user_id, COUNT(*) AS n FROM friendships GROUP BY user_id ORDER BY n DESC, user_id LIMIT 2",
    )
    .fetch_all(&demo.primary)
    .await?;
    anyhow::ensure!(
        top.len() == 2,
        "the dataset has fewer than two users with friends"
    );
    let names = usernames(demo, &[top[0].0, top[1].0]).await?;
    let (top_id, top_friends) = top[0];
    let (top_name, second_name) = (names[0].clone(), names[1].clone());
    let secs = demo
        .seconds()
        .mul_f64(0.5)
        .clamp(Duration::from_millis(500), Duration::from_secs(3));

    let mc = PrivateMemcached::start(64).await?;
    let mc_url = mc.url();
    let object = demo
        .cluster(
            3,
            &[("CACHE", "object"), ("MEMCACHED_URL", mc_url.as_str())],
        )
        .await?;
    let none = demo.cluster(3, &[("CACHE", "none")]).await?;
    line(format!(
        "two clusters of 3 clones: CACHE=object (a private Memcached), CACHE=none; {CONCURRENCY} concurrent clients, {:.1} s per run",
        secs.as_secs_f64()
    ));
    line(format!(
        "users: {median_name} (the median: {median_friends} friends), {top_name} (the most connected: {top_friends})"
    ));

    // 1. The feed.
    let cmp = "activity streams: GET /feed, warm object cache against the JOIN";
    for name in [&median_name, &top_name] {
        for (label, cluster) in [("object cache, warm", &object), ("no cache (JOIN)", &none)] {
            let lb = cluster.lb_url();
            let cookie = login(&lb, name).await?;
            let path = format!("{lb}/feed");
            // One read first: the object run measures a warm cache.
            get(&path, Some(&cookie)).await?;
            let run = format!("feed of {name}, {label}");
            let (report, hits) = timed(&run, secs, path, Some(cookie)).await;
            report_line(demo, cmp, &report, hits);
        }
    }

    // 2. Mutual friends.
    let cmp = "the friend graph: mutual friends, Redis SINTER against SQL";
    let expected: Vec<u64> = sqlx::query_scalar(crate::server::graph::MUTUAL_SQL)
        .bind(top[1].0)
        .bind(top[0].0)
        .fetch_all(&demo.primary)
        .await?;
    for (label, cluster) in [("Redis sets", &object), ("SQL", &none)] {
        let path = format!(
            "{}/users/{top_name}/mutual-friends?with={second_name}",
            cluster.lb_url()
        );
        let body = get(&path, None).await?;
        let got: crate::server::graph::Mutual =
            serde_json::from_str(&body).context("the mutual-friends answer")?;
        anyhow::ensure!(
            got.mutual == expected,
            "{label}: {} mutual friends, the SQL says {}",
            got.mutual.len(),
            expected.len()
        );
        let run = format!("mutual friends of {top_name} and {second_name}, {label}");
        let (report, hits) = timed(&run, secs, path, None).await;
        report_line(demo, cmp, &report, hits);
    }
    line(format!(
        "both answer the same {} mutual friends (checked against the SQL on the primary)",
        expected.len()
    ));

    // 3. What one post costs the cache.
    let cmp = "activity streams: what one post costs the cache";
    let lb = object.lb_url();
    let cookie = login(&lb, &top_name).await?;
    let deletes = |s: &std::collections::HashMap<String, u64>| {
        s.get("delete_hits").copied().unwrap_or(0) + s.get("delete_misses").copied().unwrap_or(0)
    };
    // A real friend of the poster (from `friendships`), whose feed is read
    // (and so cached) before the post: the check below is then about
    // invalidation, not about a first read.
    let friend_id: u64 = sqlx::query_scalar(
        "SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id LIMIT 1",
    )
    .bind(top_id)
    .fetch_one(&demo.primary)
    .await
    .context("a friend of the most connected user")?;
    let friend_name = usernames(demo, &[friend_id]).await?.remove(0);
    let feed_of_friend = format!("{lb}/feed");
    let friend_cookie = login(&lb, &friend_name).await?;
    get(&feed_of_friend, Some(&friend_cookie)).await?;
    let before = deletes(&memcached_stats(&mc_url).await?);
    let res = part1_clones::client::http()
        .post(format!("{lb}/articles"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"title": "streams", "body": "one post, bounded invalidation"}))
        .send()
        .await?;
    anyhow::ensure!(
        res.status().as_u16() == 201,
        "the post answered {}",
        res.status()
    );
    let posted: serde_json::Value = res.json().await.context("the post's answer")?;
    let post_id = posted["id"]
        .as_u64()
        .context("the post's answer has no id")?;
    let sent = deletes(&memcached_stats(&mc_url).await?).saturating_sub(before);
    let keys = changed_by(&Committed::Post { author: top_id }).len();
    figure(
        Kind::Measured,
        format!(
            "one post by {top_name}: {sent} delete(s) on Memcached (its own stats; the code names {keys} objects)"
        ),
    );
    demo.results.measured(
        cmp,
        "cache deletes per post",
        sent as f64,
        "deletes",
        "a post deletes a bounded number of objects, whatever its author's friend count",
    );
    figure(
        Kind::Computed,
        format!(
            "caching each user's finished feed instead: {top_friends} deletes for that post (one per friend of {top_name})"
        ),
    );
    demo.results.computed(
        cmp,
        "deletes per post if each finished feed were cached",
        top_friends as f64,
        "deletes",
        "fan-out on write: one delete per friend of the author",
    );
    // The next read of a friend's feed, through any clone, starts with the
    // post (invalidation: that feed was cached before the post).
    let body = get(&feed_of_friend, Some(&friend_cookie)).await?;
    let feed: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    let first = feed.first().and_then(|a| a["id"].as_u64());
    let seen = first == Some(post_id);
    figure(
        Kind::Measured,
        format!(
            "the next feed of {friend_name} (a friend of {top_name}, by the friendships table; read once before the post) starts with the new article {post_id}: {} (first: {})",
            if seen { "yes" } else { "NO" },
            first.map_or("(empty feed)".to_owned(), |a| a.to_string())
        ),
    );
    demo.results.measured(
        cmp,
        "a friend's next feed starts with the new post",
        if seen { 1.0 } else { 0.0 },
        "of 1",
        "the feed of a friend of the poster (from friendships), cached before the post, read again after it through HAProxy: 1 if the new article is first",
    );

    object.stop().await;
    none.stop().await;
    drop(mc);
    Ok(())
}

/// Usernames by id, in order.
async fn usernames(demo: &Demo, ids: &[u64]) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for id in ids {
        out.push(
            sqlx::query_scalar("SELECT username FROM users WHERE id = ?")
                .bind(id)
                .fetch_one(&demo.primary)
                .await?,
        );
    }
    Ok(out)
}

/// One GET, its body (non-2xx is an error).
async fn get(url: &str, cookie: Option<&str>) -> anyhow::Result<String> {
    let mut req = part1_clones::client::http().get(url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let res = req.send().await.with_context(|| format!("GET {url}"))?;
    let status = res.status();
    let body = res.text().await?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status}: {body}");
    Ok(body)
}

/// A closed-loop run of GET `url`; the report and the `X-Cache: hit` count.
async fn timed(
    name: &str,
    secs: Duration,
    url: String,
    cookie: Option<String>,
) -> (LoadReport, u64) {
    let hits = Arc::new(AtomicU64::new(0));
    let http = part1_clones::client::http();
    let h = hits.clone();
    let request = move |_: u64| -> BoxFuture<'static, Result<(), String>> {
        let mut req = http.get(&url);
        if let Some(c) = &cookie {
            req = req.header("cookie", c.clone());
        }
        let h = h.clone();
        Box::pin(async move {
            let res = ok(req.send().await).await?;
            if x_cache(&res).as_deref() == Some("hit") {
                h.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let report = measure::run_load(name, Load::closed(CONCURRENCY, secs), request).await;
    (report, hits.load(Ordering::Relaxed))
}

fn report_line(demo: &mut Demo, cmp: &str, report: &LoadReport, hits: u64) {
    figure(
        Kind::Measured,
        format!(
            "{}: p50 {}, p99 {}, {:.0} req/s, {} of {} answers X-Cache: hit, {} failed",
            report.name,
            measure::fmt_us(report.latency.p50_us),
            measure::fmt_us(report.latency.p99_us),
            report.throughput,
            hits,
            report.requests,
            report.errors
        ),
    );
    demo.results.load_figures(cmp, report);
}
