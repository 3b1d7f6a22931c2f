//! Redis through redis-rs's `ConnectionManager`.
//!
//! One multiplexed connection per clone: requests from every task are
//! pipelined on it, and it reconnects by itself after Redis restarts.
//! `MGET` is the multi-get, `SET NX PX` the atomic add, `DEL` takes many
//! keys at once.
//!
//! The manager's default response timeout is 500 ms and it retries a
//! failed connect six times with backoff: fine for a session store, far
//! too long for a cache in front of a database. Here the response and
//! connect timeouts are the cache's deadline, with one retry, so a Redis
//! that is down costs each request at most that deadline (and a refused
//! connect much less), and the manager keeps reconnecting in the
//! background until it is back.

use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{BoxFuture, CacheBackend, CacheError, Limits, check_prefix};
use crate::key::Key;

/// A Redis server used as a cache.
#[derive(Clone)]
pub struct RedisCache {
    conn: ConnectionManager,
    /// Put in front of every key (tests use a unique one).
    prefix: String,
    limits: Limits,
}

impl RedisCache {
    /// A client for `url` (`redis://host:port[/db]`, the form of
    /// `REDIS_URL`). Does not connect yet: a Redis that is down now is a
    /// miss per operation, and is used as soon as it is back.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        check_prefix(prefix)?;
        let client = ::redis::Client::open(url)
            .map_err(|e| CacheError::Config(format!("redis at {url}: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(timeout))
            .set_connection_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(timeout);
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| CacheError::Config(format!("redis at {url}: {e}")))?;
        Ok(RedisCache {
            conn,
            prefix: prefix.to_owned(),
            limits: Limits::new(timeout),
        })
    }

    /// Sets the largest value cached (default
    /// [`DEFAULT_MAX_VALUE_BYTES`](super::DEFAULT_MAX_VALUE_BYTES)).
    pub fn with_max_value_bytes(mut self, max: usize) -> Self {
        self.limits.max_value_bytes = max;
        self
    }

    fn wire(&self, key: &Key) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }

    async fn query<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Result<T, CacheError> {
        let mut conn = self.conn.clone();
        cmd.query_async(&mut conn).await.map_err(|e| {
            if e.is_timeout() {
                CacheError::Timeout(self.limits.timeout)
            } else {
                CacheError::Unavailable(e.to_string())
            }
        })
    }
}

/// Redis expires by the millisecond; zero would be an error.
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl CacheBackend for RedisCache {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(self.limits.bounded(async move {
            let mut cmd = ::redis::cmd("GET");
            cmd.arg(self.wire(key));
            self.query::<Option<Vec<u8>>>(&cmd).await
        }))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        Box::pin(self.limits.bounded(async move {
            if keys.is_empty() {
                return Ok(Vec::new()); // MGET with no key is an error
            }
            let mut cmd = ::redis::cmd("MGET");
            for key in keys {
                cmd.arg(self.wire(key));
            }
            self.query::<Vec<Option<Vec<u8>>>>(&cmd).await
        }))
    }

    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(self.limits.bounded(async move {
            self.limits.check_size(value)?;
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(self.wire(key))
                .arg(value)
                .arg("PX")
                .arg(millis(ttl));
            self.query::<()>(&cmd).await
        }))
    }

    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, CacheError>> {
        Box::pin(self.limits.bounded(async move {
            self.limits.check_size(value)?;
            let mut cmd = ::redis::cmd("SET");
            cmd.arg(self.wire(key))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(millis(ttl));
            // `OK` when stored, nil when the key already held something.
            let stored = self.query::<Option<String>>(&cmd).await?;
            Ok(stored.is_some())
        }))
    }

    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(self.limits.bounded(async move {
            let mut cmd = ::redis::cmd("DEL");
            cmd.arg(self.wire(key));
            self.query::<()>(&cmd).await
        }))
    }

    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(self.limits.bounded(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let mut cmd = ::redis::cmd("DEL");
            for key in keys {
                cmd.arg(self.wire(key));
            }
            self.query::<()>(&cmd).await
        }))
    }
}
