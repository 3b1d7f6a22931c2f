//! A cluster of clones behind HAProxy, as real processes.
//!
//! The demo and the tests need what `./lab up part1` gives an instructor,
//! but of their own: N clones of the same binary with the same settings,
//! HAProxy in front, and the power to SIGKILL one clone or to roll all of
//! them to a new build while load runs. Each cluster gets free ports and a
//! directory of its own, so many can run in parallel.
//!
//! HAProxy's policy is the lab's (see `haproxy_cfg` in `./lab`): round
//! robin, a health check of `GET /health`, and `retries` + `redispatch` +
//! `retry-on`, so a request that meets a dead clone is retried on another
//! and the client never sees the failure.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

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
pub fn haproxy_config(lb_port: u16, ports: &[u16], check_interval: Duration) -> String {
    let mut cfg = format!(
        "global\n    maxconn 4096\ndefaults\n    mode http\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    \
         retries 3\n    option redispatch 1\n    retry-on conn-failure empty-response response-timeout 502 503\n    option http-server-close\n\
         frontend front\n    bind 127.0.0.1:{lb_port}\n    default_backend clones\n\
         backend clones\n    balance roundrobin\n    option httpchk GET /health\n    default-server check inter {}ms fall 2 rise 1\n",
        check_interval.as_millis()
    );
    for (i, port) in ports.iter().enumerate() {
        cfg.push_str(&format!("    server clone{} 127.0.0.1:{port}\n", i + 1));
    }
    cfg
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
            if let Some(pid) = child.id() {
                // tokio's Child can only SIGKILL; kill(1) sends the SIGTERM
                // that triggers the graceful shutdown.
                Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status()
                    .await?;
            }
            tokio::time::timeout(Duration::from_secs(30), child.wait())
                .await
                .context("clone did not stop within 30 s of SIGTERM")??;
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
