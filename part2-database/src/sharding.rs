//! Sharding: users and what they own, split over independent servers.
//!
//! A user's row, friend list and articles live on the shard that owns the
//! user ([`Placement::shard_of`]). A request for one user goes to one
//! shard; a request that spans users (the feed of friends living on both
//! shards) asks every shard involved, in parallel but bounded
//! (scatter-gather, [`ShardedStore::feed`]), and merges.
//!
//! Ids must stay unique across shards without a central counter (which
//! would be a single point of failure and a bottleneck). [`IdGenerator`]
//! makes Snowflake-style ids: milliseconds since an epoch, the generator's
//! node number, a per-millisecond sequence. Two nodes can never collide,
//! and ids still sort by time.
//!
//! Adding a shard moves keys. How many depends on the placement:
//! [`Modulo`] moves most of them, [`ConsistentHash`] about `1/(n+1)`, and a
//! [`Directory`] exactly the ones you choose to move (at the cost of a
//! lookup table to keep). [`moved_share`] measures it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use futures::stream::{self, StreamExt};
use sqlx::MySqlPool;

use crate::articles::ArticleSummary;

/// Where keys (user ids) live.
pub trait Placement: Send + Sync {
    /// The shard of `key`, in `0..shards()`.
    fn shard_of(&self, key: u64) -> usize;
    /// How many shards.
    fn shards(&self) -> usize;
}

/// `key mod n`: simple, even, and reshuffles nearly everything when `n` changes.
#[derive(Debug, Clone)]
pub struct Modulo(pub usize);

impl Placement for Modulo {
    fn shard_of(&self, key: u64) -> usize {
        (mix(key) % self.0 as u64) as usize
    }
    fn shards(&self) -> usize {
        self.0
    }
}

/// A stable 64-bit mix (SplitMix64's finalizer), so neighbouring ids spread.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A hash ring with virtual nodes: adding a shard takes over only the arcs
/// it lands on, about `1/(n+1)` of the keys.
#[derive(Debug, Clone)]
pub struct ConsistentHash {
    ring: BTreeMap<u64, usize>,
    shards: usize,
}

impl ConsistentHash {
    /// `shards` shards with `vnodes` points each on the ring.
    pub fn new(shards: usize, vnodes: u64) -> Self {
        let mut ring = BTreeMap::new();
        for s in 0..shards {
            for v in 0..vnodes {
                ring.insert(mix((s as u64) << 32 | v), s);
            }
        }
        ConsistentHash { ring, shards }
    }
}

impl Placement for ConsistentHash {
    fn shard_of(&self, key: u64) -> usize {
        let h = mix(key ^ 0x5bd1_e995);
        self.ring
            .range(h..)
            .next()
            .or_else(|| self.ring.iter().next())
            .map_or(0, |(_, s)| *s)
    }
    fn shards(&self) -> usize {
        self.shards
    }
}

/// A lookup table from key to shard, with a default placement for keys not
/// in it. Moving a key is an entry; nothing moves unless you say so.
#[derive(Debug, Clone)]
pub struct Directory {
    entries: HashMap<u64, usize>,
    default: Modulo,
    shards: usize,
}

impl Directory {
    /// Every existing key where `current` puts it; new keys by modulo over `shards`.
    pub fn freeze(current: &dyn Placement, keys: impl Iterator<Item = u64>, shards: usize) -> Self {
        Directory {
            entries: keys.map(|k| (k, current.shard_of(k))).collect(),
            default: Modulo(shards),
            shards,
        }
    }

    /// Moves `key` to `shard`.
    pub fn assign(&mut self, key: u64, shard: usize) {
        self.entries.insert(key, shard);
    }
}

impl Placement for Directory {
    fn shard_of(&self, key: u64) -> usize {
        self.entries
            .get(&key)
            .copied()
            .unwrap_or_else(|| self.default.shard_of(key))
    }
    fn shards(&self) -> usize {
        self.shards
    }
}

/// The share of `keys` whose shard differs between two placements.
pub fn moved_share(
    before: &dyn Placement,
    after: &dyn Placement,
    keys: impl Iterator<Item = u64>,
) -> f64 {
    let (mut moved, mut n) = (0u64, 0u64);
    for k in keys {
        n += 1;
        if before.shard_of(k) != after.shard_of(k) {
            moved += 1;
        }
    }
    moved as f64 / n.max(1) as f64
}

/// Snowflake-style ids: 41 bits of milliseconds since [`IdGenerator::EPOCH_MS`],
/// 10 bits of node number, 12 bits of sequence.
pub struct IdGenerator {
    node: u64,
    state: Mutex<(u64, u64)>,
}

impl IdGenerator {
    /// 2026-01-01T00:00:00Z in Unix milliseconds.
    pub const EPOCH_MS: u64 = 1_767_225_600_000;

    /// A generator for node `node` (0..1024): a shard, a clone, a worker.
    pub fn new(node: u16) -> Self {
        assert!(node < 1024, "node numbers are 10 bits");
        IdGenerator {
            node: node as u64,
            state: Mutex::new((0, 0)),
        }
    }

    /// The next id. Within a millisecond, up to 4096 ids; past that it
    /// waits for the next millisecond rather than collide.
    pub fn next_id(&self) -> u64 {
        let mut state = self.state.lock().expect("id generator poisoned");
        loop {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
                .saturating_sub(Self::EPOCH_MS);
            let (last, seq) = *state;
            // A clock that steps back must not reuse ids: stay on `last`.
            let ms = now.max(last);
            let seq = if ms == last { seq + 1 } else { 0 };
            if seq < 4096 {
                *state = (ms, seq);
                return (ms << 22) | (self.node << 12) | seq;
            }
            std::thread::yield_now();
        }
    }

    /// The node that made `id`.
    pub fn node_of(id: u64) -> u16 {
        ((id >> 12) & 0x3ff) as u16
    }
}

/// Users, friendships and articles over independent MariaDB shards.
pub struct ShardedStore<P: Placement> {
    /// One pool per shard.
    pub shards: Vec<MySqlPool>,
    /// Where users live.
    pub placement: P,
    /// Shards asked at once by a scatter-gather.
    pub fan_out: usize,
    ids: Vec<IdGenerator>,
}

/// A shard that did not answer, named.
#[derive(Debug, thiserror::Error)]
#[error("shard {shard} is unavailable: {source}")]
pub struct ShardDown {
    /// Which shard.
    pub shard: usize,
    /// Why.
    pub source: sqlx::Error,
}

impl<P: Placement> ShardedStore<P> {
    /// A store over `shards` (one pool each) with `placement`.
    pub fn new(shards: Vec<MySqlPool>, placement: P) -> Self {
        let ids = (0..shards.len())
            .map(|i| IdGenerator::new(i as u16))
            .collect();
        ShardedStore {
            shards,
            placement,
            fan_out: 4,
            ids,
        }
    }

    /// The pool of the shard owning `user_id`.
    pub fn shard(&self, user_id: u64) -> (usize, &MySqlPool) {
        let s = self.placement.shard_of(user_id);
        (s, &self.shards[s])
    }

    /// Loads the dataset's users, friendships (both directions, on each
    /// user's shard) and articles (on the author's shard), batched per shard.
    /// Returns the rows written.
    pub async fn load(&self, spec: &common::dataset::DatasetSpec) -> anyhow::Result<u64> {
        let mut rows = 0;
        for (shard, pool) in self.shards.iter().enumerate() {
            let mine = |user: u64| self.placement.shard_of(user) == shard;
            rows += crate::schema::insert_batches(
                pool,
                "INSERT INTO users (id, username, password_hash, created_at, display_name) ",
                "",
                spec.users().filter(|u| mine(u.id)),
                |row, u| {
                    row.push_bind(u.id)
                        .push_bind(u.username)
                        .push_bind("")
                        .push_bind(u.joined_at)
                        .push_bind(u.display_name);
                },
            )
            .await?;
            rows += crate::schema::insert_batches(
                pool,
                "INSERT INTO friendships (user_id, friend_id, since) ",
                "",
                spec.friendships()
                    .flat_map(|f| {
                        [
                            (f.user_id, f.friend_id, f.since),
                            (f.friend_id, f.user_id, f.since),
                        ]
                    })
                    .filter(|(u, _, _)| mine(*u)),
                |row, (a, b, since)| {
                    row.push_bind(a).push_bind(b).push_bind(since);
                },
            )
            .await?;
            rows += crate::schema::insert_batches(
                pool,
                "INSERT INTO articles (id, author_id, title, body, published_at, author_name) ",
                "",
                spec.articles().filter(|a| mine(a.author_id)),
                |row, a| {
                    row.push_bind(a.id)
                        .push_bind(a.author_id)
                        .push_bind(a.title)
                        .push_bind("")
                        .push_bind(a.published_at)
                        .push_bind(format!("User {}", a.author_id));
                },
            )
            .await?;
        }
        Ok(rows)
    }

    /// Stores a user (and nothing else) on their shard.
    pub async fn put_user(
        &self,
        id: u64,
        username: &str,
        display_name: &str,
    ) -> Result<(), ShardDown> {
        let (shard, pool) = self.shard(id);
        sqlx::query("INSERT IGNORE INTO users (id, username, password_hash, created_at, display_name) VALUES (?, ?, '', 0, ?)")
            .bind(id)
            .bind(username)
            .bind(display_name)
            .execute(pool)
            .await
            .map_err(|source| ShardDown { shard, source })?;
        Ok(())
    }

    /// Stores one direction of a friendship on the user's shard.
    pub async fn put_friend(&self, user_id: u64, friend_id: u64) -> Result<(), ShardDown> {
        let (shard, pool) = self.shard(user_id);
        sqlx::query("INSERT IGNORE INTO friendships (user_id, friend_id, since) VALUES (?, ?, 0)")
            .bind(user_id)
            .bind(friend_id)
            .execute(pool)
            .await
            .map_err(|source| ShardDown { shard, source })?;
        Ok(())
    }

    /// Posts an article on its author's shard, with an id unique across shards.
    pub async fn post(
        &self,
        author_id: u64,
        author_name: &str,
        title: &str,
        at: i64,
    ) -> Result<u64, ShardDown> {
        let (shard, pool) = self.shard(author_id);
        let id = self.ids[shard].next_id();
        sqlx::query("INSERT INTO articles (id, author_id, title, body, published_at, author_name) VALUES (?, ?, ?, '', ?, ?)")
            .bind(id)
            .bind(author_id)
            .bind(title)
            .bind(at)
            .bind(author_name)
            .execute(pool)
            .await
            .map_err(|source| ShardDown { shard, source })?;
        Ok(id)
    }

    /// A user's friends, from their shard.
    pub async fn friends(&self, user_id: u64) -> Result<Vec<u64>, ShardDown> {
        let (shard, pool) = self.shard(user_id);
        crate::articles::friends(pool, user_id)
            .await
            .map_err(|source| ShardDown { shard, source })
    }

    /// The feed: friends' latest articles. Friends are grouped by shard,
    /// each shard involved is asked once (at most `fan_out` at a time), and
    /// the answers are merged newest first. Returns the feed and how many
    /// shards were asked.
    pub async fn feed(
        &self,
        user_id: u64,
        limit: u32,
    ) -> Result<(Vec<ArticleSummary>, usize), ShardDown> {
        let friends = self.friends(user_id).await?;
        let mut by_shard: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for f in friends {
            by_shard
                .entry(self.placement.shard_of(f))
                .or_default()
                .push(f);
        }
        let asked = by_shard.len();
        let answers: Vec<Result<Vec<ArticleSummary>, ShardDown>> = stream::iter(by_shard)
            .map(|(shard, authors)| async move {
                let mut q = sqlx::QueryBuilder::new(
                    "SELECT id, author_id, author_name, title, published_at, CAST(comment_count AS SIGNED) AS comment_count, \
                     CAST(like_count AS SIGNED) AS like_count FROM articles WHERE author_id IN (",
                );
                let mut ids = q.separated(", ");
                for a in &authors {
                    ids.push_bind(*a);
                }
                q.push(") ORDER BY published_at DESC, id DESC LIMIT ").push_bind(limit);
                q.build_query_as().fetch_all(&self.shards[shard]).await.map_err(|source| ShardDown { shard, source })
            })
            .buffer_unordered(self.fan_out.max(1))
            .collect()
            .await;
        let mut merged = Vec::new();
        for a in answers {
            merged.extend(a?);
        }
        merged.sort_by(|a, b| b.published_at.cmp(&a.published_at).then(b.id.cmp(&a.id)));
        merged.truncate(limit as usize);
        Ok((merged, asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn adding_a_shard_moves_most_keys_by_modulo_and_few_by_ring() {
        let keys = || 1..=20_000u64;
        let modulo = moved_share(&Modulo(2), &Modulo(3), keys());
        let ring = moved_share(
            &ConsistentHash::new(2, 160),
            &ConsistentHash::new(3, 160),
            keys(),
        );
        let dir = moved_share(
            &Modulo(2),
            &Directory::freeze(&Modulo(2), keys(), 3),
            keys(),
        );
        assert!((0.6..0.75).contains(&modulo), "modulo moved {modulo}");
        assert!((0.25..0.42).contains(&ring), "ring moved {ring}");
        assert_eq!(dir, 0.0, "a directory moves nothing until told to");
    }

    #[test]
    fn placements_spread_keys_evenly() {
        for p in [&Modulo(2) as &dyn Placement, &ConsistentHash::new(2, 160)] {
            let on0 = (1..=10_000u64).filter(|k| p.shard_of(*k) == 0).count();
            assert!((4_000..6_000).contains(&on0), "{on0} of 10000 on shard 0");
        }
    }

    #[test]
    fn ids_are_unique_across_nodes_and_increase() {
        let (a, b) = (IdGenerator::new(0), IdGenerator::new(1));
        let mut seen = HashSet::new();
        let mut last = 0;
        for _ in 0..20_000 {
            let x = a.next_id();
            assert!(x > last, "ids increase");
            last = x;
            assert!(seen.insert(x));
            assert!(seen.insert(b.next_id()));
        }
        assert_eq!(IdGenerator::node_of(b.next_id()), 1);
    }

    proptest! {
        #[test]
        fn every_key_has_a_shard_in_range(key in any::<u64>(), n in 1usize..8) {
            prop_assert!(Modulo(n).shard_of(key) < n);
            prop_assert!(ConsistentHash::new(n, 16).shard_of(key) < n);
        }
    }
}
