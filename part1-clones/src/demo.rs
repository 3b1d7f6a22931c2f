//! The experiments of part 1, each a number (`./lab tour part1`).
//!
//! Every step starts its own cluster of real processes (clones + HAProxy on
//! free ports, a unique Redis key prefix), prints the lesson and what it
//! measured, and records the figures in `target/lab/results/part1.json`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use common::measure::{self, Load, LoadReport, fmt_us};
use common::results::PartResults;

use crate::client::{UserClient, http};
use crate::cluster::{Cluster, ClusterSpec};

/// Part 1's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part1-demo",
    about = "Part 1: clones behind a load balancer, measured"
)]
pub struct DemoArgs {
    /// The clone binary; default: `part1-server` next to this demo.
    #[arg(long, env = "PART1_SERVER_BIN")]
    pub server_bin: Option<std::path::PathBuf>,
    /// Users logged in at once in the session experiments.
    #[arg(long, env = "DEMO_USERS", default_value_t = 12)]
    pub users: usize,
    /// Requests each user makes in the session experiments.
    #[arg(long, env = "DEMO_REQUESTS", default_value_t = 30)]
    pub requests: usize,
    /// Length of each load run, in seconds.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 4)]
    pub seconds: u64,
    /// Where to write part1.json.
    #[arg(long, env = "LAB_RESULTS_DIR", default_value = common::config::defaults::LAB_RESULTS_DIR)]
    pub results_dir: std::path::PathBuf,
    /// The stack's URLs.
    #[command(flatten)]
    pub stack: common::config::StackConfig,
}

/// The part's claim, as the report quotes it.
pub const CLAIM: &str = "Identical, stateless app servers behind a load balancer; sessions and user files in a central store (Redis), never on a server's disk or memory.";

const PASSWORD: &str = "demo-password-1";

struct Demo {
    args: DemoArgs,
    bin: std::path::PathBuf,
    prefix: String,
    results: PartResults,
}

fn lesson(n: u32, title: &str, text: &str) {
    println!("\n── {n}. {title}\n   {text}");
}

fn line(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

impl Demo {
    fn spec(&self, clones: usize, sessions: &str, extra: &[(&str, &str)]) -> ClusterSpec {
        let mut env = vec![
            ("SESSIONS", sessions),
            ("KEY_PREFIX", self.prefix.as_str()),
            ("REDIS_URL", self.args.stack.redis_url.as_str()),
            (
                "MARIADB_PRIMARY_URL",
                self.args.stack.mariadb_primary_url.as_str(),
            ),
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

    /// Steps 1 and 2: each user browses and fills a cart through the LB.
    async fn sessions_behind_lb(&mut self, sessions: &str) -> anyhow::Result<(f64, f64)> {
        let cluster = Cluster::start(self.spec(3, sessions, &[])).await?;
        let users = self.users(&cluster.lb_url(), self.args.users).await?;
        let (mut total, mut no_session, mut added) = (0u64, 0u64, 0u64);
        for (u_i, u) in users.iter().enumerate() {
            for r in 0..self.args.requests {
                total += 1;
                if r % 2 == 0 {
                    if u.me().await?.is_none() {
                        no_session += 1;
                    }
                } else {
                    let status = u.add_item(&format!("item-{u_i}-{r}")).await?;
                    if status == 201 {
                        added += 1;
                    } else {
                        no_session += 1;
                    }
                }
            }
        }
        // The cart the user sees now, wherever it lands, against what they put in.
        let attempted = (users.len() * (self.args.requests / 2)) as u64;
        let mut seen = 0u64;
        for u in &users {
            seen += u.cart().await?.map_or(0, |c| c.items.len() as u64);
        }
        cluster.stop().await;
        let lost_share = 100.0 * no_session as f64 / total as f64;
        let items_lost = 100.0 * (attempted - seen.min(attempted)) as f64 / attempted.max(1) as f64;
        line(format!(
            "{sessions:>7} sessions: {no_session} of {total} requests found no session ({lost_share:.1}%); \
             {added} of {attempted} cart additions accepted; the cart shows {seen} ({items_lost:.1}% of items lost)"
        ));
        let cmp = "sessions behind the load balancer (3 clones, round robin)";
        self.results.figure(
            cmp,
            &format!("{sessions} sessions: requests without a session"),
            lost_share,
            "%",
            "share of a logged-in user's requests answered 401",
        );
        self.results.figure(
            cmp,
            &format!("{sessions} sessions: cart items lost"),
            items_lost,
            "%",
            "cart items the user added but does not see in the cart",
        );
        Ok((lost_share, items_lost))
    }

    async fn me_load(
        &self,
        name: &str,
        users: &[Arc<UserClient>],
        concurrency: usize,
    ) -> LoadReport {
        let users = users.to_vec();
        let n = users.len() as u64;
        measure::run_load(
            name,
            Load::closed(concurrency, Duration::from_secs(self.args.seconds)),
            move |i| {
                let u = users[(i % n) as usize].clone();
                async move { u.me_required().await }
            },
        )
        .await
    }

    /// Step 3: SIGKILL a clone in the middle of a load run.
    async fn kill_drill(&mut self) -> anyhow::Result<LoadReport> {
        let mut cluster = Cluster::start(self.spec(3, "redis", &[])).await?;
        let users = self.users(&cluster.lb_url(), self.args.users).await?;
        let calm = self.me_load("redis, 3 clones, calm", &users, 8).await;
        line(calm.line());
        let run = {
            let users = users.clone();
            let this = self.clone_args();
            tokio::spawn(async move { this.me_load("redis, clone2 SIGKILLed", &users, 8).await })
        };
        tokio::time::sleep(Duration::from_secs(self.args.seconds) / 3).await;
        cluster.kill(1).await?;
        let report = run.await.context("load run")?;
        line(report.line());
        let mut lost = 0;
        for u in &users {
            if u.me().await?.is_none() {
                lost += 1;
            }
        }
        line(format!(
            "sessions lost after the kill: {lost} of {}",
            users.len()
        ));
        cluster.stop().await;
        let cmp = "a clone SIGKILLed under load (redis sessions)";
        self.results.figure(
            cmp,
            "failed requests",
            report.errors as f64,
            "requests",
            "requests that got an error while clone2 died",
        );
        self.results.figure(
            cmp,
            "sessions lost",
            lost as f64,
            "sessions",
            "users logged out by the kill",
        );
        self.results.figure(
            cmp,
            "p99 calm",
            calm.latency.p99_us as f64,
            "µs",
            "99th percentile before the kill",
        );
        self.results.figure(
            cmp,
            "p99 with the kill",
            report.latency.p99_us as f64,
            "µs",
            "99th percentile of the run with the kill",
        );
        self.results.figure(
            cmp,
            "max with the kill",
            report.latency.max_us as f64,
            "µs",
            "the slowest request: the blip of a retried request",
        );
        Ok(report)
    }

    fn clone_args(&self) -> Demo {
        Demo {
            args: self.args.clone(),
            bin: self.bin.clone(),
            prefix: self.prefix.clone(),
            results: PartResults::not_built(1, "", ""),
        }
    }

    /// Step 4: an avatar uploaded through clone1 is served by the others.
    async fn avatars(&mut self) -> anyhow::Result<()> {
        let cluster = Cluster::start(self.spec(3, "redis", &[])).await?;
        let users = self.users(&cluster.clone_url(0), 1).await?;
        let me = users[0].me().await?.context("logged in")?;
        let png = b"\x89PNG\r\n\x1a\n-a tiny stand-in for a picture-".to_vec();
        let status = users[0].put_avatar("image/png", png.clone()).await?;
        anyhow::ensure!(status == 204, "upload: {status}");
        let mut served = 0;
        for i in 1..cluster.len() {
            let other = UserClient::new(http(), &cluster.clone_url(i));
            let (status, kind, bytes) = other.avatar(&me.username).await?;
            if status == 200 && kind == "image/png" && bytes == png {
                served += 1;
            }
        }
        line(format!(
            "uploaded through clone1; served identically by {served} of {} other clones",
            cluster.len() - 1
        ));
        cluster.stop().await;
        self.results.figure(
            "user files in the shared store",
            "avatar served by other clones",
            served as f64,
            "clones",
            "clones (of 2) that served the picture uploaded through clone1",
        );
        Ok(())
    }

    /// Step 5: roll every clone to a new build while a load run goes on.
    async fn rolling_restart(&mut self) -> anyhow::Result<()> {
        let mut cluster = Cluster::start(self.spec(3, "redis", &[])).await?;
        let users = self.users(&cluster.lb_url(), self.args.users).await?;
        let roll_time = Duration::from_secs(3 * 3 + self.args.seconds);
        let run = {
            let users = users.clone();
            let n = users.len() as u64;
            tokio::spawn(measure::run_load(
                "redis, rolling restart",
                Load::closed(8, roll_time),
                move |i| {
                    let u = users[(i % n) as usize].clone();
                    async move { u.me_required().await }
                },
            ))
        };
        let before = cluster.versions().await?;
        cluster.roll("v2").await?;
        let report = run.await.context("load run")?;
        let after = cluster.versions().await?;
        cluster.stop().await;
        line(report.line());
        line(format!(
            "builds before the roll {before:?}, after {after:?}"
        ));
        let same = after.iter().all(|v| v == "v2");
        let cmp = "rolling restart to a new build under load";
        self.results.figure(
            cmp,
            "failed requests",
            report.errors as f64,
            "requests",
            "requests that got an error while each clone was replaced in turn",
        );
        self.results.figure(
            cmp,
            "requests served",
            report.requests as f64,
            "requests",
            "requests made during the roll",
        );
        self.results.figure(
            cmp,
            "clones on the new build",
            after.iter().filter(|v| *v == "v2").count() as f64,
            "clones",
            "clones that report the new build afterwards (of 3)",
        );
        anyhow::ensure!(same, "a clone missed the roll: {after:?}");
        Ok(())
    }

    /// Step 6: what the session store costs a request.
    async fn store_cost(&mut self) -> anyhow::Result<()> {
        let mut redis = common::testing::redis_at(&self.args.stack.redis_url).await?;
        let key = format!("{}:baseline", self.prefix);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async(&mut redis)
            .await?;
        let n = 400;
        let baseline = measure::sequential(n, |_| {
            let mut r = redis.clone();
            let key = key.clone();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<String>(&mut r)
                    .await
                    .map(drop)
            }
        })
        .await?
        .summary();
        let cmp = "session store cost per request (GET /me on one clone, sequential)";
        line(format!(
            "{:<30} p50 {:>8}  p99 {:>8}",
            "raw Redis GET (baseline)",
            fmt_us(baseline.p50_us),
            fmt_us(baseline.p99_us)
        ));
        self.results.figure(
            cmp,
            "raw Redis GET: p50",
            baseline.p50_us as f64,
            "µs",
            "one Redis round trip, no HTTP",
        );
        for store in ["memory", "redis", "mariadb"] {
            let cluster = Cluster::start(self.spec(1, store, &[])).await?;
            let users = self.users(&cluster.clone_url(0), 1).await?;
            let u = users[0].clone();
            let lat = measure::sequential(n, |_| {
                let u = u.clone();
                async move { u.me_required().await }
            })
            .await
            .map_err(|e| anyhow::anyhow!("GET /me: {e}"))?
            .summary();
            cluster.stop().await;
            line(format!(
                "{:<30} p50 {:>8}  p99 {:>8}",
                format!("GET /me, {store} sessions"),
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ));
            self.results.figure(
                cmp,
                &format!("{store} sessions: p50"),
                lat.p50_us as f64,
                "µs",
                "median latency of GET /me",
            );
            self.results.figure(
                cmp,
                &format!("{store} sessions: p99"),
                lat.p99_us as f64,
                "µs",
                "99th percentile of GET /me",
            );
        }
        Ok(())
    }

    /// Step 7: performance (1 user) vs scalability (many), 1 clone vs 3.
    async fn scaling(&mut self) -> anyhow::Result<()> {
        let (service_ms, slots) = (20u64, 4usize);
        let ceiling = crate::capacity::Capacity::ceiling(slots, Duration::from_millis(service_ms))
            .unwrap_or(0.0);
        line(format!(
            "each clone is modelled as {slots} requests at a time x {service_ms} ms each: at most {ceiling:.0} req/s per clone \
             (the 2 cores are shared, so unmodelled CPU-bound clones could not scale out here)"
        ));
        let (ms, sl) = (service_ms.to_string(), slots.to_string());
        for clones in [1usize, 3] {
            let cluster = Cluster::start(self.spec(
                clones,
                "redis",
                &[("SERVICE_TIME_MS", &ms), ("MAX_CONCURRENCY", &sl)],
            ))
            .await?;
            let users = self.users(&cluster.lb_url(), self.args.users).await?;
            let cmp = format!("performance vs scalability: {clones} clone(s) behind HAProxy");
            for concurrency in [1usize, 4, 12, 32] {
                let name = format!("{clones} clone(s), {concurrency} users");
                let report = self.me_load(&name, &users, concurrency).await;
                line(format!(
                    "{}   (model: {:.0} req/s max)",
                    report.line(),
                    ceiling * clones as f64
                ));
                self.results.figure(
                    &cmp,
                    &format!("{concurrency} users: throughput"),
                    report.throughput,
                    "req/s",
                    "successful requests per second",
                );
                self.results.figure(
                    &cmp,
                    &format!("{concurrency} users: p99"),
                    report.latency.p99_us as f64,
                    "µs",
                    "99th percentile latency",
                );
            }
            cluster.stop().await;
        }
        self.results.notes.push(format!(
            "Scaling figures use a modelled clone capacity ({slots} concurrent requests x {service_ms} ms = {ceiling:.0} req/s per clone), \
             because every clone shares the same 2 cores here."
        ));
        Ok(())
    }
}

/// Runs every step, prints it, and writes `part1.json`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
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
    common::testing::redis_at(&args.stack.redis_url).await?;
    common::testing::mariadb_at("MariaDB primary", &args.stack.mariadb_primary_url).await?;
    crate::app::connect_database(&args.stack.mariadb_primary_url).await?;
    let mut demo = Demo {
        results: PartResults::new(1, "Clones", CLAIM),
        prefix: common::testing::unique_name("demo1"),
        bin,
        args,
    };
    println!("Part 1: Clones. {CLAIM}");

    lesson(
        1,
        "Memory sessions behind the load balancer",
        "Each clone keeps sessions in its own memory; round robin sends 2 requests in 3 to a clone that never saw the login.",
    );
    let (lost, _) = demo.sessions_behind_lb("memory").await?;
    lesson(
        2,
        "Redis sessions, the same run",
        "Every clone reads the same session from Redis.",
    );
    let (redis_lost, redis_items) = demo.sessions_behind_lb("redis").await?;
    anyhow::ensure!(
        redis_lost == 0.0 && redis_items == 0.0,
        "Redis sessions lost state: the fix is broken"
    );
    anyhow::ensure!(
        lost > 0.0,
        "memory sessions lost nothing: is the load balancer spreading requests?"
    );

    lesson(
        3,
        "A clone SIGKILLed under load",
        "HAProxy retries the request on another clone; the session is in Redis, so nobody is logged out.",
    );
    demo.kill_drill().await?;

    lesson(
        4,
        "User files in the shared store",
        "A profile picture uploaded through one clone is served by every other.",
    );
    demo.avatars().await?;

    lesson(
        5,
        "Rolling restart to a new build",
        "Every clone runs the same code: replace them one at a time, under load, and no request fails.",
    );
    demo.rolling_restart().await?;

    lesson(
        6,
        "What the session store costs a request",
        "Redis adds one round trip to a request; MariaDB adds a read and a write on the busiest server.",
    );
    demo.store_cost().await?;

    lesson(
        7,
        "Performance vs scalability",
        "One user sees the latency (performance); many users see whether throughput grows with clones (scalability).",
    );
    demo.scaling().await?;

    let path = demo.results.write(&demo.args.results_dir)?;
    println!("\nresults: {}", path.display());
    Ok(())
}
