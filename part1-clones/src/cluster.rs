//! A cluster of clones behind HAProxy, as real processes.
//!
//! The demo and the tests need what `./lab up part1` gives an instructor,
//! but of their own: N clones of the same binary with the same settings,
//! HAProxy in front, and the power to SIGKILL one clone or to roll all of
//! them to a new build while load runs. Each cluster gets free ports and a
//! directory of its own, so many can run in parallel.
//!
//! HAProxy's policy is the lab's (one template, `lab.d/haproxy.cfg.in`):
//! round robin, a health check of `GET /health`, backend keep-alive, and
//! `retries` + `redispatch` + `retry-on`, so a request that meets a dead
//! clone is retried on another and the client never sees the failure, but
//! only when repeating it is harmless: a GET, or a write that carries an
//! `Idempotency-Key`.
//!
//! [`WriteMix`] is the write side of the drills: cart additions with an
//! idempotency key (retried, safely) and signups without one (never
//! retried), then an [`Audit`] that counts from the stores that every
//! acknowledged write is there exactly once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::MySqlPool;
use tokio::process::{Child, Command};

use crate::client::UserClient;

/// How to start a cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The `part1-server` binary.
    pub binary: PathBuf,
    /// How many clones.
    pub clones: usize,
    /// Environment of every clone (SESSIONS, KEY_PREFIX, MARIADB_PRIMARY_URL...).
    pub env: Vec<(String, String)>,
    /// The build the clones report.
    pub build: String,
    /// HAProxy's health-check interval.
    pub check_interval: Duration,
}

impl ClusterSpec {
    /// `clones` clones of `binary` with `env`.
    pub fn new(binary: impl Into<PathBuf>, clones: usize, env: &[(&str, &str)]) -> Self {
        ClusterSpec {
            binary: binary.into(),
            clones,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            build: "v1".into(),
            check_interval: Duration::from_millis(500),
        }
    }
}

struct CloneProcess {
    id: String,
    port: u16,
    child: Option<Child>,
}

/// A running cluster. Dropping it kills every process.
pub struct Cluster {
    spec: ClusterSpec,
    clones: Vec<CloneProcess>,
    haproxy: Child,
    lb_port: u16,
    dir: PathBuf,
    http: reqwest::Client,
}

/// A free port on 127.0.0.1 (bound, then released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `url` answers 200, up to `deadline`.
pub async fn wait_healthy(
    http: &reqwest::Client,
    url: &str,
    deadline: Duration,
) -> anyhow::Result<()> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        if let Ok(res) = http.get(url).send().await
            && res.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < until,
            "{url} not healthy after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// HAProxy's configuration for clones on `ports`, listening on `lb_port`.
///
/// The lab's one template (`lab.d/haproxy.cfg.in`), the same policy as
/// `./lab` and `compose/haproxy.cfg`: backend keep-alive, retries only of
/// what is safe to repeat, a 413 at the edge for bodies over the avatar
/// limit. The stats page listens on an abstract socket named after
/// `lb_port`, so parallel test clusters never fight over a port.
pub fn haproxy_config(lb_port: u16, ports: &[u16], check_interval: Duration) -> String {
    const TEMPLATE: &str = include_str!("../../lab.d/haproxy.cfg.in");
    let servers: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| format!("    server clone{} 127.0.0.1:{port}", i + 1))
        .collect();
    TEMPLATE
        .replace("@FRONT_BIND@", &format!("127.0.0.1:{lb_port}"))
        .replace("@STATS_BIND@", &format!("abns@lab-stats-{lb_port}"))
        .replace(
            "@CHECK_INTER@",
            &format!("{}ms", check_interval.as_millis()),
        )
        // The clones' default avatar limit (MAX_AVATAR_BYTES), as in `./lab`.
        .replace("@MAX_BODY_BYTES@", "262144")
        .replace("@HTTP_REQUEST_TIMEOUT@", "10s")
        .replace("@SERVERS@", &servers.join("\n"))
}

impl Cluster {
    /// Starts the clones and HAProxy and waits until all answer.
    pub async fn start(spec: ClusterSpec) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(common::testing::unique_name("cluster"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let http = crate::client::http();
        let mut clones = Vec::new();
        for i in 1..=spec.clones {
            let port = free_port()?;
            let id = format!("clone{i}");
            let child = spawn_clone(&spec, &dir, &id, port, &spec.build)?;
            clones.push(CloneProcess {
                id,
                port,
                child: Some(child),
            });
        }
        for c in &clones {
            wait_healthy(
                &http,
                &format!("http://127.0.0.1:{}/health", c.port),
                Duration::from_secs(30),
            )
            .await
            .with_context(|| {
                format!(
                    "{} did not start: see {}",
                    c.id,
                    dir.join(format!("{}.log", c.id)).display()
                )
            })?;
        }
        let lb_port = free_port()?;
        let ports: Vec<u16> = clones.iter().map(|c| c.port).collect();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, haproxy_config(lb_port, &ports, spec.check_interval))?;
        let haproxy = Command::new("haproxy")
            .arg("-W")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log_file(&dir, "haproxy")?)
            .kill_on_drop(true)
            .spawn()
            .context("starting haproxy (installed by ./lab up)")?;
        let cluster = Cluster {
            spec,
            clones,
            haproxy,
            lb_port,
            dir,
            http,
        };
        wait_healthy(
            &cluster.http,
            &format!("{}/health", cluster.lb_url()),
            Duration::from_secs(10),
        )
        .await?;
        Ok(cluster)
    }

    /// The load balancer's URL.
    pub fn lb_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.lb_port)
    }

    /// Clone `i`'s own URL (0-based).
    pub fn clone_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.clones[i].port)
    }

    /// How many clones.
    pub fn len(&self) -> usize {
        self.clones.len()
    }

    /// Never true: a cluster has clones.
    pub fn is_empty(&self) -> bool {
        self.clones.is_empty()
    }

    /// SIGKILLs clone `i`: no goodbye, connections cut mid-request.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.clones[i].child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Stops clone `i` gracefully (SIGTERM: it finishes what is in flight)
    /// and starts it again with `build`, on the same port.
    pub async fn restart(&mut self, i: usize, build: &str) -> anyhow::Result<()> {
        if let Some(mut child) = self.clones[i].child.take() {
            let stopped = common::signal::stop(&mut child, Duration::from_secs(30)).await?;
            anyhow::ensure!(
                !matches!(stopped, common::signal::Stopped::Killed),
                "clone {i} did not stop within 30 s of SIGTERM (killed)"
            );
        }
        let c = &self.clones[i];
        let child = spawn_clone(&self.spec, &self.dir, &c.id, c.port, build)?;
        self.clones[i].child = Some(child);
        wait_healthy(
            &self.http,
            &format!("{}/health", self.clone_url(i)),
            Duration::from_secs(30),
        )
        .await?;
        // Give HAProxy one check to see it up again before the next clone goes.
        tokio::time::sleep(self.spec.check_interval * 2).await;
        Ok(())
    }

    /// Rolls every clone, one at a time, to `build`.
    pub async fn roll(&mut self, build: &str) -> anyhow::Result<()> {
        for i in 0..self.clones.len() {
            self.restart(i, build).await?;
        }
        self.spec.build = build.to_owned();
        Ok(())
    }

    /// The build each clone reports on `/health`.
    pub async fn versions(&self) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        for i in 0..self.clones.len() {
            let v: serde_json::Value = self
                .http
                .get(format!("{}/health", self.clone_url(i)))
                .send()
                .await?
                .json()
                .await?;
            out.push(v["version"].as_str().unwrap_or("").to_owned());
        }
        Ok(out)
    }

    /// The directory holding the logs and HAProxy's configuration.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops everything and removes the directory.
    pub async fn stop(mut self) {
        for c in &mut self.clones {
            if let Some(mut child) = c.child.take() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        let _ = self.haproxy.start_kill();
        let _ = self.haproxy.wait().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn log_file(dir: &Path, name: &str) -> anyhow::Result<std::fs::File> {
    let path = dir.join(format!("{name}.log"));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))
}

fn spawn_clone(
    spec: &ClusterSpec,
    dir: &Path,
    id: &str,
    port: u16,
    build: &str,
) -> anyhow::Result<Child> {
    Command::new(&spec.binary)
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("CLONE_ID", id)
        .env("PORT", port.to_string())
        .env("LAB_BUILD", build)
        .stdout(Stdio::null())
        .stderr(log_file(dir, id)?)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", spec.binary.display()))
}

/// Writes through the load balancer while a drill breaks clones: every
/// cart writer adds numbered items to its own user's cart, each with its
/// own `Idempotency-Key`, and retries one that got no clear answer (a
/// transport error or a 5xx) with the same key, as a careful client does;
/// every signup writer signs up fresh users, with no key and no retry.
///
/// What each writer was told is kept, so an [`Audit`] can count afterwards,
/// from the stores, that every acknowledged write is there exactly once.
pub struct WriteMix {
    stop: Arc<AtomicBool>,
    carts: Vec<tokio::task::JoinHandle<CartTally>>,
    signups: Vec<tokio::task::JoinHandle<SignupTally>>,
}

/// Tries of one cart write: the first send and the client's retries.
const CART_TRIES: usize = 4;

#[derive(Default)]
struct CartTally {
    acknowledged: Vec<String>,
    failed: u64,
}

#[derive(Default)]
struct SignupTally {
    acknowledged: Vec<String>,
    failed: u64,
}

/// What the writers were told, before anything is counted.
pub struct Writes {
    /// Per cart writer: its user and the items it was answered 201 for.
    carts: Vec<(Arc<UserClient>, Vec<String>)>,
    /// Usernames answered 201.
    signups: Vec<String>,
    /// Writes that never got a success answer (neither counted as stored
    /// nor as lost: the writer was told they failed).
    failed: u64,
}

impl WriteMix {
    /// Starts one cart writer per user in `cart_users` (logged in through
    /// `lb_url`) and `signup_writers` signup writers, until [`finish`](Self::finish).
    /// `tag` makes the run's keys, items and usernames its own.
    pub fn start(
        lb_url: &str,
        cart_users: &[Arc<UserClient>],
        signup_writers: usize,
        tag: &str,
    ) -> WriteMix {
        let stop = Arc::new(AtomicBool::new(false));
        // Keys and usernames are short: usernames hold at most 32 characters.
        let tag: String = tag
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(10)
            .collect();
        let carts = cart_users
            .iter()
            .enumerate()
            .map(|(w, user)| {
                let (user, stop, tag) = (user.clone(), stop.clone(), tag.clone());
                tokio::spawn(async move {
                    let mut tally = CartTally::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let item = format!("{tag}-w{w}-{n}");
                        n += 1;
                        if add_once(&user, &item).await {
                            tally.acknowledged.push(item);
                        } else {
                            tally.failed += 1;
                        }
                    }
                    tally
                })
            })
            .collect();
        let signups = (0..signup_writers)
            .map(|w| {
                let (stop, tag) = (stop.clone(), tag.clone());
                let user = UserClient::new(crate::client::http(), lb_url);
                tokio::spawn(async move {
                    let mut tally = SignupTally::default();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let name = format!("mix_{tag}_{w}_{n}");
                        n += 1;
                        match user.signup(&name, "write-mix-password-1").await {
                            Ok(s) if s == reqwest::StatusCode::CREATED => {
                                tally.acknowledged.push(name)
                            }
                            _ => tally.failed += 1,
                        }
                    }
                    tally
                })
            })
            .collect();
        WriteMix {
            stop,
            carts,
            signups,
        }
    }

    /// Stops the writers and returns what they were told.
    pub async fn finish(self, cart_users: &[Arc<UserClient>]) -> anyhow::Result<Writes> {
        self.stop.store(true, Ordering::Relaxed);
        let mut writes = Writes {
            carts: Vec::new(),
            signups: Vec::new(),
            failed: 0,
        };
        for (task, user) in self.carts.into_iter().zip(cart_users) {
            let t = task.await.context("a cart writer panicked")?;
            writes.failed += t.failed;
            writes.carts.push((user.clone(), t.acknowledged));
        }
        for task in self.signups {
            let t = task.await.context("a signup writer panicked")?;
            writes.failed += t.failed;
            writes.signups.extend(t.acknowledged);
        }
        Ok(writes)
    }
}

/// One cart write as a careful client makes it: the same key on every
/// try, so a retry after a lost answer cannot add the item twice.
async fn add_once(user: &UserClient, item: &str) -> bool {
    for _ in 0..CART_TRIES {
        let res = user
            .raw(reqwest::Method::POST, "/cart/items")
            .header(crate::idempotency::HEADER, item)
            .json(&serde_json::json!({ "item": item }))
            .send()
            .await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::CREATED => return true,
            // A clear refusal (4xx) will not change on a retry.
            Ok(r) if r.status().is_client_error() => return false,
            // No answer, or a 5xx: the write may or may not have happened;
            // the key makes asking again safe.
            _ => {}
        }
    }
    false
}

/// Every acknowledged write, counted from the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Audit {
    /// Writes answered with success.
    pub acknowledged: u64,
    /// Acknowledged writes found exactly once.
    pub stored: u64,
    /// Acknowledged writes found more than once.
    pub doubled: u64,
    /// Acknowledged writes not found.
    pub lost: u64,
    /// Writes never acknowledged (the writer was told they failed).
    pub failed: u64,
}

impl Audit {
    /// One line: `acknowledged 412, stored once 412, doubled 0, lost 0; failed (unacknowledged) 3`.
    pub fn line(&self) -> String {
        format!(
            "acknowledged {}, stored once {}, doubled {}, lost {}; failed (unacknowledged) {}",
            self.acknowledged, self.stored, self.doubled, self.lost, self.failed
        )
    }
}

impl Writes {
    /// Counts every acknowledged write in the stores: each cart from Redis
    /// (through `GET /cart`, which reads the list the clones pushed to),
    /// each signup from MariaDB's `users` table through `db`.
    pub async fn audit(&self, db: &MySqlPool) -> anyhow::Result<Audit> {
        let mut audit = Audit {
            failed: self.failed,
            ..Audit::default()
        };
        let mut tally = |found: usize| {
            audit.acknowledged += 1;
            match found {
                0 => audit.lost += 1,
                1 => audit.stored += 1,
                _ => audit.doubled += 1,
            }
        };
        for (user, acked) in &self.carts {
            let cart = user
                .cart()
                .await?
                .context("a cart writer lost its session")?;
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for item in &cart.items {
                *seen.entry(item.as_str()).or_default() += 1;
            }
            for item in acked {
                tally(seen.get(item.as_str()).copied().unwrap_or(0));
            }
        }
        for names in self.signups.chunks(500) {
            let marks = vec!["?"; names.len()].join(",");
            let sql = format!(
                "SELECT username, COUNT(*) FROM users WHERE username IN ({marks}) GROUP BY username"
            );
            // Only `?` placeholders are formatted in; the names are bound.
            let mut q = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
            for n in names {
                q = q.bind(n);
            }
            let rows: HashMap<String, i64> = q
                .fetch_all(db)
                .await
                .context("counting signups in MariaDB")?
                .into_iter()
                .collect();
            for n in names {
                tally(rows.get(n).copied().unwrap_or(0) as usize);
            }
        }
        Ok(audit)
    }
}
