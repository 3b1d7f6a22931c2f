//! Experiment 8: Sharding: users, their friendships and their articles placed by user
//! id on two independent servers, and the friends' feed gathered from
//! both (scatter-gather).
//!
//! Like with like: the one-database feed runs over a copy of exactly the
//! rows the shards hold (loaded by the same loader with one shard, on a
//! server of the same kind, shard 0's), so the comparison measures
//! sharding, not a bigger table. The shards' articles carry no bodies and
//! no comments (the feed reads neither); the copy carries none either.

use std::time::Instant;

use anyhow::Context;
use common::config::with_database;
use common::demo::{figure, line};
use common::measure::{Latencies, fmt_us};
use common::results::Kind;
use common::testing::ChaosProxy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::MySqlPool;

use super::{Demo, fresh_database, host_port};
use crate::articles;
use crate::replication::lazy_pool;
use crate::schema;
use crate::sharding::{Modulo, Placement, ShardedStore};

/// The two shards, kept for the experiments after this one.
pub struct Sharded {
    /// Users by `Modulo(2)`; shard 1 is reached through [`Sharded::proxy`].
    pub store: ShardedStore<Modulo>,
    /// In front of shard 1, to cut it ([`super::shard_down`]).
    pub proxy: ChaosProxy,
    /// Both shards, shard 1 directly (no proxy).
    pub direct: [MySqlPool; 2],
}

/// Loads both shards and the one-database copy, then compares the feed.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let db = demo.args.database.clone();
    let stack = demo.stack().clone();
    let s0 = fresh_database("MariaDB shard 0", &stack.mariadb_shard0_url, &db).await?;
    let s1 = fresh_database("MariaDB shard 1", &stack.mariadb_shard1_url, &db).await?;
    let one_db = format!("{db}_one");
    let one = fresh_database("MariaDB shard 0", &stack.mariadb_shard0_url, &one_db).await?;
    for pool in [&s0, &s1, &one] {
        schema::migrate(pool).await?;
    }
    let s1_url = with_database(&stack.mariadb_shard1_url, &db);
    let proxy = ChaosProxy::start(&host_port(&s1_url)).await?;
    let store = ShardedStore::new(
        vec![s0.clone(), lazy_pool(&proxy.url_for(&s1_url), 8)?],
        Modulo(2),
    );
    let single = ShardedStore::new(vec![one.clone()], Modulo(1));
    let t = Instant::now();
    let rows = store.load(&demo.spec).await?;
    figure(
        Kind::Measured,
        format!(
            "users, friendships and articles placed by user id on 2 shards: {rows} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        ),
    );
    let copied = single.load(&demo.spec).await?;
    anyhow::ensure!(
        copied == rows,
        "the one-database copy has {copied} rows, the shards {rows}"
    );
    let on0 = (1..=demo.spec.sizes.users)
        .filter(|u| store.placement.shard_of(*u) == 0)
        .count();
    figure(
        Kind::Computed,
        format!(
            "{on0} users on shard 0, {} on shard 1; the same {rows} rows in one database for comparison",
            demo.spec.sizes.users as usize - on0
        ),
    );

    let cmp = "the friends' feed: one database against two shards (the same rows)";
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let users: Vec<u64> = (0..200)
        .map(|_| rng.random_range(1..=demo.spec.sizes.users))
        .collect();
    let (mut join, mut two_steps, mut sharded) =
        (Latencies::new(), Latencies::new(), Latencies::new());
    let mut asked = 0;
    for u in &users {
        let t = Instant::now();
        articles::feed_join(&one, *u, 20).await?;
        join.record(t.elapsed());
        let t = Instant::now();
        let (a, _) = single.feed(*u, 20).await?;
        two_steps.record(t.elapsed());
        let t = Instant::now();
        let (b, n) = store.feed(*u, 20).await?;
        sharded.record(t.elapsed());
        asked += n;
        let ids = |v: &[articles::ArticleSummary]| v.iter().map(|a| a.id).collect::<Vec<_>>();
        anyhow::ensure!(
            ids(&a) == ids(&b),
            "user {u}: one database and two shards gave different feeds"
        );
    }
    let shards_asked = asked as f64 / users.len() as f64;
    for (name, lat, shows) in [
        (
            "one database, SQL JOIN",
            &join,
            "friends' latest articles in one query",
        ),
        (
            "one database, friends then IN",
            &two_steps,
            "the sharded code path on one server: friend list, then one query",
        ),
        (
            "two shards, scatter-gather",
            &sharded,
            "friend list from the user's shard, then each shard in parallel, merged",
        ),
    ] {
        let s = lat.summary();
        figure(
            Kind::Measured,
            format!(
                "{name:<31} p50 {:>8}  p99 {:>8}",
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ),
        );
        demo.measured(cmp, &format!("{name}: p50"), s.p50_us as f64, "µs", shows);
        demo.measured(cmp, &format!("{name}: p99"), s.p99_us as f64, "µs", shows);
    }
    line("the same feeds both ways, user by user");
    figure(
        Kind::Measured,
        format!("{shards_asked:.1} shards asked per feed (counted by the router)"),
    );
    demo.measured(
        cmp,
        "shards asked a feed",
        shards_asked,
        "shards",
        "counted by the router as it gathers (the shards keep no per-feed count): a user's friends live on one shard or both",
    );
    one.close().await;
    let admin = common::testing::mariadb_at("MariaDB shard 0", &stack.mariadb_shard0_url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP DATABASE `{one_db}`")))
        .execute(&admin)
        .await
        .context("dropping the one-database copy")?;
    demo.sharded = Some(Sharded {
        store,
        proxy,
        direct: [s0, s1],
    });
    Ok(())
}
