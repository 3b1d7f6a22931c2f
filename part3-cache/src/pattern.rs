//! The two caching patterns of the article, as one trait.
//!
//! **Cached queries** ([`QueryCache`]): the key is a hash of the SQL text
//! and its parameters. It is easy to add (wrap the database call) and hard
//! to invalidate: one changed row may sit inside many cached results, and
//! nothing maps a row back to the hashes of the queries that returned it.
//! So a write can only wait for the TTL (stale reads until then), or flush
//! every cached query (`flush_all_on_write`: correct, and the hit ratio
//! collapses under writes).
//!
//! **Cached objects** ([`ObjectCache`]): the key is the object's kind and
//! id (`article:42`), the value the assembled object. A write knows which
//! objects it changed, so it deletes exactly those, after it commits, and
//! the next read rebuilds them. This is the article's recommendation.
//!
//! Both implement [`CachePattern`], picked by `--cache query|object`, so
//! the server's read and write paths are the same code for both and the
//! demo compares them on the same load.

use std::time::Duration;

use rand::SeedableRng;

use crate::backend::{BoxFuture, CacheError};
use crate::key::{Key, sha256_hex};
use crate::stampede::ReadThrough;

/// One read, described both ways: the object it assembles and the SQL
/// that loads it. Each pattern keys it by the half it understands.
#[derive(Debug, Clone, Copy)]
pub struct Read<'a> {
    /// The object: its kind (a key namespace, `[a-z0-9_:]+`) and id.
    pub object: ObjectRef<'a>,
    /// The SQL text of the query that loads it (the main one, if several).
    pub sql: &'a str,
    /// The query's parameters, as text.
    pub params: &'a [&'a str],
}

/// An object by kind and id: `("article", "42")`, `("friends", "ann")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectRef<'a> {
    /// The kind: a key namespace written in the code.
    pub kind: &'static str,
    /// The id, from the request or the database (hashed if not a token).
    pub id: &'a str,
}

impl<'a> ObjectRef<'a> {
    /// `kind` and `id`.
    pub fn new(kind: &'static str, id: &'a str) -> Self {
        ObjectRef { kind, id }
    }

    /// The object's key: `kind:id`.
    pub fn key(&self) -> Key {
        Key::new(self.kind, &[self.id])
    }
}

/// A way of caching reads: how a read is keyed, and what a write
/// invalidates.
pub trait CachePattern: Send + Sync + 'static {
    /// `"query"` or `"object"`, as the flag spells it.
    fn name(&self) -> &'static str;

    /// The key `read` is cached under.
    fn key<'a>(&'a self, cache: &'a ReadThrough, read: &'a Read<'a>) -> BoxFuture<'a, Key>;

    /// The key `read` is cached under, or `None` if the cache cannot say
    /// (its generation could not be read): the read then bypasses the
    /// cache. What the server uses. By default, [`CachePattern::key`].
    fn try_key<'a>(
        &'a self,
        cache: &'a ReadThrough,
        read: &'a Read<'a>,
    ) -> BoxFuture<'a, Option<Key>> {
        Box::pin(async move { Some(self.key(cache, read).await) })
    }

    /// Invalidates what a committed write changed (`changed`: the objects
    /// it touched). Call it after the commit: before, a concurrent read
    /// could cache the old row again.
    fn invalidate<'a>(
        &'a self,
        cache: &'a ReadThrough,
        changed: &'a [ObjectRef<'a>],
    ) -> BoxFuture<'a, Result<(), CacheError>>;
}

/// Cached queries: key = SHA-256 of the SQL and its parameters.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryCache {
    /// On every write, make every cached query unreachable (a new
    /// generation); otherwise writes invalidate nothing and results stay
    /// stale until their TTL.
    pub flush_all_on_write: bool,
}

/// Where the query cache keeps its generation (only with
/// `flush_all_on_write`).
const GENERATION: &str = "query:generation";
/// How long a generation lives: longer than any cached query.
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

impl QueryCache {
    /// The key of `sql` with `params`, in generation `generation`.
    pub fn query_key(generation: &str, sql: &str, params: &[&str]) -> Key {
        // Length-prefixed, so ("a", "bc") and ("ab", "c") differ.
        let mut bytes = Vec::with_capacity(sql.len() + 64);
        for text in std::iter::once(sql).chain(params.iter().copied()) {
            bytes.extend_from_slice(&(text.len() as u64).to_le_bytes());
            bytes.extend_from_slice(text.as_bytes());
        }
        Key::new("query", &[generation, &sha256_hex(&bytes)])
    }

    /// The current generation: `0` without `flush_all_on_write` (it never
    /// changes); with it, the token in the cache, or a new random one if
    /// there is none (before the first flush, or evicted: memcached's LRU
    /// drops a small, rarely written key like any other), created with
    /// `add` so concurrent readers agree on one. Never an old generation
    /// again (not `0`), where results stored before a flush may still
    /// live. `None` if the cache cannot say (an error, a timeout): the
    /// read bypasses.
    async fn generation(&self, cache: &ReadThrough) -> Option<String> {
        if !self.flush_all_on_write {
            return Some("0".to_owned());
        }
        let backend = cache.backend();
        let key = Key::new(GENERATION, &[]);
        for _ in 0..2 {
            match backend.get(&key).await {
                Ok(Some(token)) => return String::from_utf8(token).ok(),
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "query generation unknown: bypass");
                    return None;
                }
            }
            let token = new_generation();
            match backend.add(&key, token.as_bytes(), GENERATION_TTL).await {
                Ok(true) => return Some(token),
                Ok(false) => continue, // another reader started one: read it
                Err(e) => {
                    tracing::debug!(error = %e, "query generation unknown: bypass");
                    return None;
                }
            }
        }
        None
    }
}

/// A fresh generation token: 16 random hex digits (never `0`'s key space).
fn new_generation() -> String {
    let token: u64 = rand::Rng::random(&mut rand::rngs::StdRng::from_os_rng());
    format!("{token:016x}")
}

impl CachePattern for QueryCache {
    fn name(&self) -> &'static str {
        "query"
    }

    fn key<'a>(&'a self, cache: &'a ReadThrough, read: &'a Read<'a>) -> BoxFuture<'a, Key> {
        Box::pin(async move {
            // If the cache cannot name the generation, a throwaway one: a
            // key nothing was ever stored under (a miss, never a stale
            // hit). The server uses `try_key` and bypasses instead.
            let generation = self.generation(cache).await.unwrap_or_else(new_generation);
            QueryCache::query_key(&generation, read.sql, read.params)
        })
    }

    fn try_key<'a>(
        &'a self,
        cache: &'a ReadThrough,
        read: &'a Read<'a>,
    ) -> BoxFuture<'a, Option<Key>> {
        Box::pin(async move {
            // Simplified: with flush_all_on_write every read pays one more
            // round trip for the generation. Production would fetch it with
            // the value (a multi-get) or keep it briefly in process memory.
            let generation = self.generation(cache).await?;
            Some(QueryCache::query_key(&generation, read.sql, read.params))
        })
    }

    fn invalidate<'a>(
        &'a self,
        cache: &'a ReadThrough,
        _changed: &'a [ObjectRef<'a>],
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            if !self.flush_all_on_write {
                // The anti-pattern: nothing maps the changed rows to the
                // hashed queries that hold them. Stale until the TTL.
                return Ok(());
            }
            // Flush everything of ours, without memcached's `flush_all`
            // (which would also drop sessions and every other app's keys):
            // a new generation makes every old query key unreachable; the
            // old entries age out by TTL and LRU.
            let token = new_generation();
            cache
                .backend()
                .set(&Key::new(GENERATION, &[]), token.as_bytes(), GENERATION_TTL)
                .await
        })
    }
}

/// Cached objects: key = kind and id; a write deletes what it changed.
#[derive(Debug, Clone, Copy, Default)]
pub struct ObjectCache;

impl CachePattern for ObjectCache {
    fn name(&self) -> &'static str {
        "object"
    }

    fn key<'a>(&'a self, _cache: &'a ReadThrough, read: &'a Read<'a>) -> BoxFuture<'a, Key> {
        Box::pin(async move { read.object.key() })
    }

    fn invalidate<'a>(
        &'a self,
        cache: &'a ReadThrough,
        changed: &'a [ObjectRef<'a>],
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let keys: Vec<Key> = changed.iter().map(ObjectRef::key).collect();
            cache.invalidate(&keys).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SQL: &str = "SELECT * FROM articles WHERE id = ?";

    #[test]
    fn the_same_query_gets_the_same_key() {
        assert_eq!(
            QueryCache::query_key("0", SQL, &["42"]),
            QueryCache::query_key("0", SQL, &["42"])
        );
    }

    #[test]
    fn parameters_and_generations_change_the_key() {
        let base = QueryCache::query_key("0", SQL, &["42"]);
        assert_ne!(QueryCache::query_key("0", SQL, &["43"]), base);
        assert_ne!(QueryCache::query_key("1", SQL, &["42"]), base);
        assert_ne!(
            QueryCache::query_key("0", &SQL.to_lowercase(), &["42"]),
            base
        );
    }

    #[test]
    fn parameter_boundaries_are_part_of_the_key() {
        assert_ne!(
            QueryCache::query_key("0", SQL, &["a", "bc"]),
            QueryCache::query_key("0", SQL, &["ab", "c"])
        );
        assert_ne!(
            QueryCache::query_key("0", "SELECT ?", &["1"]),
            QueryCache::query_key("0", "SELECT ?1", &[])
        );
    }

    #[test]
    fn query_keys_are_hashes_object_keys_are_readable() {
        let query = QueryCache::query_key("0", SQL, &["42"]);
        assert!(query.as_str().starts_with("query:0:"));
        assert_eq!(query.as_str().len(), "query:0:".len() + 64);
        assert_eq!(ObjectRef::new("article", "42").key().as_str(), "article:42");
        assert_eq!(
            ObjectRef::new("friends", "ann smith").key().as_str(),
            format!("friends:#{}", sha256_hex(b"ann smith"))
        );
    }
}
