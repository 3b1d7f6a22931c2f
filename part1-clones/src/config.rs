//! The clone's configuration: flags, environment, defaults.
//!
//! Every clone runs the same binary with the same configuration; only
//! `CLONE_ID` and `PORT` differ. That is the article's "server image": what
//! makes any number of identical clones.
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `PORT` | `--port` | `18081` (0 picks a free port) |
//! | `CLONE_ID` | `--clone-id` | `clone-<pid>` |
//! | `LAB_BUILD` | `--build` | the crate version |
//! | `SESSIONS` | `--sessions` | `redis` (`memory` \| `redis` \| `mariadb`) |
//! | `KEY_PREFIX` | `--key-prefix` | `lab` (Redis key prefix) |
//! | `SESSION_IDLE_SECS` | `--session-idle-secs` | `1800` |
//! | `SESSION_ABSOLUTE_SECS` | `--session-absolute-secs` | `86400` |
//! | `SECURE_COOKIES` | `--secure-cookies` | `false` (set behind HTTPS) |
//! | `MAX_AVATAR_BYTES` | `--max-avatar-bytes` | `262144` |
//! | `SERVICE_TIME_MS` | `--service-time-ms` | `0` (modelled work per request) |
//! | `MAX_CONCURRENCY` | `--max-concurrency` | `0` (unlimited) |
//! | `LOAD_DATASET` | `--load-dataset` | unset (`tiny` \| `default` \| `large`) |
//! | `DATASET_SEED` | `--dataset-seed` | `42` |
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
    /// Port on 127.0.0.1; 0 picks a free one.
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
    /// Modelled work per request, in milliseconds (see `capacity`).
    #[arg(long, env = "SERVICE_TIME_MS", default_value_t = 0)]
    pub service_time_ms: u64,
    /// Requests this clone works on at once; 0 is unlimited (see `capacity`).
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 0)]
    pub max_concurrency: usize,
    /// Load the dataset's users at start (`tiny`, `default`, `large`), so
    /// `user1`.. log in with the dataset password. Existing users are kept.
    #[arg(long, env = "LOAD_DATASET")]
    pub load_dataset: Option<common::dataset::Scale>,
    /// The dataset's seed.
    #[arg(long, env = "DATASET_SEED", default_value_t = 42)]
    pub dataset_seed: u64,
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
