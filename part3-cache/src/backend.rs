//! One cache, two servers: Memcached and Redis behind one trait.
//!
//! The article names both: Memcached "just caches, and scales", Redis adds
//! persistence and data structures. For the object cache they do the same
//! six things, so [`CacheBackend`] has those six, and
//! `--cache-backend memcached|redis` picks [`Memcached`] or [`RedisCache`]
//! at start. Tests and benches put the two side by side on the same calls.
//!
//! Two rules hold for both, and they are what makes a cache safe to put in
//! front of a database:
//!
//! - **A cache failure is a miss, never a failed request.** Every operation
//!   has a short deadline ([`DEFAULT_TIMEOUT`], `CACHE_TIMEOUT_MS`); past
//!   it, or when the server is down, the operation returns a
//!   [`CacheError`] and the caller reads the database instead. Connecting
//!   is lazy for the same reason: a clone starts while the cache is down
//!   and uses it as soon as it is back.
//! - **Values are bounded** ([`DEFAULT_MAX_VALUE_BYTES`],
//!   `CACHE_MAX_VALUE_BYTES`): a larger value is not cached
//!   ([`CacheError::TooLarge`]) and the request is still served. One huge
//!   object must not evict thousands of small ones, nor hit memcached's
//!   item size limit (1 MiB by default) as an error at run time.
//!
//! Keys are [`Key`]s, safe by construction; each backend puts its prefix
//! (given at construction: tests use a unique one) in front of them.
//!
//! A third implementation, [`FileCache`] (`--cache-backend file`), is the
//! anti-pattern the article warns about: a cache in files on each clone's
//! own disk. It keeps the same rules, and it is wrong anyway: a write
//! through one clone deletes that clone's copy only (see `backend/file.rs`).

mod coalesce;
mod file;
mod memcached;
mod redis;

use std::time::Duration;

pub use self::file::{DEFAULT_MAX_DIR_BYTES, FileCache};
pub use self::memcached::Memcached;
pub use self::redis::RedisCache;
use crate::key::Key;

/// A boxed future, so the trait is object-safe (`Arc<dyn CacheBackend>`).
pub type BoxFuture<'a, T> = futures::future::BoxFuture<'a, T>;

/// How long an operation may take before it counts as a miss
/// (`CACHE_TIMEOUT_MS`). A cache hit on loopback takes well under a
/// millisecond; 50 ms is generous for a healthy server and still short
/// beside the database read it replaces.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// The largest value cached (`CACHE_MAX_VALUE_BYTES`): 512 KiB, half of
/// memcached's default item size limit.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 512 * 1024;

/// What can go wrong talking to the cache. Callers treat every variant the
/// same way: serve from the database (`X-Cache: bypass`) and log it.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The server refused, dropped the connection or answered an error.
    #[error("cache unavailable: {0}")]
    Unavailable(String),
    /// No answer within the deadline.
    #[error("cache did not answer within {0:?}")]
    Timeout(Duration),
    /// The value is over the bound, so it was not cached.
    #[error("value of {size} bytes is over the cache bound of {max} bytes: not cached")]
    TooLarge {
        /// The value's size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// A URL or prefix that cannot work; found at start, not per request.
    #[error("cache configuration: {0}")]
    Config(String),
}

/// A cache server, as the object cache uses it.
pub trait CacheBackend: Send + Sync + 'static {
    /// `"memcached"`, `"redis"` or `"file"`, as the flag spells it.
    fn name(&self) -> &'static str;

    /// The value under `key`, or `None` on a miss.
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>>;

    /// The values under `keys`, in order, in ONE round trip (memcached: the
    /// meta commands pipelined; Redis: `MGET`). The feed reads a few
    /// hundred objects this way instead of a few hundred round trips.
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>>;

    /// Stores `value` under `key` for `ttl`.
    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>>;

    /// Stores `value` only if `key` holds nothing; `true` if it was stored.
    /// Atomic on the server, so one caller in all wins: the building block
    /// of locks and leases.
    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, CacheError>>;

    /// Removes `key` (no error if it was not there).
    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>>;

    /// Removes every key of `keys`, in one round trip.
    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>>;
}

/// The deadline and size bound every backend enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub timeout: Duration,
    pub max_value_bytes: usize,
}

impl Limits {
    pub fn new(timeout: Duration) -> Self {
        Limits {
            timeout,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }

    /// Runs `op` under the deadline.
    pub async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, CacheError>>,
    ) -> Result<T, CacheError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or(Err(CacheError::Timeout(self.timeout)))
    }

    /// `Err(TooLarge)` for a value over the bound, before anything is sent.
    pub fn check_size(&self, value: &[u8]) -> Result<(), CacheError> {
        if value.len() > self.max_value_bytes {
            Err(CacheError::TooLarge {
                size: value.len(),
                max: self.max_value_bytes,
            })
        } else {
            Ok(())
        }
    }
}

/// Checks a backend's key prefix (see [`crate::key::is_valid_prefix`]).
pub(crate) fn check_prefix(prefix: &str) -> Result<(), CacheError> {
    if crate::key::is_valid_prefix(prefix) {
        Ok(())
    } else {
        Err(CacheError::Config(format!(
            "key prefix {prefix:?} must be at most {} bytes of [A-Za-z0-9_:.-]",
            crate::key::MAX_PREFIX_BYTES
        )))
    }
}
