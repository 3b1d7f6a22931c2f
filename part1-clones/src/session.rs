//! Sessions: the heart of part 1, one trait and three implementations.
//!
//! Behind a load balancer, a user's requests land on different clones. A
//! session kept in one clone's memory ([`MemorySessions`], the anti-pattern)
//! is invisible to the others: with 3 clones and round robin, about two
//! requests in three find no session, and whatever the session held (the
//! cart) is split over three private copies. A session in a central store
//! ([`RedisSessions`], the fix) is the same whichever clone reads it, so any
//! clone can die or be replaced without logging anyone out.
//!
//! [`MariadbSessions`] is the third comparison: central, so correct, but it
//! turns every page view into database reads *and writes* on the one server
//! that is hardest to scale (part 2). The demo and the bench measure it.
//!
//! What every store does, because sessions are a security boundary:
//!
//! - ids are 256 bits from the operating system's CSPRNG, hex encoded;
//! - a cookie that is not exactly 64 lowercase hex digits is "not logged
//!   in" without touching the store, so hostile cookies never become keys;
//! - idle expiry (sliding: each request extends it) and absolute expiry
//!   (from login, never extended);
//! - login makes a new id (no fixation), logout deletes the record;
//! - the cart is changed atomically in the store (a Lua script, a
//!   transaction), so parallel requests on different clones never lose an
//!   item, never pass its cap, and never push one idempotency key twice
//!   (see [`crate::idempotency`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use rand::TryRngCore;
use rand::rngs::OsRng;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::error::StoreError;
use crate::idempotency::{self, IdempotencyKey};

/// A session id: 32 random bytes as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionId(String);

impl SessionId {
    /// A new id from the OS CSPRNG (256 bits).
    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the operating system's random number generator failed");
        SessionId(hex::encode(bytes))
    }

    /// Parses a cookie value: `None` unless it is exactly 64 lowercase hex
    /// digits. Anything else (garbage, injection attempts, ids of another
    /// format) is simply "no session".
    pub fn parse(raw: &str) -> Option<Self> {
        (raw.len() == 64
            && raw
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| SessionId(raw.to_owned()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a session holds about its user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The user's id.
    pub user_id: u64,
    /// The user's name.
    pub username: String,
    /// Login time (Unix seconds): absolute expiry counts from here.
    pub created_at: i64,
}

/// How long sessions live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// Without a request for this long, the session ends.
    pub idle: Duration,
    /// After this long from login, the session ends, active or not.
    pub absolute: Duration,
}

/// One item to add to a cart, with the rules the store enforces atomically.
#[derive(Debug, Clone, Copy)]
pub struct CartPush<'a> {
    /// The session's user: idempotency keys are scoped per user.
    pub user_id: u64,
    /// What to add.
    pub item: &'a str,
    /// The cart's cap: a full cart takes nothing more.
    pub max_items: u64,
    /// The client's name for this attempt, if it sent one.
    pub key: Option<&'a IdempotencyKey>,
}

/// What adding to a cart did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CartAdd {
    /// Added; the cart now has this many items.
    Added(u64),
    /// The idempotency key was used before: nothing added, and this is the
    /// length the first attempt answered.
    Repeated(u64),
    /// The cart is at its cap; nothing added.
    Full,
}

/// Where sessions live. One implementation per lesson variant.
pub trait SessionStore: Send + Sync + 'static {
    /// The variant's name, as the `--sessions` flag spells it.
    fn name(&self) -> &'static str;

    /// Starts a session for a user and returns its new id.
    fn create(
        &self,
        user_id: u64,
        username: &str,
    ) -> impl Future<Output = Result<SessionId, StoreError>> + Send;

    /// Loads a live session and extends its idle expiry; `None` if it does
    /// not exist or has expired.
    fn load(
        &self,
        id: &SessionId,
    ) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// Ends a session: its record and its cart are deleted.
    fn delete(&self, id: &SessionId) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Appends an item to the session's cart, atomically with its cap and
    /// its idempotency key: two requests racing with one key add one item.
    fn add_to_cart(
        &self,
        id: &SessionId,
        push: CartPush<'_>,
    ) -> impl Future<Output = Result<CartAdd, StoreError>> + Send;

    /// The session's cart, oldest item first.
    fn cart(&self, id: &SessionId) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Whether the store answers (readiness).
    fn ping(&self) -> impl Future<Output = Result<(), StoreError>> + Send;
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

// ------------------------------------------------------------------ memory

struct MemoryEntry {
    session: Session,
    last_seen: i64,
    cart: Vec<String>,
    /// Idempotency keys seen, with the length they answered. Per session
    /// here, and gone with the clone: one more way memory fails.
    keys: HashMap<String, u64>,
}

/// The anti-pattern: sessions in this clone's memory. Correct on one
/// server; behind a load balancer, each clone knows only the sessions that
/// happened to log in through it, and a restart logs everyone out.
pub struct MemorySessions {
    expiry: Expiry,
    entries: Mutex<HashMap<SessionId, MemoryEntry>>,
}

impl MemorySessions {
    /// An empty store.
    pub fn new(expiry: Expiry) -> Self {
        MemorySessions {
            expiry,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn live(&self, entry: &MemoryEntry, t: i64) -> bool {
        t - entry.last_seen < self.expiry.idle.as_secs() as i64
            && t - entry.session.created_at < self.expiry.absolute.as_secs() as i64
    }
}

impl SessionStore for MemorySessions {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn create(&self, user_id: u64, username: &str) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let t = now();
        let mut entries = self.entries.lock().expect("session map poisoned");
        // Expired sessions are swept on login, so the map cannot grow forever.
        entries.retain(|_, e| t - e.last_seen < self.expiry.idle.as_secs() as i64);
        entries.insert(
            id.clone(),
            MemoryEntry {
                session: Session {
                    user_id,
                    username: username.to_owned(),
                    created_at: t,
                },
                last_seen: t,
                cart: Vec::new(),
                keys: HashMap::new(),
            },
        );
        Ok(id)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let t = now();
        let mut entries = self.entries.lock().expect("session map poisoned");
        let live = entries.get(id).map(|e| self.live(e, t));
        match live {
            Some(true) => {
                let e = entries.get_mut(id).expect("present");
                e.last_seen = t;
                Ok(Some(e.session.clone()))
            }
            Some(false) => {
                entries.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.entries
            .lock()
            .expect("session map poisoned")
            .remove(id);
        Ok(())
    }

    async fn add_to_cart(&self, id: &SessionId, push: CartPush<'_>) -> Result<CartAdd, StoreError> {
        let mut entries = self.entries.lock().expect("session map poisoned");
        let e = entries.get_mut(id).ok_or_else(|| StoreError {
            store: "memory",
            cause: "session vanished".into(),
        })?;
        // One lock around check and push: atomic within this clone only.
        if let Some(len) = push.key.and_then(|k| e.keys.get(k.as_str())) {
            return Ok(CartAdd::Repeated(*len));
        }
        if e.cart.len() as u64 >= push.max_items {
            return Ok(CartAdd::Full);
        }
        e.cart.push(push.item.to_owned());
        let len = e.cart.len() as u64;
        if let Some(k) = push.key {
            e.keys.insert(k.as_str().to_owned(), len);
        }
        Ok(CartAdd::Added(len))
    }

    async fn cart(&self, id: &SessionId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .entries
            .lock()
            .expect("session map poisoned")
            .get(id)
            .map(|e| e.cart.clone())
            .unwrap_or_default())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

// ------------------------------------------------------------------- redis

/// The fix: sessions in Redis, shared by every clone.
///
/// A session is a hash `{prefix}:session:{id}` with a TTL of the idle
/// expiry; the cart is a list `{prefix}:cart:{id}` with the same TTL. A
/// request costs one round trip: `HGETALL` and both `EXPIRE`s go in one
/// pipeline.
#[derive(Clone)]
pub struct RedisSessions {
    redis: redis::aio::ConnectionManager,
    prefix: String,
    expiry: Expiry,
}

fn redis_err(e: redis::RedisError) -> StoreError {
    StoreError {
        store: "redis",
        cause: e.to_string(),
    }
}

impl RedisSessions {
    /// Sessions under the key prefix `prefix` (tests use a unique one).
    pub fn new(redis: redis::aio::ConnectionManager, prefix: &str, expiry: Expiry) -> Self {
        RedisSessions {
            redis,
            prefix: prefix.to_owned(),
            expiry,
        }
    }

    /// The key of a session's record.
    pub fn session_key(&self, id: &SessionId) -> String {
        format!("{}:session:{}", self.prefix, id.as_str())
    }

    /// The key of a session's cart.
    pub fn cart_key(&self, id: &SessionId) -> String {
        format!("{}:cart:{}", self.prefix, id.as_str())
    }

    /// The key remembering one user's idempotency key for the cart.
    pub fn idempotency_key(&self, user_id: u64, key: &IdempotencyKey) -> String {
        format!("{}:idem:cart:{user_id}:{}", self.prefix, key.as_str())
    }
}

/// Check the key, check the cap, push, remember the key: one script, so
/// Redis runs it as one step and no other client's command comes between
/// (two clones retrying one key cannot both push; two pushes cannot both
/// pass a cap of one left). `KEYS[2]` is absent without an idempotency key.
const CART_PUSH: &str = r"
if KEYS[2] then
  local first = redis.call('GET', KEYS[2])
  if first then return {'repeated', tonumber(first)} end
end
local len = redis.call('LLEN', KEYS[1])
if len >= tonumber(ARGV[2]) then return {'full', len} end
len = redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if KEYS[2] then redis.call('SET', KEYS[2], len, 'EX', ARGV[4]) end
return {'added', len}
";

static CART_PUSH_SCRIPT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(CART_PUSH));

impl SessionStore for RedisSessions {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn create(&self, user_id: u64, username: &str) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let key = self.session_key(&id);
        let mut conn = self.redis.clone();
        let () = redis::pipe()
            .hset_multiple(
                &key,
                &[
                    ("user_id", user_id.to_string()),
                    ("username", username.to_owned()),
                    ("created_at", now().to_string()),
                ],
            )
            .ignore()
            .expire(&key, self.expiry.idle.as_secs() as i64)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(id)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let (key, cart) = (self.session_key(id), self.cart_key(id));
        let idle = self.expiry.idle.as_secs() as i64;
        let mut conn = self.redis.clone();
        // One round trip: read the record and slide both expiries.
        let (fields,): (HashMap<String, String>,) = redis::pipe()
            .hgetall(&key)
            .expire(&key, idle)
            .ignore()
            .expire(&cart, idle)
            .ignore()
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let parse = || -> Option<Session> {
            Some(Session {
                user_id: fields.get("user_id")?.parse().ok()?,
                username: fields.get("username")?.clone(),
                created_at: fields.get("created_at")?.parse().ok()?,
            })
        };
        match parse() {
            Some(s) if now() - s.created_at < self.expiry.absolute.as_secs() as i64 => Ok(Some(s)),
            Some(_) => {
                self.delete(id).await?;
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let _: u64 = conn
            .del(&[self.session_key(id), self.cart_key(id)])
            .await
            .map_err(redis_err)?;
        Ok(())
    }

    async fn add_to_cart(&self, id: &SessionId, push: CartPush<'_>) -> Result<CartAdd, StoreError> {
        let mut conn = self.redis.clone();
        let mut call = CART_PUSH_SCRIPT.key(self.cart_key(id));
        if let Some(k) = push.key {
            call.key(self.idempotency_key(push.user_id, k));
        }
        // EVALSHA, falling back to EVAL once if Redis restarted and forgot it.
        let (outcome, len): (String, u64) = call
            .arg(push.item)
            .arg(push.max_items)
            .arg(self.expiry.idle.as_secs())
            .arg(idempotency::TTL_SECS)
            .invoke_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(match outcome.as_str() {
            "repeated" => CartAdd::Repeated(len),
            "full" => CartAdd::Full,
            _ => CartAdd::Added(len),
        })
    }

    async fn cart(&self, id: &SessionId) -> Result<Vec<String>, StoreError> {
        let mut conn = self.redis.clone();
        conn.lrange(self.cart_key(id), 0, -1)
            .await
            .map_err(redis_err)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.redis.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(())
    }
}

// ----------------------------------------------------------------- mariadb

/// The comparison: sessions in the database. Central, so correct behind a
/// load balancer, but every request now reads *and writes* (the sliding
/// expiry) the database, the one server that is hardest to scale out.
#[derive(Clone)]
pub struct MariadbSessions {
    pool: MySqlPool,
    expiry: Expiry,
}

fn sql_err(e: sqlx::Error) -> StoreError {
    StoreError {
        store: "mariadb",
        cause: e.to_string(),
    }
}

impl MariadbSessions {
    /// Sessions in the `sessions` table of `pool`'s database (see migrations/).
    pub fn new(pool: MySqlPool, expiry: Expiry) -> Self {
        MariadbSessions { pool, expiry }
    }
}

impl SessionStore for MariadbSessions {
    fn name(&self) -> &'static str {
        "mariadb"
    }

    async fn create(&self, user_id: u64, username: &str) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let t = now();
        sqlx::query("INSERT INTO sessions (id, user_id, username, created_at, last_seen) VALUES (?, ?, ?, ?, ?)")
            .bind(id.as_str())
            .bind(user_id)
            .bind(username)
            .bind(t)
            .bind(t)
            .execute(&self.pool)
            .await
            .map_err(sql_err)?;
        Ok(id)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let t = now();
        let row: Option<(u64, String, i64, i64)> = sqlx::query_as(
            "SELECT user_id, username, created_at, last_seen FROM sessions WHERE id = ?",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(sql_err)?;
        let Some((user_id, username, created_at, last_seen)) = row else {
            return Ok(None);
        };
        if t - last_seen >= self.expiry.idle.as_secs() as i64
            || t - created_at >= self.expiry.absolute.as_secs() as i64
        {
            self.delete(id).await?;
            return Ok(None);
        }
        // The write on every read that makes this store expensive.
        sqlx::query("UPDATE sessions SET last_seen = ? WHERE id = ?")
            .bind(t)
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(sql_err)?;
        Ok(Some(Session {
            user_id,
            username,
            created_at,
        }))
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_err)?;
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        sqlx::query("DELETE FROM cart_items WHERE session_id = ?")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        tx.commit().await.map_err(sql_err)
    }

    async fn add_to_cart(&self, id: &SessionId, push: CartPush<'_>) -> Result<CartAdd, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql_err)?;
        // Lock the session's row first: every push to this cart queues
        // here, so the count below cannot be passed by a racing push, and
        // a racing retry sees the key the first one committed.
        let live: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM sessions WHERE id = ? FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(sql_err)?;
        if live.is_none() {
            return Err(StoreError {
                store: "mariadb",
                cause: "session vanished".into(),
            });
        }
        if let Some(k) = push.key {
            let first: Option<u64> = sqlx::query_scalar(
                "SELECT cart_len FROM cart_idempotency WHERE user_id = ? AND idem_key = ? AND created_at > ?",
            )
            .bind(push.user_id)
            .bind(k.as_str())
            .bind(now() - idempotency::TTL_SECS as i64)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql_err)?;
            if let Some(len) = first {
                return Ok(CartAdd::Repeated(len));
            }
        }
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM cart_items WHERE session_id = ?")
            .bind(id.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(sql_err)?;
        if n as u64 >= push.max_items {
            return Ok(CartAdd::Full);
        }
        sqlx::query("INSERT INTO cart_items (session_id, item) VALUES (?, ?)")
            .bind(id.as_str())
            .bind(push.item)
            .execute(&mut *tx)
            .await
            .map_err(sql_err)?;
        let len = n as u64 + 1;
        if let Some(k) = push.key {
            // REPLACE: an expired row of the same key is simply overwritten.
            // (Production purges old rows with a scheduled job.)
            sqlx::query("REPLACE INTO cart_idempotency (user_id, idem_key, cart_len, created_at) VALUES (?, ?, ?, ?)")
                .bind(push.user_id)
                .bind(k.as_str())
                .bind(len)
                .bind(now())
                .execute(&mut *tx)
                .await
                .map_err(sql_err)?;
        }
        tx.commit().await.map_err(sql_err)?;
        Ok(CartAdd::Added(len))
    }

    async fn cart(&self, id: &SessionId) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT item FROM cart_items WHERE session_id = ? ORDER BY seq")
            .bind(id.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(sql_err)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(sql_err)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_256_bits_of_hex_and_differ() {
        let a = SessionId::generate();
        assert_eq!(a.as_str().len(), 64);
        assert_eq!(SessionId::parse(a.as_str()), Some(a.clone()));
        assert_ne!(a, SessionId::generate());
    }

    #[test]
    fn hostile_cookies_are_no_session() {
        for raw in [
            "",
            "x",
            "../../etc/passwd",
            "*",
            &"A".repeat(64),
            &format!("{}\r\nFLUSHALL", "a".repeat(54)),
        ] {
            assert_eq!(SessionId::parse(raw), None, "{raw:?}");
        }
    }

    proptest! {
        #[test]
        fn any_accepted_id_is_plain_hex(raw in "\\PC{0,80}") {
            if let Some(id) = SessionId::parse(&raw) {
                prop_assert_eq!(id.as_str().len(), 64);
                prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
            }
        }
    }

    #[tokio::test]
    async fn memory_sessions_expire_and_keep_a_cart() {
        let store = MemorySessions::new(Expiry {
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(3600),
        });
        let id = store.create(7, "ada").await.unwrap();
        assert_eq!(store.load(&id).await.unwrap().unwrap().username, "ada");
        let key = IdempotencyKey::parse("k1").unwrap();
        let push = CartPush {
            user_id: 7,
            item: "book",
            max_items: 2,
            key: Some(&key),
        };
        assert_eq!(
            store.add_to_cart(&id, push).await.unwrap(),
            CartAdd::Added(1)
        );
        assert_eq!(
            store.add_to_cart(&id, push).await.unwrap(),
            CartAdd::Repeated(1)
        );
        let no_key = CartPush { key: None, ..push };
        assert_eq!(
            store.add_to_cart(&id, no_key).await.unwrap(),
            CartAdd::Added(2)
        );
        assert_eq!(store.add_to_cart(&id, no_key).await.unwrap(), CartAdd::Full);
        assert_eq!(store.cart(&id).await.unwrap(), vec!["book", "book"]);
        store.delete(&id).await.unwrap();
        assert_eq!(store.load(&id).await.unwrap(), None);

        let expired = MemorySessions::new(Expiry {
            idle: Duration::ZERO,
            absolute: Duration::from_secs(3600),
        });
        let id = expired.create(7, "ada").await.unwrap();
        assert_eq!(expired.load(&id).await.unwrap(), None);
    }
}
