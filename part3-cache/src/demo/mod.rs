//! The experiments of part 3, in the article's order (`./lab tour part3`,
//! or `cargo run --release -p part3-cache --bin part3-demo`).
//!
//! One file per experiment; this file holds what they share: the
//! arguments, the demo's own database (loaded afresh, the default dataset,
//! so the most connected user has thousands of friends), clusters of real
//! `part3-server` clones behind a private HAProxy ([`Demo::cluster`]: every
//! server setting at its default, [`server_defaults`], whatever the
//! caller's `.env` or shell says, with each experiment's own settings on
//! top; the demo prints the list and keeps it in the results' notes), the
//! servers' own counters ([`Demo::com_select`]), and the results, every
//! figure with its kind (measured, computed or modelled: see
//! `docs/glossary.md`).
//!
//! | # | file | the lesson |
//! |---|---|---|
//! | 1 | [`no_cache`] | the article page and the feed with no cache: queries per request, counted by MariaDB |
//! | 2 | [`query_cache`] | cached queries: stale reads after a write; flush-on-write collapses the hit ratio; MariaDB's own query cache |
//! | 3 | [`object_cache`] | cached objects: 0 stale reads, the hit ratio, the queries saved, hit against assembly |
//! | 4 | [`file_cache`] | a file cache on each clone's disk: the other clones serve the old page |
//! | 5 | [`streams`] | activity streams and the friend graph: the feed for the median and the most connected user; mutual friends from Redis sets |
//! | 6 | [`backends`] | Memcached against Redis through one trait: p50/p99 at 1, 16, 64; multi-get; memory per object |
//! | 7 | [`eviction`] | a cache smaller than the data: hit ratio against size, beside the best possible |
//! | 8 | [`restart`] | a restart of each: Redis keeps what it persisted, Memcached comes back cold; sessions in Memcached |
//! | 9 | [`stampede`] | a hot object expires under 100 readers: assemblies per strategy |
//! | 10 | [`stale_set`] | the stale-set race, reproduced, counted, fixed |
//! | 11 | [`cache_down`] | Memcached stopped under load: 0 failed requests; started: the hit ratio climbs back |
//!
//! Variables, besides [`common::demo::DemoArgs`]'s (`DEMO_SECONDS`,
//! `DEMO_REPEAT`, `LAB_RESULTS_DIR`, the stack's URLs): `DEMO_SCALE`
//! (`default`), `PART3_DEMO_DATABASE` (`demo_part3`), `DEMO_ONLY` (all), `DEMO_REUSE` (`false`), `PART3_SERVER_BIN`
//! (`part3-server` next to the demo), `MARIADB_PRIMARY_ADMIN_URL`,
//! `MARIADB_REPLICA_ADMIN_URL`.

pub mod backends;
pub mod cache_down;
pub mod eviction;
pub mod file_cache;
pub mod no_cache;
pub mod object_cache;
pub mod query_cache;
pub mod restart;
pub mod stale_set;
pub mod stampede;
pub mod streams;

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use common::config::with_database;
use common::dataset::{DatasetSpec, Scale};
use common::demo::lesson;
use common::measure::{Load, LoadReport};
use common::results::{Kind, PartResults};
use part1_clones::cluster::{Cluster, ClusterSpec};
use part2_database::demo::{DemoData, open_dataset};
use sqlx::MySqlPool;

/// Part 3's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part3-demo",
    about = "Part 3: the cache, two patterns, measured"
)]
pub struct Args {
    /// Dataset scale: tiny, default (10k users, 100k articles, 500k comments) or large.
    #[arg(long, env = "DEMO_SCALE", default_value = "default")]
    pub scale: Scale,
    /// The database the demo creates on the primary (it replicates).
    #[arg(long, env = "PART3_DEMO_DATABASE", default_value = "demo_part3")]
    pub database: String,
    /// The clone binary; default: `part3-server` next to this demo.
    #[arg(long, env = "PART3_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
    /// An admin login on the primary (global status, query cache size).
    #[arg(
        long,
        env = "MARIADB_PRIMARY_ADMIN_URL",
        default_value = "mysql://labadmin:labadmin@127.0.0.1:13306/lab"
    )]
    pub primary_admin_url: String,
    /// An admin login on the replica (STOP/START SLAVE, global status).
    #[arg(
        long,
        env = "MARIADB_REPLICA_ADMIN_URL",
        default_value = "mysql://labadmin:labadmin@127.0.0.1:13307/lab"
    )]
    pub replica_admin_url: String,
    /// Run only these experiments (numbers from the table above, comma
    /// separated), e.g. `--only 3,4`; all of them by default.
    #[arg(long, env = "DEMO_ONLY", value_delimiter = ',')]
    pub only: Vec<u32>,
    /// Keep the demo's database if it already holds the dataset, instead
    /// of loading it afresh (quicker while working on one experiment; the
    /// tour always loads afresh).
    #[arg(long, env = "DEMO_REUSE", default_value_t = false)]
    pub reuse: bool,
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
    /// The primary's URL with the demo's database.
    pub primary_url: String,
    /// The replica's URL with the demo's database.
    pub replica_url: String,
    /// The `part3-server` binary.
    pub bin: PathBuf,
    /// Figures so far.
    pub results: PartResults,
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

    /// A cluster of `clones` `part3-server` clones behind a private HAProxy,
    /// on the demo's database, with a cache key prefix of its own (so no
    /// two experiments see each other's keys), every server setting at its
    /// default ([`server_defaults`]: the caller's `.env` or shell cannot
    /// change an experiment behind its back), plus `extra` settings
    /// (`CACHE`, `CACHE_BACKEND`, `STAMPEDE`, ...; they override the rest).
    /// The clones are killed when the cluster is dropped; call
    /// [`Cluster::stop`] to stop them cleanly.
    pub async fn cluster(&self, clones: usize, extra: &[(&str, &str)]) -> anyhow::Result<Cluster> {
        let prefix = common::testing::unique_name("d3");
        let stack = self.stack();
        let defaults = server_defaults();
        let mut env: Vec<(&str, &str)> = defaults
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("KEY_PREFIX", prefix.as_str()),
            ("REDIS_URL", stack.redis_url.as_str()),
            ("MEMCACHED_URL", stack.memcached_url.as_str()),
            ("MARIADB_PRIMARY_URL", self.primary_url.as_str()),
            ("MARIADB_REPLICA_URL", self.replica_url.as_str()),
            ("RUST_LOG", "warn"),
        ]);
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, v));
        }
        let file = env
            .iter()
            .any(|(k, v)| *k == "CACHE_BACKEND" && v.eq_ignore_ascii_case("file"));
        let dir_given = env.iter().any(|(k, _)| *k == "CACHE_FILE_DIR");
        // `CACHE_FILE_DIR` has no value meaning "unset" (each clone picks
        // its own directory when it is absent), and a cluster's clones all
        // get the same environment: inherited, it would give every clone one
        // shared directory, and experiment 4's lesson would vanish.
        anyhow::ensure!(
            !file || dir_given || std::env::var_os("CACHE_FILE_DIR").is_none(),
            "CACHE_FILE_DIR is set in the environment: the demo's file-cache clones would share one directory; unset it (and remove it from .env) to run the demo"
        );
        Cluster::start(ClusterSpec::new(&self.bin, clones, &env)).await
    }

    /// A global status counter of the server behind `pool` (`Com_select`,
    /// `Qcache_hits`, ...): the server's own count, read with
    /// `SHOW GLOBAL STATUS`. Take it before and after a run; the
    /// difference is what the run cost that server (the demo's clones are
    /// the only clients of its database while it runs; other databases on
    /// the same server count too, so keep the rest of the lab idle).
    pub async fn global_status(pool: &MySqlPool, name: &str) -> anyhow::Result<u64> {
        let row: Option<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SHOW GLOBAL STATUS LIKE '{name}'"
        )))
        .fetch_optional(pool)
        .await?;
        let (_, v) = row.ok_or_else(|| anyhow::anyhow!("no global status variable {name}"))?;
        Ok(v.parse()?)
    }

    /// `Com_select` on the primary plus the replica: the SELECTs both
    /// servers ran, by their own counters.
    pub async fn com_select(&self) -> anyhow::Result<u64> {
        Ok(Self::global_status(&self.primary, "Com_select").await?
            + Self::global_status(&self.replica, "Com_select").await?)
    }

    /// Whether `--only` asks for experiment `n` (or is empty).
    pub fn wants(&self, n: u32) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&n)
    }

    /// A headline load run, measured `--repeat` times: prints each run and
    /// records the median with its spread.
    pub async fn load_runs<F, Fut>(
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

/// Variables the demo sets itself on every clone (or the cluster does:
/// `CLONE_ID`, `PORT`, `LAB_BUILD`), never taken from the defaults.
pub const SET_BY_THE_DEMO: &[&str] = &["KEY_PREFIX", "CLONE_ID", "PORT", "LAB_BUILD"];

/// Every setting of `part3-server` (part 1's, part 2's and part 3's) that
/// has a default, at that default, as `(variable, value)`, read from the
/// server's own command line definition, so the list cannot drift from
/// it. Left out: the URLs (the demo gives the clones its own stack's),
/// what [`SET_BY_THE_DEMO`] lists, and `CACHE_FILE_DIR` (no default: each
/// clone computes its own; [`Demo::cluster`] refuses to start a file-cache
/// cluster that would inherit one).
pub fn server_defaults() -> Vec<(String, String)> {
    use clap::CommandFactory;
    crate::server::Part3Config::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?;
            let values = a.get_default_values();
            if values.is_empty() || env.ends_with("_URL") || SET_BY_THE_DEMO.contains(&env) {
                return None;
            }
            let value = values
                .iter()
                .map(|v| v.to_string_lossy())
                .collect::<Vec<_>>()
                .join(",");
            Some((env.to_owned(), value))
        })
        .collect()
}

/// The clones' fixed settings, one line (printed and kept in the results'
/// notes): what every experiment runs with unless it says otherwise.
pub fn settings_line() -> String {
    let all: Vec<String> = server_defaults()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "every clone runs with these settings unless its experiment names others (the caller's environment is not used): {}; CACHE_FILE_DIR unset (one directory per clone)",
        all.join(" ")
    )
}

/// The `part3-server` beside the running demo binary.
fn default_server_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("part3-server");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release -p part3-cache) or pass --server-bin",
        bin.display()
    );
    Ok(bin)
}

/// Prints an experiment's wall time: the whole tour has a budget (15
/// minutes on a fresh machine), and this shows where it goes.
fn took(started: Instant) {
    common::demo::line(format!(
        "(this experiment took {:.1} s)",
        started.elapsed().as_secs_f64()
    ));
}

/// `part3-demo`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): `.env`, logging, the flags, then [`run`].
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async { run(clap::Parser::parse()).await })
}

/// Runs every experiment in the article's order, prints it, and writes `part3.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => default_server_bin()?,
    };
    let stack = args.demo.stack.clone();
    let spec = DatasetSpec::new(42, args.scale);
    let t = Instant::now();
    let primary_url = with_database(&stack.mariadb_primary_url, &args.database);
    let replica_url = with_database(&stack.mariadb_replica_url, &args.database);
    let DemoData {
        primary,
        replica,
        how,
    } = open_dataset(&stack, &args.database, &spec, args.reuse).await?;
    let mut results = PartResults::new(crate::PART, crate::TITLE, crate::CLAIM);
    results.set_repeat(args.demo.repeat);
    let mut demo = Demo {
        args,
        spec,
        primary,
        replica,
        primary_url,
        replica_url,
        bin,
        results,
    };
    println!("Part 3: Cache. {}", crate::CLAIM);
    let settings = settings_line();
    common::demo::line(&settings);
    demo.results.notes.push(settings);
    let s = demo.spec.sizes;
    common::demo::line(format!(
        "dataset: {} users, {} articles, {} comments, {} likes drawn (Zipf-skewed), {how} in {}, replicated, in {:.1} s",
        s.users,
        s.articles,
        s.comments,
        s.likes,
        demo.args.database,
        t.elapsed().as_secs_f64()
    ));
    if demo.wants(1) {
        let t = Instant::now();
        lesson(
            1,
            "No cache",
            "The article page and the feed straight from MariaDB, under a Zipf load: what each request costs the database, counted by the database.",
        );
        no_cache::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(2) {
        let t = Instant::now();
        lesson(
            2,
            "Cached queries",
            "Key = hash of the SQL and its parameters. A comment lands in a cached result: stale reads; flush on every write: the hit ratio collapses. Beside it, MariaDB's own query cache.",
        );
        query_cache::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(3) {
        let t = Instant::now();
        lesson(
            3,
            "Cached objects",
            "Key = the object's name; every write deletes what it changed after it commits: 0 stale reads, and the database queries saved.",
        );
        object_cache::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(4) {
        let t = Instant::now();
        lesson(
            4,
            "A file cache on each clone's disk (never)",
            "A write through one clone deletes that clone's file: the others serve the old page.",
        );
        file_cache::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(5) {
        let t = Instant::now();
        lesson(
            5,
            "Activity streams and the friend graph",
            "The feed merged from cached per-author objects, for the median and the most connected user; mutual friends from a Redis set intersection against SQL.",
        );
        streams::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(6) {
        let t = Instant::now();
        lesson(
            6,
            "Memcached against Redis",
            "One trait, two servers: get and set latency at 1, 16 and 64 at once, one multi-get against N gets, memory per object.",
        );
        backends::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(7) {
        let t = Instant::now();
        lesson(
            7,
            "A cache smaller than the data",
            "Zipf reads through a cache holding a fraction of the objects: the hit ratio against its size, beside the best any cache of that size could do.",
        );
        eviction::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(8) {
        let t = Instant::now();
        lesson(
            8,
            "Restarts, and sessions in a cache",
            "Redis keeps what it persisted; Memcached comes back cold, and the database pays. Sessions in Memcached: a restart logs everyone out.",
        );
        restart::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(9) {
        let t = Instant::now();
        lesson(
            9,
            "Stampede",
            "A hot object expires while 100 readers want it: database assemblies with no protection, single-flight, a lease, XFetch.",
        );
        stampede::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(10) {
        let t = Instant::now();
        lesson(
            10,
            "The stale-set race",
            "A read loads from a lagging replica, a write deletes the key, the slow read stores the old object: reproduced, counted, fixed.",
        );
        stale_set::run(&mut demo).await?;
        took(t);
    }
    if demo.wants(11) {
        let t = Instant::now();
        lesson(
            11,
            "The cache goes down",
            "Memcached stopped under load: every request is served from the database, slower; started again: the hit ratio climbs back.",
        );
        cache_down::run(&mut demo).await?;
        took(t);
    }
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
            Args::try_parse_from(["part3-demo", "--scale", "tiny", "--repeat", "2"]).unwrap();
        assert_eq!(args.scale, Scale::Tiny);
        assert_eq!(args.demo.repeat, 2);
    }

    #[test]
    fn the_clones_get_every_cache_setting_at_its_default() {
        let d = server_defaults();
        let get = |k: &str| d.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        for (k, v) in [
            ("CACHE", "object"),
            ("CACHE_BACKEND", "memcached"),
            ("STAMPEDE", "lease"),
            ("CACHE_TTL_SECS", "300"),
            ("CACHE_JITTER", "0.1"),
            ("QUERY_FLUSH_ON_WRITE", "false"),
            ("CACHE_TIMEOUT_MS", "50"),
            ("CACHE_MAX_VALUE_BYTES", "524288"),
            ("READS", "pin"),
            ("SHAPE", "denormalized"),
            ("SESSIONS", "redis"),
        ] {
            assert_eq!(get(k), Some(v), "{k}");
        }
        for k in [
            "CACHE_FILE_DIR",
            "KEY_PREFIX",
            "PORT",
            "MARIADB_PRIMARY_URL",
        ] {
            assert_eq!(get(k), None, "{k} is the demo's or the clone's to set");
        }
        // Every value parses back into the server's configuration.
        let mut argv = vec!["part3-server".to_owned()];
        let cmd = <crate::server::Part3Config as clap::CommandFactory>::command();
        for (k, v) in &d {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(k.as_str()))
                .unwrap();
            if !arg.get_action().takes_values() {
                // A flag: its variable reads "false" as off (clap's boolish values).
                assert_eq!(v, "false", "{k}");
                continue;
            }
            argv.push(format!("--{}={v}", arg.get_long().unwrap()));
        }
        crate::server::Part3Config::try_parse_from(argv).unwrap();
    }
}
