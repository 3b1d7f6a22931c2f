//! Configuration: a flag, an environment variable and a default, written once.
//!
//! Every binary flattens [`StackConfig`] into its own `clap` parser, so
//! `--redis-url`, `REDIS_URL` and the default `redis://127.0.0.1:16379` are one
//! declaration. The defaults are the ports `./lab up` uses (the table in the
//! README), so `cargo run` works against the local stack with no setup, and the
//! same variables point a demo at the docker-compose stack or anywhere else.
//!
//! | variable | default |
//! |---|---|
//! | `REDIS_URL` | `redis://127.0.0.1:16379` |
//! | `MEMCACHED_URL` | `memcache://127.0.0.1:11311?protocol=ascii` |
//! | `MARIADB_PRIMARY_URL` | `mysql://lab:lab@127.0.0.1:13306/lab` |
//! | `MARIADB_REPLICA_URL` | `mysql://lab:lab@127.0.0.1:13307/lab` |
//! | `MARIADB_SHARD0_URL` | `mysql://lab:lab@127.0.0.1:13316/lab` |
//! | `MARIADB_SHARD1_URL` | `mysql://lab:lab@127.0.0.1:13317/lab` |
//! | `RABBITMQ_URL` | `amqp://guest:guest@127.0.0.1:15673/%2f` |
//! | `MONGO_URL` | `mongodb://127.0.0.1:27018/?directConnection=true` |
//! | `LB_URL` | `http://127.0.0.1:18080` (HAProxy in front of the clones) |
//! | `NGINX_URL` | `http://127.0.0.1:18090` |
//! | `LAB_RESULTS_DIR` | `target/lab/results` |
//!
//! The demos add `DEMO_SECONDS` (3) and `DEMO_REPEAT` (1), see
//! [`crate::demo::DemoArgs`]; results record `LAB_GIT_REV` when `./lab`
//! sets it (else git is asked), see [`crate::results::Provenance`]. Any of
//! these may also come from a `.env` file ([`crate::telemetry::init`]).

use std::str::FromStr;

use clap::{Args, Parser};

/// The default of every connection URL, as `./lab up` starts the stack.
pub mod defaults {
    /// Redis: sessions, user files, cache, job queue.
    pub const REDIS_URL: &str = "redis://127.0.0.1:16379";
    /// Memcached, ASCII protocol (see the notes on its key validation).
    pub const MEMCACHED_URL: &str = "memcache://127.0.0.1:11311?protocol=ascii";
    /// The MariaDB primary: every write goes here.
    pub const MARIADB_PRIMARY_URL: &str = "mysql://lab:lab@127.0.0.1:13306/lab";
    /// The MariaDB replica (GTID replication of the primary, read-only).
    pub const MARIADB_REPLICA_URL: &str = "mysql://lab:lab@127.0.0.1:13307/lab";
    /// MariaDB shard 0, an independent instance.
    pub const MARIADB_SHARD0_URL: &str = "mysql://lab:lab@127.0.0.1:13316/lab";
    /// MariaDB shard 1, an independent instance.
    pub const MARIADB_SHARD1_URL: &str = "mysql://lab:lab@127.0.0.1:13317/lab";
    /// RabbitMQ over AMQP (not 15672, which is usually the management UI).
    pub const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:15673/%2f";
    /// The MongoDB-wire server (SecantusDB here, a real mongod under compose).
    pub const MONGO_URL: &str = "mongodb://127.0.0.1:27018/?directConnection=true";
    /// HAProxy, in front of the app clones.
    pub const LB_URL: &str = "http://127.0.0.1:18080";
    /// nginx, serving part 4's precomputed pages.
    pub const NGINX_URL: &str = "http://127.0.0.1:18090";
    /// Where demos write their figures.
    pub const LAB_RESULTS_DIR: &str = "target/lab/results";
}

/// Where every service of the stack is. Flatten it into a binary's parser
/// with `#[command(flatten)]`.
#[derive(Debug, Clone, Args)]
pub struct StackConfig {
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = defaults::REDIS_URL)]
    pub redis_url: String,
    /// Memcached URL.
    #[arg(long, env = "MEMCACHED_URL", default_value = defaults::MEMCACHED_URL)]
    pub memcached_url: String,
    /// MariaDB primary URL (writes).
    #[arg(long, env = "MARIADB_PRIMARY_URL", default_value = defaults::MARIADB_PRIMARY_URL)]
    pub mariadb_primary_url: String,
    /// MariaDB replica URL (reads).
    #[arg(long, env = "MARIADB_REPLICA_URL", default_value = defaults::MARIADB_REPLICA_URL)]
    pub mariadb_replica_url: String,
    /// MariaDB shard 0 URL.
    #[arg(long, env = "MARIADB_SHARD0_URL", default_value = defaults::MARIADB_SHARD0_URL)]
    pub mariadb_shard0_url: String,
    /// MariaDB shard 1 URL.
    #[arg(long, env = "MARIADB_SHARD1_URL", default_value = defaults::MARIADB_SHARD1_URL)]
    pub mariadb_shard1_url: String,
    /// RabbitMQ AMQP URL.
    #[arg(long, env = "RABBITMQ_URL", default_value = defaults::RABBITMQ_URL)]
    pub rabbitmq_url: String,
    /// MongoDB URL.
    #[arg(long, env = "MONGO_URL", default_value = defaults::MONGO_URL)]
    pub mongo_url: String,
    /// The load balancer in front of the clones.
    #[arg(long, env = "LB_URL", default_value = defaults::LB_URL)]
    pub lb_url: String,
    /// nginx (static pages).
    #[arg(long, env = "NGINX_URL", default_value = defaults::NGINX_URL)]
    pub nginx_url: String,
}

#[derive(Parser)]
struct EnvOnly {
    #[command(flatten)]
    stack: StackConfig,
}

impl StackConfig {
    /// The configuration from environment variables and defaults alone, for
    /// tests and benches, which have no command line of their own.
    pub fn from_env() -> Result<Self, ConfigError> {
        EnvOnly::try_parse_from(["lab"])
            .map(|c| c.stack)
            .map_err(|e| ConfigError::Clap(e.to_string()))
    }
}

/// A setting that could not be read. The message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An environment variable is set but does not parse.
    #[error("environment variable {name}={value:?} is not valid: {reason}")]
    Invalid {
        /// The variable's name.
        name: String,
        /// What it was set to.
        value: String,
        /// Why it does not parse.
        reason: String,
    },
    /// An environment variable is set but is not UTF-8.
    #[error("environment variable {name} is not valid UTF-8")]
    NotUnicode {
        /// The variable's name.
        name: String,
    },
    /// clap rejected the environment (its message names the variable).
    #[error("{0}")]
    Clap(String),
}

/// Hides the password of a URL (`mysql://lab:***@host`), for logs and
/// error messages: a URL is configuration, its password is a secret.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// `url` with its database (the path) replaced by `database`:
/// `mysql://lab:lab@127.0.0.1:13306/lab` becomes `.../t_123`.
pub fn with_database(url: &str, database: &str) -> String {
    let (before_query, query) = url
        .split_once('?')
        .map_or((url, None), |(a, q)| (a, Some(q)));
    let scheme_end = before_query.find("://").map_or(0, |i| i + 3);
    let server = match before_query[scheme_end..].find('/') {
        Some(slash) => &before_query[..scheme_end + slash],
        None => before_query,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
}

/// Reads `name` from the environment and parses it, or returns `default`
/// when it is unset. For the few settings that are not flags (test scale,
/// bench sizes); the error names the variable and the bad value.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(value) => value
            .trim()
            .parse()
            .map_err(|e: T::Err| ConfigError::Invalid {
                name: name.to_owned(),
                value,
                reason: e.to_string(),
            }),
        Err(std::env::VarError::NotPresent) => Ok(default),
        Err(std::env::VarError::NotUnicode(_)) => Err(ConfigError::NotUnicode {
            name: name.to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_point_at_the_lab_stack() {
        // Only meaningful when the variables are unset, which is how CI runs.
        if std::env::var_os("REDIS_URL").is_none() {
            let c = StackConfig::from_env().unwrap();
            assert_eq!(c.redis_url, defaults::REDIS_URL);
            assert!(c.mariadb_replica_url.contains(":13307/"));
        }
    }

    #[test]
    fn a_url_gets_another_database() {
        assert_eq!(
            with_database("mysql://lab:lab@127.0.0.1:13306/lab", "t_1"),
            "mysql://lab:lab@127.0.0.1:13306/t_1"
        );
        assert_eq!(with_database("mysql://h:1", "d"), "mysql://h:1/d");
        assert_eq!(
            with_database("mysql://h:1/x?ssl-mode=disabled", "d"),
            "mysql://h:1/d?ssl-mode=disabled"
        );
    }

    #[test]
    #[allow(unsafe_code)]
    fn env_or_names_the_variable_that_failed() {
        // A variable name no one else uses, so parallel tests do not race.
        let name = "COMMON_TEST_ENV_OR_BAD_NUMBER";
        // SAFETY: set_var is unsafe because another thread may read the
        // environment at the same time; this variable is read by no one else.
        unsafe { std::env::set_var(name, "twelve") };
        let err = env_or::<u32>(name, 3).unwrap_err().to_string();
        assert!(err.contains(name), "{err}");
        assert!(err.contains("twelve"), "{err}");
        assert_eq!(env_or::<u32>("COMMON_TEST_ENV_OR_UNSET", 7).unwrap(), 7);
    }
}
