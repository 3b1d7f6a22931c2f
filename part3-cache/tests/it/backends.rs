//! Memcached and Redis through one trait, against the real servers.
//!
//! Every test runs the same calls on both backends, each with a key prefix
//! of its own, so tests run in parallel on the shared servers.

use std::sync::Arc;
use std::time::Duration;

use common::testing;
use part3_cache::backend::{
    CacheBackend, CacheError, DEFAULT_MAX_VALUE_BYTES, Memcached, RedisCache,
};
use part3_cache::key::Key;

/// The deadline tests give the cache: long, so a busy machine never turns
/// a hit into a timeout; the closed-port tests use the real default.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `host:port` of a `memcache://host:port?...` URL.
fn memcached_addr(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['?', '/', ','])
        .next()
        .unwrap_or(rest)
        .to_owned()
}

/// Memcached at `MEMCACHED_URL` with `prefix`; panics with the command
/// that starts it.
pub async fn memcached(prefix: &str) -> Memcached {
    let url = testing::stack().memcached_url;
    testing::tcp("Memcached", &memcached_addr(&url))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Memcached::connect(&url, prefix, TEST_TIMEOUT)
        .await
        .unwrap()
}

/// Redis at `REDIS_URL` with `prefix`; panics with the command that
/// starts it.
pub async fn redis(prefix: &str) -> RedisCache {
    let url = testing::stack().redis_url;
    testing::redis_at(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    RedisCache::connect(&url, prefix, TEST_TIMEOUT)
        .await
        .unwrap()
}

/// Both backends, each with a fresh prefix (`test_..._:`).
pub async fn both(test: &str) -> Vec<Arc<dyn CacheBackend>> {
    vec![
        Arc::new(memcached(&prefix(test)).await),
        Arc::new(redis(&prefix(test)).await),
    ]
}

/// A unique key prefix for one test.
pub fn prefix(test: &str) -> String {
    format!("{}:", testing::unique_name(test))
}

/// A port on 127.0.0.1 with nothing listening.
pub async fn closed_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Polls `f` until it is true; panics after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_value_round_trips_and_is_deleted() {
    for cache in both("rt").await {
        let key = Key::new("article", &["1"]);
        assert_eq!(cache.get(&key).await.unwrap(), None, "{}", cache.name());
        cache
            .set(&key, b"first", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap().as_deref(),
            Some(&b"first"[..])
        );
        cache
            .set(&key, b"second", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap().as_deref(),
            Some(&b"second"[..])
        );
        cache.delete(&key).await.unwrap();
        assert_eq!(cache.get(&key).await.unwrap(), None, "{}", cache.name());
        // Deleting what is not there is not an error.
        cache.delete(&key).await.unwrap();
    }
}

#[tokio::test]
async fn get_many_answers_every_key_in_order_in_one_call() {
    for cache in both("many").await {
        let keys: Vec<Key> = (0..20)
            .map(|i| Key::new("article", &[&i.to_string()]))
            .collect();
        for key in keys.iter().step_by(2) {
            cache
                .set(key, key.as_str().as_bytes(), Duration::from_secs(60))
                .await
                .unwrap();
        }
        let values = cache.get_many(&keys).await.unwrap();
        assert_eq!(values.len(), keys.len());
        for (i, (key, value)) in keys.iter().zip(&values).enumerate() {
            let expected = (i % 2 == 0).then(|| key.as_str().as_bytes().to_vec());
            assert_eq!(value, &expected, "{} key {key}", cache.name());
        }
        assert_eq!(
            cache.get_many(&[]).await.unwrap(),
            Vec::<Option<Vec<u8>>>::new()
        );
        cache.delete_many(&keys).await.unwrap();
        let gone = cache.get_many(&keys).await.unwrap();
        assert!(gone.iter().all(Option::is_none), "{}", cache.name());
    }
}

#[tokio::test]
async fn add_stores_only_when_absent() {
    for cache in both("add").await {
        let key = Key::new("lock", &["a"]);
        assert!(
            cache
                .add(&key, b"one", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert!(
            !cache
                .add(&key, b"two", Duration::from_secs(60))
                .await
                .unwrap()
        );
        assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some(&b"one"[..]));
        cache.delete(&key).await.unwrap();
        assert!(
            cache
                .add(&key, b"three", Duration::from_secs(60))
                .await
                .unwrap()
        );
    }
}

#[tokio::test]
async fn concurrent_adds_from_separate_connections_have_one_winner() {
    let prefixes = (prefix("race_m"), prefix("race_r"));
    let mut groups: Vec<Vec<Arc<dyn CacheBackend>>> = vec![Vec::new(), Vec::new()];
    for _ in 0..10 {
        groups[0].push(Arc::new(memcached(&prefixes.0).await));
        groups[1].push(Arc::new(redis(&prefixes.1).await));
    }
    for group in groups {
        let key = Key::new("lock", &["contended"]);
        let won = futures::future::join_all(group.iter().enumerate().map(|(i, cache)| {
            let key = key.clone();
            async move {
                cache
                    .add(&key, i.to_string().as_bytes(), Duration::from_secs(60))
                    .await
                    .unwrap()
            }
        }))
        .await;
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{}", group[0].name());
    }
}

#[tokio::test]
async fn a_value_expires_after_its_ttl() {
    for cache in both("ttl").await {
        let key = Key::new("article", &["ttl"]);
        // Memcached counts whole seconds: one second is its shortest TTL.
        cache
            .set(&key, b"short", Duration::from_secs(1))
            .await
            .unwrap();
        let long = Key::new("article", &["long"]);
        cache
            .set(&long, b"long", Duration::from_secs(60))
            .await
            .unwrap();
        eventually(Duration::from_secs(5), "the value expires", || async {
            cache.get(&key).await.unwrap().is_none()
        })
        .await;
        assert_eq!(
            cache.get(&long).await.unwrap().as_deref(),
            Some(&b"long"[..])
        );
    }
}

#[tokio::test]
async fn values_over_the_bound_are_not_cached() {
    let (p1, p2) = (prefix("big_m"), prefix("big_r"));
    let small: Vec<Arc<dyn CacheBackend>> = vec![
        Arc::new(memcached(&p1).await.with_max_value_bytes(1024)),
        Arc::new(redis(&p2).await.with_max_value_bytes(1024)),
    ];
    for cache in small {
        let key = Key::new("article", &["big"]);
        let err = cache
            .set(&key, &[b'x'; 2048], Duration::from_secs(60))
            .await;
        assert!(
            matches!(
                err,
                Err(CacheError::TooLarge {
                    size: 2048,
                    max: 1024
                })
            ),
            "{}: {err:?}",
            cache.name()
        );
        assert!(matches!(
            cache
                .add(&key, &[b'x'; 2048], Duration::from_secs(60))
                .await,
            Err(CacheError::TooLarge { .. })
        ));
        assert_eq!(cache.get(&key).await.unwrap(), None);
        cache
            .set(&key, &[b'x'; 1024], Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(cache.get(&key).await.unwrap().map(|v| v.len()), Some(1024));
    }
    // The default bound: exactly at it is cached, one byte over is not.
    for cache in both("bigdefault").await {
        let key = Key::new("article", &["default"]);
        let at = vec![b'y'; DEFAULT_MAX_VALUE_BYTES];
        cache.set(&key, &at, Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap().as_deref(),
            Some(at.as_slice())
        );
        let over = vec![b'y'; DEFAULT_MAX_VALUE_BYTES + 1];
        assert!(matches!(
            cache.set(&key, &over, Duration::from_secs(60)).await,
            Err(CacheError::TooLarge { .. })
        ));
    }
}

#[tokio::test]
async fn prefixes_keep_tests_apart() {
    let (a, b) = (prefix("pa"), prefix("pb"));
    let pairs: Vec<(Arc<dyn CacheBackend>, Arc<dyn CacheBackend>)> = vec![
        (Arc::new(memcached(&a).await), Arc::new(memcached(&b).await)),
        (Arc::new(redis(&a).await), Arc::new(redis(&b).await)),
    ];
    for (first, second) in pairs {
        let key = Key::new("article", &["same"]);
        first
            .set(&key, b"a", Duration::from_secs(60))
            .await
            .unwrap();
        second
            .set(&key, b"b", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(first.get(&key).await.unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(second.get(&key).await.unwrap().as_deref(), Some(&b"b"[..]));
    }
}

#[tokio::test]
async fn a_bad_prefix_is_refused_at_start() {
    let stack = testing::stack();
    assert!(matches!(
        Memcached::connect(&stack.memcached_url, "a b", TEST_TIMEOUT).await,
        Err(CacheError::Config(_))
    ));
    assert!(matches!(
        RedisCache::connect(&stack.redis_url, "a\r\nb", TEST_TIMEOUT).await,
        Err(CacheError::Config(_))
    ));
}

/// `op`'s answer, or a panic if it hangs: the guard is far above the
/// cache's deadline, it is not a timing assertion.
async fn guarded<T>(name: &str, op: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .unwrap_or_else(|_| panic!("{name} hung"))
}

/// Every operation on `cache` fails, and none hangs.
async fn every_operation_fails(cache: &dyn CacheBackend) {
    let key = Key::new("article", &["1"]);
    let keys = [key.clone(), Key::new("article", &["2"])];
    let ttl = Duration::from_secs(1);
    let name = cache.name();
    let r = guarded("get", cache.get(&key)).await;
    assert!(r.is_err(), "{name}: get {r:?}");
    let r = guarded("get_many", cache.get_many(&keys)).await;
    assert!(r.is_err(), "{name}: get_many {r:?}");
    let r = guarded("set", cache.set(&key, b"v", ttl)).await;
    assert!(r.is_err(), "{name}: set {r:?}");
    let r = guarded("add", cache.add(&key, b"v", ttl)).await;
    assert!(r.is_err(), "{name}: add {r:?}");
    let r = guarded("delete", cache.delete(&key)).await;
    assert!(r.is_err(), "{name}: delete {r:?}");
    let r = guarded("delete_many", cache.delete_many(&keys)).await;
    assert!(r.is_err(), "{name}: delete_many {r:?}");
}

#[tokio::test]
async fn a_cache_at_a_closed_port_answers_errors_not_hangs() {
    let port = closed_port().await;
    let timeout = part3_cache::backend::DEFAULT_TIMEOUT;
    // Connecting is lazy: a clone starts while its cache is down.
    let memcached = Memcached::connect(&format!("memcache://127.0.0.1:{port}"), "", timeout)
        .await
        .unwrap();
    let redis = RedisCache::connect(&format!("redis://127.0.0.1:{port}"), "", timeout)
        .await
        .unwrap();
    every_operation_fails(&memcached).await;
    every_operation_fails(&redis).await;
}

#[tokio::test]
async fn a_cache_that_never_answers_times_out() {
    // A listener that is never accepted from: the kernel completes the
    // handshake, nobody reads. A hung server looks like this.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let timeout = part3_cache::backend::DEFAULT_TIMEOUT;
    let memcached = Memcached::connect(&format!("memcache://127.0.0.1:{port}"), "", timeout)
        .await
        .unwrap();
    let redis = RedisCache::connect(&format!("redis://127.0.0.1:{port}"), "", timeout)
        .await
        .unwrap();
    for cache in [&memcached as &dyn CacheBackend, &redis] {
        let r = guarded("get", cache.get(&Key::new("a", &["1"]))).await;
        assert!(
            matches!(r, Err(CacheError::Timeout(_) | CacheError::Unavailable(_))),
            "{}: {r:?}",
            cache.name()
        );
    }
    drop(listener);
}

// ------------------------------------------------ private servers (experiments 6 and 8)

use part1_clones::session::{CartAdd, CartPush, Expiry, SessionStore};
use part3_cache::demo::backends::{PrivateMemcached, PrivateRedis, TurnCounter, read_count};
use part3_cache::sessions::MemcachedSessions;

const EXPIRY: Expiry = Expiry {
    idle: Duration::from_secs(600),
    absolute: Duration::from_secs(3600),
};

#[tokio::test]
async fn a_multi_get_is_one_round_trip_by_the_servers_counters() {
    let keys: Vec<Key> = (0..100)
        .map(|i| Key::new("article", &[&i.to_string()]))
        .collect();
    // Redis counts its own commands: one MGET, no GET.
    let rd = PrivateRedis::start(false).await.unwrap();
    let redis = rd.client("").await.unwrap();
    for k in &keys {
        redis.set(k, b"v", Duration::from_secs(60)).await.unwrap();
    }
    let (g0, m0) = (
        rd.calls("get").await.unwrap(),
        rd.calls("mget").await.unwrap(),
    );
    assert_eq!(read_count(&redis, &keys).await.unwrap(), 100);
    assert_eq!(rd.calls("mget").await.unwrap() - m0, 1);
    assert_eq!(rd.calls("get").await.unwrap() - g0, 0);
    for k in &keys[..10] {
        redis.get(k).await.unwrap();
    }
    assert_eq!(rd.calls("get").await.unwrap() - g0, 10);

    // Memcached counts keys (cmd_get 100 either way); the relay counts
    // the round trips on the wire.
    let mc = PrivateMemcached::start(64).await.unwrap();
    let relay = TurnCounter::start(&format!("127.0.0.1:{}", mc.port()))
        .await
        .unwrap();
    let memcached = Memcached::connect(
        &format!("memcache://127.0.0.1:{}", relay.port()),
        "",
        TEST_TIMEOUT,
    )
    .await
    .unwrap();
    for k in &keys {
        memcached
            .set(k, b"v", Duration::from_secs(60))
            .await
            .unwrap();
    }
    let (t0, g0) = (relay.turns(), mc.stat("cmd_get").await.unwrap());
    assert_eq!(read_count(&memcached, &keys).await.unwrap(), 100);
    assert_eq!(relay.turns() - t0, 1, "one get_many, one round trip");
    assert_eq!(mc.stat("cmd_get").await.unwrap() - g0, 100);
    let t1 = relay.turns();
    for k in &keys[..10] {
        memcached.get(k).await.unwrap();
    }
    assert_eq!(relay.turns() - t1, 10, "ten gets, ten round trips");
}

#[tokio::test]
async fn a_persisting_redis_keeps_a_key_across_a_restart_and_memcached_loses_it() {
    let key = Key::new("article", &["kept"]);
    let mut rd = PrivateRedis::start(true).await.unwrap();
    let mut mc = PrivateMemcached::start(64).await.unwrap();
    let redis = rd.client("").await.unwrap();
    let memcached = mc.client("").await.unwrap();
    redis
        .set(&key, b"v", Duration::from_secs(600))
        .await
        .unwrap();
    memcached
        .set(&key, b"v", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(rd.dbsize().await.unwrap(), 1);
    assert_eq!(mc.stat("curr_items").await.unwrap(), 1);
    rd.restart().await.unwrap();
    mc.restart().await.unwrap();
    assert_eq!(rd.dbsize().await.unwrap(), 1, "redis reloaded its file");
    assert_eq!(
        mc.stat("curr_items").await.unwrap(),
        0,
        "memcached came back cold"
    );
    // Through the project's clients, once they have reconnected.
    eventually(Duration::from_secs(5), "redis answers again", || async {
        matches!(redis.get(&key).await, Ok(Some(v)) if v == b"v")
    })
    .await;
    eventually(
        Duration::from_secs(5),
        "memcached answers again",
        || async { matches!(memcached.get(&key).await, Ok(None)) },
    )
    .await;
}

#[tokio::test]
async fn memcached_sessions_round_trip_and_are_lost_on_restart() {
    let mut mc = PrivateMemcached::start(64).await.unwrap();
    let store = MemcachedSessions::new(Arc::new(mc.client("s:").await.unwrap()), EXPIRY);
    let id = store.create(7, "user7").await.unwrap();
    let s = store.load(&id).await.unwrap().expect("a session just made");
    assert_eq!((s.user_id, s.username.as_str()), (7, "user7"));
    // The cart: capped, and one idempotency key adds one item.
    let key = part1_clones::idempotency::IdempotencyKey::from_headers(&{
        let mut h = axum::http::HeaderMap::new();
        h.insert("idempotency-key", "k1".parse().unwrap());
        h
    })
    .unwrap()
    .unwrap();
    let push = |item: &'static str, key| CartPush {
        user_id: 7,
        item,
        max_items: 2,
        key,
    };
    assert_eq!(
        store.add_to_cart(&id, push("a", Some(&key))).await.unwrap(),
        CartAdd::Added(1)
    );
    assert_eq!(
        store.add_to_cart(&id, push("a", Some(&key))).await.unwrap(),
        CartAdd::Repeated(1)
    );
    assert_eq!(
        store.add_to_cart(&id, push("b", None)).await.unwrap(),
        CartAdd::Added(2)
    );
    assert_eq!(
        store.add_to_cart(&id, push("c", None)).await.unwrap(),
        CartAdd::Full
    );
    assert_eq!(store.cart(&id).await.unwrap(), ["a", "b"]);
    // Parallel pushes never pass the cap nor lose an item.
    let other = store.create(8, "user8").await.unwrap();
    let pushes = futures::future::join_all((0..10).map(|_| {
        store.add_to_cart(
            &other,
            CartPush {
                user_id: 8,
                item: "x",
                max_items: 5,
                key: None,
            },
        )
    }))
    .await;
    let added = pushes
        .iter()
        .filter(|r| matches!(r, Ok(CartAdd::Added(_))))
        .count();
    assert_eq!(added, 5, "{pushes:?}");
    assert_eq!(store.cart(&other).await.unwrap().len(), 5);
    // A restart logs everyone out.
    mc.restart().await.unwrap();
    eventually(Duration::from_secs(5), "the session is gone", || async {
        matches!(store.load(&id).await, Ok(None))
    })
    .await;
    assert_eq!(store.load(&other).await.unwrap(), None);
    // Logout deletes the record.
    let id = store.create(9, "user9").await.unwrap();
    store.delete(&id).await.unwrap();
    assert_eq!(store.load(&id).await.unwrap(), None);
}

/// A backend that can pause after a `get` (until a hook future ends) and
/// fail the next `set` *after* applying it (a reply lost on the way back:
/// the server has the value, the caller gets an error), and counts `set`s.
struct Hooked {
    inner: Arc<dyn CacheBackend>,
    after_get: std::sync::Mutex<Option<part3_cache::backend::BoxFuture<'static, ()>>>,
    fail_next_set: std::sync::atomic::AtomicBool,
    sets: std::sync::atomic::AtomicU64,
}

impl Hooked {
    fn new(inner: Arc<dyn CacheBackend>) -> Self {
        Hooked {
            inner,
            after_get: std::sync::Mutex::new(None),
            fail_next_set: std::sync::atomic::AtomicBool::new(false),
            sets: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl CacheBackend for Hooked {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get<'a>(
        &'a self,
        key: &'a Key,
    ) -> part3_cache::backend::BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        Box::pin(async move {
            let got = self.inner.get(key).await;
            let hook = self.after_get.lock().unwrap().take();
            if let Some(hook) = hook {
                hook.await;
            }
            got
        })
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> part3_cache::backend::BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        self.inner.get_many(keys)
    }
    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> part3_cache::backend::BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.sets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            self.inner.set(key, value, ttl).await?;
            if self
                .fail_next_set
                .swap(false, std::sync::atomic::Ordering::SeqCst)
            {
                return Err(CacheError::Unavailable("the reply was lost".into()));
            }
            Ok(())
        })
    }
    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> part3_cache::backend::BoxFuture<'a, Result<bool, CacheError>> {
        self.inner.add(key, value, ttl)
    }
    fn delete<'a>(
        &'a self,
        key: &'a Key,
    ) -> part3_cache::backend::BoxFuture<'a, Result<(), CacheError>> {
        self.inner.delete(key)
    }
    fn delete_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> part3_cache::backend::BoxFuture<'a, Result<(), CacheError>> {
        self.inner.delete_many(keys)
    }
}

#[tokio::test]
async fn a_load_racing_a_logout_does_not_bring_the_session_back() {
    let prefix = prefix("logout");
    let hooked = Arc::new(Hooked::new(Arc::new(memcached(&prefix).await)));
    let store = MemcachedSessions::new(hooked.clone(), EXPIRY);
    let other_clone = MemcachedSessions::new(Arc::new(memcached(&prefix).await), EXPIRY);
    let id = store.create(11, "user11").await.unwrap();
    let sets = hooked.sets.load(std::sync::atomic::Ordering::SeqCst);
    // The load reads the record, then waits while another clone logs the
    // user out, then goes on.
    let (reached_tx, reached_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    *hooked.after_get.lock().unwrap() = Some(Box::pin(async move {
        let _ = reached_tx.send(());
        let _ = go_rx.await;
    }));
    let (loaded, ()) = tokio::join!(store.load(&id), async {
        reached_rx.await.unwrap();
        other_clone.delete(&id).await.unwrap();
        go_tx.send(()).unwrap();
    });
    assert!(
        loaded.unwrap().is_some(),
        "it read the record before the logout"
    );
    assert_eq!(
        hooked.sets.load(std::sync::atomic::Ordering::SeqCst),
        sets,
        "a load writes nothing"
    );
    assert_eq!(other_clone.load(&id).await.unwrap(), None, "logged out");
    assert_eq!(store.load(&id).await.unwrap(), None, "logged out");
    assert_eq!(
        hooked
            .inner
            .get(&MemcachedSessions::session_key(&id))
            .await
            .unwrap(),
        None,
        "no record in the cache"
    );
}

#[tokio::test]
async fn a_retried_cart_push_whose_reply_was_lost_adds_one_item() {
    let hooked = Arc::new(Hooked::new(Arc::new(memcached(&prefix("retry")).await)));
    let store = MemcachedSessions::new(hooked.clone(), EXPIRY);
    let id = store.create(12, "user12").await.unwrap();
    let key = part1_clones::idempotency::IdempotencyKey::parse("retry-1").unwrap();
    let push = || CartPush {
        user_id: 12,
        item: "a",
        max_items: 10,
        key: Some(&key),
    };
    // The cart was written, the reply lost: the request fails, the client retries.
    hooked
        .fail_next_set
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(store.add_to_cart(&id, push()).await.is_err());
    assert_eq!(
        store.add_to_cart(&id, push()).await.unwrap(),
        CartAdd::Repeated(1)
    );
    assert_eq!(store.cart(&id).await.unwrap(), ["a"], "one item, not two");
}
