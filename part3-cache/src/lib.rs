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
//! 3. [`server`]: part 2's server with the cache in front of three pages;
//!    [`server::cache`] is the read-through and the invalidation after
//!    commit, [`server::feed`] the activity stream merged from per-author
//!    objects with one multi-get.
//! 4. [`render`]: the article as a fully rendered, escaped HTML page.
//!
//! The stampede protection (`--stampede`) and the measured experiments
//! (the demo) are the next steps of the issue; the flag is accepted and
//! printed already.
//!
//! ## Configuration
//!
//! `part3-server` takes every flag and variable of part 2's server, plus
//! `CACHE` (`--cache`, `object`), `CACHE_BACKEND` (`--cache-backend`,
//! `memcached`), `CACHE_TTL_SECS` (`300`), `CACHE_JITTER` (`0.1`),
//! `STAMPEDE` (`lease`), `CACHE_TIMEOUT_MS` (`50`) and
//! `CACHE_MAX_VALUE_BYTES` (`524288`); the cache servers are the stack's
//! `MEMCACHED_URL` and `REDIS_URL`.

pub mod backend;
pub mod demo;
pub mod key;
pub mod pattern;
pub mod render;
pub mod server;
pub mod stampede;

/// The part's number.
pub const PART: u8 = 3;
/// The part's title.
pub const TITLE: &str = "Cache";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "Put an in-memory cache between the application and the database. Cache assembled objects, not hashed queries, because an object can be invalidated when it changes: sessions, fully rendered articles, activity streams, friend graphs.";
