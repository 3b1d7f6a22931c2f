//! Experiment 10: the stale-set race, reproduced step by step, counted,
//! then fixed.
//!
//! The race (see [`crate::stampede`]'s docs): a read misses and loads the
//! article from a lagging replica; a write commits a comment on the
//! primary and deletes the cached article; then the slow read stores what
//! it loaded. The old article is back in the cache *after* the delete that
//! was meant to remove it, and every reader gets it until its TTL.
//!
//! Reproduced deterministically, with the server's own read path
//! ([`ReadThrough`]) over the lab's Memcached and Redis (a key prefix of
//! its own), on the demo's database:
//!
//! 1. the replica's SQL thread is stopped (part 2's drill guard
//!    [`with_sql_thread_stopped`], which starts it again on every path);
//! 2. clone A's read misses and assembles the article from the replica,
//!    then waits (a barrier in its loader: the "slow" part, made certain);
//! 3. clone B's write: a comment committed on the primary, then
//!    [`ReadThrough::invalidate`], as the server does after commit;
//! 4. clone A's read goes on and stores (or, with the fix, does not);
//! 5. the replica catches up; then 20 reads through a third clone are
//!    compared with the article assembled from the primary: each answer
//!    that differs is a stale read.
//!
//! Without the fix (`with_fill_guard(false)`): every later read is stale,
//! until the TTL. With it (the default: the `{key}:written` version marker
//! the write leaves, checked by the fill before and after its set): 0.
//! The read that started before the write still answers what it loaded:
//! that is ordinary (it began before the write); only the cache write is
//! skipped, and it never fails.
//!
//! Run it alone: `DEMO_ONLY=10 cargo run -p part3-cache --bin part3-demo`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;
use part2_database::articles::{self, Shape};
use part2_database::drill::with_sql_thread_stopped;
use sqlx::MySqlPool;

use super::Demo;
use super::no_cache::hot_articles;
use crate::backend::{CacheBackend, DEFAULT_TIMEOUT, Memcached, RedisCache};
use crate::key::Key;
use crate::stampede::{Outcome, ReadThrough, Stampede};

/// Reads after the race, through another clone.
const READS_AFTER: u32 = 20;
const TTL: Duration = Duration::from_secs(300);

/// The race on each backend, without and with the fix.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let replica_admin = common::testing::mariadb_at(
        "MariaDB replica (admin login)",
        &demo.args.replica_admin_url,
    )
    .await?;
    let pop = demo.spec.article_popularity();
    let id = hot_articles(&pop, 50)[49];
    let author: u64 = 1;
    common::demo::line(format!(
        "article {id}; the reader assembles from the replica (SQL thread stopped), a comment commits on the primary and invalidates, then the reader stores; {READS_AFTER} reads after the replica caught up, compared with the primary"
    ));
    let cmp = "the stale-set race: stale reads after a write";
    for server in ["memcached", "redis"] {
        for fixed in [false, true] {
            let race = race(demo, &replica_admin, server, fixed, id, author).await?;
            let label = format!(
                "{server}, {}",
                if fixed {
                    "with the written marker (the fix)"
                } else {
                    "no fix"
                }
            );
            figure(
                Kind::Measured,
                format!(
                    "{label:<42} the slow read answered {} ({}), {} fill(s) not stored; stale reads after: {} of {READS_AFTER}",
                    race.slow_outcome,
                    if race.slow_was_old {
                        "the old article: it began before the write"
                    } else {
                        "the new article"
                    },
                    race.skipped,
                    race.stale
                ),
            );
            demo.results.measured(
                cmp,
                &format!("{label}: stale reads"),
                race.stale as f64,
                "reads",
                &format!(
                    "of {READS_AFTER} reads after the replica caught up, those that differed from the article assembled from the primary"
                ),
            );
        }
    }
    replica_admin.close().await;
    Ok(())
}

struct Race {
    slow_outcome: Outcome,
    slow_was_old: bool,
    skipped: u64,
    stale: u32,
}

async fn backend(demo: &Demo, server: &str, prefix: &str) -> anyhow::Result<Arc<dyn CacheBackend>> {
    let stack = demo.stack();
    Ok(match server {
        "memcached" => {
            Arc::new(Memcached::connect(&stack.memcached_url, prefix, DEFAULT_TIMEOUT * 20).await?)
        }
        _ => Arc::new(RedisCache::connect(&stack.redis_url, prefix, DEFAULT_TIMEOUT * 20).await?),
    })
}

/// The article as the server assembles it, as JSON.
async fn assemble(pool: &MySqlPool, id: u64) -> Result<Vec<u8>, String> {
    let page = articles::page(pool, Shape::Denormalized, id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no article {id}"))?;
    serde_json::to_vec(&page).map_err(|e| e.to_string())
}

async fn race(
    demo: &Demo,
    replica_admin: &MySqlPool,
    server: &str,
    fixed: bool,
    id: u64,
    author: u64,
) -> anyhow::Result<Race> {
    let prefix = format!("{}:", common::testing::unique_name("stale"));
    let clone =
        |b: Arc<dyn CacheBackend>| ReadThrough::new(b, Stampede::Lease).with_fill_guard(fixed);
    let reader = Arc::new(clone(backend(demo, server, &prefix).await?));
    let writer = clone(backend(demo, server, &prefix).await?);
    let later = clone(backend(demo, server, &prefix).await?);
    let key = Key::new("article", &[&id.to_string()]);
    let old = assemble(&demo.primary, id)
        .await
        .map_err(anyhow::Error::msg)?;

    let (primary, replica) = (demo.primary.clone(), demo.replica.clone());
    let (slow_outcome, slow_value) = with_sql_thread_stopped(replica_admin, || {
        let (reader, key, replica) = (reader.clone(), key.clone(), replica.clone());
        async move {
            let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
            let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
            let read_key = key.clone();
            let slow = tokio::spawn(async move {
                reader
                    .get_or_load(&read_key, TTL, || async move {
                        let v = assemble(&replica, id).await;
                        let _ = loaded_tx.send(());
                        let _ = go_rx.await; // the slow part: held until the write is done
                        v
                    })
                    .await
            });
            loaded_rx.await.context("the reader's load did not start")?;
            articles::add_comment(
                &primary,
                Shape::Denormalized,
                id,
                author,
                "a comment that lands during a slow read",
                common::demo::now(),
            )
            .await
            .context("the comment")?;
            writer
                .invalidate(&[key])
                .await
                .context("the invalidation after commit")?;
            let _ = go_tx.send(());
            let (value, outcome) = slow
                .await
                .context("the slow read")?
                .map_err(anyhow::Error::msg)?;
            Ok((outcome, value))
        }
    })
    .await?;

    // The replica catches up.
    let fresh = assemble(&demo.primary, id)
        .await
        .map_err(anyhow::Error::msg)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while assemble(&demo.replica, id).await.ok().as_ref() != Some(&fresh) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the replica did not catch up within 30 s (./lab status)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut stale = 0;
    for _ in 0..READS_AFTER {
        let replica = demo.replica.clone();
        let (value, _) = later
            .get_or_load(&key, TTL, || async move { assemble(&replica, id).await })
            .await
            .map_err(anyhow::Error::msg)?;
        if value != fresh {
            stale += 1;
        }
    }
    later.invalidate(std::slice::from_ref(&key)).await.ok();
    Ok(Race {
        slow_outcome,
        slow_was_old: slow_value == old,
        skipped: reader.skipped_stores(),
        stale,
    })
}
