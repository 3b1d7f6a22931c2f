//! Experiment 9: timelines fanned out on write, and the hybrid.
//!
//! 1. **Write amplification.** Two authors post one article each through
//!    a `part4-server` inside the demo: the most connected user (thousands
//!    of friends) and the median one. The fan-out ([`Timelines::fan_out`],
//!    what a worker does for a `post` change) then runs against a private
//!    `redis-server` (so Redis's own `INFO commandstats` counts only this
//!    experiment's `ZADD`s), twice: pure fan-out (every author fanned
//!    out), and the hybrid (`FANOUT_MAX_FRIENDS` = 1000, the default:
//!    bigger authors are only listed, and merged at read time). Measured:
//!    the timelines written, the `ZADD`s Redis counted, the round trips
//!    and the time; computed beside it: the friend count the design says
//!    it must be.
//! 2. **The read it saves.** `GET /feed` (part 3's fan-out on read: a
//!    merge over every friend's cached newest articles) against
//!    `GET /timeline` (one sorted-set read, plus the big friends merged
//!    in), through the same server, for the median user and for a friend
//!    of the most connected one: p50 and p99 (after one read each, so the
//!    cache and the timeline are warm).
//!
//! Run it alone: `DEMO_ONLY=9 cargo run -p part4-async --bin part4-demo`.

use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::{figure, line};
use common::measure::{self, Load, LoadReport};
use common::results::Kind;
use futures::future::BoxFuture;
use part3_cache::demo::backends::PrivateRedis;

use super::{Demo, login};
use crate::fanout::{FanoutConfig, Timelines, amplification};
use crate::queue::Backend;

/// Simultaneous clients of the read runs.
pub const CONCURRENCY: usize = 4;

/// One post's fan-out, as counted.
#[derive(Debug, Clone)]
pub struct PostFanout {
    /// Who posted.
    pub author: String,
    /// Their friends (the friendships table, counted in full).
    pub friends: u64,
    /// The hybrid's threshold used (`u64::MAX`: pure fan-out).
    pub max_friends: u64,
    /// Timelines written.
    pub timelines: u64,
    /// `ZADD`s Redis counted.
    pub zadds: u64,
    /// Round trips.
    pub round_trips: u64,
    /// Listed as big (merged at read time).
    pub big: bool,
    /// Time of the fan-out.
    pub took: Duration,
}

/// What the experiment saw.
#[derive(Debug, Clone)]
pub struct FanOutRun {
    /// Each author under each policy.
    pub posts: Vec<PostFanout>,
    /// The read runs: `/feed` and `/timeline` for each reader.
    pub reads: Vec<LoadReport>,
}

/// Runs it, prints and records it.
pub async fn run(demo: &mut Demo) -> anyhow::Result<FanOutRun> {
    let top: (u64, i64) = sqlx::query_as(
        "SELECT user_id, COUNT(*) AS n FROM friendships GROUP BY user_id ORDER BY n DESC, user_id LIMIT 1",
    )
    .fetch_one(&demo.primary)
    .await?;
    let top_name: String = sqlx::query_scalar("SELECT username FROM users WHERE id = ?")
        .bind(top.0)
        .fetch_one(&demo.primary)
        .await?;
    let (median_id, median_name, median_friends) =
        part3_cache::demo::no_cache::median_user(&demo.primary).await?;
    let config = demo.queue_config(Backend::RabbitMq);
    let server = demo.server(&config, None, &[]).await?;
    let redis = PrivateRedis::start(false).await?;
    let out = async {
        let mut posts = Vec::new();
        for (id, name, friends) in [
            (top.0, &top_name, top.1 as u64),
            (median_id, &median_name, median_friends as u64),
        ] {
            for max_friends in [u64::MAX, FanoutConfig::default().fanout_max_friends] {
                let mut p =
                    post_and_fan_out(demo, &server.url, &redis, id, name, max_friends).await?;
                // The fan-out counts friends only up to the threshold + 1.
                p.friends = friends;
                posts.push(p);
            }
        }
        // A friend of the most connected user reads too: their timeline
        // merges that big author in.
        let friend: u64 = sqlx::query_scalar(
            "SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id LIMIT 1",
        )
        .bind(top.0)
        .fetch_one(&demo.primary)
        .await
        .context("a friend of the most connected user")?;
        let friend_name: String = sqlx::query_scalar("SELECT username FROM users WHERE id = ?")
            .bind(friend)
            .fetch_one(&demo.primary)
            .await?;
        let secs = demo
            .seconds()
            .mul_f64(0.5)
            .clamp(Duration::from_millis(500), Duration::from_secs(3));
        let mut reads = Vec::new();
        for name in [&median_name, &friend_name] {
            let cookie = login(&server.url, name).await?;
            for route in ["feed", "timeline"] {
                reads.push(read_load(&server.url, name, route, &cookie, secs).await?);
            }
        }
        Ok::<_, anyhow::Error>(FanOutRun { posts, reads })
    }
    .await;
    server.stop().await;
    drop(redis);
    demo.forget_queues(&config).await;
    let r = out?;

    line(format!(
        "{top_name}: {} friends; {median_name} (the median): {median_friends}; the fan-out against a private redis-server, pure (every author) and hybrid (FANOUT_MAX_FRIENDS={})",
        top.1,
        FanoutConfig::default().fanout_max_friends
    ));
    let cmp = "fan-out on write: what one post costs";
    for p in &r.posts {
        let policy = if p.max_friends == u64::MAX {
            "pure fan-out".to_owned()
        } else {
            format!("hybrid ({})", p.max_friends)
        };
        figure(
            Kind::Measured,
            format!(
                "{} ({} friends), {policy}: {} timelines written, {} ZADDs counted by Redis, {} round trips, {}{}",
                p.author,
                p.friends,
                p.timelines,
                p.zadds,
                p.round_trips,
                measure::fmt_duration_us(p.took.as_secs_f64() * 1e6),
                if p.big {
                    "; listed as big: merged at read time"
                } else {
                    ""
                }
            ),
        );
        let max = p.max_friends;
        figure(
            Kind::Computed,
            format!(
                "  the design says: {} timelines (one per friend, 0 past the threshold)",
                amplification(p.friends, max)
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{}, {policy}: timelines written per post", p.author),
            p.timelines as f64,
            "timelines",
            "the write amplification of one post, counted by the fan-out",
        );
        demo.results.measured(
            cmp,
            &format!("{}, {policy}: ZADDs per post", p.author),
            p.zadds as f64,
            "commands",
            "ZADD calls in the private Redis's INFO commandstats, before and after",
        );
        demo.results.measured(
            cmp,
            &format!("{}, {policy}: fan-out time", p.author),
            p.took.as_secs_f64() * 1e6,
            "µs",
            "the worker's time for one post (the author does not wait for it)",
        );
    }
    let cmp = "fan-out on write: the read it saves";
    for report in &r.reads {
        figure(Kind::Measured, report.line());
        super::print_errors(report);
        demo.results.load_figures(cmp, report);
    }
    for pair in r.reads.chunks(2) {
        if let [feed, timeline] = pair {
            figure(
                Kind::Computed,
                format!(
                    "{} against {}: p50 {:.1}x",
                    timeline.name,
                    feed.name,
                    feed.latency.p50_us as f64 / timeline.latency.p50_us.max(1) as f64
                ),
            );
        }
    }
    Ok(r)
}

/// `name` posts an article through `base`; then one fan-out of it with
/// `max_friends`, on a fresh key prefix of the private Redis, counted.
async fn post_and_fan_out(
    demo: &Demo,
    base: &str,
    redis: &PrivateRedis,
    author: u64,
    name: &str,
    max_friends: u64,
) -> anyhow::Result<PostFanout> {
    let config = FanoutConfig {
        fanout_max_friends: max_friends,
        ..FanoutConfig::default()
    };
    let prefix = common::testing::unique_name("d4fan");
    let timelines = Timelines::new(redis.manager().await?, &prefix, &config);
    // The catch-up first (the author's newest articles, once), so what is
    // measured is one new post.
    timelines.fan_out(&demo.primary, author).await?;
    let cookie = login(base, name).await?;
    let res = part1_clones::client::http()
        .post(format!("{base}/articles"))
        .header("cookie", &cookie)
        .json(&serde_json::json!({"title": "fan-out", "body": "one post, fanned out"}))
        .send()
        .await?;
    anyhow::ensure!(
        res.status().as_u16() == 201,
        "{name}'s post answered {}",
        res.status()
    );
    let before = redis.calls("zadd").await?;
    let t = Instant::now();
    let f = timelines.fan_out(&demo.primary, author).await?;
    let took = t.elapsed();
    let zadds = redis.calls("zadd").await? - before;
    Ok(PostFanout {
        author: name.to_owned(),
        friends: f.friends,
        max_friends,
        timelines: f.timelines,
        zadds,
        round_trips: f.round_trips,
        big: f.big,
        took,
    })
}

/// A closed loop of `GET /<route>` as `name`.
async fn read_load(
    base: &str,
    name: &str,
    route: &str,
    cookie: &str,
    secs: Duration,
) -> anyhow::Result<LoadReport> {
    let http = part1_clones::client::http();
    let url = format!("{base}/{route}");
    // One read first: the cache and the timeline are warm for the run.
    let first = http.get(&url).header("cookie", cookie).send().await?;
    anyhow::ensure!(
        first.status().is_success(),
        "GET /{route} as {name}: {}",
        first.status()
    );
    let cookie = cookie.to_owned();
    let request = move |_: u64| -> BoxFuture<'static, Result<(), String>> {
        let req = http.get(&url).header("cookie", cookie.clone());
        Box::pin(async move {
            let res = req.send().await.map_err(|e| e.to_string())?;
            let status = res.status();
            let _ = res.bytes().await.map_err(|e| e.to_string())?;
            if status.is_success() {
                Ok(())
            } else {
                Err(status.to_string())
            }
        })
    };
    Ok(measure::run_load(
        &format!("GET /{route} as {name}"),
        Load::closed(CONCURRENCY, secs),
        request,
    )
    .await)
}
