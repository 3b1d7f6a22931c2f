//! Precomputed activity streams: fan-out on write, and the hybrid.
//!
//! Part 3 answers `GET /feed` by **fan-out on read**: each read merges
//! the newest articles of every friend (from cached objects, see
//! [`part3_cache::server::feed`]). A post costs two cache deletes; a
//! read costs a merge over the friends. Reads outnumber writes by orders
//! of magnitude on a social site, so big services turn it around:
//! **fan-out on write**. When an author posts, a worker pushes the new
//! article into the *timeline* of every friend, a list kept ready
//! (here a Redis sorted set per user, `<prefix>:timeline:<user_id>`,
//! score = the article's id, since ids grow with time). Reading a feed
//! is then one `ZREVRANGE` of one key, whatever the friend count.
//!
//! **Write amplification.** One post becomes one write *per friend*: an
//! author with 8,000 friends costs 8,000 `ZADD`s (and as many trims, so
//! each timeline stays capped at `TIMELINE_CAP` articles). Pipelined
//! ([`PIPELINE`] timelines per round trip) that is a few round trips and
//! a few megabytes moved; [`Fanout::timelines`] counts it for the demo,
//! and [`amplification`] is the same figure computed from a friend count.
//! The work is done by the workers, after the user's write was answered:
//! the author never waits for it ([`crate::changes`]).
//!
//! **The hybrid.** For the few authors with a huge audience the
//! amplification is not worth it (a celebrity's post would be millions
//! of writes, most to timelines nobody reads soon). Authors with more
//! than `FANOUT_MAX_FRIENDS` friends are not fanned out; they are listed
//! in one small set (`<prefix>:timeline-big`), and a read merges *their*
//! newest articles in (part 3's `recent:{author}` objects) with the
//! user's precomputed timeline. Fan out for most authors, merge the few
//! most-followed at read time: what Twitter described doing for its
//! home timelines.
//!
//! **Idempotent by nature.** A change may be delivered twice (at least
//! once). `ZADD` of a member already there changes nothing, and the trim
//! keeps the same newest `TIMELINE_CAP`: the second fan-out writes the
//! same timelines to the same state. No claim is needed, unlike a job.
//!
//! **What a change carries.** Part 2's hook says "author 7 posted", not
//! which article. The worker pushes the author's articles newer than
//! their high-water mark (`<prefix>:timeline-fanned:<author>`, at most
//! [`FEED_LENGTH`] of them, the most any feed can show of one author), so
//! a burst of posts handled by one change, or a lost change, is caught up
//! by the next one.
//!
//! **A timeline that does not exist yet.** A user nobody fanned out to
//! since the timelines started (or whose timeline Redis evicted) has no
//! complete timeline: fan-outs may have created the key with a few new
//! articles only. A complete timeline carries a sentinel member
//! ([`BUILT`], score `+inf`, so it sorts first and survives every trim).
//! A read that does not find it **builds the timeline once from SQL**
//! (part 2's feed JOIN, `LIMIT TIMELINE_CAP`, the one expensive read in a
//! user's life) and adds it to whatever fan-outs put there (a union: a
//! post fanned out during the build is kept). Evicted, the sentinel goes
//! with the key, and the next read builds again. (Until it is built, a
//! timeline holds up to one article more than the cap: the sentinel's
//! place. Built, it holds the cap exactly.)
//!
//! `GET /timeline` on `part4-server` ([`read`]) answers the same JSON as
//! `GET /feed`, with `X-Timeline: precomputed`.

use std::collections::{BTreeSet, HashMap};

use part1_clones::error::ApiError;
use part2_database::articles::ArticleSummary;
use part2_database::server::FEED_LENGTH;
use part3_cache::key::Key;
use part3_cache::server::CacheLayer;
use part3_cache::server::cache;
use part3_cache::server::feed;
use part3_cache::stampede::ReadThrough;
use redis::aio::ConnectionManager;
use sqlx::MySqlPool;

/// Timelines per pipelined round trip of a fan-out (two commands each).
pub const PIPELINE: usize = 500;

/// The sentinel member of a complete timeline (score `+inf`).
pub const BUILT: &str = "built";

/// The fan-out's settings.
#[derive(Debug, Clone, clap::Args)]
pub struct FanoutConfig {
    /// Articles kept per timeline (the newest).
    #[arg(long, env = "TIMELINE_CAP", default_value_t = 200,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub timeline_cap: u32,
    /// Authors with more friends than this are not fanned out: their
    /// articles are merged at read time (the hybrid).
    #[arg(long, env = "FANOUT_MAX_FRIENDS", default_value_t = 1000)]
    pub fanout_max_friends: u64,
}

impl Default for FanoutConfig {
    fn default() -> Self {
        FanoutConfig {
            timeline_cap: 200,
            fanout_max_friends: 1000,
        }
    }
}

/// The write amplification of one post, computed: the timelines a post
/// by an author with `friends` friends writes (0 for a big author, who is
/// merged at read time instead).
pub fn amplification(friends: u64, max_friends: u64) -> u64 {
    if friends > max_friends { 0 } else { friends }
}

/// What one fan-out did (measured: the commands Redis acknowledged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fanout {
    /// The author.
    pub author: u64,
    /// Their friends (counted up to `FANOUT_MAX_FRIENDS + 1`).
    pub friends: u64,
    /// Timelines written: the write amplification.
    pub timelines: u64,
    /// Articles pushed into each.
    pub articles: u64,
    /// Pipelined round trips to Redis.
    pub round_trips: u64,
    /// A big author: not fanned out, merged at read time.
    pub big: bool,
}

/// The timelines in Redis.
#[derive(Clone)]
pub struct Timelines {
    redis: ConnectionManager,
    prefix: String,
    cap: u32,
    max_friends: u64,
}

fn redis_err(e: redis::RedisError) -> anyhow::Error {
    anyhow::anyhow!("Redis (timelines): {e}")
}

impl Timelines {
    /// Timelines under `<key_prefix>:` (the clones' `KEY_PREFIX`).
    pub fn new(redis: ConnectionManager, key_prefix: &str, config: &FanoutConfig) -> Self {
        Timelines {
            redis,
            prefix: format!("{key_prefix}:"),
            cap: config.timeline_cap.max(1),
            max_friends: config.fanout_max_friends,
        }
    }

    /// `<prefix>:timeline:<user>`.
    pub fn key(&self, user: u64) -> String {
        format!("{}timeline:{user}", self.prefix)
    }

    /// The set of big authors (not fanned out).
    pub fn big_key(&self) -> String {
        format!("{}timeline-big", self.prefix)
    }

    fn fanned_key(&self, author: u64) -> String {
        format!("{}timeline-fanned:{author}", self.prefix)
    }

    /// The cap.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// The hybrid's threshold.
    pub fn max_friends(&self) -> u64 {
        self.max_friends
    }

    /// Adds `articles` to the timelines of `users`, each trimmed to the
    /// cap, [`PIPELINE`] timelines per round trip. Returns (timelines
    /// written, round trips).
    pub async fn push(&self, users: &[u64], articles: &[u64]) -> anyhow::Result<(u64, u64)> {
        if articles.is_empty() || users.is_empty() {
            return Ok((0, 0));
        }
        let items: Vec<(u64, u64)> = articles.iter().map(|id| (*id, *id)).collect();
        // Keep the newest `cap` articles and the sentinel above them.
        let keep_from = -(i64::from(self.cap) + 2) as isize;
        let (mut written, mut trips) = (0, 0);
        let mut conn = self.redis.clone();
        for chunk in users.chunks(PIPELINE) {
            let mut pipe = redis::pipe();
            for user in chunk {
                let key = self.key(*user);
                pipe.zadd_multiple(&key, &items)
                    .ignore()
                    .zremrangebyrank(&key, 0, keep_from)
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await.map_err(redis_err)?;
            written += chunk.len() as u64;
            trips += 1;
        }
        Ok((written, trips))
    }

    /// Fans `author`'s new articles out to their friends' timelines, or,
    /// for a big author, records them as big (merged at read time).
    pub async fn fan_out(&self, pool: &MySqlPool, author: u64) -> anyhow::Result<Fanout> {
        let friends: Vec<u64> = sqlx::query_scalar(
            "SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id LIMIT ?",
        )
        .bind(author)
        .bind(self.max_friends.saturating_add(1))
        .fetch_all(pool)
        .await?;
        let mut out = Fanout {
            author,
            friends: friends.len() as u64,
            ..Fanout::default()
        };
        let mut conn = self.redis.clone();
        if out.friends > self.max_friends {
            let _: u64 = redis::cmd("SADD")
                .arg(self.big_key())
                .arg(author)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            out.big = true;
            out.round_trips = 1;
            return Ok(out);
        }
        let mark: Option<u64> = redis::cmd("GET")
            .arg(self.fanned_key(author))
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let newer: Vec<u64> = sqlx::query_scalar(
            "SELECT id FROM articles WHERE author_id = ? AND id > ? ORDER BY id DESC LIMIT ?",
        )
        .bind(author)
        .bind(mark.unwrap_or(0))
        .bind(FEED_LENGTH)
        .fetch_all(pool)
        .await?;
        out.articles = newer.len() as u64;
        let (written, trips) = self.push(&friends, &newer).await?;
        out.timelines = written;
        out.round_trips = 1 + trips;
        if let Some(top) = newer.first() {
            // Concurrent fan-outs of one author may set it backwards: the
            // next one then pushes a few articles again, which is a no-op.
            let () = redis::cmd("SET")
                .arg(self.fanned_key(author))
                .arg(*top)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            out.round_trips += 1;
        }
        Ok(out)
    }

    /// Two users became friends: each one's newest articles go into the
    /// other's timeline (what the feed now shows of them). Returns the
    /// timelines written (2, or fewer if one has no articles).
    pub async fn befriended(&self, pool: &MySqlPool, a: u64, b: u64) -> anyhow::Result<u64> {
        let heads = feed::recent_heads(pool, &[a, b]).await?;
        let mut written = 0;
        for (author, reader) in [(a, b), (b, a)] {
            let ids: Vec<u64> = heads
                .get(&author)
                .map(|h| h.iter().map(|(_, id)| *id).collect())
                .unwrap_or_default();
            written += self.push(&[reader], &ids).await?.0;
        }
        Ok(written)
    }

    /// Builds `user`'s timeline from SQL (the feed's JOIN, capped), added
    /// to what fan-outs put there, and marks it complete. Returns the
    /// articles read.
    pub async fn build(&self, pool: &MySqlPool, user: u64) -> anyhow::Result<usize> {
        let ids: Vec<u64> = sqlx::query_scalar(
            "SELECT a.id FROM friendships f JOIN articles a ON a.author_id = f.friend_id \
             WHERE f.user_id = ? ORDER BY a.published_at DESC, a.id DESC LIMIT ?",
        )
        .bind(user)
        .bind(self.cap)
        .fetch_all(pool)
        .await?;
        let key = self.key(user);
        let items: Vec<(u64, u64)> = ids.iter().map(|id| (*id, *id)).collect();
        let mut pipe = redis::pipe();
        pipe.atomic();
        if !items.is_empty() {
            pipe.zadd_multiple(&key, &items).ignore();
        }
        pipe.zadd(&key, BUILT, "+inf")
            .ignore()
            .zremrangebyrank(&key, 0, -(i64::from(self.cap) + 2) as isize)
            .ignore();
        let () = pipe
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err)?;
        Ok(ids.len())
    }

    /// The newest `n` article ids of `user`'s timeline and the big
    /// authors, in one round trip; `None` for the ids if the timeline is
    /// not complete (no sentinel).
    pub async fn newest(&self, user: u64, n: u32) -> anyhow::Result<(Option<Vec<u64>>, Vec<u64>)> {
        let (members, big): (Vec<String>, Vec<u64>) = redis::pipe()
            .zrevrange(self.key(user), 0, n as isize)
            .smembers(self.big_key())
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err)?;
        if members.first().map(String::as_str) != Some(BUILT) {
            return Ok((None, big));
        }
        let ids = members[1..].iter().filter_map(|m| m.parse().ok()).collect();
        Ok((Some(ids), big))
    }

    /// The article ids in `user`'s timeline, newest first (the sentinel
    /// left out): for tests and the demo.
    pub async fn members(&self, user: u64) -> anyhow::Result<Vec<u64>> {
        let members: Vec<String> = redis::cmd("ZREVRANGE")
            .arg(self.key(user))
            .arg(0)
            .arg(-1)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err)?;
        Ok(members.iter().filter_map(|m| m.parse().ok()).collect())
    }

    /// Deletes the timelines of `users`, the big set and the high-water
    /// marks of `authors` (tests clean up with it).
    pub async fn forget(&self, users: &[u64], authors: &[u64]) -> anyhow::Result<()> {
        let mut keys: Vec<String> = users.iter().map(|u| self.key(*u)).collect();
        keys.extend(authors.iter().map(|a| self.fanned_key(*a)));
        keys.push(self.big_key());
        let _: u64 = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut self.redis.clone())
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

/// How `GET /timeline` was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineRead {
    /// The feed, as `GET /feed` shows it.
    pub articles: Vec<ArticleSummary>,
    /// The timeline was not complete and was built from SQL by this read.
    pub built: bool,
    /// Big friends merged in at read time.
    pub merged_authors: usize,
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::Internal(e.to_string())
}

/// `GET /timeline` for `user`: the newest [`FEED_LENGTH`] ids of the
/// precomputed timeline (built from SQL once if it is not complete), the
/// newest articles of the user's big friends merged in, and the
/// summaries by multi-get (part 3's `summary:{id}` objects, misses
/// filled from the primary under the stale-set guard). Ordered as the
/// feed orders (newest first, ties by id), so it answers what `/feed`
/// answers.
pub async fn read(
    layer: &CacheLayer,
    timelines: &Timelines,
    user: u64,
) -> Result<TimelineRead, ApiError> {
    let primary = layer.data.db.primary();
    let unavailable = |e: anyhow::Error| ApiError::Unavailable {
        what: "the timelines (Redis)",
        cause: format!("{e:#}"),
    };
    let (ids, big) = timelines
        .newest(user, FEED_LENGTH)
        .await
        .map_err(unavailable)?;
    let (ids, built) = match ids {
        Some(ids) => (ids, false),
        None => {
            timelines.build(primary, user).await.map_err(unavailable)?;
            let (ids, _) = timelines
                .newest(user, FEED_LENGTH)
                .await
                .map_err(unavailable)?;
            (ids.unwrap_or_default(), true)
        }
    };
    let rt = layer.cache.read_through.as_ref();
    let mut candidates: BTreeSet<u64> = ids.into_iter().collect();
    let mut merged_authors = 0;
    if !big.is_empty() {
        let friends = friend_ids(layer, user).await?;
        let big_friends: Vec<u64> = big
            .into_iter()
            .filter(|b| friends.binary_search(b).is_ok())
            .collect();
        merged_authors = big_friends.len();
        for heads in recent(layer, rt, &big_friends).await?.into_values() {
            candidates.extend(heads.iter().map(|(_, id)| *id));
        }
    }
    let candidates: Vec<u64> = candidates.into_iter().collect();
    let mut articles = summaries(layer, rt, &candidates).await?;
    articles.sort_by_key(|a| std::cmp::Reverse((a.published_at, a.id)));
    articles.truncate(FEED_LENGTH as usize);
    Ok(TimelineRead {
        articles,
        built,
        merged_authors,
    })
}

/// `user`'s friends, sorted: part 3's `friend_ids:{user}` object (filled
/// from the primary on a miss), or SQL without a cache.
async fn friend_ids(layer: &CacheLayer, user: u64) -> Result<Vec<u64>, ApiError> {
    let primary = layer.data.db.primary().clone();
    let (bytes, _) = layer
        .cache
        .bytes(Some(cache::friend_ids_key(user)), || async move {
            let ids = part2_database::articles::friends(&primary, user)
                .await
                .map_err(internal)?;
            Ok((serde_json::to_vec(&ids).map_err(internal)?, true))
        })
        .await?;
    let mut ids: Vec<u64> = serde_json::from_slice(&bytes).map_err(internal)?;
    ids.sort_unstable();
    Ok(ids)
}

/// A multi-get of part 3's objects `keys`; the misses (or all, without a
/// cache) loaded by `load` from the primary and stored unless a write
/// came meanwhile (the marks are taken before the load).
async fn multi_get<T, F, Fut>(
    layer: &CacheLayer,
    rt: Option<&ReadThrough>,
    ids: &[u64],
    key: impl Fn(u64) -> Key,
    decode: impl Fn(&[u8]) -> Option<T>,
    encode: impl Fn(&T) -> Vec<u8>,
    load: F,
) -> Result<HashMap<u64, T>, ApiError>
where
    F: FnOnce(Vec<u64>) -> Fut,
    Fut: Future<Output = sqlx::Result<HashMap<u64, T>>>,
{
    let mut found = HashMap::new();
    if ids.is_empty() {
        return Ok(found);
    }
    let keys: Vec<Key> = ids.iter().map(|id| key(*id)).collect();
    let got = match rt {
        Some(rt) => rt.get_many(&keys).await.ok(),
        None => None,
    };
    let mut missing = Vec::new();
    match got {
        Some(values) => {
            for (id, v) in ids.iter().zip(values) {
                match v.as_deref().and_then(&decode) {
                    Some(t) => {
                        found.insert(*id, t);
                    }
                    None => missing.push(*id),
                }
            }
        }
        None => missing.extend_from_slice(ids),
    }
    if missing.is_empty() {
        return Ok(found);
    }
    let missing_keys: Vec<Key> = missing.iter().map(|id| key(*id)).collect();
    let marks = match rt {
        Some(rt) => rt.marks(&missing_keys).await.ok(),
        None => None,
    };
    let loaded = load(missing.clone()).await.map_err(internal)?;
    for (i, id) in missing.iter().enumerate() {
        let Some(t) = loaded.get(id) else { continue };
        if let (Some(rt), Some(mark)) = (rt, marks.as_ref().and_then(|m| m.get(i))) {
            let bytes = encode(t);
            if let Err(e) = rt
                .set_unless_written(&missing_keys[i], &bytes, layer.cache.ttl, mark)
                .await
            {
                tracing::debug!(key = %missing_keys[i], error = %e, "not cached");
            }
        }
    }
    found.extend(loaded);
    Ok(found)
}

/// The newest articles of each of `authors`: part 3's `recent:{author}`.
async fn recent(
    layer: &CacheLayer,
    rt: Option<&ReadThrough>,
    authors: &[u64],
) -> Result<HashMap<u64, Vec<(i64, u64)>>, ApiError> {
    let primary = layer.data.db.primary().clone();
    multi_get(
        layer,
        rt,
        authors,
        cache::recent_key,
        feed::decode_heads,
        |h| feed::encode_heads(h),
        |missing| async move {
            let mut heads = feed::recent_heads(&primary, &missing).await?;
            for a in missing {
                heads.entry(a).or_default();
            }
            Ok(heads)
        },
    )
    .await
}

/// Summaries of `ids`: part 3's `summary:{id}` (an article that no longer
/// exists is left out).
async fn summaries(
    layer: &CacheLayer,
    rt: Option<&ReadThrough>,
    ids: &[u64],
) -> Result<Vec<ArticleSummary>, ApiError> {
    let primary = layer.data.db.primary().clone();
    let found = multi_get(
        layer,
        rt,
        ids,
        cache::summary_key,
        |b| serde_json::from_slice::<ArticleSummary>(b).ok(),
        |s| serde_json::to_vec(s).unwrap_or_default(),
        |missing| async move {
            let rows = feed::summaries(&primary, &missing).await?;
            Ok(rows.into_iter().map(|s| (s.id, s)).collect())
        },
    )
    .await?;
    Ok(found.into_values().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplification_is_the_friend_count_below_the_threshold() {
        assert_eq!(amplification(0, 1000), 0);
        assert_eq!(amplification(1000, 1000), 1000);
        assert_eq!(
            amplification(1001, 1000),
            0,
            "a big author is merged at read time"
        );
    }
}
