//! The friend graph as Redis sets: mutual friends by set intersection.
//!
//! The article: Redis brings data structures, Memcached just caches. This
//! route makes that concrete. `GET /users/{username}/mutual-friends?with={other}`
//! answers the friends two users have in common:
//!
//! - `--cache none`: the SQL it replaces, a self-join of `friendships`
//!   (`a.user_id = ? AND b.user_id = ? AND a.friend_id = b.friend_id`),
//!   which reads both users' rows on every request;
//! - `--cache object`: `SINTER friendset:{a} friendset:{b}` in Redis. Each
//!   set holds one user's friend ids. A set that is missing is filled from
//!   the primary (`DEL`, one `SADD` with every id, `PEXPIRE`), and the
//!   intersection runs in the same `MULTI`, so it never sees half a set.
//!   Befriending deletes both users' sets after the commit; the next read
//!   fills them again (`X-Cache: miss`).
//! - `--cache query`: the SQL result cached by its hash, like every other
//!   route under the anti-pattern (stale after a befriend, until the TTL).
//!
//! **The sets always live in Redis** (`REDIS_URL`), whatever
//! `--cache-backend` says: Memcached stores opaque values and has no sets,
//! so an intersection there would mean fetching both lists and
//! intersecting in the clone. A Redis that fails or is slow makes the
//! answer a bypass (the SQL), never an error.
//!
//! A set holds the ids and a `0` (ids start at 1): Redis deletes a set
//! when it becomes empty, and the `0` tells "no friends" from "not cached".
//! Simplified: the stale-set race of the other objects applies here too (a
//! fill that read the primary just before a befriend committed, stored
//! just after its delete, lives until the TTL).

use std::future::Future;
use std::time::Duration;

use part1_clones::error::ApiError;
use redis::aio::ConnectionManager;

use super::cache::friendset_key;
use crate::stampede::Outcome;

/// The friendship SQL the sets replace (binds: one user, the other), ids ascending.
pub const MUTUAL_SQL: &str = "SELECT a.friend_id FROM friendships a JOIN friendships b \
     ON b.user_id = ? AND b.friend_id = a.friend_id WHERE a.user_id = ? ORDER BY a.friend_id";

/// The member that keeps a set of no friends from being deleted.
const EMPTY: u64 = 0;

/// Users' friend ids as Redis sets, `friendset:{id}`.
#[derive(Clone)]
pub struct FriendSets {
    redis: ConnectionManager,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
}

/// Why the sets could not answer: the caller answers from SQL.
#[derive(Debug)]
pub enum Unanswered {
    /// Redis failed or did not answer in time.
    Redis(String),
    /// A fill could not read the primary (nothing was stored).
    NotStored,
    /// A set was deleted between its fill and the intersection (a
    /// befriend): rare; the SQL answers this once.
    Raced,
    /// The load failed (an error to return).
    Failed(ApiError),
}

impl FriendSets {
    /// Sets in `redis` under `prefix` (the clone's key prefix and `:`),
    /// each call bounded by `timeout`, each set living `ttl`.
    pub fn new(redis: ConnectionManager, prefix: &str, timeout: Duration, ttl: Duration) -> Self {
        FriendSets {
            redis,
            prefix: prefix.to_owned(),
            timeout,
            ttl,
        }
    }

    fn wire(&self, user: u64) -> String {
        format!("{}{}", self.prefix, friendset_key(user))
    }

    async fn run<T: redis::FromRedisValue>(&self, pipe: &redis::Pipeline) -> Result<T, Unanswered> {
        let mut conn = self.redis.clone();
        match tokio::time::timeout(self.timeout, pipe.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Unanswered::Redis(e.to_string())),
            Err(_) => Err(Unanswered::Redis(format!(
                "no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Both sets' presence and their intersection, in one `MULTI`.
    fn intersect(&self, pipe: &mut redis::Pipeline, a: u64, b: u64) {
        let (ka, kb) = (self.wire(a), self.wire(b));
        pipe.cmd("EXISTS").arg(&ka);
        pipe.cmd("EXISTS").arg(&kb);
        pipe.cmd("SINTER").arg(&ka).arg(&kb);
    }

    /// The mutual friends of `a` and `b`, ascending, and whether the sets
    /// were there (`hit`) or filled (`miss`). `load(user)` reads a user's
    /// friend ids from the primary (`false`: it could not, do not store).
    pub async fn mutual<F, Fut>(
        &self,
        a: u64,
        b: u64,
        load: F,
    ) -> Result<(Vec<u64>, Outcome), Unanswered>
    where
        F: Fn(u64) -> Fut,
        Fut: Future<Output = Result<(Vec<u64>, bool), ApiError>>,
    {
        let mut pipe = redis::pipe();
        pipe.atomic();
        self.intersect(&mut pipe, a, b);
        let (has_a, has_b, ids): (bool, bool, Vec<u64>) = self.run(&pipe).await?;
        if has_a && has_b {
            return Ok((members(ids), Outcome::Hit));
        }
        // Fill what is missing, then intersect, in one transaction.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let ttl_ms = u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let users = if a == b {
            vec![(a, has_a)]
        } else {
            vec![(a, has_a), (b, has_b)]
        };
        for (user, has) in users {
            if has {
                continue;
            }
            let (ids, ok) = load(user).await.map_err(Unanswered::Failed)?;
            if !ok {
                return Err(Unanswered::NotStored);
            }
            let key = self.wire(user);
            pipe.cmd("DEL").arg(&key).ignore();
            pipe.cmd("SADD").arg(&key).arg(EMPTY).arg(&ids).ignore();
            pipe.cmd("PEXPIRE").arg(&key).arg(ttl_ms).ignore();
        }
        self.intersect(&mut pipe, a, b);
        let (has_a, has_b, ids): (bool, bool, Vec<u64>) = self.run(&pipe).await?;
        if has_a && has_b {
            Ok((members(ids), Outcome::Miss))
        } else {
            Err(Unanswered::Raced)
        }
    }

    /// Deletes users' sets: what a befriend does after it commits. A
    /// failure is logged; the sets then live until their TTL.
    pub async fn forget(&self, users: &[u64]) {
        let mut pipe = redis::pipe();
        let mut del = redis::cmd("DEL");
        for u in users {
            del.arg(self.wire(*u));
        }
        pipe.add_command(del).ignore();
        if let Err(e) = self.run::<()>(&pipe).await {
            tracing::warn!(error = ?e, ?users, "friend sets not deleted: they live until their TTL");
        }
    }

    /// Whether a user's set is cached (for tests and the demo).
    pub async fn cached(&self, user: u64) -> Result<bool, String> {
        let mut pipe = redis::pipe();
        pipe.cmd("EXISTS").arg(self.wire(user));
        let (has,): (bool,) = self.run(&pipe).await.map_err(|e| format!("{e:?}"))?;
        Ok(has)
    }
}

/// The ids of a set, without the placeholder, ascending.
fn members(mut ids: Vec<u64>) -> Vec<u64> {
    ids.retain(|id| *id != EMPTY);
    ids.sort_unstable();
    ids
}

/// What the route answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mutual {
    /// The user of the path.
    pub user: String,
    /// The other user (`?with=`).
    pub with: String,
    /// Their friends in common, by id, ascending.
    pub mutual: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_placeholder_is_not_a_friend() {
        assert_eq!(members(vec![5, 0, 2]), vec![2, 5]);
        assert_eq!(members(vec![0]), Vec::<u64>::new());
    }
}
