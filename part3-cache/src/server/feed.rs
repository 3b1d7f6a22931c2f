//! The activity stream, assembled from cached objects.
//!
//! Part 2's feed is one JOIN over all of a user's friends' articles: for
//! `user1`, with 8,846 friendship rows at the default scale, the database
//! sorts tens of thousands of rows on every request. Caching each user's
//! finished feed would be fast to read but impossible to keep right
//! cheaply: a post would have to delete the feed of every friend of its
//! author, thousands of deletes for a popular one.
//!
//! So the feed is merged at read time from objects whose invalidation is
//! bounded:
//!
//! 1. `friend_ids:{user}`: the user's friends (deleted when they befriend);
//! 2. `recent:{author}` for every friend, in ONE `get_many`: each author's
//!    latest [`FEED_LENGTH`] articles as `(published_at, id)` pairs, 16
//!    bytes each ([`encode_heads`]), deleted when that author posts: one
//!    delete per post;
//! 3. the newest [`FEED_LENGTH`] of the merged pairs, and their
//!    `summary:{id}` objects in one more `get_many` (deleted when the
//!    article gets a comment or a like, since they show the counts).
//!
//! Misses are filled from the primary in one query per step, so a cold
//! feed costs three queries whatever the friend count. Ties in publication
//! time are broken by the higher id, so the order is the same on every
//! clone and every call.
//!
//! Simplified: a feed reads every friend's object, 8,846 of them for
//! `user1`. Production would cap what one feed reads (the most recently
//! active friends first) or keep the heads in one Redis sorted set per
//! author and merge on the server.

use std::collections::HashMap;

use futures::StreamExt;
use part1_clones::error::ApiError;
use part1_clones::session::SessionStore;
use part2_database::articles::{self, ArticleSummary, Shape};
use part2_database::server::FEED_LENGTH;
use sqlx::{MySqlPool, QueryBuilder};

use super::cache;
use super::{Ctx, to_json};
use crate::stampede::Outcome;

/// Authors or articles per `IN (...)` list when filling misses.
const CHUNK: usize = 1000;
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

    // 2. Every friend's recent articles, one round trip.
    let started = std::time::Instant::now();
    let keys: Vec<_> = friends.iter().map(|a| cache::recent_key(*a)).collect();
    let Ok(got) = rt.get_many(&keys).await else {
        return Ok(None);
    };
    let fetched = started.elapsed();
    let mut heads: Heads = Vec::new();
    let mut missing = Vec::new();
    for (author, value) in friends.iter().zip(got) {
        match value.as_deref().and_then(decode_heads) {
            Some(h) => heads.extend(h),
            None => missing.push(*author),
        }
    }
    let missing_count = missing.len();
    if !missing.is_empty() {
        all_hit = false;
        let primary = ctx.data.db.primary();
        let Some(loaded) = fill_error(recent_heads(primary, &missing).await)? else {
            return Ok(None);
        };
        let stores = missing.iter().map(|author| {
            let h = loaded.get(author).cloned().unwrap_or_default();
            heads.extend(h.iter().copied());
            (cache::recent_key(*author), h)
        });
        let stores: Vec<_> = stores.collect();
        futures::stream::iter(stores)
            .for_each_concurrent(STORES_IN_FLIGHT, |(key, h)| async move {
                ctx.cache.store(&key, &encode_heads(&h)).await;
            })
            .await;
    }
    heads.sort_unstable_by(|a, b| b.cmp(a));
    heads.truncate(FEED_LENGTH as usize);
    // `RUST_LOG=part3_cache=debug` shows where a feed's time goes.
    tracing::debug!(
        user,
        friends = friends.len(),
        missing = missing_count,
        ?fetched,
        merged = ?started.elapsed(),
        "feed: recent objects"
    );

    // 3. The summaries of the newest, one round trip.
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
        let Some(loaded) = fill_error(summaries(ctx.data.db.primary(), &missing).await)? else {
            return Ok(None);
        };
        for s in loaded {
            if let Ok(bytes) = serde_json::to_vec(&s) {
                ctx.cache.store(&cache::summary_key(s.id), &bytes).await;
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

/// Part 2's JOIN orders by time alone; the object feed breaks ties by id.
/// The fallback answers in the same order, so a client cannot tell.
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
}
