//! The experiments of part 2, each a number (`./lab tour part2`).
//!
//! The demo works in databases of its own (`demo_part2` on the primary, and
//! so on the replica, and on each shard), dropped and loaded afresh each
//! run, so every figure comes from the same data. Steps that break things
//! (lag injected with `STOP SLAVE SQL_THREAD`, a server cut by a chaos
//! proxy, the buffer pool shrunk) put them back before the next step.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::config::with_database;
use common::dataset::{DatasetSpec, Scale};
use common::measure::{self, Latencies, Load, fmt_us};
use common::results::PartResults;
use common::testing::ChaosProxy;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::MySqlPool;

use crate::articles::{self, Shape};
use crate::capacity::Modelled;
use crate::replication::{self, LastWrite, ReadFrom, ReadYourWrites, SplitPool, lazy_pool};
use crate::sharding::{ConsistentHash, Directory, Modulo, ShardedStore, moved_share};
use crate::{mongo, schema, tuning};

/// Part 2's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part2-demo",
    about = "Part 2: the database, two paths, measured"
)]
pub struct DemoArgs {
    /// Dataset scale: tiny, default (10k users, 100k articles, 500k comments) or large.
    #[arg(long, env = "DEMO_SCALE", default_value = "default")]
    pub scale: Scale,
    /// Scale of the MongoDB section (the Python wire server is slow to load).
    #[arg(long, env = "DEMO_MONGO_SCALE", default_value = "tiny")]
    pub mongo_scale: Scale,
    /// Length of each load run, in seconds.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 3)]
    pub seconds: u64,
    /// The database the demo creates on every server.
    #[arg(long, env = "DEMO_DATABASE", default_value = "demo_part2")]
    pub database: String,
    /// An admin login on the primary (buffer pool size).
    #[arg(
        long,
        env = "MARIADB_PRIMARY_ADMIN_URL",
        default_value = "mysql://labadmin:labadmin@127.0.0.1:13306/lab"
    )]
    pub primary_admin_url: String,
    /// An admin login on the replica (STOP/START SLAVE).
    #[arg(
        long,
        env = "MARIADB_REPLICA_ADMIN_URL",
        default_value = "mysql://labadmin:labadmin@127.0.0.1:13307/lab"
    )]
    pub replica_admin_url: String,
    /// Where to write part2.json.
    #[arg(long, env = "LAB_RESULTS_DIR", default_value = common::config::defaults::LAB_RESULTS_DIR)]
    pub results_dir: std::path::PathBuf,
    /// The stack's URLs.
    #[command(flatten)]
    pub stack: common::config::StackConfig,
}

fn lesson(n: u32, title: &str, text: &str) {
    println!("\n── {n}. {title}\n   {text}");
}

fn line(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

struct Demo {
    args: DemoArgs,
    spec: DatasetSpec,
    primary: MySqlPool,
    replica: MySqlPool,
    results: PartResults,
}

/// Drops and creates `database` on the server of `url`; returns a pool to it.
async fn fresh_database(service: &str, url: &str, database: &str) -> anyhow::Result<MySqlPool> {
    let admin = common::testing::mariadb_at(service, url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{database}`"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE `{database}`")))
        .execute(&admin)
        .await?;
    admin.close().await;
    Ok(common::testing::mariadb_at(service, &with_database(url, database)).await?)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

impl Demo {
    fn figure(&mut self, cmp: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.results.figure(cmp, name, value, unit, shows);
    }

    fn seconds(&self) -> Duration {
        Duration::from_secs(self.args.seconds)
    }

    fn split(&self) -> SplitPool {
        SplitPool::new(self.primary.clone(), vec![self.replica.clone()])
    }

    /// 0: the dataset, loaded afresh.
    async fn load(&mut self) -> anyhow::Result<()> {
        schema::migrate(&self.primary).await?;
        let stats = schema::load(&self.primary, &self.spec).await?;
        line(format!(
            "{} rows in {:.1} s: {:.0} rows/s (batches of 1,000 rows)",
            stats.rows,
            stats.seconds,
            stats.rate()
        ));
        self.figure(
            "loading the dataset",
            "rows loaded",
            stats.rows as f64,
            "rows",
            "users, friendships (both ways), articles, comments, likes",
        );
        self.figure(
            "loading the dataset",
            "load rate",
            stats.rate(),
            "rows/s",
            "multi-row INSERTs of 1,000 rows into the primary",
        );
        let start = Instant::now();
        let lag = replication::measure_lag(&self.primary, &self.replica, Duration::from_secs(300))
            .await?;
        anyhow::ensure!(
            lag.is_some(),
            "the replica did not catch up with the load in 5 minutes: ./lab status"
        );
        line(format!(
            "the replica had applied it all {:.1} s later",
            start.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    /// 1: replication lag, measured.
    async fn lag(&mut self) -> anyhow::Result<()> {
        let mut lat = Latencies::new();
        for _ in 0..200 {
            let lag =
                replication::measure_lag(&self.primary, &self.replica, Duration::from_secs(5))
                    .await?
                    .context("replication stopped")?;
            lat.record(lag);
        }
        let s = lat.summary();
        line(format!(
            "a row is readable on the replica p50 {} / p99 {} after the primary's commit returns",
            fmt_us(s.p50_us),
            fmt_us(s.p99_us)
        ));
        let cmp = "replication lag (heartbeat row, 200 samples)";
        self.figure(
            cmp,
            "lag p50",
            s.p50_us as f64,
            "µs",
            "commit on the primary to visible on the replica",
        );
        self.figure(
            cmp,
            "lag p99",
            s.p99_us as f64,
            "µs",
            "99th percentile of the same",
        );
        Ok(())
    }

    /// 2: read-your-writes, three ways, with and without injected lag.
    async fn read_your_writes(&mut self) -> anyhow::Result<()> {
        let split = self.split();
        let admin =
            common::testing::mariadb_at("MariaDB replica (admin)", &self.args.replica_admin_url)
                .await?;
        let policies = [
            ReadYourWrites::Naive,
            ReadYourWrites::PinToPrimary {
                window: Duration::from_secs(5),
            },
            ReadYourWrites::WaitForGtid {
                timeout: Duration::from_millis(50),
            },
        ];
        for injected in [false, true] {
            if injected {
                sqlx::query("STOP SLAVE SQL_THREAD").execute(&admin).await?;
            }
            let n = if injected { 30 } else { 200 };
            for policy in policies {
                let mut stale = 0;
                let mut on_primary = 0;
                let mut lat = Latencies::new();
                for i in 0..n {
                    let article = self.spec.article_popularity().id_of_rank(2 + i % 50);
                    let mut last = LastWrite::default();
                    let count = |p: MySqlPool| async move {
                        sqlx::query_scalar::<_, i64>(
                            "SELECT COUNT(*) FROM comments WHERE article_id = ?",
                        )
                        .bind(article)
                        .fetch_one(&p)
                        .await
                    };
                    let before = count(self.primary.clone()).await?;
                    replication::write_tracked(&split, &mut last, |mut conn| async move {
                        articles::add_comment(
                            &mut *conn,
                            Shape::Denormalized,
                            article,
                            1,
                            "read your writes",
                            0,
                        )
                        .await?;
                        Ok(((), conn))
                    })
                    .await?;
                    let t = Instant::now();
                    let (seen, from) = replication::read_own(&split, policy, &last, count).await?;
                    lat.record(t.elapsed());
                    if seen == before {
                        stale += 1;
                    }
                    if from == ReadFrom::Primary {
                        on_primary += 1;
                    }
                }
                let s = lat.summary();
                let when = if injected {
                    "replica stopped applying"
                } else {
                    "normal lag"
                };
                line(format!(
                    "{when:<26} {:<15} stale reads {stale:>3}/{n}  read p50 {:>8}  answered by the primary {on_primary}/{n}",
                    policy.name(),
                    fmt_us(s.p50_us)
                ));
                let cmp = format!("read-your-writes, {when}");
                self.figure(
                    &cmp,
                    &format!("{}: stale reads", policy.name()),
                    100.0 * stale as f64 / n as f64,
                    "%",
                    "reads right after the user's own write that missed it",
                );
                self.figure(
                    &cmp,
                    &format!("{}: read p50", policy.name()),
                    s.p50_us as f64,
                    "µs",
                    "the read's latency, waits included",
                );
                self.figure(
                    &cmp,
                    &format!("{}: reads on the primary", policy.name()),
                    100.0 * on_primary as f64 / n as f64,
                    "%",
                    "reads the primary had to serve",
                );
            }
            if injected {
                sqlx::query("START SLAVE SQL_THREAD")
                    .execute(&admin)
                    .await?;
            }
        }
        replication::measure_lag(&self.primary, &self.replica, Duration::from_secs(60))
            .await?
            .context("the replica did not catch up again")?;
        Ok(())
    }

    /// 3 and 4: a replica dies under a read load; the primary dies.
    async fn drills(&mut self) -> anyhow::Result<()> {
        let replica_url = with_database(&self.args.stack.mariadb_replica_url, &self.args.database);
        let proxy = Arc::new(ChaosProxy::start(&host_port(&replica_url)).await?);
        let replica = lazy_pool(&proxy.url_for(&replica_url), 8)?;
        let split = SplitPool::new(self.primary.clone(), vec![replica]);
        let served_by_primary = Arc::new(AtomicU64::new(0));
        let n = self.spec.sizes.articles;
        let run = {
            let (split, served_by_primary) = (split.clone(), served_by_primary.clone());
            tokio::spawn(measure::run_load(
                "reads, replica cut",
                Load::closed(8, self.seconds() * 2),
                move |i| {
                    let split = split.clone();
                    let served_by_primary = served_by_primary.clone();
                    async move {
                        let id = 1 + (i * 7919) % n;
                        let (_, from) =
                            split
                                .read(|p| async move {
                                    articles::page(&p, Shape::Denormalized, id).await
                                })
                                .await
                                .map_err(|e| e.to_string())?;
                        if from == ReadFrom::Primary {
                            served_by_primary.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<(), String>(())
                    }
                },
            ))
        };
        tokio::time::sleep(self.seconds() / 2).await;
        proxy.cut();
        let report = run.await?;
        proxy.restore();
        let fell_back = served_by_primary.load(Ordering::Relaxed);
        line(report.line());
        line(format!(
            "{fell_back} of {} reads were answered by the primary after the replica was cut",
            report.requests
        ));
        let cmp = "a replica dies under a read load";
        self.figure(
            cmp,
            "failed reads",
            report.errors as f64,
            "reads",
            "reads that got an error",
        );
        self.figure(
            cmp,
            "reads served by the primary",
            100.0 * fell_back as f64 / report.requests.max(1) as f64,
            "%",
            "the fallback at work",
        );

        let primary_url = with_database(&self.args.stack.mariadb_primary_url, &self.args.database);
        let proxy = ChaosProxy::start(&host_port(&primary_url)).await?;
        let split = SplitPool::new(
            lazy_pool(&proxy.url_for(&primary_url), 4)?,
            vec![self.replica.clone()],
        );
        proxy.cut();
        let t = Instant::now();
        let write = articles::add_comment(split.primary(), Shape::Denormalized, 1, 1, "x", 0).await;
        let failed_after = t.elapsed();
        anyhow::ensure!(
            write.as_ref().is_err_and(replication::is_connection_error),
            "a write with the primary down: {write:?}"
        );
        let mut reads_ok = 0;
        for id in 1..=50 {
            if split
                .read(|p| async move { articles::page(&p, Shape::Denormalized, id).await })
                .await
                .is_ok()
            {
                reads_ok += 1;
            }
        }
        line(format!(
            "primary cut: a write fails after {} (the server answers 503), and {reads_ok}/50 reads still succeed",
            fmt_us(failed_after.as_micros() as u64)
        ));
        let cmp = "the primary dies";
        self.figure(
            cmp,
            "time to fail a write",
            us(failed_after),
            "µs",
            "a connection refused is a fast, clear error",
        );
        self.figure(
            cmp,
            "reads that still succeed",
            reads_ok as f64,
            "of 50",
            "reads go on from the replica",
        );
        Ok(())
    }

    /// 5: scale up: the same reads with a buffer pool that holds the working set and one that does not.
    async fn scale_up(&mut self) -> anyhow::Result<()> {
        let admin =
            common::testing::mariadb_at("MariaDB primary (admin)", &self.args.primary_admin_url)
                .await?;
        let original: u64 = sqlx::query_scalar("SELECT @@innodb_buffer_pool_size")
            .fetch_one(&admin)
            .await?;
        let cmp = "scale up: buffer pool size (uniform random article pages)";
        for (label, bytes) in [
            ("16 MiB buffer pool", 16u64 << 20),
            ("1 GiB buffer pool", 1u64 << 30),
        ] {
            sqlx::query("SET GLOBAL innodb_buffer_pool_size = ?")
                .bind(bytes)
                .execute(&admin)
                .await?;
            wait_for_resize(&admin, bytes).await?;
            let pool = self.primary.clone();
            let n = self.spec.sizes.articles;
            // Warm up, then measure: only the large pool can keep what it read.
            for pass in 0..2 {
                let pool = pool.clone();
                let report = measure::run_load(label, Load::closed(4, self.seconds()), move |i| {
                    let pool = pool.clone();
                    async move {
                        let id = 1 + (i.wrapping_mul(2_654_435_761) % n);
                        articles::page(&pool, Shape::Denormalized, id)
                            .await
                            .map(drop)
                            .map_err(|e| e.to_string())
                    }
                })
                .await;
                if pass == 1 {
                    line(report.line());
                    self.results.load_figures(cmp, &report);
                }
            }
        }
        sqlx::query("SET GLOBAL innodb_buffer_pool_size = ?")
            .bind(original)
            .execute(&admin)
            .await?;
        Ok(())
    }

    /// 6: JOIN against denormalized columns, reads and writes.
    async fn denormalization(&mut self) -> anyhow::Result<()> {
        let authors: Arc<Vec<u64>> = Arc::new(
            (1..=20)
                .map(|r| self.spec.user_popularity().id_of_rank(r))
                .collect(),
        );
        let cmp = "denormalization: a page of a popular author's articles";
        let mut throughput = Vec::new();
        for (shape, name) in [
            (Shape::Join, "JOIN + COUNT"),
            (Shape::Denormalized, "denormalized"),
        ] {
            let (pool, authors) = (self.primary.clone(), authors.clone());
            let report = measure::run_load(name, Load::closed(4, self.seconds()), move |i| {
                let (pool, authors) = (pool.clone(), authors.clone());
                async move {
                    articles::by_author(&pool, shape, authors[(i % 20) as usize], 0)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            })
            .await;
            line(report.line());
            throughput.push(report.throughput);
            self.results.load_figures(cmp, &report);
        }
        line(format!(
            "denormalized reads: {:.1}x the throughput of the join",
            throughput[1] / throughput[0].max(1e-9)
        ));
        let cmp = "denormalization: the cost moves to the write";
        for (shape, name) in [
            (Shape::Join, "comment, no counter"),
            (Shape::Denormalized, "comment + counter"),
        ] {
            let pool = self.primary.clone();
            let lat = measure::sequential(200, |i| {
                let pool = pool.clone();
                async move {
                    articles::add_comment(&pool, shape, 1 + i % 100, 1, "write cost", 0)
                        .await
                        .map(drop)
                }
            })
            .await?
            .summary();
            line(format!(
                "{name:<22} p50 {:>8}  p99 {:>8}",
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ));
            self.figure(
                cmp,
                &format!("{name}: p50"),
                lat.p50_us as f64,
                "µs",
                "latency of adding a comment",
            );
        }
        // The Join-shaped writes above skipped the counter on purpose; put it right.
        sqlx::query("UPDATE articles a SET comment_count = (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id) WHERE a.id <= 100")
            .execute(&self.primary)
            .await?;
        Ok(())
    }

    /// 7: an index, EXPLAIN, and N+1 against one batched query.
    async fn tuning(&mut self) -> anyhow::Result<()> {
        let hot = self.spec.article_popularity().id_of_rank(1);
        let cmp = "SQL tuning: comments of an article, without and with its index";
        tuning::drop_index(&self.primary).await?;
        for indexed in [false, true] {
            if indexed {
                tuning::create_index(&self.primary).await?;
            }
            let plan = tuning::explain_comments(&self.primary, hot).await?;
            let pool = self.primary.clone();
            let n = if indexed { 200 } else { 20 };
            let lat = measure::sequential(n, |i| {
                let pool = pool.clone();
                let id = self.spec.article_popularity().id_of_rank(1 + i % 10);
                async move {
                    sqlx::query(tuning::COMMENTS_OF_ARTICLE)
                        .bind(id)
                        .fetch_all(&pool)
                        .await
                        .map(drop)
                }
            })
            .await?
            .summary();
            let name = if indexed {
                "with the index"
            } else {
                "without the index"
            };
            line(format!("{name:<18} EXPLAIN: {plan}"));
            line(format!(
                "{:<18} p50 {:>8}  p99 {:>8}",
                "",
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ));
            self.figure(
                cmp,
                &format!("{name}: p50"),
                lat.p50_us as f64,
                "µs",
                "latency of the query",
            );
            self.figure(
                cmp,
                &format!("{name}: rows examined"),
                plan.rows as f64,
                "rows",
                "EXPLAIN's estimate of rows read",
            );
        }
        let cmp = "N+1 queries against one batched query (a page of 20 articles' comments)";
        for batched in [false, true] {
            let pool = self.primary.clone();
            let mut queries = 0;
            let mut lat = Latencies::new();
            for page in 0..100u64 {
                let ids: Vec<u64> = (0..20)
                    .map(|k| self.spec.article_popularity().id_of_rank(1 + page * 20 + k))
                    .collect();
                let t = Instant::now();
                let (_, q) = if batched {
                    articles::comments_batched(&pool, &ids, 5).await?
                } else {
                    articles::comments_n_plus_1(&pool, &ids, 5).await?
                };
                lat.record(t.elapsed());
                queries = q;
            }
            let s = lat.summary();
            let name = if batched {
                "batched (one query)"
            } else {
                "N+1"
            };
            line(format!(
                "{name:<14} {queries:>2} queries a page  p50 {:>8}  p99 {:>8}",
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ));
            self.figure(
                cmp,
                &format!("{name}: queries"),
                queries as f64,
                "queries",
                "round trips for one page",
            );
            self.figure(
                cmp,
                &format!("{name}: p50"),
                s.p50_us as f64,
                "µs",
                "latency of one page's comments",
            );
        }
        Ok(())
    }

    /// 8: two shards: placement, scatter-gather, resharding, a shard down.
    async fn sharding(&mut self) -> anyhow::Result<()> {
        let db = &self.args.database;
        let s0 = fresh_database("MariaDB shard 0", &self.args.stack.mariadb_shard0_url, db).await?;
        let s1 = fresh_database("MariaDB shard 1", &self.args.stack.mariadb_shard1_url, db).await?;
        schema::migrate(&s0).await?;
        schema::migrate(&s1).await?;
        let s1_url = with_database(&self.args.stack.mariadb_shard1_url, db);
        let proxy = ChaosProxy::start(&host_port(&s1_url)).await?;
        let store = ShardedStore::new(
            vec![s0.clone(), lazy_pool(&proxy.url_for(&s1_url), 8)?],
            Modulo(2),
        );
        let t = Instant::now();
        let rows = store.load(&self.spec).await?;
        line(format!(
            "users, friendships and articles placed by user id on 2 shards: {rows} rows in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
        let on0 = (1..=self.spec.sizes.users)
            .filter(|u| crate::sharding::Placement::shard_of(&store.placement, *u) == 0)
            .count();
        line(format!(
            "{on0} users on shard 0, {} on shard 1",
            self.spec.sizes.users as usize - on0
        ));

        let cmp = "the friends' feed: one database against two shards";
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        let users: Vec<u64> = (0..200)
            .map(|_| rng.random_range(1..=self.spec.sizes.users))
            .collect();
        let mut single = Latencies::new();
        let mut sharded = Latencies::new();
        let mut asked = 0;
        for u in &users {
            let t = Instant::now();
            articles::feed_join(&self.primary, *u, 20).await?;
            single.record(t.elapsed());
            let t = Instant::now();
            let (_, a) = store.feed(*u, 20).await?;
            sharded.record(t.elapsed());
            asked += a;
        }
        let (a, b) = (single.summary(), sharded.summary());
        line(format!(
            "one database, SQL JOIN        p50 {:>8}  p99 {:>8}",
            fmt_us(a.p50_us),
            fmt_us(a.p99_us)
        ));
        line(format!(
            "two shards, scatter-gather    p50 {:>8}  p99 {:>8}  ({:.1} shards asked a feed)",
            fmt_us(b.p50_us),
            fmt_us(b.p99_us),
            asked as f64 / users.len() as f64
        ));
        self.figure(
            cmp,
            "one database (JOIN): p50",
            a.p50_us as f64,
            "µs",
            "friends' latest articles in one query",
        );
        self.figure(
            cmp,
            "two shards (scatter-gather): p50",
            b.p50_us as f64,
            "µs",
            "friend list from the user's shard, then each shard in parallel, merged",
        );
        self.figure(
            cmp,
            "shards asked a feed",
            asked as f64 / users.len() as f64,
            "shards",
            "friends live on both shards",
        );

        let cmp = "adding a third shard: share of users that must move";
        let keys = || 1..=self.spec.sizes.users;
        let modulo = moved_share(&Modulo(2), &Modulo(3), keys());
        let ring = moved_share(
            &ConsistentHash::new(2, 160),
            &ConsistentHash::new(3, 160),
            keys(),
        );
        let mut dir = Directory::freeze(&Modulo(2), keys(), 3);
        // A directory moves exactly what you choose: a third of the users, to balance.
        for k in keys().filter(|k| k % 3 == 0) {
            dir.assign(k, 2);
        }
        let directory = moved_share(&Modulo(2), &dir, keys());
        for (name, share) in [
            ("modulo", modulo),
            ("consistent hashing", ring),
            ("directory", directory),
        ] {
            line(format!("{name:<20} moves {:>5.1}% of users", share * 100.0));
            self.figure(
                cmp,
                name,
                share * 100.0,
                "%",
                "users whose shard changes from 2 to 3 shards",
            );
        }

        proxy.cut();
        let (mut ok, mut failed_on_1, mut failed_elsewhere) = (0, 0, 0);
        for u in 1..=200u64 {
            match store.friends(u).await {
                Ok(_) => ok += 1,
                Err(e) if e.shard == 1 => failed_on_1 += 1,
                Err(_) => failed_elsewhere += 1,
            }
        }
        proxy.restore();
        line(format!(
            "shard 1 cut: {ok} users served, {failed_on_1} told \"shard 1 is unavailable\", {failed_elsewhere} others failed"
        ));
        let cmp = "one shard dies";
        self.figure(
            cmp,
            "users served",
            ok as f64,
            "of 200",
            "users of the live shard",
        );
        self.figure(
            cmp,
            "users with a clear error",
            failed_on_1 as f64,
            "of 200",
            "users of the dead shard",
        );
        self.figure(
            cmp,
            "other failures",
            failed_elsewhere as f64,
            "of 200",
            "users of the live shard who failed anyway",
        );
        self.scale_out(&[s0, store.shards[1].clone()]).await?;
        Ok(())
    }

    /// 9: scale-out with a stated capacity per server.
    async fn scale_out(&mut self, shards: &[MySqlPool]) -> anyhow::Result<()> {
        let (slots, service) = (4usize, Duration::from_millis(5));
        let per_server = Modelled::new(slots, service).ceiling();
        line(format!(
            "each server modelled as {slots} queries at a time x {} ms: at most {per_server:.0} queries/s (every server here shares the same 2 cores)",
            service.as_millis()
        ));
        let n_users = self.spec.sizes.users;
        for (label, servers) in [("1 shard", &shards[..1]), ("2 shards", &shards[..2])] {
            for modelled in [true, false] {
                let models: Arc<Vec<(MySqlPool, Modelled)>> = Arc::new(
                    servers
                        .iter()
                        .map(|p| (p.clone(), Modelled::new(slots, service)))
                        .collect(),
                );
                let placement = Modulo(servers.len());
                let name = format!("{label}, {}", if modelled { "modelled" } else { "raw" });
                let report = measure::run_load(&name, Load::closed(32, self.seconds()), move |i| {
                    let models = models.clone();
                    let user = 1 + (i.wrapping_mul(2_654_435_761) % n_users);
                    let shard = crate::sharding::Placement::shard_of(&placement, user);
                    async move {
                        let (pool, model) = &models[shard];
                        let q = articles::friends(pool, user);
                        let out = if modelled {
                            model.run(q).await
                        } else {
                            q.await
                        };
                        out.map(drop).map_err(|e| e.to_string())
                    }
                })
                .await;
                let ceiling = per_server * servers.len() as f64;
                line(format!(
                    "{}{}",
                    report.line(),
                    if modelled {
                        format!("   (model: {ceiling:.0}/s max)")
                    } else {
                        String::new()
                    }
                ));
                let cmp = format!(
                    "scale-out over shards ({})",
                    if modelled {
                        "modelled capacity"
                    } else {
                        "raw servers on 2 shared cores"
                    }
                );
                self.figure(
                    &cmp,
                    &format!("{label}: throughput"),
                    report.throughput,
                    "queries/s",
                    "friend-list reads routed to the user's shard",
                );
                if modelled {
                    self.figure(
                        &cmp,
                        &format!("{label}: model ceiling"),
                        ceiling,
                        "queries/s",
                        "servers x slots / service time",
                    );
                }
            }
        }
        self.results.notes.push(format!(
            "Scale-out figures marked modelled give each server a stated capacity ({slots} concurrent queries x {} ms); the raw figures show what servers sharing 2 cores do.",
            service.as_millis()
        ));
        Ok(())
    }

    /// 10: MongoDB: the migration and the feed three ways.
    async fn mongo(&mut self) -> anyhow::Result<()> {
        let spec = DatasetSpec::new(self.spec.seed, self.args.mongo_scale);
        let source = if spec == self.spec {
            self.primary.clone()
        } else {
            let db = format!("{}_mongo_source", self.args.database);
            let pool = fresh_database("MariaDB primary", &self.args.stack.mariadb_primary_url, &db)
                .await?;
            schema::migrate(&pool).await?;
            schema::load(&pool, &spec).await?;
            pool
        };
        let mdb = mongo::connect(&self.args.stack.mongo_url, &self.args.database).await?;
        mdb.drop().await?;
        let m = mongo::migrate(&source, &mdb).await?;
        let (sql_counts, mongo_counts) = (
            mongo::counts_sql(&source).await?,
            mongo::counts_mongo(&mdb).await?,
        );
        let matches = sql_counts == mongo_counts;
        line(format!(
            "migrated {} users, {} articles with {} comments embedded in {:.1} s: {:.0} rows/s; counts match: {matches}",
            m.users,
            m.articles,
            m.comments,
            m.seconds,
            m.rate()
        ));
        anyhow::ensure!(
            matches,
            "the migration lost data: MariaDB {sql_counts:?}, MongoDB {mongo_counts:?}"
        );
        let cmp = "migrating MariaDB to MongoDB (SecantusDB)";
        self.figure(
            cmp,
            "migration rate",
            m.rate(),
            "rows/s",
            "source rows turned into documents per second",
        );
        self.figure(
            cmp,
            "counts that differ",
            0.0,
            "counts",
            "users, articles, comments, friendships compared after the copy",
        );

        let cmp =
            "the friends' feed: SQL JOIN, app-side join, $lookup (MongoDB = SecantusDB, Python)";
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let users: Vec<u64> = (0..100)
            .map(|_| rng.random_range(1..=spec.sizes.users))
            .collect();
        let mut lat = [Latencies::new(), Latencies::new(), Latencies::new()];
        for u in &users {
            let t = Instant::now();
            articles::feed_join(&source, *u, 20).await?;
            lat[0].record(t.elapsed());
            let t = Instant::now();
            mongo::feed_app_join(&mdb, *u, 20).await?;
            lat[1].record(t.elapsed());
            let t = Instant::now();
            mongo::feed_lookup(&mdb, *u, 20).await?;
            lat[2].record(t.elapsed());
        }
        for ((name, trips), l) in [
            ("SQL JOIN (MariaDB)", 1),
            ("app-side join: ids, then $in", 2),
            ("$lookup", 1),
        ]
        .into_iter()
        .zip(&lat)
        {
            let s = l.summary();
            line(format!(
                "{name:<30} {trips} round trip(s)  p50 {:>8}  p99 {:>8}",
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ));
            self.figure(
                cmp,
                &format!("{name}: round trips"),
                trips as f64,
                "round trips",
                "requests to the database per feed",
            );
            self.figure(
                cmp,
                &format!("{name}: p50"),
                s.p50_us as f64,
                "µs",
                "latency of one feed",
            );
        }
        self.results.notes.push(format!(
            "MongoDB figures come from SecantusDB 0.7 (a MongoDB-wire server in Python), at the {:?} scale; compare round trips, not its latencies, with a real mongod.",
            self.args.mongo_scale
        ));
        Ok(())
    }
}

fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned()
}

async fn wait_for_resize(admin: &MySqlPool, bytes: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now: u64 = sqlx::query_scalar("SELECT @@innodb_buffer_pool_size")
            .fetch_one(admin)
            .await?;
        let status: Option<(String, String)> =
            sqlx::query_as("SHOW STATUS LIKE 'Innodb_buffer_pool_resize_status'")
                .fetch_optional(admin)
                .await?;
        let busy = status.is_some_and(|(_, v)| v.contains("ing"));
        if now == bytes && !busy {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the buffer pool did not resize to {bytes} bytes in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs every step, prints it, and writes `part2.json`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stack = &args.stack;
    let primary = fresh_database(
        "MariaDB primary",
        &stack.mariadb_primary_url,
        &args.database,
    )
    .await?;
    let replica_url = with_database(&stack.mariadb_replica_url, &args.database);
    // The database reaches the replica by replication.
    let replica = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match common::testing::mariadb_at("MariaDB replica", &replica_url).await {
                Ok(p) => break p,
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    let mut demo = Demo {
        spec: DatasetSpec::new(42, args.scale),
        results: PartResults::new(crate::PART, crate::TITLE, crate::CLAIM),
        args,
        primary,
        replica,
    };
    println!("Part 2: Database. {}", crate::CLAIM);
    let s = demo.spec.sizes;
    lesson(
        0,
        "The dataset",
        &format!(
            "{} users, {} articles, {} comments, {} likes drawn, Zipf-skewed, loaded into the primary.",
            s.users, s.articles, s.comments, s.likes
        ),
    );
    demo.load().await?;
    lesson(
        1,
        "Replication lag",
        "The replica applies the primary's changes a moment later: how long a moment?",
    );
    demo.lag().await?;
    lesson(
        2,
        "Read your own writes",
        "Read right after your own write: naive (may be stale), pinned to the primary, or waiting for the write's GTID on the replica.",
    );
    demo.read_your_writes().await?;
    lesson(
        3,
        "A replica dies, then the primary",
        "Reads fall back to the primary; with the primary gone, writes fail fast and reads go on.",
    );
    demo.drills().await?;
    lesson(
        4,
        "Scale up: more RAM",
        "The same random reads with a buffer pool that cannot hold the data and one that can.",
    );
    demo.scale_up().await?;
    lesson(
        5,
        "Denormalization",
        "Copies and counters on the article row: the read drops its join and COUNTs, the write does a little more.",
    );
    demo.denormalization().await?;
    lesson(
        6,
        "SQL tuning",
        "The same query without its index and with it; N+1 queries against one.",
    );
    demo.tuning().await?;
    lesson(
        7,
        "Sharding",
        "Users and what they own on two independent servers; a feed gathered from both; adding a shard; losing one.",
    );
    demo.sharding().await?;
    lesson(
        8,
        "Path 2: MongoDB",
        "Documents that embed what a page needs, and joins in application code.",
    );
    demo.mongo().await?;
    let path = demo.results.write(&demo.args.results_dir)?;
    println!("\nresults: {}", path.display());
    Ok(())
}
