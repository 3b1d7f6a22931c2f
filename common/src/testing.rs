//! Test support: the real stack, isolated by unique names.
//!
//! Tests run against the services `./lab up` starts, never mocks, and in
//! parallel. Each test makes its own names ([`unique_name`]): a Redis key
//! prefix, a MariaDB database ([`TestDatabase`]), a queue. A service that is
//! not there fails the test at once with the command that starts it:
//!
//! ```text
//! Redis is not reachable at redis://127.0.0.1:16379: run ./lab up (Connection refused)
//! ```
//!
//! Every connection attempt has a short deadline, so a missing service is a
//! fast, clear failure, never a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::SeedableRng;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
// Names are ours (unique_name: [a-z0-9_] only), so formatting them into
// DDL is safe; sqlx 0.9 asks us to say so with AssertSqlSafe.
use sqlx::{AssertSqlSafe, Executor};

use crate::config::StackConfig;

/// How long a test waits for a service before it calls it missing.
pub const CONNECT_DEADLINE: Duration = Duration::from_secs(5);

/// How long [`TestDatabase::replicated`] waits for the replica.
pub const REPLICATION_DEADLINE: Duration = Duration::from_secs(20);

/// A service of the stack that a test could not reach.
#[derive(Debug, thiserror::Error)]
#[error("{service} is not reachable at {url}: run ./lab up ({reason})")]
pub struct Unreachable {
    /// The service, as the README names it.
    pub service: String,
    /// The URL tried, without its password.
    pub url: String,
    /// What went wrong.
    pub reason: String,
}

impl Unreachable {
    fn new(service: &str, url: &str, reason: impl std::fmt::Display) -> Self {
        Unreachable {
            service: service.to_owned(),
            url: redact(url),
            reason: reason.to_string(),
        }
    }
}

// `redact` lives in `config` now (the server's start path uses it, and
// production code should not reach into test support); re-exported here so
// test code keeps one import.
pub use crate::config::redact;

/// A name no other test, run or process uses: `prefix_<pid>_<n>_<random>`.
/// Only `[a-z0-9_]`, so it is valid as a database name, a key prefix and a
/// queue name alike.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random: u32 = rand::Rng::random(&mut rand::rngs::StdRng::from_os_rng());
    format!("{prefix}_{}_{n}_{random:08x}", std::process::id())
}

/// The stack's configuration from the environment (defaults: `./lab up`).
pub fn stack() -> StackConfig {
    StackConfig::from_env().expect("stack configuration from the environment")
}

/// A Redis connection manager, or the error that says how to start Redis.
pub async fn redis_at(url: &str) -> Result<redis::aio::ConnectionManager, Unreachable> {
    let client = redis::Client::open(url).map_err(|e| Unreachable::new("Redis", url, e))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_DEADLINE))
        .set_number_of_retries(1);
    let mut conn = tokio::time::timeout(
        CONNECT_DEADLINE,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| Unreachable::new("Redis", url, "timed out"))?
    .map_err(|e| Unreachable::new("Redis", url, e))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| Unreachable::new("Redis", url, e))?;
    Ok(conn)
}

/// Redis at `REDIS_URL`; panics with the command that starts it.
pub async fn redis() -> redis::aio::ConnectionManager {
    redis_at(&stack().redis_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A MariaDB pool at `url`, or the error that says how to start it.
pub async fn mariadb_at(service: &str, url: &str) -> Result<MySqlPool, Unreachable> {
    let options: MySqlConnectOptions =
        url.parse().map_err(|e| Unreachable::new(service, url, e))?;
    MySqlPoolOptions::new()
        .max_connections(8)
        .acquire_timeout(CONNECT_DEADLINE)
        .connect_with(options)
        .await
        .map_err(|e| Unreachable::new(service, url, e))
}

/// Waits for a TCP port to accept connections, up to [`CONNECT_DEADLINE`].
pub async fn tcp(service: &str, addr: &str) -> Result<(), Unreachable> {
    match tokio::time::timeout(CONNECT_DEADLINE, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(Unreachable::new(service, addr, e)),
        Err(_) => Err(Unreachable::new(service, addr, "timed out")),
    }
}

/// A database of its own for one test, on the primary (and so, by
/// replication, on the replica). Call [`TestDatabase::drop_database`] at the
/// end; a test that panics first leaves a `t_*` database that `./lab reset`
/// removes.
pub struct TestDatabase {
    /// The database's name.
    pub name: String,
    /// A pool connected to it.
    pub pool: MySqlPool,
    /// Its URL (the server's URL with this database).
    pub url: String,
    admin: MySqlPool,
}

impl TestDatabase {
    /// Creates a fresh database on the MariaDB at `url` (the `lab` user may
    /// create databases; `./lab up` grants it).
    pub async fn create(service: &str, url: &str) -> Result<Self, Unreachable> {
        let admin = mariadb_at(service, url).await?;
        let name = unique_name("t");
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE `{name}`")))
            .await
            .map_err(|e| Unreachable::new(service, url, e))?;
        let options: MySqlConnectOptions =
            url.parse().map_err(|e| Unreachable::new(service, url, e))?;
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(CONNECT_DEADLINE)
            .connect_with(options.database(&name))
            .await
            .map_err(|e| Unreachable::new(service, url, e))?;
        let url = crate::config::with_database(url, &name);
        Ok(TestDatabase {
            name,
            pool,
            url,
            admin,
        })
    }

    /// Waits until the replica at `replica_url` has applied everything the
    /// primary had committed when this is called (the primary's
    /// `@@gtid_binlog_pos`, waited for with `MASTER_GTID_WAIT`), up to
    /// [`REPLICATION_DEADLINE`]; panics after it, naming the command that
    /// shows why.
    ///
    /// A test that writes its data straight into the primary and then
    /// reads it through a server calls this in between: a server's read may
    /// go to a replica, and a replica in rotation may lag up to its bound
    /// (part 2's `REPLICA_MAX_LAG_MS`, a second by default). That lag is
    /// part 2's lesson, not the test's subject.
    ///
    /// For a database on the lab's primary only: a shard's writes (a GTID
    /// domain of their own) never reach the replica, so this would wait
    /// them out and panic.
    pub async fn replicated(&self, replica_url: &str) {
        let pos: String = sqlx::query_scalar("SELECT @@gtid_binlog_pos")
            .fetch_one(&self.pool)
            .await
            .unwrap_or_else(|e| panic!("reading the primary's @@gtid_binlog_pos: {e}"));
        let replica = mariadb_at("MariaDB replica", replica_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let waited: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
            .bind(&pos)
            .bind(REPLICATION_DEADLINE.as_secs_f64())
            .fetch_one(&replica)
            .await
            .unwrap_or_else(|e| panic!("MASTER_GTID_WAIT on the replica: {e}"));
        replica.close().await;
        assert_eq!(
            waited,
            Some(0),
            "the replica did not apply the primary's writes (up to {pos}) within \
             {REPLICATION_DEADLINE:?}: is it replicating? ./lab status"
        );
    }

    /// Drops the database.
    pub async fn drop_database(self) {
        self.pool.close().await;
        let _ = self
            .admin
            .execute(AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{}`",
                self.name
            )))
            .await;
    }
}

/// A TCP proxy in front of a real server, for failure drills.
///
/// - [`ChaosProxy::cut`] drops every connection and closes each new one
///   as soon as it is accepted: the connect succeeds, then the peer hangs up.
/// - [`ChaosProxy::refuse`] drops every connection and stops listening, so
///   a connect is refused at once (`ECONNREFUSED`), as a stopped server's
///   port does. This is what users meet when a database is stopped, and
///   client libraries treat the two differently (a refused connect is
///   often retried until a timeout).
/// - [`ChaosProxy::restore`] lets traffic through again, listening again on
///   the same port.
///
/// Tests break *their* path to a shared server this way without stopping
/// the server for the other tests that run in parallel.
pub struct ChaosProxy {
    port: u16,
    target: String,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    generation: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    /// The accept loop; `None` while refusing (the listener is closed).
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl ChaosProxy {
    /// Starts a proxy on a free port of 127.0.0.1 that forwards to `target`
    /// (`host:port`).
    pub async fn start(target: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (tx, _) = tokio::sync::watch::channel(0u64);
        let proxy = ChaosProxy {
            port,
            target: target.to_owned(),
            open: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
            generation: std::sync::Arc::new(tx),
            task: std::sync::Mutex::new(None),
        };
        proxy.serve(listener);
        Ok(proxy)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let target = self.target.clone();
        let (open, generation) = (self.open.clone(), self.generation.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                if !open.load(Ordering::SeqCst) {
                    drop(client); // cut: accepted, then closed at once
                    continue;
                }
                let target = target.clone();
                let mut cut = generation.subscribe();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.changed() => {} // cut: both ends dropped
                    }
                });
            }
        });
        if let Some(old) = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(task)
        {
            old.abort();
        }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let (auth_host, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let (auth, _) = auth_host
            .rsplit_once('@')
            .map_or(("", auth_host), |(a, h)| (a, h));
        let auth = if auth.is_empty() {
            String::new()
        } else {
            format!("{auth}@")
        };
        let path = if path.is_empty() {
            String::new()
        } else {
            format!("/{path}")
        };
        format!("{scheme}://{auth}127.0.0.1:{}{path}", self.port)
    }

    /// Drops every connection and hangs up on new ones.
    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Drops every connection and closes the port: new connects are
    /// refused, as by a stopped server.
    pub fn refuse(&self) {
        self.cut();
        // Aborting the accept loop drops the listener, which closes the port.
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }

    /// Lets connections through again; after [`ChaosProxy::refuse`], listens
    /// again on the same port. Panics if the port cannot be bound again
    /// (test support: the drill cannot go on without it).
    pub fn restore(&self) {
        let refused = self
            .task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none();
        if refused {
            // SO_REUSEADDR, so connections still in TIME_WAIT on this port
            // do not block the new listener. Aborting the old accept loop
            // drops its listener at its next poll, so retry briefly.
            let deadline = std::time::Instant::now() + CONNECT_DEADLINE;
            let listener = loop {
                let bound = tokio::net::TcpSocket::new_v4().and_then(|s| {
                    s.set_reuseaddr(true)?;
                    s.bind(([127, 0, 0, 1], self.port).into())?;
                    s.listen(1024)
                });
                match bound {
                    Ok(l) => break l,
                    Err(e) if std::time::Instant::now() < deadline => {
                        let _ = e;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!(
                        "the chaos proxy cannot listen on port {} again: {e}",
                        self.port
                    ),
                }
            };
            self.serve(listener);
        }
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for ChaosProxy {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_chaos_proxy_forwards_cuts_and_restores() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let echo = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = echo.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = echo.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 16];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        let proxy = ChaosProxy::start(&target).await.unwrap();
        let addr = format!("127.0.0.1:{}", proxy.port());
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        proxy.cut();
        // The open connection is dropped, and a new one gets no answer.
        assert_eq!(c.read(&mut buf).await.unwrap_or(0), 0);
        let mut fresh = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = fresh.write_all(b"x").await;
        assert_eq!(fresh.read(&mut buf).await.unwrap_or(0), 0);
        proxy.restore();
        let mut again = tokio::net::TcpStream::connect(&addr).await.unwrap();
        again.write_all(b"pong").await.unwrap();
        again.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        // refuse: the port is closed, as a stopped server's; restore reopens it.
        proxy.refuse();
        assert_eq!(again.read(&mut buf).await.unwrap_or(0), 0, "cut as well");
        let deadline = std::time::Instant::now() + CONNECT_DEADLINE;
        loop {
            match tokio::net::TcpStream::connect(&addr).await {
                Err(e) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
                    break;
                }
                // The aborted accept loop drops its listener at its next poll.
                Ok(_) => assert!(std::time::Instant::now() < deadline, "still listening"),
            }
            tokio::task::yield_now().await;
        }
        proxy.restore();
        let mut back = tokio::net::TcpStream::connect(&addr).await.unwrap();
        back.write_all(b"back").await.unwrap();
        back.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"back");
        assert_eq!(
            proxy.url_for("mysql://lab:pw@127.0.0.1:13306/lab"),
            format!("mysql://lab:pw@127.0.0.1:{}/lab", proxy.port())
        );
    }

    #[test]
    fn names_are_unique_and_safe() {
        let a = unique_name("t");
        let b = unique_name("t");
        assert_ne!(a, b);
        assert!(
            a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
            "{a}"
        );
    }

    #[test]
    fn passwords_do_not_reach_messages() {
        assert_eq!(
            redact("mysql://lab:secret@127.0.0.1:13306/lab"),
            "mysql://lab:***@127.0.0.1:13306/lab"
        );
        assert_eq!(redact("redis://127.0.0.1:16379"), "redis://127.0.0.1:16379");
    }

    // A port nothing listens on: 1 is reserved (tcpmux) and never bound here.
    #[tokio::test]
    async fn a_missing_redis_names_the_url_and_the_fix() {
        let err = redis_at("redis://127.0.0.1:1")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("Redis is not reachable at redis://127.0.0.1:1: run ./lab up"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_missing_mariadb_names_the_url_and_the_fix() {
        let err = mariadb_at("MariaDB primary", "mysql://lab:pw@127.0.0.1:1/lab")
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(
                "MariaDB primary is not reachable at mysql://lab:***@127.0.0.1:1/lab: run ./lab up"
            ),
            "{err}"
        );
        let err = tcp("HAProxy", "127.0.0.1:1").await.unwrap_err().to_string();
        assert!(
            err.contains("HAProxy is not reachable at 127.0.0.1:1: run ./lab up"),
            "{err}"
        );
    }
}

/// Prometheus's text format, read back: each `/metrics` test parses the
/// page strictly (a malformed line fails it) and looks for the series the
/// live page reads.
pub mod prometheus {
    /// One sample line: `name{labels} value`, or `name value`.
    pub struct Sample {
        /// The metric name (`lab_http_requests_total`, `..._bucket`).
        pub name: String,
        /// Its labels, in the order written.
        pub labels: Vec<(String, String)>,
        /// Its value.
        pub value: f64,
    }

    /// Parses the text format strictly enough to catch a malformed page:
    /// HELP/TYPE comments well formed, each sample `name{k="v",...} value`.
    pub fn parse(text: &str) -> Result<Vec<Sample>, String> {
        let metric_name = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && !s.starts_with(|c: char| c.is_ascii_digit())
        };
        let mut samples = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(comment) = line.strip_prefix("# ") {
                let mut parts = comment.splitn(3, ' ');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some("HELP"), Some(name), Some(_)) if metric_name(name) => {}
                    (Some("TYPE"), Some(name), Some(kind))
                        if metric_name(name)
                            && ["counter", "gauge", "histogram", "summary", "untyped"]
                                .contains(&kind) => {}
                    _ => return Err(format!("bad comment line: {line}")),
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("no value: {line}"))?;
            let value: f64 = value.parse().map_err(|_| format!("bad value in: {line}"))?;
            let (name, labels) = match series.split_once('{') {
                None => (series, Vec::new()),
                Some((name, rest)) => {
                    let body = rest
                        .strip_suffix('}')
                        .ok_or_else(|| format!("unclosed labels: {line}"))?;
                    let mut labels = Vec::new();
                    for pair in body.split("\",").filter(|p| !p.is_empty()) {
                        let (k, v) = pair
                            .split_once("=\"")
                            .ok_or_else(|| format!("bad label in: {line}"))?;
                        if !metric_name(k) {
                            return Err(format!("bad label name {k:?} in: {line}"));
                        }
                        labels.push((k.to_owned(), v.trim_end_matches('"').to_owned()));
                    }
                    (name, labels)
                }
            };
            if !metric_name(name) {
                return Err(format!("bad metric name in: {line}"));
            }
            samples.push(Sample {
                name: name.to_owned(),
                labels,
                value,
            });
        }
        Ok(samples)
    }

    impl Sample {
        /// The value of label `key`, if the sample has it.
        pub fn label(&self, key: &str) -> Option<&str> {
            self.labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        }
    }

    /// The samples named `name` whose labels include every pair of `with`.
    pub fn find<'a>(samples: &'a [Sample], name: &str, with: &[(&str, &str)]) -> Vec<&'a Sample> {
        samples
            .iter()
            .filter(|s| s.name == name && with.iter().all(|(k, v)| s.label(k) == Some(v)))
            .collect()
    }
}
