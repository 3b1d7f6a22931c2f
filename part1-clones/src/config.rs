//! The clone's configuration: flags, environment, defaults.
//!
//! Every clone runs the same binary with the same configuration; only
//! `CLONE_ID` and `PORT` differ. That is the article's "server image": what
//! makes any number of identical clones.
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `BIND_ADDR` | `--bind-addr` | `127.0.0.1` (`0.0.0.0` in a container) |
//! | `PORT` | `--port` | `18081` (0 picks a free port) |
//! | `CLONE_ID` | `--clone-id` | `clone-<pid>` |
//! | `LAB_BUILD` | `--build` | the crate version |
//! | `SESSIONS` | `--sessions` | `redis` (`memory` \| `redis` \| `mariadb`) |
//! | `KEY_PREFIX` | `--key-prefix` | `lab` (Redis key prefix) |
//! | `SESSION_IDLE_SECS` | `--session-idle-secs` | `1800` |
//! | `SESSION_ABSOLUTE_SECS` | `--session-absolute-secs` | `86400` |
//! | `SECURE_COOKIES` | `--secure-cookies` | `false` (set behind HTTPS) |
//! | `MAX_AVATAR_BYTES` | `--max-avatar-bytes` | `262144` |
//! | `CART_MAX_ITEMS` | `--cart-max-items` | `100` |
//! | `HEADER_READ_TIMEOUT_MS` | `--header-read-timeout-ms` | `10000` (slow headers are cut) |
//! | `DB_ACQUIRE_TIMEOUT_MS` | `--db-acquire-timeout-ms` | `1000` (a stopped database fails a request this fast) |
//! | `HASH_CONCURRENCY` | `--hash-concurrency` | `0` (= the number of cores) |
//! | `LOGIN_FAILURES_PER_ACCOUNT` | `--login-failures-per-account` | `10` per window |
//! | `LOGIN_FAILURES_PER_IP` | `--login-failures-per-ip` | `50` per window |
//! | `LOGIN_FAILURE_WINDOW_SECS` | `--login-failure-window-secs` | `300` |
//! | `TRUSTED_PROXIES` | `--trusted-proxies` | `127.0.0.1,::1` (whose `X-Forwarded-For` is believed) |
//! | `SERVICE_TIME_MS` | `--service-time-ms` | `0` (modelled work per request) |
//! | `MAX_CONCURRENCY` | `--max-concurrency` | `0` (unlimited) |
//!
//! The dataset is not the server's business: `part1-load` (`LOAD_DATASET`,
//! see [`crate::users::Users::load_dataset`]) loads it before clones start.
//!
//! plus the stack's URLs of [`common::config::StackConfig`] (`REDIS_URL`,
//! `MARIADB_PRIMARY_URL`, ...).

use clap::{Parser, ValueEnum};
use common::config::StackConfig;

/// Where sessions live: the anti-pattern, the fix, the comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SessionKind {
    /// In this clone's memory (the anti-pattern).
    Memory,
    /// In Redis, shared by every clone (the fix).
    Redis,
    /// In MariaDB (central, but on the hardest server to scale).
    Mariadb,
}

impl SessionKind {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SessionKind::Memory => "memory",
            SessionKind::Redis => "redis",
            SessionKind::Mariadb => "mariadb",
        }
    }
}

/// One clone of the part 1 app server.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part1-server",
    version,
    about = "Part 1: a stateless app clone (sessions and files in Redis)"
)]
pub struct ServerConfig {
    /// Address to listen on. Loopback by default, so a lab clone is never
    /// reachable from the network; a container needs `0.0.0.0`, or neither
    /// HAProxy nor the host can reach it.
    #[arg(long, env = "BIND_ADDR", default_value = "127.0.0.1")]
    pub bind_addr: std::net::IpAddr,
    /// Port on the bind address; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = 18081)]
    pub port: u16,
    /// This clone's name, reported as `served_by` and `X-Served-By`.
    #[arg(long, env = "CLONE_ID")]
    pub clone_id: Option<String>,
    /// The build this clone runs, reported as `version` (rolling restarts change it).
    #[arg(long = "build", env = "LAB_BUILD", default_value = env!("CARGO_PKG_VERSION"))]
    pub build: String,
    /// Where sessions live.
    #[arg(long, env = "SESSIONS", value_enum, default_value_t = SessionKind::Redis)]
    pub sessions: SessionKind,
    /// Prefix of every Redis key this clone writes.
    #[arg(long, env = "KEY_PREFIX", default_value = "lab")]
    pub key_prefix: String,
    /// Idle expiry of a session, in seconds.
    #[arg(long, env = "SESSION_IDLE_SECS", default_value_t = 1800)]
    pub session_idle_secs: u64,
    /// Absolute expiry of a session, in seconds from login.
    #[arg(long, env = "SESSION_ABSOLUTE_SECS", default_value_t = 86_400)]
    pub session_absolute_secs: u64,
    /// Mark the cookie `Secure` (only sent over HTTPS).
    #[arg(long, env = "SECURE_COOKIES", default_value_t = false)]
    pub secure_cookies: bool,
    /// Largest avatar accepted, in bytes.
    #[arg(long, env = "MAX_AVATAR_BYTES", default_value_t = 256 * 1024)]
    pub max_avatar_bytes: usize,
    /// Most items a cart holds; one more gets 409. A cart is user data in
    /// a shared store: unbounded, one user could fill Redis.
    #[arg(long, env = "CART_MAX_ITEMS", default_value_t = 100)]
    pub cart_max_items: u64,
    /// How long a client may take to send a request's headers, in ms. A
    /// client that trickles them (slowloris) would otherwise hold a
    /// connection, and its memory, for ever.
    #[arg(long, env = "HEADER_READ_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_read_timeout_ms: u64,
    /// How long a query waits for a database connection (connecting
    /// included) before the request fails with 503, in ms. A stopped
    /// primary refuses connections and sqlx retries the connect until this
    /// runs out, so it is how long a signup takes to fail then.
    #[arg(long, env = "DB_ACQUIRE_TIMEOUT_MS", default_value_t = 1000)]
    pub db_acquire_timeout_ms: u64,
    /// Password hashes computed at once (each Argon2id takes 19 MiB and a
    /// core); 0 means one per core. More would only queue on the cores and
    /// multiply the memory.
    #[arg(long, env = "HASH_CONCURRENCY", default_value_t = 0)]
    pub hash_concurrency: usize,
    /// Failed logins per account within the window before 429.
    #[arg(long, env = "LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 10)]
    pub login_failures_per_account: u64,
    /// Failed logins per client address within the window before 429.
    #[arg(long, env = "LOGIN_FAILURES_PER_IP", default_value_t = 50)]
    pub login_failures_per_ip: u64,
    /// The window failed logins are counted over, in seconds.
    #[arg(long, env = "LOGIN_FAILURE_WINDOW_SECS", default_value_t = 300)]
    pub login_failure_window_secs: u64,
    /// Peers whose `X-Forwarded-For` is believed (the load balancer):
    /// addresses or CIDR blocks, comma separated. From any other peer the
    /// header is ignored, since a client can write whatever it likes there.
    #[arg(
        long,
        env = "TRUSTED_PROXIES",
        value_delimiter = ',',
        default_value = "127.0.0.1,::1"
    )]
    pub trusted_proxies: Vec<crate::throttle::IpBlock>,
    /// Modelled work per request, in milliseconds (see `capacity`).
    #[arg(long, env = "SERVICE_TIME_MS", default_value_t = 0)]
    pub service_time_ms: u64,
    /// Requests this clone works on at once; 0 is unlimited (see `capacity`).
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 0)]
    pub max_concurrency: usize,
    /// The stack's URLs.
    #[command(flatten)]
    pub stack: StackConfig,
}

impl ServerConfig {
    /// The configuration from the environment alone (tests, the demo).
    pub fn from_env() -> Result<Self, clap::Error> {
        ServerConfig::try_parse_from(["part1-server"])
    }

    /// The clone id, or `clone-<pid>`.
    pub fn clone_name(&self) -> String {
        self.clone_id
            .clone()
            .unwrap_or_else(|| format!("clone-{}", std::process::id()))
    }
}

/// `part1-load` (and `part2-load`, which takes the same flags): the
/// dataset, loaded before the clones start.
///
/// | variable | flag | default |
/// |---|---|---|
/// | `LOAD_DATASET` | `--scale` | `default` (`tiny` \| `default` \| `large`) |
/// | `DATASET_SEED` | `--dataset-seed` | `42` |
///
/// plus `MARIADB_PRIMARY_URL` of [`common::config::StackConfig`].
#[derive(Debug, Clone, Parser)]
#[command(
    version,
    about = "Migrate and load the dataset before the clones start (idempotent)"
)]
pub struct LoadConfig {
    /// The dataset's size.
    #[arg(long, env = "LOAD_DATASET", default_value = "default")]
    pub scale: common::dataset::Scale,
    /// The dataset's seed.
    #[arg(long, env = "DATASET_SEED", default_value_t = 42)]
    pub dataset_seed: u64,
    /// The stack's URLs.
    #[command(flatten)]
    pub stack: StackConfig,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bind_address_is_loopback_unless_told() {
        let c = ServerConfig::try_parse_from(["part1-server"]).unwrap();
        assert!(c.bind_addr.is_loopback() || std::env::var_os("BIND_ADDR").is_some());
        let c = ServerConfig::try_parse_from(["part1-server", "--bind-addr", "0.0.0.0"]).unwrap();
        assert!(c.bind_addr.is_unspecified());
        assert!(
            ServerConfig::try_parse_from(["part1-server", "--bind-addr", "localhost"]).is_err()
        );
        let c =
            ServerConfig::try_parse_from(["part1-server", "--trusted-proxies", "10.0.0.0/8,::1"])
                .unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
    }
}
