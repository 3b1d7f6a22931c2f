//! The experiments of part 1, each a number (`./lab tour part1`).
//!
//! One file per experiment, in the article's order:
//!
//! 1. `balancer.rs`: the load balancer's own cost, through it against
//!    straight to a clone.
//! 2. `sessions.rs`: memory sessions behind the balancer (watch it fail),
//!    then Redis sessions (the fix), and what each store costs a request.
//! 3. `user_files.rs`: a profile picture uploaded through one clone is served
//!    by every other.
//! 4. `rolling.rs`: every clone runs the same code: roll them to a new build
//!    under reads and writes, and nothing fails, is lost or is doubled.
//! 5. `kill.rs`: a clone SIGKILLed under reads and writes.
//! 6. `scaling.rs`: performance against scalability, on a modelled clone
//!    capacity, beside the raw run.
//!
//! Every experiment starts its own cluster of real processes (clones +
//! HAProxy on free ports, a unique Redis key prefix), prints the lesson and
//! what it saw, and records each figure with its kind (measured, computed,
//! modelled) in `target/lab/results/part1.json`.
//!
//! Arguments: those of [`common::demo::DemoArgs`] (`--seconds`,
//! `--repeat`, `--results-dir`, the stack's URLs), plus:
//!
//! | flag | variable | default |
//! |---|---|---|
//! | `--server-bin` | `PART1_SERVER_BIN` | `part1-server` next to the demo |
//! | `--users` | `DEMO_USERS` | 12 |
//! | `--requests` | `DEMO_REQUESTS` | 30 |

mod balancer;
mod kill;
mod rolling;
mod scaling;
mod sessions;
mod user_files;

use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use common::demo::{DemoArgs, lesson};
use common::measure::{self, Load, LoadReport};
use common::results::PartResults;

use crate::client::{UserClient, http};
use crate::cluster::ClusterSpec;

/// Part 1's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part1-demo",
    about = "Part 1: clones behind a load balancer, measured"
)]
pub struct Part1DemoArgs {
    /// The clone binary; default: `part1-server` next to this demo.
    #[arg(long, env = "PART1_SERVER_BIN")]
    pub server_bin: Option<std::path::PathBuf>,
    /// Users logged in at once in the session experiments.
    #[arg(long, env = "DEMO_USERS", default_value_t = 12)]
    pub users: usize,
    /// Requests each user makes in the session experiments.
    #[arg(long, env = "DEMO_REQUESTS", default_value_t = 30)]
    pub requests: usize,
    /// What every demo takes: --seconds, --repeat, --results-dir, the stack.
    #[command(flatten)]
    pub demo: DemoArgs,
}

/// The part's claim, as the report quotes it.
pub const CLAIM: &str = "Identical, stateless app servers behind a load balancer; sessions and user files in a central store (Redis), never on a server's disk or memory.";

const PASSWORD: &str = "demo-password-1";

/// Cart writers and signup writers in the drills' write mix.
const CART_WRITERS: usize = 4;
const SIGNUP_WRITERS: usize = 1;
/// The drills' carts hold every item a writer adds (the default cap, 100,
/// would turn the end of a run into refusals, which test nothing here).
const DRILL_CART_MAX: (&str, &str) = ("CART_MAX_ITEMS", "1000000");

/// What every experiment needs: the arguments, the clone binary, a key
/// prefix of its own, and the results it adds to.
struct Demo {
    args: Part1DemoArgs,
    bin: std::path::PathBuf,
    prefix: String,
    results: PartResults,
}

impl Demo {
    /// A cluster of `clones` clones with `sessions`, plus `extra` settings.
    fn spec(&self, clones: usize, sessions: &str, extra: &[(&str, &str)]) -> ClusterSpec {
        let stack = &self.args.demo.stack;
        let mut env = vec![
            ("SESSIONS", sessions),
            ("KEY_PREFIX", self.prefix.as_str()),
            ("REDIS_URL", stack.redis_url.as_str()),
            ("MARIADB_PRIMARY_URL", stack.mariadb_primary_url.as_str()),
            ("RUST_LOG", "warn"),
        ];
        env.extend_from_slice(extra);
        ClusterSpec::new(&self.bin, clones, &env)
    }

    /// Signs up and logs in `n` fresh users through `base`.
    async fn users(&self, base: &str, n: usize) -> anyhow::Result<Vec<Arc<UserClient>>> {
        let http = http();
        let mut out = Vec::new();
        for i in 0..n {
            let name = format!("{}_{i}", common::testing::unique_name("u").replace('_', ""))
                .chars()
                .take(32)
                .collect::<String>();
            let u = UserClient::new(http.clone(), base);
            let status = u.signup(&name, PASSWORD).await?;
            anyhow::ensure!(status == 201, "signup of {name}: {status}");
            u.login(&name, PASSWORD).await?;
            out.push(Arc::new(u));
        }
        Ok(out)
    }

    /// A closed-loop load of `GET /me` by `users`, `concurrency` at once,
    /// for `seconds`.
    async fn me_load(
        &self,
        name: &str,
        users: &[Arc<UserClient>],
        concurrency: usize,
        seconds: Duration,
    ) -> LoadReport {
        me_load_detached(name, users.to_vec(), concurrency, seconds).await
    }

    /// Records a write mix's audit, each count measured (counted from the
    /// stores), and prints it.
    fn write_figures(&mut self, cmp: &str, audit: &crate::cluster::Audit) {
        common::demo::figure(
            common::results::Kind::Measured,
            format!("writes: {}", audit.line()),
        );
        let rows = [
            (
                "writes acknowledged",
                audit.acknowledged,
                "cart items and signups answered with success",
            ),
            (
                "acknowledged writes stored once",
                audit.stored,
                "found exactly once: cart items in Redis, users in MariaDB",
            ),
            (
                "acknowledged writes doubled",
                audit.doubled,
                "found more than once (a replayed write)",
            ),
            (
                "acknowledged writes lost",
                audit.lost,
                "answered with success, yet not in the store",
            ),
            (
                "writes failed (unacknowledged)",
                audit.failed,
                "the writer was told the write failed (it may or may not be stored)",
            ),
        ];
        for (name, value, shows) in rows {
            self.results
                .measured(cmp, name, value as f64, "writes", shows);
        }
    }

    /// `--repeat` runs of the same load: the headline figures' spread.
    async fn repeated<F, Fut>(&self, mut run: F) -> Vec<LoadReport>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = LoadReport>,
    {
        let mut out = Vec::new();
        for _ in 0..self.args.demo.repeat {
            out.push(run().await);
        }
        out
    }
}

/// [`Demo::me_load`] owning its arguments, to run in a spawned task while
/// the experiment breaks something.
async fn me_load_detached(
    name: &str,
    users: Vec<Arc<UserClient>>,
    concurrency: usize,
    duration: Duration,
) -> LoadReport {
    let n = users.len() as u64;
    measure::run_load(name, Load::closed(concurrency, duration), move |i| {
        let u = users[(i % n) as usize].clone();
        async move { u.me_required().await }
    })
    .await
}

/// `part1-demo`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): `.env`, logging, the flags, then [`run`].
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async { run(clap::Parser::parse()).await })
}

/// Runs every experiment, prints it, and writes `part1.json`.
pub async fn run(args: Part1DemoArgs) -> anyhow::Result<()> {
    let bin = match &args.server_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe()?.with_file_name("part1-server"),
    };
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it with cargo build --release -p part1-clones",
        bin.display()
    );
    // Fail fast, with the command that fixes it, if the stack is down.
    let stack = &args.demo.stack;
    common::testing::redis_at(&stack.redis_url).await?;
    common::testing::mariadb_at("MariaDB primary", &stack.mariadb_primary_url).await?;
    let db = crate::app::connect_database(
        &stack.mariadb_primary_url,
        std::time::Duration::from_secs(5),
    )
    .await?;
    let mut results = PartResults::new(1, "Clones", CLAIM);
    results.set_repeat(args.demo.repeat);
    let mut demo = Demo {
        results,
        prefix: common::testing::unique_name("demo1"),
        bin,
        args,
    };
    println!("Part 1: Clones. {CLAIM}");
    println!("({})", demo.results.provenance.line());

    lesson(
        1,
        "The load balancer's own cost",
        "Every request now makes one more hop: the same load straight to one clone, then through HAProxy (backend keep-alive).",
    );
    balancer::run(&mut demo).await?;

    lesson(
        2,
        "Memory sessions behind the load balancer",
        "Each clone keeps sessions in its own memory; round robin sends 2 requests in 3 to a clone that never saw the login.",
    );
    let memory = sessions::behind_the_balancer(&mut demo, "memory").await?;
    lesson(
        3,
        "Redis sessions, the same run",
        "Every clone reads the same session from Redis.",
    );
    let redis = sessions::behind_the_balancer(&mut demo, "redis").await?;
    anyhow::ensure!(
        redis.no_session == 0.0 && redis.items_lost == 0.0,
        "Redis sessions lost state: the fix is broken"
    );
    anyhow::ensure!(
        memory.no_session > 0.0,
        "memory sessions lost nothing: is the load balancer spreading requests?"
    );
    lesson(
        4,
        "What the session store costs a request",
        "Redis adds one round trip to a request; MariaDB adds a read and a write on the busiest server.",
    );
    sessions::store_cost(&mut demo).await?;

    lesson(
        5,
        "User files in the shared store",
        "A profile picture uploaded through one clone is served by every other.",
    );
    user_files::run(&mut demo).await?;

    lesson(
        6,
        "Rolling restart to a new build, under reads and writes",
        "Every clone runs the same code: replace them one at a time, and no request fails, no write is lost or doubled.",
    );
    rolling::run(&mut demo, &db).await?;

    lesson(
        7,
        "A clone SIGKILLed under reads and writes",
        "HAProxy retries what is safe to repeat (a GET, a write with an Idempotency-Key) on another clone; sessions are in Redis, so nobody is logged out.",
    );
    kill::run(&mut demo, &db).await?;

    lesson(
        8,
        "Performance vs scalability",
        "One user sees the latency (performance); many users see whether throughput grows with clones (scalability).",
    );
    scaling::run(&mut demo).await?;

    let path = demo.results.write(&demo.args.demo.results_dir)?;
    println!("\nresults: {}", path.display());
    Ok(())
}
