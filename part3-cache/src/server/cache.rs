//! The cache as the server uses it: read-through with `X-Cache`, the two
//! patterns (`--cache query|object`), and invalidation after commit.
//!
//! A read asks the cache first. A hit is served as stored. A miss loads
//! from the database and stores the result for the TTL (with jitter, so
//! objects stored together do not all expire together). A cache that
//! errs or does not answer within `CACHE_TIMEOUT_MS` is a *bypass*: the
//! read is served from the database (which one: below), and nothing is
//! stored. The cache makes reads cheaper; it is never the reason a read
//! fails.
//!
//! **Which database a load reads.** A fill that will be stored reads the
//! primary. Read from a lagging replica just after a write deleted the
//! object, a miss would store the old object, and every reader on every
//! clone would get it until the TTL. (A narrower window remains: a load
//! that read the primary just *before* a write committed and stores just
//! *after* the write deleted the key: the stale-set race, closed by the
//! `{key}:written` marker, see [`crate::stampede`].) If the primary does
//! not answer, the read goes where part 2's policy sends it and nothing is
//! stored.
//!
//! Under `--cache none` nothing is ever stored, so every load reads as
//! part 2 reads ([`DataLayer::read`](part2_database::server::DataLayer::read):
//! a replica, or the primary for a viewer pinned by a recent write): the
//! baseline is part 2's real server, replicas included. A *bypass* under
//! `query`/`object` (the cache is down, slow, or cannot name the key) is
//! different, and simplified: it still reads the primary, for correctness
//! (the same loader as a fill); part 2's replicas keep serving every route
//! the cache does not front.
//!
//! **The two patterns.** Under `query` the key is the hash of the SQL and
//! its parameters ([`QueryCache`](crate::pattern::QueryCache)): nothing the write knows (an article id)
//! names it, so writes cannot delete it and the cache serves the old result
//! until the TTL (the stale reads the guide shows). Under `object` the key
//! names the object (`article:42`), and [`Cache::invalidate`] deletes what
//! a committed write changed. One trait, [`CachePattern`], two
//! implementations, picked by the flag.

use std::future::Future;
use std::time::Duration;

use part1_clones::error::ApiError;
use part2_database::server::Committed;

use crate::key::Key;
use crate::pattern::{CachePattern, ObjectRef, Read};
use crate::stampede::{Outcome, ReadThrough};

use super::CacheMode;

/// The server's cache: the read path (backend and stampede protection),
/// the pattern, and the TTL.
pub struct Cache {
    /// Which pattern, as the flag says.
    pub mode: CacheMode,
    /// Get, load on a miss under the stampede protection, store; `None`
    /// under `--cache none`.
    pub read_through: Option<ReadThrough>,
    /// How a read is keyed and what a write invalidates: the query pattern
    /// or the object pattern.
    pub pattern: Box<dyn CachePattern>,
    /// How long a value lives before it is loaded again (less a random
    /// jitter, so values stored together do not all expire together).
    pub ttl: Duration,
    /// The friend graph as Redis sets (`--cache object` only; always in
    /// Redis, whatever the backend: see [`super::graph`]).
    pub sets: Option<super::graph::FriendSets>,
}

/// Why a fill did not give a value to store.
enum Fill {
    /// The database answered, but not from the primary: serve, do not store.
    NotStored(Vec<u8>),
    /// The read failed (404 included).
    Failed(ApiError),
}

impl Cache {
    /// The key of `read` under this pattern; `None` under `--cache none`,
    /// or when the pattern cannot name it (the query pattern's generation
    /// is unreadable): the read bypasses.
    pub async fn key(&self, read: &Read<'_>) -> Option<Key> {
        let rt = self.read_through.as_ref()?;
        self.pattern.try_key(rt, read).await
    }

    /// Read-through: the value under `key`, else `load()`, stored if
    /// `load` says it may be (`false`: it could not read the primary).
    /// `key: None` (no cache for this read) loads and answers `bypass`, as
    /// does a cache that fails or does not answer in time.
    pub async fn bytes<F, Fut>(
        &self,
        key: Option<Key>,
        load: F,
    ) -> Result<(Vec<u8>, Outcome), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, bool), ApiError>>,
    {
        let answer = self.bytes_uncounted(key, load).await;
        if let Ok((_, outcome)) = &answer {
            // The live page's hit ratio: lab_cache_requests_total.
            let backend = self
                .read_through
                .as_ref()
                .map_or("none", |rt| rt.backend().name());
            metrics::counter!(common::metrics::CACHE_REQUESTS, "backend" => backend, "pattern" => self.mode.as_str(), "result" => outcome.as_str()).increment(1);
        }
        answer
    }

    async fn bytes_uncounted<F, Fut>(
        &self,
        key: Option<Key>,
        load: F,
    ) -> Result<(Vec<u8>, Outcome), ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, bool), ApiError>>,
    {
        let (Some(key), Some(rt)) = (key, self.read_through.as_ref()) else {
            return Ok((load().await?.0, Outcome::Bypass));
        };
        let got = rt
            .get_or_load(&key, self.ttl, || async {
                match load().await {
                    Ok((v, true)) => Ok(v),
                    Ok((v, false)) => Err(Fill::NotStored(v)),
                    Err(e) => Err(Fill::Failed(e)),
                }
            })
            .await;
        match got {
            Ok(answer) => Ok(answer),
            Err(Fill::NotStored(v)) => Ok((v, Outcome::Bypass)),
            Err(Fill::Failed(e)) => Err(e),
        }
    }

    /// Stores a value; a failure (down, slow, too large) is logged and
    /// forgotten: the next read is a miss again, nothing worse.
    pub async fn store(&self, key: &Key, value: &[u8]) {
        if let Some(rt) = &self.read_through
            && let Err(e) = rt.set(key, value, self.ttl).await
        {
            tracing::debug!(error = %e, key = %key, "not cached");
        }
    }

    /// After a write commits: the pattern invalidates what it changed. The
    /// object pattern deletes exactly those objects, in one round trip, so
    /// the cost is bounded by the write, not by its readers: a post
    /// deletes two objects (its author's recent articles and the site's
    /// window, see [`super::feed`]), not the feeds of the author's
    /// thousands of friends; a befriend deletes six, plus the two users'
    /// friend sets in Redis. The query pattern cannot tell
    /// which cached results hold the changed rows: it does nothing (stale
    /// until the TTL) or, with `--query-flush-on-write`, makes every cached
    /// query unreachable.
    ///
    /// If the cache cannot be reached the delete is lost and the object
    /// lives until its TTL. Production retries the delete (a queue, or
    /// memcached's mcrouter / Facebook's mcsqueal tailing the commit log).
    pub async fn invalidate(&self, what: Committed) {
        if let (Some(sets), Committed::Friends { a, b }) = (&self.sets, &what) {
            sets.forget(&[a.0, b.0]).await;
        }
        let Some(rt) = &self.read_through else { return };
        let changed = changed_by(&what);
        let refs: Vec<ObjectRef<'_>> = changed
            .iter()
            .map(|(kind, id)| ObjectRef::new(kind, id))
            .collect();
        if let Err(e) = self.pattern.invalidate(rt, &refs).await {
            tracing::warn!(error = %e, ?what, "invalidation failed: the objects live until their TTL");
        }
    }
}

/// The objects a committed write changes, as (kind, id).
pub fn changed_by(what: &Committed) -> Vec<(&'static str, String)> {
    match what {
        Committed::Post { author } => {
            vec![(RECENT, author.to_string()), (LATEST, SITE.to_owned())]
        }
        Committed::Article { id } => vec![
            (ARTICLE, id.to_string()),
            (PAGE, id.to_string()),
            (SUMMARY, id.to_string()),
        ],
        Committed::Friends { a, b } => vec![
            (FRIEND_IDS, a.0.to_string()),
            (FRIEND_IDS, b.0.to_string()),
            (FRIENDS, a.1.clone()),
            (FRIENDS, b.1.clone()),
            (FRIENDS_GEN, a.1.clone()),
            (FRIENDS_GEN, b.1.clone()),
        ],
    }
}

/// The object kinds (key namespaces).
pub const ARTICLE: &str = "article";
/// The rendered page.
pub const PAGE: &str = "page";
/// An article as the feed lists it.
pub const SUMMARY: &str = "summary";
/// An author's latest articles.
pub const RECENT: &str = "recent";
/// A user's friends' ids.
pub const FRIEND_IDS: &str = "friend_ids";
/// The first page of a user's friends.
pub const FRIENDS: &str = "friends";
/// The site's newest articles (the feed's window).
pub const LATEST: &str = "latest";
/// The one id of [`LATEST`].
pub const SITE: &str = "site";
/// The generation of a user's later friends pages.
pub const FRIENDS_GEN: &str = "friends_gen";
/// A later page of a user's friends, in a generation.
pub const FRIENDS_PAGE: &str = "friends_page";
/// A user's friends as a Redis set (Redis only, whatever the backend).
pub const FRIENDSET: &str = "friendset";

/// The assembled article (JSON), `article:{id}`.
pub fn article_key(id: u64) -> Key {
    Key::new(ARTICLE, &[&id.to_string()])
}

/// The rendered page (HTML), `page:{id}`.
pub fn page_key(id: u64) -> Key {
    Key::new(PAGE, &[&id.to_string()])
}

/// An article as the feed lists it, `summary:{id}`.
pub fn summary_key(id: u64) -> Key {
    Key::new(SUMMARY, &[&id.to_string()])
}

/// An author's latest articles (publication time and id), `recent:{author}`.
pub fn recent_key(author: u64) -> Key {
    Key::new(RECENT, &[&author.to_string()])
}

/// A user's friends' ids, `friend_ids:{user}`.
pub fn friend_ids_key(user: u64) -> Key {
    Key::new(FRIEND_IDS, &[&user.to_string()])
}

/// The site's newest articles, `latest:site` (see [`super::feed`]).
pub fn latest_key() -> Key {
    Key::new(LATEST, &[SITE])
}

/// The generation of `username`'s later friends pages,
/// `friends_gen:{username}`: deleting it makes every cached later page
/// unreachable at once (the next read starts a new generation).
pub fn friends_gen_key(username: &str) -> Key {
    Key::new(FRIENDS_GEN, &[username])
}

/// A later page of friends, `friends_page:{username}:{generation}:{after}:{limit}`.
pub fn friends_page_key(username: &str, generation: &str, after: u64, limit: u32) -> Key {
    Key::new(
        FRIENDS_PAGE,
        &[username, generation, &after.to_string(), &limit.to_string()],
    )
}

/// A user's friends as a Redis set, `friendset:{id}`.
pub fn friendset_key(user: u64) -> Key {
    Key::new(FRIENDSET, &[&user.to_string()])
}

/// The first page of a user's friends, `friends:{username}` (the username
/// is validated before it gets here, and [`Key`] would hash it otherwise).
pub fn friends_key(username: &str) -> Key {
    Key::new(FRIENDS, &[username])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(what: Committed) -> Vec<Key> {
        changed_by(&what)
            .iter()
            .map(|(kind, id)| ObjectRef::new(kind, id).key())
            .collect()
    }

    #[test]
    fn a_write_deletes_only_what_it_changed() {
        let post = keys(Committed::Post { author: 7 });
        assert_eq!(
            post,
            vec![recent_key(7), latest_key()],
            "two objects, whatever the author's friend count"
        );
        let comment = keys(Committed::Article { id: 42 });
        assert_eq!(
            comment,
            vec![article_key(42), page_key(42), summary_key(42)]
        );
        let friends = keys(Committed::Friends {
            a: (1, "ada".into()),
            b: (2, "bob".into()),
        });
        assert_eq!(
            friends,
            vec![
                friend_ids_key(1),
                friend_ids_key(2),
                friends_key("ada"),
                friends_key("bob"),
                friends_gen_key("ada"),
                friends_gen_key("bob"),
            ]
        );
    }
}
