//! Sessions in a cache: what part 1 did not do, and why.
//!
//! Part 1 keeps sessions in Redis ([`part1_clones::session::RedisSessions`])
//! and says "never in the database". Memcached looks like the same kind of
//! store: a key, a value, a TTL, shared by every clone. [`MemcachedSessions`]
//! is that store, part 1's [`SessionStore`] written on top of this part's
//! [`CacheBackend`], so experiment 8 of the demo can log users in, restart
//! Memcached (or fill it past its memory) and count who is still logged in.
//! The answer is nobody: a cache may forget anything at any time (that is
//! what makes it a cache), and a session forgotten is a user logged out, a
//! cart emptied. Redis with persistence keeps them; that is why part 1 put
//! them there.
//!
//! How it is stored:
//!
//! - the session record (`session:<id>`: user id, name, login time) as
//!   JSON, with the idle expiry (capped by the absolute one) as its TTL,
//!   set once at login. The idle expiry does **not** slide here: sliding it
//!   would mean writing the record again on every load, and a load that
//!   read the record just before a logout deleted it would then write it
//!   back: the user logged in again after logging out. A cache has no
//!   "extend only if it still exists" in [`CacheBackend`] (memcached's
//!   `touch`, Redis's `PEXPIRE` would do), so this store logs a user out
//!   `SESSION_IDLE_SECS` after login, busy or not: one more reason part 1
//!   keeps sessions in Redis, where the slide is one `PEXPIRE`;
//! - the cart (`session:<id>:cart`) as JSON, its items and the idempotency
//!   keys already used with the length each first push answered, with the
//!   time left to the absolute expiry as its TTL, changed only under a lock
//!   (`session:<id>:lock`, taken with the atomic `add` of the trait, a few
//!   seconds' TTL so a crashed holder cannot block it for ever), so two
//!   clones pushing at once never lose an item nor pass the cap. The
//!   idempotency keys live *in* the cart value, so one `set` writes the
//!   item and its key together: two `set`s (the cart, then the key) would
//!   add the item twice when the second failed and the client retried, and
//!   the other order would lose it. They are scoped to the session's cart
//!   (part 1's Redis store scopes them per user: the same key from another
//!   session of the same user is a new push here).
//!
//! Keys are built with [`Key`] from the id (64 hex digits, checked by
//! [`SessionId::parse`] before it gets here) and the user's own key (hashed
//! if not a plain token), so no input reaches the wire raw. Values are
//! bounded: a record or cart over [`MAX_VALUE_BYTES`] is refused, not
//! stored.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use part1_clones::error::StoreError;
use part1_clones::session::{CartAdd, CartPush, Expiry, Session, SessionId, SessionStore};
use serde::{Deserialize, Serialize};

use crate::backend::CacheBackend;
use crate::key::Key;

/// The largest session record or cart stored (16 KiB).
pub const MAX_VALUE_BYTES: usize = 16 * 1024;
/// How long a cart lock may be held before it lapses by itself.
const LOCK_TTL: Duration = Duration::from_secs(2);
/// How long a push waits for the lock before giving up.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// Sessions in Memcached (or any [`CacheBackend`]): part 1's
/// [`SessionStore`] on a cache. Correct while the cache keeps what it is
/// given; a restart or an eviction logs users out.
#[derive(Clone)]
pub struct MemcachedSessions {
    cache: Arc<dyn CacheBackend>,
    expiry: Expiry,
}

#[derive(Serialize, Deserialize)]
struct Record {
    user_id: u64,
    username: String,
    created_at: i64,
}

/// A cart: its items, and each idempotency key used on it with the cart
/// length its first push answered (written together, in one `set`).
#[derive(Default, Serialize, Deserialize)]
struct Cart {
    items: Vec<String>,
    #[serde(default)]
    keys: BTreeMap<String, u64>,
}

fn now() -> i64 {
    common::demo::now()
}

fn err(cause: impl ToString) -> StoreError {
    StoreError {
        store: "memcached",
        cause: cause.to_string(),
    }
}

impl MemcachedSessions {
    /// Sessions in `cache` (give it a key prefix of its own).
    pub fn new(cache: Arc<dyn CacheBackend>, expiry: Expiry) -> Self {
        MemcachedSessions { cache, expiry }
    }

    /// The key of a session's record.
    pub fn session_key(id: &SessionId) -> Key {
        Key::new("session", &[id.as_str()])
    }

    fn cart_key(id: &SessionId) -> Key {
        Self::session_key(id).derived("cart")
    }

    fn lock_key(id: &SessionId) -> Key {
        Self::session_key(id).derived("lock")
    }

    /// What is left of the absolute expiry of a session made at `created_at`.
    fn remaining(&self, created_at: i64) -> Option<Duration> {
        let left = self.expiry.absolute.as_secs() as i64 - (now() - created_at);
        (left > 0).then(|| Duration::from_secs(left as u64))
    }

    fn bounded(bytes: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        if bytes.len() > MAX_VALUE_BYTES {
            Err(err(format!(
                "a session value of {} bytes is over the bound of {MAX_VALUE_BYTES}",
                bytes.len()
            )))
        } else {
            Ok(bytes)
        }
    }

    async fn lock(&self, id: &SessionId) -> Result<(), StoreError> {
        let key = Self::lock_key(id);
        let until = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            if self.cache.add(&key, b"1", LOCK_TTL).await.map_err(err)? {
                return Ok(());
            }
            if tokio::time::Instant::now() >= until {
                return Err(err("the cart is locked by another request"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn cart_of(&self, id: &SessionId) -> Result<Cart, StoreError> {
        match self.cache.get(&Self::cart_key(id)).await.map_err(err)? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(err),
            None => Ok(Cart::default()),
        }
    }

    async fn push_locked(
        &self,
        id: &SessionId,
        session: &Session,
        push: CartPush<'_>,
    ) -> Result<CartAdd, StoreError> {
        let mut cart = self.cart_of(id).await?;
        if let Some(k) = push.key
            && let Some(first) = cart.keys.get(k.as_str())
        {
            return Ok(CartAdd::Repeated(*first));
        }
        if cart.items.len() as u64 >= push.max_items {
            return Ok(CartAdd::Full);
        }
        cart.items.push(push.item.to_owned());
        let len = cart.items.len() as u64;
        if let Some(k) = push.key {
            cart.keys.insert(k.as_str().to_owned(), len);
        }
        let ttl = self
            .remaining(session.created_at)
            .ok_or_else(|| err("the session has expired"))?;
        let bytes = Self::bounded(serde_json::to_vec(&cart).map_err(err)?)?;
        // One write: the item and its idempotency key land together or not at all.
        self.cache
            .set(&Self::cart_key(id), &bytes, ttl)
            .await
            .map_err(err)?;
        Ok(CartAdd::Added(len))
    }
}

impl SessionStore for MemcachedSessions {
    fn name(&self) -> &'static str {
        "memcached"
    }

    async fn create(&self, user_id: u64, username: &str) -> Result<SessionId, StoreError> {
        let id = SessionId::generate();
        let record = Record {
            user_id,
            username: username.to_owned(),
            created_at: now(),
        };
        let bytes = Self::bounded(serde_json::to_vec(&record).map_err(err)?)?;
        let ttl = self.expiry.idle.min(self.expiry.absolute);
        self.cache
            .set(&Self::session_key(&id), &bytes, ttl)
            .await
            .map_err(err)?;
        Ok(id)
    }

    async fn load(&self, id: &SessionId) -> Result<Option<Session>, StoreError> {
        let key = Self::session_key(id);
        let Some(bytes) = self.cache.get(&key).await.map_err(err)? else {
            return Ok(None);
        };
        let Ok(record) = serde_json::from_slice::<Record>(&bytes) else {
            return Ok(None); // not a record of ours: no session
        };
        if self.remaining(record.created_at).is_none() {
            self.delete(id).await?;
            return Ok(None);
        }
        // No write back (no sliding idle expiry, see the module docs): a
        // `set` here would bring back a session a logout deleted meanwhile.
        Ok(Some(Session {
            user_id: record.user_id,
            username: record.username,
            created_at: record.created_at,
        }))
    }

    async fn delete(&self, id: &SessionId) -> Result<(), StoreError> {
        self.cache
            .delete_many(&[Self::session_key(id), Self::cart_key(id)])
            .await
            .map_err(err)
    }

    async fn add_to_cart(&self, id: &SessionId, push: CartPush<'_>) -> Result<CartAdd, StoreError> {
        let Some(session) = self.load(id).await? else {
            return Err(err("session vanished"));
        };
        self.lock(id).await?;
        let outcome = self.push_locked(id, &session, push).await;
        // Released on every path; if this fails, the lock lapses by its TTL.
        let _ = self.cache.delete(&Self::lock_key(id)).await;
        outcome
    }

    async fn cart(&self, id: &SessionId) -> Result<Vec<String>, StoreError> {
        Ok(self.cart_of(id).await?.items)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.cache
            .get(&Key::new("ping", &[]))
            .await
            .map(|_| ())
            .map_err(err)
    }
}
