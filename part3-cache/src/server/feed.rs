//! The activity stream, assembled from cached objects.
//!
//! Part 2's feed is one JOIN over all of a user's friends' articles: for
//! `user1`, with 8,846 friendship rows at the default scale, the database
//! sorts tens of thousands of rows on every request.
//!
//! **Why not cache each user's finished feed?** It would be one get per
//! read, and impossible to keep right cheaply: a post changes the feed of
//! every friend of its author, so it would have to delete thousands of
//! feeds one by one (fan-out on write). A short TTL instead would show a
//! friend's post only after the TTL. So the feed is merged at read time
//! (fan-out on read) from objects whose invalidation is bounded: **a post
//! deletes two objects, whatever its author's friend count.**
//!
//! 1. `friend_ids:{user}`: the user's friends (deleted when they befriend).
//! 2. For a user with many friends ([`WIDE`] or more): `latest:site`, the
//!    site's newest [`WINDOW`] articles as `(author, published_at, id)`,
//!    24 bytes each (48 KB). Keep those whose author is a friend: if there
//!    are at least [`FEED_LENGTH`] of them, they ARE the feed's heads (any
//!    friend's article outside the window is older than all of them). For
//!    `user1`, whose friends are 85% of the site, that is one 48 KB get
//!    instead of 8,846 objects. Every post deletes `latest:site`.
//! 3. Otherwise (few friends, or friends who posted nothing recently):
//!    `recent:{author}` for every friend, in ONE `get_many`: each author's
//!    latest [`FEED_LENGTH`] articles as `(published_at, id)` pairs, 16
//!    bytes each ([`encode_heads`]), deleted when that author posts. The
//!    median user of the default dataset has 22 friends: 22 small objects.
//! 4. The newest [`FEED_LENGTH`] heads, and their `summary:{id}` objects
//!    in one more `get_many` (deleted when the article gets a comment or a
//!    like, since they show the counts).
//!
//! Misses are filled from the primary in one query per step, so a cold
//! feed costs a few queries whatever the friend count. Ties in publication
//! time are broken by the higher id, so the order is the same on every
//! clone and every call.
//!
//! **The trade-off.** The site-wide window changes on every post, so it is
//! deleted on every post and reloaded by the next wide feed (one reload
//! across clones, under the stampede protection): a scan of the articles
//! sorted by time, tens of milliseconds on the default dataset, since the
//! schema has no index on `published_at` alone. At a high post rate that
//! reload is the cost to watch; production keeps such a stream as a Redis
//! sorted set updated in place (`ZADD`, `ZREMRANGEBYRANK`) instead of
//! deleting it, or pushes posts into per-user inboxes for users with few
//! friends and pulls for the celebrities (Twitter's hybrid). Reads stay
//! bounded either way: a feed reads at most 48 KB of window, or one small
//! object per friend for users with few friends.
//!
//! Simplified: a user with many friends who all posted long ago falls back
//! to step 3 and reads one object per friend (the `WIDE` threshold keeps
//! that rare: with 64 friends of 10,000 users, the window holds 13 of
//! their articles on average).

use std::collections::HashMap;

use futures::StreamExt;
use part1_clones::error::ApiError;
use part1_clones::session::SessionStore;
use part2_database::articles::{self, ArticleSummary, Shape};
use part2_database::server::FEED_LENGTH;
use sqlx::{MySqlPool, QueryBuilder};

use super::cache;
use super::{Ctx, to_json};
use crate::key::Key;
use crate::stampede::{Mark, Outcome};

/// Authors or articles per `IN (...)` list when filling misses.
const CHUNK: usize = 1000;
/// Friends from which a feed first looks in the site-wide window.
pub const WIDE: usize = 64;
/// Articles in the site-wide window (`latest:site`): 24 bytes each.
pub const WINDOW: u32 = 2000;
/// Stores in flight at once when filling many `recent` objects.
const STORES_IN_FLIGHT: usize = 32;

/// One author's latest articles: `(published_at, id)`, newest first.
type Heads = Vec<(i64, u64)>;

/// The user's feed from the object cache. A cache that fails at any step
/// turns the whole feed into a bypass (part 2's JOIN), never an error.
pub(crate) async fn assemble<S: SessionStore>(
    ctx: &Ctx<S>,
    user: u64,
) -> Result<(Vec<ArticleSummary>, Outcome), ApiError> {
    match from_objects(ctx, user).await? {
        Some(done) => Ok(done),
        None => {
            let (v, _) = ctx.data.feed(user).await?;
            Ok((ordered(v), Outcome::Bypass))
        }
    }
}

/// `None` when the cache (or the primary, for a fill) could not be used.
async fn from_objects<S: SessionStore>(
    ctx: &Ctx<S>,
    user: u64,
) -> Result<Option<(Vec<ArticleSummary>, Outcome)>, ApiError> {
    let Some(rt) = ctx.cache.read_through.as_ref() else {
        return Ok(None);
    };
    // 1. The friend list.
    let (ids, x) = ctx
        .cache
        .bytes(Some(cache::friend_ids_key(user)), || async move {
            let (ids, ok) = ctx
                .query(Some(user), move |p| async move {
                    articles::friends(&p, user).await
                })
                .await?;
            Ok((to_json(&ids)?, ok))
        })
        .await?;
    if x == Outcome::Bypass {
        return Ok(None);
    }
    let friends: Vec<u64> =
        serde_json::from_slice(&ids).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut all_hit = x == Outcome::Hit;

    // 2. The site's newest articles, for a user with many friends.
    let started = std::time::Instant::now();
    let mut heads: Heads = Vec::new();
    let mut missing_count = 0;
    let windowed = if friends.len() >= WIDE {
        match window(ctx, &friends).await? {
            Some((found, x)) => {
                all_hit &= x == Outcome::Hit;
                found.map(|h| heads = h).is_some()
            }
            None => return Ok(None),
        }
    } else {
        false
    };

    // 3. Else every friend's recent articles, one round trip.
    if !windowed {
        let keys: Vec<_> = friends.iter().map(|a| cache::recent_key(*a)).collect();
        let Ok(got) = rt.get_many(&keys).await else {
            return Ok(None);
        };
        let mut missing = Vec::new();
        for (author, value) in friends.iter().zip(got) {
            match value.as_deref().and_then(decode_heads) {
                Some(h) => heads.extend(h),
                None => missing.push(*author),
            }
        }
        missing_count = missing.len();
        if !missing.is_empty() {
            all_hit = false;
            let keys: Vec<Key> = missing.iter().map(|a| cache::recent_key(*a)).collect();
            // Taken before the load: a post that commits meanwhile keeps
            // its author's old heads out of the cache (the stale-set race).
            let marks = rt.marks(&keys).await.ok();
            let primary = ctx.data.db.primary();
            let Some(loaded) = fill_error(recent_heads(primary, &missing).await)? else {
                return Ok(None);
            };
            let mut stores = Vec::with_capacity(missing.len());
            for (i, (author, key)) in missing.iter().zip(keys).enumerate() {
                let h = loaded.get(author).cloned().unwrap_or_default();
                heads.extend(h.iter().copied());
                let mark = marks.as_ref().and_then(|m| m.get(i).cloned());
                stores.push((key, encode_heads(&h), mark));
            }
            futures::stream::iter(stores)
                .for_each_concurrent(STORES_IN_FLIGHT, |(key, bytes, mark)| async move {
                    fill(ctx, &key, &bytes, mark.as_ref()).await;
                })
                .await;
        }
    }
    heads.sort_unstable_by(|a, b| b.cmp(a));
    heads.truncate(FEED_LENGTH as usize);
    // `RUST_LOG=part3_cache=debug` shows where a feed's time goes.
    tracing::debug!(
        user,
        friends = friends.len(),
        windowed,
        missing = missing_count,
        merged = ?started.elapsed(),
        "feed: heads"
    );

    // 4. The summaries of the newest, one round trip.
    let keys: Vec<_> = heads
        .iter()
        .map(|(_, id)| cache::summary_key(*id))
        .collect();
    let Ok(got) = rt.get_many(&keys).await else {
        return Ok(None);
    };
    let mut found: HashMap<u64, ArticleSummary> = HashMap::new();
    let mut missing = Vec::new();
    for ((_, id), value) in heads.iter().zip(got) {
        match value.and_then(|v| serde_json::from_slice::<ArticleSummary>(&v).ok()) {
            Some(s) => {
                found.insert(*id, s);
            }
            None => missing.push(*id),
        }
    }
    if !missing.is_empty() {
        all_hit = false;
        let keys: Vec<Key> = missing.iter().map(|id| cache::summary_key(*id)).collect();
        let marks = rt.marks(&keys).await.ok();
        let Some(loaded) = fill_error(summaries(ctx.data.db.primary(), &missing).await)? else {
            return Ok(None);
        };
        for s in loaded {
            let i = missing.iter().position(|id| *id == s.id);
            let mark = i.and_then(|i| marks.as_ref().and_then(|m| m.get(i)));
            if let Ok(bytes) = serde_json::to_vec(&s) {
                fill(ctx, &cache::summary_key(s.id), &bytes, mark).await;
            }
            found.insert(s.id, s);
        }
    }
    // An article deleted meanwhile is simply left out.
    let feed = heads
        .iter()
        .filter_map(|(_, id)| found.remove(id))
        .collect();
    let x = if all_hit { Outcome::Hit } else { Outcome::Miss };
    Ok(Some((feed, x)))
}

/// Stores what a feed loaded on a miss, unless a write invalidated the
/// key since `mark` was taken (before the load). No mark (the cache could
/// not give one): not stored, the next read loads again.
async fn fill<S: SessionStore>(ctx: &Ctx<S>, key: &Key, bytes: &[u8], mark: Option<&Mark>) {
    let (Some(rt), Some(mark)) = (ctx.cache.read_through.as_ref(), mark) else {
        return;
    };
    match rt.set_unless_written(key, bytes, ctx.cache.ttl, mark).await {
        Ok(true) => {}
        Ok(false) => tracing::debug!(%key, "a write came during the load: not stored"),
        Err(e) => tracing::debug!(%key, error = %e, "not cached"),
    }
}

/// The feed's heads from the site-wide window: `Some((Some(heads), x))`
/// when the window holds enough of the friends' articles (or is the whole
/// site), `Some((None, x))` when it does not, `None` when the cache or the
/// primary could not be used.
async fn window<S: SessionStore>(
    ctx: &Ctx<S>,
    friends: &[u64],
) -> Result<Option<(Option<Heads>, Outcome)>, ApiError> {
    let (bytes, x) = ctx
        .cache
        .bytes(Some(cache::latest_key()), || async move {
            let (rows, ok) = ctx
                .query(None, |p| async move { latest(&p, WINDOW).await })
                .await?;
            Ok((encode_window(&rows), ok))
        })
        .await?;
    if x == Outcome::Bypass {
        return Ok(None);
    }
    let Some(rows) = decode_window(&bytes) else {
        return Ok(Some((None, Outcome::Miss)));
    };
    Ok(Some((pick(&rows, friends), x)))
}

/// The heads of `friends` in the window `rows` (newest first), if the
/// window answers: it holds [`FEED_LENGTH`] of them, or it is the whole
/// site (fewer rows than [`WINDOW`]). `friends` is sorted.
pub fn pick(rows: &[(u64, i64, u64)], friends: &[u64]) -> Option<Heads> {
    let mut heads: Heads = rows
        .iter()
        .filter(|(author, _, _)| friends.binary_search(author).is_ok())
        .map(|(_, at, id)| (*at, *id))
        .take(FEED_LENGTH as usize)
        .collect();
    let complete = rows.len() < WINDOW as usize;
    (heads.len() >= FEED_LENGTH as usize || complete).then(|| {
        heads.sort_unstable_by(|a, b| b.cmp(a));
        heads
    })
}

/// Bytes of one window row: author, `published_at`, id, little-endian.
const TRIPLE: usize = 24;

/// The window as bytes, 24 per article, newest first.
pub fn encode_window(rows: &[(u64, i64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.len() * TRIPLE);
    for (author, at, id) in rows {
        out.extend_from_slice(&author.to_le_bytes());
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The reverse of [`encode_window`]; `None` for bytes that are not rows.
pub fn decode_window(bytes: &[u8]) -> Option<Vec<(u64, i64, u64)>> {
    let rows = bytes.chunks_exact(TRIPLE);
    if !rows.remainder().is_empty() {
        return None;
    }
    let word = |b: &[u8]| -> [u8; 8] { b.try_into().unwrap_or_default() };
    Some(
        rows.map(|c| {
            (
                u64::from_le_bytes(word(&c[..8])),
                i64::from_le_bytes(word(&c[8..16])),
                u64::from_le_bytes(word(&c[16..])),
            )
        })
        .collect(),
    )
}

/// The site's newest `n` articles, `(author, published_at, id)`, newest
/// first (ties: the higher id first, as the feed orders them).
pub async fn latest(pool: &MySqlPool, n: u32) -> sqlx::Result<Vec<(u64, i64, u64)>> {
    sqlx::query_as(
        "SELECT author_id, published_at, id FROM articles ORDER BY published_at DESC, id DESC LIMIT ?",
    )
    .bind(n)
    .fetch_all(pool)
    .await
}

/// Bytes of one pair: `published_at` then `id`, little-endian.
const PAIR: usize = 16;

/// An author's heads as bytes: 16 per article. The feed decodes one of
/// these per friend on every read (8,846 for `user1`), so they are fixed
/// width, not JSON: nothing to parse, half the bytes on the wire.
pub fn encode_heads(heads: &[(i64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(heads.len() * PAIR);
    for (at, id) in heads {
        out.extend_from_slice(&at.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// The reverse of [`encode_heads`]; `None` for bytes that are not pairs
/// (then the author's object is loaded again, as on a miss).
pub fn decode_heads(bytes: &[u8]) -> Option<Heads> {
    let pairs = bytes.chunks_exact(PAIR);
    if !pairs.remainder().is_empty() {
        return None;
    }
    let word = |b: &[u8]| -> [u8; 8] { b.try_into().unwrap_or_default() };
    Some(
        pairs
            .map(|c| {
                (
                    i64::from_le_bytes(word(&c[..8])),
                    u64::from_le_bytes(word(&c[8..])),
                )
            })
            .collect(),
    )
}

/// A fill's database error: a primary that does not answer means "use
/// part 2's path" (`Ok(None)`), anything else is an error.
fn fill_error<T>(r: sqlx::Result<T>) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if part2_database::replication::is_connection_error(&e) => Ok(None),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// Newest first, ties broken by id (newest id first), as the object feed
/// and part 2's JOIN (`FEED_SQL`: `published_at DESC, a.id DESC`) order
/// them, so every path picks the same 20 and a client cannot tell.
fn ordered(mut v: Vec<ArticleSummary>) -> Vec<ArticleSummary> {
    v.sort_by_key(|a| std::cmp::Reverse((a.published_at, a.id)));
    v
}

/// The latest [`FEED_LENGTH`] articles of each author, one query per
/// 1,000 authors (a window function: the newest rows per author, read
/// off the `(author_id, published_at)` index).
pub async fn recent_heads(pool: &MySqlPool, authors: &[u64]) -> sqlx::Result<HashMap<u64, Heads>> {
    let mut out: HashMap<u64, Heads> = HashMap::new();
    for chunk in authors.chunks(CHUNK) {
        let mut q = QueryBuilder::new(
            "SELECT author_id, published_at, id FROM (SELECT author_id, published_at, id, \
             ROW_NUMBER() OVER (PARTITION BY author_id ORDER BY published_at DESC, id DESC) AS n \
             FROM articles WHERE author_id IN (",
        );
        let mut list = q.separated(", ");
        for a in chunk {
            list.push_bind(*a);
        }
        q.push(")) t WHERE n <= ")
            .push_bind(FEED_LENGTH)
            .push(" ORDER BY author_id, published_at DESC, id DESC");
        let rows: Vec<(u64, i64, u64)> = q.build_query_as().fetch_all(pool).await?;
        for (author, at, id) in rows {
            out.entry(author).or_default().push((at, id));
        }
    }
    Ok(out)
}

/// Article summaries by id, as the feed shows them (the denormalized
/// columns, as part 2's feed JOIN reads them).
pub async fn summaries(pool: &MySqlPool, ids: &[u64]) -> sqlx::Result<Vec<ArticleSummary>> {
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let mut q = QueryBuilder::new(articles::summary_sql(Shape::Denormalized));
        q.push(" WHERE a.id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(*id);
        }
        q.push(")");
        let rows: Vec<ArticleSummary> = q.build_query_as().fetch_all(pool).await?;
        out.extend(rows);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_round_trip_and_garbage_is_a_miss() {
        let h = vec![(1_770_904_000, 100_000), (-1, u64::MAX), (0, 0)];
        assert_eq!(decode_heads(&encode_heads(&h)), Some(h));
        assert_eq!(decode_heads(&[]), Some(vec![]));
        assert_eq!(decode_heads(b"[[1,2]]"), None);
    }

    #[test]
    fn window_round_trips() {
        let w = vec![(3, 1_770_904_000, 100_000), (1, -1, u64::MAX)];
        assert_eq!(decode_window(&encode_window(&w)), Some(w));
        assert_eq!(decode_window(&[1, 2, 3]), None);
    }

    #[test]
    fn the_window_answers_only_when_it_holds_enough() {
        let n = FEED_LENGTH as u64;
        // A full window: authors 1..=4 in turn, newest first.
        let rows: Vec<(u64, i64, u64)> = (0..u64::from(WINDOW))
            .map(|i| (i % 4 + 1, 1_000_000 - i as i64, 10_000 - i))
            .collect();
        let heads = pick(&rows, &[2, 4]).expect("half the window is theirs");
        assert_eq!(heads.len() as u64, n);
        assert_eq!(heads[0], (999_999, 9_999), "the newest of author 2");
        assert!(heads.windows(2).all(|w| w[0] > w[1]));
        // A friend whose articles are not in the window: not enough.
        assert_eq!(pick(&rows, &[5]), None);
        // A window shorter than WINDOW is the whole site: it answers.
        assert_eq!(pick(&rows[..10], &[5]), Some(vec![]));
        assert_eq!(pick(&rows[..10], &[1]).map(|h| h.len()), Some(3));
    }
}
