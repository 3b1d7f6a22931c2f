//! # Part 3: Cache
//!
//! > Even with a scalable database, pages that fetch a lot of data are
//! > slow. Put an in-memory cache (Memcached or Redis) between the app and
//! > the database, never a file cache on a clone's disk. Cache assembled
//! > objects, not hashed queries: an object can be deleted when it
//! > changes, a query result cannot be found. Cache sessions, fully
//! > rendered articles, activity streams, the friend graph.
//!
//! `part3-server` is part 2's server plus a cache, shared by every clone.
//! Every cached read says what the cache did: `X-Cache: hit`, `miss` or
//! `bypass` (the cache was off, down or slow: served from the database).
//!
//! - `--cache query`, the anti-pattern: the key is the hash of the SQL and
//!   its parameters. A comment lands, the cached page does not know: it
//!   serves the old comment count until its TTL.
//! - `--cache object`, the fix (the default): the key names the object
//!   (`article:42`), and every write deletes what it changed after it
//!   commits. The next read, through any clone, misses and sees the write.
//!
//! The guide, with a curl walk-through a learner can type (miss, hit,
//! write, stale under `query`, fresh under `object`), is
//! `docs/part3-cache.md`. Run it: `./lab up part3`, then `curl -si
//! localhost:18080/articles/1 | grep -i x-cache` twice: `miss`, then `hit`.
//!
//! ## Reading order
//!
//! 1. [`key`]: keys that never carry raw user text onto the wire.
//! 2. [`backend`]: one trait, Memcached and Redis behind it, every call
//!    with a short timeout and a size bound.
//! 3. [`stampede`]: the read-through, what a hundred readers of one missing
//!    object do (single-flight, a lease, XFetch), and the fill guard that
//!    stops a slow read from storing an object a write just replaced.
//! 4. [`server`]: part 2's server with the cache in front of its pages;
//!    [`server::cache`] is the read and the invalidation after commit,
//!    [`server::feed`] the activity stream merged from the site-wide
//!    window (`latest:site`) or per-author objects (a post deletes two
//!    objects, whoever the author), [`server::graph`] the friend graph as
//!    Redis sets (mutual friends by `SINTER`).
//! 5. [`render`]: the article as a fully rendered, escaped HTML page.
//! 6. [`sessions`]: sessions in Memcached, to show why part 1 put them in
//!    Redis (a restart or an eviction logs users out).
//! 7. [`demo`]: the eleven experiments, each measured (`./lab tour part3`).
//!
//! ## Configuration
//!
//! `part3-server` takes every flag and variable of part 2's server, plus
//! `CACHE` (`--cache`, `object`), `CACHE_BACKEND` (`--cache-backend`,
//! `memcached`; `redis`, or `file`: the anti-pattern, a directory per
//! clone, `CACHE_FILE_DIR` (a directory per clone under the temp dir) and
//! `CACHE_FILE_MAX_BYTES` (`268435456`)), `CACHE_TTL_SECS` (`300`), `CACHE_JITTER` (`0.1`),
//! `STAMPEDE` (`lease`), `CACHE_TIMEOUT_MS` (`50`) and
//! `CACHE_MAX_VALUE_BYTES` (`524288`); the cache servers are the stack's
//! `MEMCACHED_URL` and `REDIS_URL`.

pub mod backend;
pub mod demo;
pub mod key;
pub mod pattern;
pub mod render;
pub mod server;
pub mod sessions;
pub mod stampede;

/// The part's number.
pub const PART: u8 = 3;
/// The part's title.
pub const TITLE: &str = "Cache";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "Put an in-memory cache between the application and the database. Cache assembled objects, not hashed queries, because an object can be invalidated when it changes: sessions, fully rendered articles, activity streams, friend graphs.";
