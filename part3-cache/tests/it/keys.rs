//! Hostile names against the real Memcached and Redis: each stores and
//! reads back its own value, and flushes or overwrites nothing else.

use std::time::Duration;

use part3_cache::backend::CacheBackend;
use part3_cache::key::Key;
use part3_cache::pattern::{CachePattern, ObjectCache, ObjectRef, QueryCache, Read};
use part3_cache::stampede::{ReadThrough, Stampede};

use crate::backends::{both, memcached, prefix, redis};

/// Usernames an attacker would pick: protocol separators, the pymemcache
/// `flush_all` injection, a key over memcached's 250 bytes, non-ASCII,
/// glob characters (Redis `KEYS`), and names shaped like our own keys.
fn hostile_names() -> Vec<String> {
    vec![
        "x y".into(),
        "x\r\nflush_all\r\n".into(),
        "\r\nflush_all\r\n".into(),
        "a\r\nset friends:x 0 0 5\r\nowned".into(),
        "\n".into(),
        "\0".into(),
        "x".repeat(300),
        "caf\u{e9}".into(),
        "\u{1f600}\u{1f4a9}".into(),
        "*".into(),
        "friends:x".into(),
        "#x".into(),
        String::new(),
    ]
}

#[tokio::test]
async fn hostile_names_store_their_own_value_and_touch_nothing_else() {
    let names = hostile_names();
    for (cache, sentinel) in [
        (
            Box::new(memcached(&prefix("hostile_m")).await) as Box<dyn CacheBackend>,
            Box::new(memcached(&prefix("sentinel_m")).await) as Box<dyn CacheBackend>,
        ),
        (
            Box::new(redis(&prefix("hostile_r")).await) as Box<dyn CacheBackend>,
            Box::new(redis(&prefix("sentinel_r")).await) as Box<dyn CacheBackend>,
        ),
    ] {
        let ttl = Duration::from_secs(60);
        // Another prefix's key (another app, another test) and a neighbour
        // under the same namespace that the injections aim at.
        let guard = Key::new("friends", &["x"]);
        sentinel.set(&guard, b"sentinel", ttl).await.unwrap();
        cache.set(&guard, b"neighbour", ttl).await.unwrap();

        for name in &names {
            let key = Key::new("friends", &[name]);
            cache
                .set(&key, name.as_bytes(), ttl)
                .await
                .unwrap_or_else(|e| panic!("{}: set {name:?} as {key}: {e}", cache.name()));
        }
        for name in &names {
            let key = Key::new("friends", &[name]);
            assert_eq!(
                cache.get(&key).await.unwrap().as_deref(),
                Some(name.as_bytes()),
                "{}: {name:?} as {key}",
                cache.name()
            );
        }
        let all: Vec<Key> = names.iter().map(|n| Key::new("friends", &[n])).collect();
        let values = cache.get_many(&all).await.unwrap();
        for (name, value) in names.iter().zip(values) {
            assert_eq!(
                value.as_deref(),
                Some(name.as_bytes()),
                "{}: get_many",
                cache.name()
            );
        }
        assert_eq!(
            cache.get(&guard).await.unwrap().as_deref(),
            Some(&b"neighbour"[..]),
            "{}: the neighbour was overwritten",
            cache.name()
        );
        assert_eq!(
            sentinel.get(&guard).await.unwrap().as_deref(),
            Some(&b"sentinel"[..]),
            "{}: another prefix's key was flushed or overwritten",
            cache.name()
        );
    }
}

#[tokio::test]
async fn the_object_pattern_deletes_what_a_write_changed() {
    for backend in both("objpat").await {
        let cache = ReadThrough::new(backend, Stampede::None);
        let ttl = Duration::from_secs(60);
        let changed = ObjectRef::new("article", "7");
        let other = ObjectRef::new("article", "8");
        cache.set(&changed.key(), b"old 7", ttl).await.unwrap();
        cache.set(&other.key(), b"old 8", ttl).await.unwrap();
        let read = Read {
            object: changed,
            sql: "SELECT 1",
            params: &[],
        };
        assert_eq!(ObjectCache.key(&cache, &read).await, changed.key());
        ObjectCache.invalidate(&cache, &[changed]).await.unwrap();
        let left = cache.get_many(&[changed.key(), other.key()]).await.unwrap();
        assert_eq!(
            left,
            [None, Some(b"old 8".to_vec())],
            "{}",
            cache.backend().name()
        );
    }
}

#[tokio::test]
async fn the_query_pattern_is_stale_or_flushes_everything() {
    for backend in both("querypat").await {
        let cache = ReadThrough::new(backend, Stampede::None);
        let ttl = Duration::from_secs(60);
        let read = Read {
            object: ObjectRef::new("article", "7"),
            sql: "SELECT * FROM articles WHERE id = ?",
            params: &["7"],
        };

        // Without flushing, a write changes nothing: the old result stays.
        let stale = QueryCache::default();
        let key = stale.key(&cache, &read).await;
        cache.set(&key, b"old", ttl).await.unwrap();
        stale.invalidate(&cache, &[read.object]).await.unwrap();
        assert_eq!(stale.key(&cache, &read).await, key);
        assert_eq!(
            cache.get_many(&[key]).await.unwrap(),
            [Some(b"old".to_vec())]
        );

        // Flushing on write: every query key moves to a new generation.
        let flushing = QueryCache {
            flush_all_on_write: true,
        };
        let before = flushing.key(&cache, &read).await;
        cache.set(&before, b"old", ttl).await.unwrap();
        flushing.invalidate(&cache, &[read.object]).await.unwrap();
        let after = flushing.key(&cache, &read).await;
        assert_ne!(after, before, "{}", cache.backend().name());
        assert_eq!(cache.get_many(&[after]).await.unwrap(), [None]);
    }
}
