//! Memcached through the memcache crate's async meta-protocol client.
//!
//! **Which client, and why.** memcache 0.21 has two. The classic `Client`
//! is synchronous: every call blocks a tokio worker thread, and its r2d2
//! pool (one connection by default) sends `version` on every checkout,
//! about 176 µs per operation on the lab machine, 43 µs with the ASCII
//! protocol and `test_on_check_out(false)`. Its experimental
//! `memcache::exp::AsyncMetaClient` (feature `tokio`) is native async, keeps
//! a pool of idle connections without probing them, pipelines a batch of
//! commands in one write (the multi-get), puts one deadline on each
//! exchange, and speaks the meta protocol (`mg`/`ms`/`md`), whose `ms ... I`
//! mode gives the atomic `add` a lease needs. It does get, set, add,
//! delete and multi-get, so it is the one used here (35 µs per operation
//! measured in the notes). Being `exp`, its API may change: it is pinned
//! by the workspace's `Cargo.lock`.
//!
//! We use its protocol layer (raw bytes in and out), not its high-level
//! `AsyncMemcache`, whose `fetch` has leases of its own: the stampede
//! strategies are the lesson, so they are written out in
//! [`crate::stampede`] over the six operations of the trait, the same for
//! both backends.
//!
//! The client base64-encodes keys it finds unsafe; ours never are
//! ([`Key`]), so what is on the wire is the readable key.
//!
//! **Concurrent gets and sets are coalesced.** The pool gives each
//! concurrent call a connection and an exchange of its own, where redis-rs
//! multiplexes every caller over one connection: at 16 and 64 concurrent
//! callers that made Memcached's get p50 2.4x and 4.2x Redis's. So
//! [`Memcached::get`] does not talk to the server itself: it queues its
//! key on one of [`LANES`] batching tasks, which serve whatever is queued
//! with one pipelined multi-get (the lesson is in `backend/coalesce.rs`).
//! `set` does the same with lanes of its own (pipelined `ms` commands).
//! A caller alone (no other call under way) skips the lanes and is served
//! in its own task, with no hop (see `backend/coalesce.rs`). `get_many`, `add`, `delete` and `delete_many` talk to the server
//! directly: the first two are one exchange already, and `add` (the lease)
//! and `delete` (the invalidation) are rare beside gets and sets.

use std::sync::Arc;
use std::time::Duration;

use memcache::exp::{AsyncMetaClient, Delete, Get, MutationResult, Set, Ttl};

use super::coalesce::{Answer, BatchFn, Coalescer};
use super::{BoxFuture, CacheBackend, CacheError, Limits, check_prefix};
use crate::key::Key;

/// Batching tasks behind [`Memcached::get`] (and as many behind `set`):
/// each has one batch in flight at a time, so this many exchanges run at
/// once, however many callers there are.
const LANES: usize = 2;

/// The most commands one coalesced batch holds.
const BATCH_MAX: usize = 64;

/// A Memcached server (or several: keys are spread by rendezvous hashing).
#[derive(Clone)]
pub struct Memcached {
    client: AsyncMetaClient,
    /// The lanes serving `get`, shared by the clones; they end when the
    /// last clone is dropped.
    gets: Arc<Coalescer<String, Option<Vec<u8>>>>,
    /// The lanes serving `set`, likewise.
    sets: Arc<Coalescer<Set, ()>>,
    /// Put in front of every key: lets tests (and several apps) share one
    /// server without seeing each other's keys.
    prefix: String,
    limits: Limits,
}

impl Memcached {
    /// A client for `url` (`memcache://host:port[,host:port...][?...]`, the
    /// form of `MEMCACHED_URL`; the query, `?protocol=ascii` for the
    /// classic client, is ignored: this client speaks the meta protocol).
    ///
    /// Resolves the addresses but does not connect: a server that is down
    /// now is a miss per operation, and is used as soon as it is back.
    pub async fn connect(url: &str, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        check_prefix(prefix)?;
        let addrs = parse_url(url)?;
        let client = AsyncMetaClient::builder()
            .connect_timeout(Some(timeout))
            .io_timeout(Some(timeout))
            // Idle connections kept for reuse: enough for the concurrency
            // of one clone under the lab's load, so a burst does not dial.
            .max_idle(64)
            .connect_multiple_async(addrs.iter().map(String::as_str))
            .await
            .map_err(|e| CacheError::Config(format!("memcached at {url}: {e}")))?;
        let limits = Limits::new(timeout);
        let gets = Arc::new(Coalescer::spawn(
            LANES,
            BATCH_MAX,
            batch_get(client.clone(), limits),
        ));
        let sets = Arc::new(Coalescer::spawn(
            LANES,
            BATCH_MAX,
            batch_set(client.clone(), limits),
        ));
        Ok(Memcached {
            client,
            gets,
            sets,
            prefix: prefix.to_owned(),
            limits,
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

    fn error(&self, e: memcache::exp::Error) -> CacheError {
        error(e, self.limits.timeout)
    }

    /// One get on a connection of its own, not coalesced.
    async fn get_alone(&self, wire: String) -> Result<Option<Vec<u8>>, CacheError> {
        let result = self
            .client
            .get(wire)
            .send()
            .await
            .map_err(|e| self.error(e))?;
        Ok(if result.hit() { result.value } else { None })
    }

    /// One set on a connection of its own, not coalesced.
    async fn set_alone(&self, op: Set) -> Result<(), CacheError> {
        let timeout = self.limits.timeout;
        let mut results = self
            .client
            .run_many([op])
            .await
            .map_err(|e| error(e, timeout))?;
        match results.pop() {
            Some(r) => stored(r, timeout),
            None => Err(CacheError::Unavailable(
                "a set came back unanswered".to_owned(),
            )),
        }
    }
}

/// A set's result: stored, or why not.
fn stored(r: Result<MutationResult, memcache::exp::Error>, timeout: Duration) -> Answer<()> {
    let r = r.map_err(|e| error(e, timeout))?;
    if r.applied() {
        Ok(())
    } else {
        Err(CacheError::Unavailable(format!(
            "set not stored: {:?}",
            r.status
        )))
    }
}

/// What a set lane runs: the queued sets in one pipelined exchange, under
/// the deadline of a call.
fn batch_set(client: AsyncMetaClient, limits: Limits) -> BatchFn<Set, ()> {
    Arc::new(move |sets: Vec<Set>| {
        let client = client.clone();
        Box::pin(async move {
            let timeout = limits.timeout;
            let results = limits
                .bounded(async { client.run_many(sets).await.map_err(|e| error(e, timeout)) })
                .await?;
            Ok(results.into_iter().map(|r| stored(r, timeout)).collect())
        })
    })
}

fn error(e: memcache::exp::Error, timeout: Duration) -> CacheError {
    match e {
        memcache::exp::Error::Timeout { .. } => CacheError::Timeout(timeout),
        memcache::exp::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => {
            CacheError::Timeout(timeout)
        }
        other => CacheError::Unavailable(other.to_string()),
    }
}

/// What a get lane runs: the queued keys (already prefixed) in one
/// pipelined multi-get, under the same deadline as a call, so a stuck
/// batch does not hold the lane's queue longer than a caller waits.
fn batch_get(client: AsyncMetaClient, limits: Limits) -> BatchFn<String, Option<Vec<u8>>> {
    Arc::new(move |keys: Vec<String>| {
        let client = client.clone();
        Box::pin(async move {
            let results = limits
                .bounded(async {
                    client
                        .run_many(keys.into_iter().map(Get::new))
                        .await
                        .map_err(|e| error(e, limits.timeout))
                })
                .await?;
            Ok(results
                .into_iter()
                .map(|r| -> Answer<Option<Vec<u8>>> {
                    let r = r.map_err(|e| error(e, limits.timeout))?;
                    Ok(if r.hit() { r.value } else { None })
                })
                .collect())
        })
    })
}

/// Memcached expires items by the second: a TTL under a second is rounded
/// up to one (zero would mean "never").
fn wire_ttl(ttl: Duration) -> Ttl {
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    Ttl::secs(secs.clamp(1, u64::from(u32::MAX)) as u32)
}

/// `memcache://a:1,b:2?x` -> `["a:1", "b:2"]`.
fn parse_url(url: &str) -> Result<Vec<String>, CacheError> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let hosts = rest.split(['?', '/']).next().unwrap_or("");
    let addrs: Vec<String> = hosts
        .split(',')
        .filter(|h| !h.is_empty())
        .map(str::to_owned)
        .collect();
    if addrs.is_empty() {
        return Err(CacheError::Config(format!(
            "no memcached address in {url:?} (expected memcache://host:port)"
        )));
    }
    Ok(addrs)
}

impl CacheBackend for Memcached {
    fn name(&self) -> &'static str {
        "memcached"
    }

    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(self.limits.bounded(async move {
            match self.gets.call(self.wire(key)).await {
                Ok(answer) => answer,
                // The lanes' runtime is gone: serve it here.
                Err(wire) => self.get_alone(wire).await,
            }
        }))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        Box::pin(self.limits.bounded(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            // One pipelined write of `mg` commands per server, answers
            // matched back by opaque tokens: one round trip.
            let results = self
                .client
                .run_many(keys.iter().map(|k| Get::new(self.wire(k))))
                .await
                .map_err(|e| self.error(e))?;
            results
                .into_iter()
                .map(|r| -> Result<Option<Vec<u8>>, CacheError> {
                    let r = r.map_err(|e| self.error(e))?;
                    Ok(if r.hit() { r.value } else { None })
                })
                .collect::<Result<Vec<_>, CacheError>>()
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
            let op = Set::new(self.wire(key), value).ttl(wire_ttl(ttl));
            match self.sets.call(op).await {
                Ok(answer) => answer,
                // The lanes' runtime is gone: store it here.
                Err(op) => self.set_alone(op).await,
            }
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
            let result = self
                .client
                .set(self.wire(key), value)
                .ttl(wire_ttl(ttl))
                .add()
                .send()
                .await
                .map_err(|e| self.error(e))?;
            Ok(result.applied())
        }))
    }

    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(self.limits.bounded(async move {
            // `NotFound` is fine: the key is gone either way.
            self.client
                .delete(self.wire(key))
                .send()
                .await
                .map_err(|e| self.error(e))?;
            Ok(())
        }))
    }

    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(self.limits.bounded(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let results = self
                .client
                .run_many(keys.iter().map(|k| Delete::new(self.wire(k))))
                .await
                .map_err(|e| self.error(e))?;
            for r in results {
                r.map_err(|e| self.error(e))?;
            }
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_of_the_stack_config_parse() {
        assert_eq!(
            parse_url("memcache://127.0.0.1:11311?protocol=ascii").unwrap(),
            ["127.0.0.1:11311"]
        );
        assert_eq!(parse_url("memcache://a:1,b:2").unwrap(), ["a:1", "b:2"]);
        assert_eq!(parse_url("127.0.0.1:11211").unwrap(), ["127.0.0.1:11211"]);
        assert!(parse_url("memcache://").is_err());
    }

    #[test]
    fn ttls_round_up_to_whole_seconds() {
        assert_eq!(wire_ttl(Duration::from_millis(1)), Ttl::secs(1));
        assert_eq!(wire_ttl(Duration::from_millis(1500)), Ttl::secs(2));
        assert_eq!(wire_ttl(Duration::from_secs(300)), Ttl::secs(300));
        assert_eq!(wire_ttl(Duration::ZERO), Ttl::secs(1));
    }
}
