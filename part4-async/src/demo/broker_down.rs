//! Experiment 4: the broker stopped and started with jobs queued.
//!
//! The stack's RabbitMQ is shared (every clone, worker, test and helper
//! uses it), so this drill never touches it: it starts a **private
//! RabbitMQ node** ([`PrivateRabbit`]: its own node name, AMQP, Erlang
//! distribution and epmd ports, its database and logs in a temporary
//! directory; killed on every path, the directory removed), and points a
//! `part4-server` and one worker, both inside the demo, at it.
//!
//! 1. [`ACCEPTED`] export jobs through `POST /jobs` (`202`); one worker
//!    takes them, each taking `JOB_MIN_MS` = 200 ms, so most still wait
//!    in the queue (the broker's count is printed).
//! 2. The node is stopped the way a service manager stops it (SIGTERM:
//!    RabbitMQ shuts down cleanly). While it is down, [`WHILE_DOWN`] more
//!    `POST /jobs`: each answers `503` with `Retry-After`, timed; any row
//!    a refused request wrote must be `failed`, never left `queued`.
//! 3. The node is started again, on the same directory. Neither the
//!    server nor the worker is restarted: the clone's publisher reconnects
//!    on its next publish (timed: from the node up to the first `202`),
//!    the worker's consumer in its reconnect loop.
//! 4. Counted from the jobs table: of the jobs accepted before the stop,
//!    how many were never done (lost), and how many effects were written
//!    twice (the job the worker held when the broker went away is
//!    redelivered; the claim makes that second attempt write nothing).
//!
//! Run it alone: `DEMO_ONLY=4 cargo run -p part4-async --bin part4-demo`
//! (the private node takes 5 to 10 s to boot).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::{figure, line};
use common::results::Kind;
use tokio::process::{Child, Command};

use super::{Demo, Workers, all_finished, effects, login, post_job, settled_ready, statuses};
use crate::job::JobId;
use crate::queue::rabbitmq::RabbitQueue;
use crate::queue::{AnyQueue, Backend};

/// Jobs accepted before the stop.
pub const ACCEPTED: usize = 12;
/// `POST /jobs` while the broker is down.
pub const WHILE_DOWN: usize = 5;
/// The worker's stated job duration, in ms.
pub const JOB_MIN_MS: u64 = 200;

/// Where the versioned RabbitMQ scripts live (Debian's package): the
/// `/usr/sbin` wrapper switches to the rabbitmq user and /var/lib.
const RABBIT_SBIN_GLOB: &str = "/usr/lib/rabbitmq/lib";

/// A RabbitMQ node of this demo's own, on free ports, in a temporary
/// directory. Dropping it kills the node and its epmd and removes the
/// directory.
pub struct PrivateRabbit {
    dir: PathBuf,
    sbin: PathBuf,
    node: String,
    amqp_port: u16,
    dist_port: u16,
    epmd_port: u16,
    epmd: Option<Child>,
    server: Option<Child>,
}

impl PrivateRabbit {
    /// Starts epmd and the node, and waits until AMQP answers.
    pub async fn start() -> anyhow::Result<PrivateRabbit> {
        let sbin = rabbit_sbin()?;
        let dir = std::env::temp_dir().join(common::testing::unique_name("d4rabbit"));
        for sub in ["home", "mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(dir.join("rabbitmq.conf"), "log.console = false\n")?;
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        std::fs::write(dir.join("advanced.config"), "[].\n")?;
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        let free = part1_clones::cluster::free_port;
        let mut rabbit = PrivateRabbit {
            node: format!(
                "{}@localhost",
                common::testing::unique_name("d4rabbit").replace('-', "_")
            ),
            dir,
            sbin,
            amqp_port: free()?,
            dist_port: free()?,
            epmd_port: free()?,
            epmd: None,
            server: None,
        };
        // Our own epmd, so the node never registers with (or starts) the
        // stack's, and so we can stop it by its pid.
        rabbit.epmd = Some(
            Command::new("epmd")
                .args(["-address", "127.0.0.1", "-port"])
                .arg(rabbit.epmd_port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("starting epmd (installed with rabbitmq-server by ./lab up)")?,
        );
        rabbit.boot().await?;
        Ok(rabbit)
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.amqp_port)
    }

    /// Starts the node on its directory and waits until AMQP answers;
    /// how long that took.
    async fn boot(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let d = &self.dir;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(d.join("log/server.out"))?;
        let child = Command::new(self.sbin.join("rabbitmq-server"))
            .current_dir(d)
            .env("HOME", d.join("home"))
            .env("RABBITMQ_CONFIG_FILE", d.join("rabbitmq.conf"))
            .env("RABBITMQ_CONF_ENV_FILE", d.join("rabbitmq-env.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", d.join("advanced.config"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", d.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", d.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", d.join("log"))
            .env("RABBITMQ_PID_FILE", d.join("rabbit.pid"))
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.amqp_port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env(
                "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                "-kernel inet_dist_use_interface {127,0,0,1}",
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}/rabbitmq-server", self.sbin.display()))?;
        self.server = Some(child);
        let url = self.url();
        loop {
            let props = lapin::ConnectionProperties::default();
            if let Ok(Ok(conn)) = tokio::time::timeout(
                Duration::from_secs(2),
                lapin::Connection::connect(&url, props),
            )
            .await
            {
                let _ = conn.close(200, "ready".into()).await;
                return Ok(t.elapsed());
            }
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                anyhow::bail!(
                    "the private RabbitMQ node exited ({status}) while starting: see {}",
                    self.dir.join("log").display()
                );
            }
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(90),
                "the private RabbitMQ node did not accept AMQP within 90 s: see {}",
                self.dir.join("log").display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the node as a service manager does (SIGTERM to the start
    /// script, which stops the node cleanly) and waits until it is gone;
    /// how long that took.
    pub async fn stop(&mut self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        if let Some(mut child) = self.server.take()
            && let common::signal::Stopped::Killed =
                common::signal::stop(&mut child, Duration::from_secs(30)).await?
        {
            // The start script is gone; the node it started may not be.
            self.kill_node();
        }
        // The port closes when the node is gone.
        while std::net::TcpStream::connect(("127.0.0.1", self.amqp_port)).is_ok() {
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(30),
                "the private RabbitMQ still listens 30 s after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(t.elapsed())
    }

    /// Starts the node again on the same directory (its queues and
    /// persistent messages); how long until AMQP answered.
    pub async fn start_again(&mut self) -> anyhow::Result<Duration> {
        self.boot().await
    }

    /// SIGKILLs the Erlang VM by the pid it wrote (the start script runs
    /// it as a child: killing the script alone would leave it running).
    fn kill_node(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("rabbit.pid"))
            && let Ok(pid) = pid.trim().parse::<u32>()
        {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        if let Some(mut child) = self.server.take() {
            self.kill_node();
            let _ = child.start_kill();
        }
        if let Some(mut epmd) = self.epmd.take() {
            let _ = epmd.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The directory of Debian's versioned RabbitMQ scripts.
fn rabbit_sbin() -> anyhow::Result<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(RABBIT_SBIN_GLOB)
        .with_context(|| {
            format!("{RABBIT_SBIN_GLOB} not found: install rabbitmq-server (./lab up does)")
        })?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("sbin"))
        .filter(|p| p.join("rabbitmq-server").exists())
        .collect();
    found.sort();
    found.pop().with_context(|| {
        format!("no rabbitmq_server-*/sbin/rabbitmq-server under {RABBIT_SBIN_GLOB}")
    })
}

/// What the drill counted.
#[derive(Debug, Clone)]
pub struct BrokerDown {
    /// Jobs accepted before the stop.
    pub accepted: u64,
    /// Jobs waiting in the queue when it stopped (the broker's count).
    pub queued_at_stop: u64,
    /// Of the accepted, not done at the end.
    pub lost: u64,
    /// Jobs with more than one effect.
    pub doubled: u64,
    /// `POST /jobs` answers while down: `503` with `Retry-After`.
    pub refused: u64,
    /// Slowest of those answers.
    pub refusal_max: Duration,
    /// Median of those answers.
    pub refusal_median: Duration,
    /// Rows left `queued` by the refused requests.
    pub left_queued: u64,
    /// How long the node took to stop and to start.
    pub stop_took: Duration,
    /// How long the node took to start again.
    pub start_took: Duration,
    /// From the node up to the clone's first `202`.
    pub clone_back_after: Duration,
    /// From the node up to every accepted job done.
    pub drained_after: Duration,
}

/// Runs the drill on `rabbit` (started while the dataset loaded), prints
/// and records it. The node is dropped (killed) at the end, whatever
/// happens.
pub async fn run(demo: &mut Demo, mut rabbit: PrivateRabbit) -> anyhow::Result<BrokerDown> {
    line(format!(
        "a private RabbitMQ node ({}, AMQP on {}), a part4-server and one worker (JOB_MIN_MS={JOB_MIN_MS} ms) inside the demo pointed at it; the stack's RabbitMQ is not touched (the AMQP client logs the connections the stop cuts as errors: expected)",
        rabbit.node, rabbit.amqp_port
    ));
    let out = drill(demo, &mut rabbit).await;
    drop(rabbit);
    let d = out?;
    let cmp = "the broker stopped and started with jobs queued";
    figure(
        Kind::Measured,
        format!(
            "{} jobs accepted, {} waiting in the queue when the node stopped (its count; it took {:.1} s to stop)",
            d.accepted,
            d.queued_at_stop,
            d.stop_took.as_secs_f64()
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "while down: {} of {WHILE_DOWN} POST /jobs answered 503 with Retry-After, median {} ms, slowest {} ms; rows left queued: {}",
            d.refused,
            d.refusal_median.as_millis(),
            d.refusal_max.as_millis(),
            d.left_queued
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "started again in {:.1} s; the clone accepted a job {} ms after the node was up, and every accepted job was done {:.1} s after, without restarting either: {} lost, {} doubled",
            d.start_took.as_secs_f64(),
            d.clone_back_after.as_millis(),
            d.drained_after.as_secs_f64(),
            d.lost,
            d.doubled
        ),
    );
    for (name, value, unit, shows) in [
        (
            "persistent jobs lost",
            d.lost as f64,
            "jobs",
            "jobs accepted (202) before the stop and never done",
        ),
        (
            "effects doubled",
            d.doubled as f64,
            "jobs",
            "jobs with more than one claim row",
        ),
        (
            "503 while down",
            d.refused as f64,
            "requests",
            "POST /jobs answered 503 with Retry-After while the broker was down",
        ),
        (
            "503 while down: slowest",
            d.refusal_max.as_secs_f64() * 1e6,
            "µs",
            "the slowest refusal (QUEUE_TIMEOUT_MS bounds it)",
        ),
        (
            "rows left queued",
            d.left_queued as f64,
            "rows",
            "rows written by refused requests and left queued (0: marked failed, or never written)",
        ),
        (
            "broker up to the clone's first 202",
            d.clone_back_after.as_secs_f64() * 1e6,
            "µs",
            "the clone reconnects by itself (its depth read opens the publisher's connection again), no restart; the publish follows the 202, and every accepted job is done (lost: 0)",
        ),
    ] {
        demo.results.measured(cmp, name, value, unit, shows);
    }
    Ok(d)
}

async fn drill(demo: &Demo, rabbit: &mut PrivateRabbit) -> anyhow::Result<BrokerDown> {
    let config = demo.queue_config(Backend::RabbitMq);
    let url = rabbit.url();
    let queue = AnyQueue::RabbitMq(RabbitQueue::connect(&url, config.clone()).await?);
    let store = demo.store();
    let server = demo.server(&config, Some(&url), &[]).await?;
    let workers = Workers::start(
        &store,
        &queue,
        &config,
        1,
        Duration::from_millis(JOB_MIN_MS),
    )
    .await?;
    let out = async {
        let (user_id, username) = demo.users_with_articles(6).await?[5].clone();
        let cookie = login(&server.url, &username).await?;
        let http = part1_clones::client::http();
        let post = || post_job(&http, &server.url, &cookie, "export");
        let mut ids: Vec<JobId> = Vec::new();
        for _ in 0..ACCEPTED {
            let (status, _, body) = post().await.map_err(anyhow::Error::msg)?;
            anyhow::ensure!(status == 202, "POST /jobs answered {status}: {body}");
            ids.push(job_id(&body)?);
        }
        let queued_at_stop = settled_ready(&queue).await?;
        let stop_took = rabbit.stop().await?;
        let down_from = crate::job::now_ms();
        let mut refused = 0;
        let mut took = Vec::new();
        for _ in 0..WHILE_DOWN {
            let t = Instant::now();
            let (status, retry_after, _) = post().await.map_err(anyhow::Error::msg)?;
            took.push(t.elapsed());
            refused += u64::from(status == 503 && retry_after.is_some());
        }
        let down_to = crate::job::now_ms();
        let left_queued: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM jobs WHERE owner_id = ? AND status = 'queued' AND created_at BETWEEN ? AND ?",
        )
        .bind(user_id)
        .bind(down_from)
        .bind(down_to)
        .fetch_one(&demo.primary)
        .await?;
        took.sort();
        let start_took = rabbit.start_again().await?;
        let up = Instant::now();
        let clone_back_after = loop {
            let (status, _, body) = post().await.map_err(anyhow::Error::msg)?;
            if status == 202 {
                ids.push(job_id(&body)?);
                break up.elapsed();
            }
            anyhow::ensure!(
                up.elapsed() < Duration::from_secs(60),
                "the clone did not accept a job within 60 s of the broker's return"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        all_finished(&demo.primary, &ids, Duration::from_secs(90)).await?;
        let drained_after = up.elapsed();
        let accepted = &ids[..ACCEPTED];
        let [_, _, done, _] = statuses(&demo.primary, accepted).await?;
        let (_, doubled) = effects(&store, &ids).await?;
        Ok(BrokerDown {
            accepted: ACCEPTED as u64,
            queued_at_stop,
            lost: ACCEPTED as u64 - done,
            doubled,
            refused,
            refusal_max: took.last().copied().unwrap_or_default(),
            refusal_median: took.get(took.len() / 2).copied().unwrap_or_default(),
            left_queued: left_queued as u64,
            stop_took,
            start_took,
            clone_back_after,
            drained_after,
        })
    }
    .await;
    workers.stop().await;
    server.stop().await;
    out
}

/// The `id` of a `202`'s body.
fn job_id(body: &str) -> anyhow::Result<JobId> {
    let v: serde_json::Value = serde_json::from_str(body)?;
    v["id"]
        .as_str()
        .context("the 202 has no id")?
        .parse()
        .map_err(anyhow::Error::msg)
}
