//! The experiments of part 2, in the article's order (`./lab tour part2`,
//! or `cargo run --release -p part2-database --bin part2-demo`).
//!
//! One file per experiment; this file holds what they share: the
//! arguments, the databases, and [`Demo`], which every experiment borrows
//! to measure and to record its figures, each with its kind (measured,
//! computed or modelled: see `docs/glossary.md`).
//!
//! | # | file | the lesson |
//! |---|---|---|
//! | 0 | [`dataset`] | the social blog, loaded afresh |
//! | 1 | [`replication_lag`] | how far behind a replica is, with the resolution stated |
//! | 2 | [`read_your_writes`] | naive, pinned, or waiting for the GTID |
//! | 3 | [`failover`] | a replica cut under load; the primary stopped |
//! | 4 | [`scale_up`] | a buffer pool that holds the data, and one that does not |
//! | 5 | [`denormalize`] | counters on the row: the cost moves to the write |
//! | 6 | [`sql_tuning`] | one index, and EXPLAIN |
//! | 7 | [`n_plus_1`] | N+1 queries against one, counted by MariaDB |
//! | 8 | [`sharding`] | two shards; the same feed on one database and on two |
//! | 9 | [`resharding`] | keys moved by adding a shard, per scheme (computed) |
//! | 10 | [`shard_down`] | losing one shard |
//! | 11 | [`scale_out`] | a modelled capacity per shard, beside the raw run |
//! | 12 | [`nosql`] | MongoDB: migration, and the feed's round trips counted |
//!
//! The demo works in databases of its own (`demo_part2` on the primary,
//! and so on the replica, and on each shard), dropped and loaded afresh
//! each run, so every figure comes from the same data. Steps that break
//! shared servers (the replica's SQL thread, the buffer pool, an index) do
//! it through [`crate::drill`]'s guards, which put them back on every path.
//!
//! Variables, besides [`common::demo::DemoArgs`]'s (`DEMO_SECONDS`,
//! `DEMO_REPEAT`, `LAB_RESULTS_DIR`, the stack's URLs): `DEMO_SCALE`
//! (`default`), `DEMO_MONGO_SCALE` (`tiny`), `DEMO_DATABASE`
//! (`demo_part2`), `MARIADB_PRIMARY_ADMIN_URL`, `MARIADB_REPLICA_ADMIN_URL`,
//! `DB_ACQUIRE_TIMEOUT_MS` (`1000`, as the server's).

pub mod dataset;
pub mod denormalize;
pub mod failover;
pub mod n_plus_1;
pub mod nosql;
pub mod read_your_writes;
pub mod replication_lag;
pub mod resharding;
pub mod scale_out;
pub mod scale_up;
pub mod shard_down;
pub mod sharding;
pub mod sql_tuning;

use std::time::{Duration, Instant};

use clap::Parser;
use common::config::with_database;
use common::dataset::{DatasetSpec, Scale};
use common::demo::lesson;
use common::measure::{Load, LoadReport};
use common::results::{Kind, PartResults};
use sqlx::MySqlPool;

/// Part 2's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part2-demo",
    about = "Part 2: the database, two paths, measured"
)]
pub struct Args {
    /// Dataset scale: tiny, default (10k users, 100k articles, 500k comments) or large.
    #[arg(long, env = "DEMO_SCALE", default_value = "default")]
    pub scale: Scale,
    /// Scale of the MongoDB section (the Python wire server is slow to load).
    #[arg(long, env = "DEMO_MONGO_SCALE", default_value = "tiny")]
    pub mongo_scale: Scale,
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
    /// How long a write waits for a primary connection before failing
    /// (the server's setting, used by the "primary stopped" drill).
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1000)]
    pub db_acquire_timeout_ms: u64,
    /// What every demo takes: seconds, repeat, results dir, the stack's URLs.
    #[command(flatten)]
    pub demo: common::demo::DemoArgs,
}

/// What the experiments share.
pub struct Demo {
    /// The arguments.
    pub args: Args,
    /// The dataset, the same for every experiment.
    pub spec: DatasetSpec,
    /// The demo's database on the primary.
    pub primary: MySqlPool,
    /// The same database on the replica.
    pub replica: MySqlPool,
    /// Figures so far.
    pub results: PartResults,
    /// The two shards, once [`sharding`] has loaded them.
    sharded: Option<sharding::Sharded>,
}

impl Demo {
    /// Length of each load run.
    pub fn seconds(&self) -> Duration {
        self.args.demo.load_time()
    }

    /// The stack's URLs.
    pub fn stack(&self) -> &common::config::StackConfig {
        &self.args.demo.stack
    }

    fn measured(&mut self, comparison: &str, name: &str, value: f64, unit: &str, shows: &str) {
        self.results.measured(comparison, name, value, unit, shows);
    }

    /// A headline load run, measured `--repeat` times: prints each run and
    /// records the median with its spread.
    async fn load_runs<F, Fut>(
        &mut self,
        kind: Kind,
        comparison: &str,
        name: &str,
        load: Load,
        request: F,
    ) -> Vec<LoadReport>
    where
        F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let repeat = self.args.demo.repeat;
        common::demo::load_runs(
            &mut self.results,
            repeat,
            kind,
            comparison,
            name,
            load,
            request,
        )
        .await
    }
}

/// Drops and creates `database` on the server of `url`; returns a pool to it.
pub async fn fresh_database(service: &str, url: &str, database: &str) -> anyhow::Result<MySqlPool> {
    let admin = common::testing::mariadb_at(service, url).await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{database}`"
    )))
    .execute(&admin)
    .await?;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
    )))
    .execute(&admin)
    .await?;
    admin.close().await;
    Ok(common::testing::mariadb_at(service, &with_database(url, database)).await?)
}

/// A later part's demo data: its database on the primary and, by
/// replication, on the replica.
pub struct DemoData {
    /// The database on the primary.
    pub primary: MySqlPool,
    /// The same database on the replica, once it holds every comment.
    pub replica: MySqlPool,
    /// How the data came to be, for the demo's dataset line: `kept
    /// (--reuse)` or `loaded afresh (N rows in S s)`.
    pub how: String,
}

/// Parts 3 and 4's dataset: with `reuse`, `database` as it is if it
/// already holds `spec`'s data ([`crate::schema::loaded`]); otherwise
/// dropped and loaded afresh. Then waits, up to 60 s, until the replica
/// holds every comment (the load's biggest table but likes), since the
/// demo's clones may read there.
pub async fn open_dataset(
    stack: &common::config::StackConfig,
    database: &str,
    spec: &DatasetSpec,
    reuse: bool,
) -> anyhow::Result<DemoData> {
    let primary_url = with_database(&stack.mariadb_primary_url, database);
    let reused = if reuse {
        match common::testing::mariadb_at("MariaDB primary", &primary_url).await {
            Ok(pool) if crate::schema::loaded(&pool, spec).await.unwrap_or(false) => Some(pool),
            _ => None,
        }
    } else {
        None
    };
    let (primary, how) = match reused {
        Some(pool) => (pool, "kept (--reuse)".to_owned()),
        None => {
            let pool =
                fresh_database("MariaDB primary", &stack.mariadb_primary_url, database).await?;
            crate::schema::migrate(&pool).await?;
            let stats = crate::schema::load(&pool, spec).await?;
            (pool, format!("loaded afresh ({stats})"))
        }
    };
    let replica_url = with_database(&stack.mariadb_replica_url, database);
    let deadline = Instant::now() + Duration::from_secs(60);
    let want: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM comments")
        .fetch_one(&primary)
        .await?;
    loop {
        if let Ok(replica) = common::testing::mariadb_at("MariaDB replica", &replica_url).await {
            let have: Option<i64> = sqlx::query_scalar("SELECT COUNT(*) FROM comments")
                .fetch_one(&replica)
                .await
                .ok();
            if have == Some(want) {
                return Ok(DemoData {
                    primary,
                    replica,
                    how,
                });
            }
            replica.close().await;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the demo's database did not reach the replica within 60 s (./lab status; is it replicating?)"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `host:port` of a URL, for a chaos proxy in front of it.
fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `part2-demo`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): `.env`, logging, the flags, then [`run`].
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async { run(clap::Parser::parse()).await })
}

/// Runs every experiment in the article's order, prints it, and writes `part2.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let stack = args.demo.stack.clone();
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
    let mut results = PartResults::new(crate::PART, crate::TITLE, crate::CLAIM);
    results.set_repeat(args.demo.repeat);
    let mut demo = Demo {
        spec: DatasetSpec::new(42, args.scale),
        results,
        args,
        primary,
        replica,
        sharded: None,
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
    dataset::run(&mut demo).await?;
    lesson(
        1,
        "Replication lag",
        "The replica applies the primary's changes a moment later: how long a moment?",
    );
    replication_lag::run(&mut demo).await?;
    lesson(
        2,
        "Read your own writes",
        "Read right after your own write: naive (may be stale), pinned to the primary, or waiting for the write's GTID on the replica.",
    );
    read_your_writes::run(&mut demo).await?;
    lesson(
        3,
        "A replica dies, then the primary",
        "Reads fall back to the primary; with the primary stopped, writes fail fast and reads go on.",
    );
    failover::run(&mut demo).await?;
    lesson(
        4,
        "Scale up: more RAM",
        "The same random reads with a buffer pool that cannot hold the data and one that can.",
    );
    scale_up::run(&mut demo).await?;
    lesson(
        5,
        "Denormalization",
        "Copies and counters on the article row: the read drops its join and COUNTs, the write does a little more.",
    );
    denormalize::run(&mut demo).await?;
    lesson(
        6,
        "SQL tuning: an index",
        "The same query without its index and with it, and what EXPLAIN says.",
    );
    sql_tuning::run(&mut demo).await?;
    lesson(
        7,
        "N+1 queries",
        "A page's comments one query per article, or one query for the page: MariaDB counts them.",
    );
    n_plus_1::run(&mut demo).await?;
    lesson(
        8,
        "Sharding",
        "Users and what they own on two independent servers; the same feed on one database and gathered from two.",
    );
    sharding::run(&mut demo).await?;
    lesson(
        9,
        "Resharding",
        "Adding a third shard: how many users must move, per placement scheme.",
    );
    resharding::run(&mut demo)?;
    lesson(
        10,
        "A shard dies",
        "Its users get a clear error; everyone else is served.",
    );
    shard_down::run(&mut demo).await?;
    lesson(
        11,
        "Scale out",
        "More shards, more capacity: shown with a stated capacity per server, beside the raw run on shared cores.",
    );
    scale_out::run(&mut demo).await?;
    lesson(
        12,
        "Path 2: MongoDB",
        "Documents that embed what a page needs, and joins in application code.",
    );
    nosql::run(&mut demo).await?;
    let path = demo.results.write(&demo.args.demo.results_dir)?;
    println!(
        "\nresults: {} (the demo took {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed_and_takes_the_shared_flags() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args =
            Args::try_parse_from(["part2-demo", "--scale", "tiny", "--repeat", "2"]).unwrap();
        assert_eq!(args.scale, Scale::Tiny);
        assert_eq!(args.demo.repeat, 2);
    }

    #[test]
    fn the_proxy_target_is_the_host_and_port_of_the_url() {
        assert_eq!(
            host_port("mysql://u:p@127.0.0.1:13306/lab"),
            "127.0.0.1:13306"
        );
        assert_eq!(host_port("127.0.0.1:1"), "127.0.0.1:1");
    }
}
