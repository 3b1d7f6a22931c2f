//! Races between reads and writes, and a cache that goes away, against the
//! real Memcached and Redis (a key prefix per test).
//!
//! The stale-set race is made certain, not likely: the reader's loader
//! waits on a channel until the write has committed and invalidated, so
//! every run interleaves the same way. What is asserted is a count (stale
//! reads), never a timing. The "database" is two numbers, a primary and a
//! replica that lags until the test lets it catch up: what matters here is
//! the order of events, not SQL (experiment 10 of the demo runs the same
//! race on MariaDB with the replica's SQL thread stopped).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::testing::ChaosProxy;
use futures::future::BoxFuture;
use part3_cache::backend::{CacheBackend, CacheError, Memcached, RedisCache};
use part3_cache::demo::cache_down::PrivateMemcached;
use part3_cache::key::Key;
use part3_cache::stampede::{Outcome, ReadThrough, Stampede};

use crate::backends::{TEST_TIMEOUT, eventually, memcached, prefix, redis};

const TTL: Duration = Duration::from_secs(60);
const POLICIES: [Stampede; 4] = [
    Stampede::None,
    Stampede::SingleFlight,
    Stampede::Lease,
    Stampede::XFetch,
];
/// Reads after the race.
const READS_AFTER: usize = 10;

#[derive(Clone, Copy, Debug)]
enum Server {
    Memcached,
    Redis,
}

async fn connect(server: Server, prefix: &str) -> Arc<dyn CacheBackend> {
    match server {
        Server::Memcached => Arc::new(memcached(prefix).await),
        Server::Redis => Arc::new(redis(prefix).await),
    }
}

/// The database: a version on the primary, and the replica's copy of it,
/// which only moves when the test says the replica caught up.
#[derive(Default)]
struct Db {
    primary: AtomicU64,
    replica: AtomicU64,
}

impl Db {
    fn new() -> Arc<Db> {
        let db = Db::default();
        db.primary.store(1, Ordering::SeqCst);
        db.replica.store(1, Ordering::SeqCst);
        Arc::new(db)
    }
    fn read_replica(&self) -> Vec<u8> {
        format!("v{}", self.replica.load(Ordering::SeqCst)).into_bytes()
    }
    fn fresh(&self) -> Vec<u8> {
        format!("v{}", self.primary.load(Ordering::SeqCst)).into_bytes()
    }
}

/// What one race left behind.
struct Race {
    /// What the slow read answered (it must not fail).
    slow: (Vec<u8>, Outcome),
    /// Later reads that answered an older version than the primary's.
    stale: usize,
    /// Fills the reader did not store.
    skipped: u64,
}

/// A read misses and loads from the lagging replica; a write commits and
/// invalidates; then the read stores; then the replica catches up and
/// another clone reads [`READS_AFTER`] times.
async fn stale_set(server: Server, policy: Stampede, fixed: bool) -> Race {
    let prefix = prefix("staleset");
    let clone = |b| Arc::new(ReadThrough::new(b, policy).with_fill_guard(fixed));
    let reader = clone(connect(server, &prefix).await);
    let writer = clone(connect(server, &prefix).await);
    let later = clone(connect(server, &prefix).await);
    let key = Key::new("article", &["42"]);
    let db = Db::new();

    let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let (reader, key, db) = (reader.clone(), key.clone(), db.clone());
        tokio::spawn(async move {
            reader
                .get_or_load(&key, TTL, || async move {
                    let v = db.read_replica();
                    loaded_tx.send(()).unwrap();
                    go_rx.await.unwrap(); // slow: until the write is done
                    Ok::<_, String>(v)
                })
                .await
        })
    };
    loaded_rx.await.unwrap();
    // The write: commit on the primary, then invalidate (after commit).
    db.primary.store(2, Ordering::SeqCst);
    writer.invalidate(std::slice::from_ref(&key)).await.unwrap();
    go_tx.send(()).unwrap();
    let slow = slow.await.unwrap().expect("the slow read must not fail");

    // The replica catches up; every later read should see v2.
    db.replica.store(2, Ordering::SeqCst);
    let mut stale = 0;
    for _ in 0..READS_AFTER {
        let replica = db.clone();
        let (v, _) = later
            .get_or_load(&key, TTL, || async move {
                Ok::<_, String>(replica.read_replica())
            })
            .await
            .unwrap();
        if v != db.fresh() {
            stale += 1;
        }
    }
    Race {
        slow,
        stale,
        skipped: reader.skipped_stores(),
    }
}

#[tokio::test]
async fn without_the_fix_the_slow_fill_serves_stale_reads_until_its_ttl() {
    for server in [Server::Memcached, Server::Redis] {
        for policy in POLICIES {
            let race = stale_set(server, policy, false).await;
            assert_eq!(
                race.stale, READS_AFTER,
                "{server:?} {policy:?}: every read after the race is stale"
            );
            assert_eq!(race.skipped, 0, "{server:?} {policy:?}");
        }
    }
}

#[tokio::test]
async fn with_the_written_marker_the_slow_fill_is_not_stored() {
    for server in [Server::Memcached, Server::Redis] {
        for policy in POLICIES {
            let race = stale_set(server, policy, true).await;
            assert_eq!(race.stale, 0, "{server:?} {policy:?}: stale reads");
            assert_eq!(race.skipped, 1, "{server:?} {policy:?}: fills not stored");
            // The read that began before the write answers what it loaded,
            // as a miss: it is served, only its cache write was skipped.
            assert_eq!(
                race.slow,
                (b"v1".to_vec(), Outcome::Miss),
                "{server:?} {policy:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_fill_after_the_write_is_stored_as_usual() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("afterwrite");
        let cache = ReadThrough::new(connect(server, &prefix).await, Stampede::Lease);
        let key = Key::new("article", &["7"]);
        let loads = AtomicUsize::new(0);
        let load = || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(b"v".to_vec())
        };
        cache.get_or_load(&key, TTL, load).await.unwrap();
        cache.invalidate(std::slice::from_ref(&key)).await.unwrap();
        // The marker is there (for a while); a fill that starts now sees
        // the same marker before and after, and stores.
        assert_eq!(
            cache.get_or_load(&key, TTL, load).await,
            Ok((b"v".to_vec(), Outcome::Miss))
        );
        assert_eq!(
            cache.get_or_load(&key, TTL, load).await,
            Ok((b"v".to_vec(), Outcome::Hit)),
            "{server:?}"
        );
        assert_eq!(loads.load(Ordering::SeqCst), 2, "{server:?}");
        assert_eq!(cache.skipped_stores(), 0, "{server:?}");
    }
}

/// A backend that runs a hook just before one `set` reaches the server:
/// the narrowest window of the race, a write landing between the fill's
/// check of the marker and its set.
struct HookedSet {
    inner: Arc<dyn CacheBackend>,
    hook: Mutex<Option<BoxFuture<'static, ()>>>,
}

impl CacheBackend for HookedSet {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        self.inner.get(key)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        self.inner.get_many(keys)
    }
    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            let hook = self.hook.lock().unwrap().take();
            if let Some(hook) = hook {
                hook.await;
            }
            self.inner.set(key, value, ttl).await
        })
    }
    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, CacheError>> {
        self.inner.add(key, value, ttl)
    }
    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>> {
        self.inner.delete(key)
    }
    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>> {
        self.inner.delete_many(keys)
    }
}

#[tokio::test]
async fn a_write_between_the_check_and_the_set_is_taken_back() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("takeback");
        let writer = Arc::new(ReadThrough::new(
            connect(server, &prefix).await,
            Stampede::None,
        ));
        let key = Key::new("article", &["9"]);
        let hook = {
            let (writer, key) = (writer.clone(), key.clone());
            Box::pin(async move {
                writer.invalidate(&[key]).await.unwrap();
            }) as BoxFuture<'static, ()>
        };
        let hooked = Arc::new(HookedSet {
            inner: connect(server, &prefix).await,
            hook: Mutex::new(Some(hook)),
        });
        let reader = ReadThrough::new(hooked, Stampede::None);
        let got = reader
            .get_or_load(&key, TTL, || async { Ok::<_, ()>(b"old".to_vec()) })
            .await;
        assert_eq!(got, Ok((b"old".to_vec(), Outcome::Miss)), "{server:?}");
        assert_eq!(reader.skipped_stores(), 1, "{server:?}");
        assert_eq!(
            writer.backend().get(&key).await.unwrap(),
            None,
            "{server:?}: the old value was taken back"
        );
    }
}

#[tokio::test]
async fn a_lease_waiter_takes_the_lease_when_the_holder_could_not_store() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("leasehandoff");
        // The waiter polls up to 30 s: the holder's release, not a
        // deadline, is what hands the lease over.
        let holder = Arc::new(ReadThrough::new(
            connect(server, &prefix).await,
            Stampede::Lease,
        ));
        let waiter = Arc::new(
            ReadThrough::new(connect(server, &prefix).await, Stampede::Lease)
                .with_lease_wait(Duration::from_secs(30)),
        );
        let writer = ReadThrough::new(connect(server, &prefix).await, Stampede::Lease);
        let key = Key::new("article", &["11"]);
        let version = Arc::new(AtomicU64::new(1));
        let (loaded_tx, loaded_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let (holder, key, version) = (holder.clone(), key.clone(), version.clone());
            tokio::spawn(async move {
                holder
                    .get_or_load(&key, TTL, || async move {
                        let v = format!("v{}", version.load(Ordering::SeqCst));
                        loaded_tx.send(()).unwrap();
                        go_rx.await.unwrap();
                        Ok::<_, ()>(v.into_bytes())
                    })
                    .await
            })
        };
        loaded_rx.await.unwrap();
        // The holder has the lease and is loading: a second clone waits.
        let second = {
            let (waiter, key, version) = (waiter.clone(), key.clone(), version.clone());
            tokio::spawn(async move {
                waiter
                    .get_or_load(&key, TTL, || async move {
                        Ok::<_, ()>(format!("v{}", version.load(Ordering::SeqCst)).into_bytes())
                    })
                    .await
            })
        };
        version.store(2, Ordering::SeqCst);
        writer.invalidate(std::slice::from_ref(&key)).await.unwrap();
        go_tx.send(()).unwrap();
        assert_eq!(first.await.unwrap(), Ok((b"v1".to_vec(), Outcome::Miss)));
        assert_eq!(
            second.await.unwrap(),
            Ok((b"v2".to_vec(), Outcome::Miss)),
            "{server:?}: the waiter took over the lease and loaded after the write"
        );
        assert_eq!((holder.loads(), waiter.loads()), (1, 1), "{server:?}");
        assert_eq!(
            writer.backend().get(&key).await.unwrap().as_deref(),
            Some(&b"v2"[..]),
            "{server:?}: the fresh value is cached"
        );
    }
}

/// Reads through `cache` until one is `want` (a cache coming back may
/// take a moment to be dialled again).
async fn read_until(cache: &ReadThrough, key: &Key, want: Outcome) {
    eventually(
        Duration::from_secs(10),
        &format!("a read answers {want}"),
        || async {
            let got = cache
                .get_or_load(key, TTL, || async {
                    Ok::<_, ()>(b"from the database".to_vec())
                })
                .await;
            got == Ok((b"from the database".to_vec(), want))
        },
    )
    .await;
}

#[tokio::test]
async fn a_killed_memcached_is_a_bypass_and_a_restarted_one_fills_again() {
    let mut server = PrivateMemcached::start()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let backend = Arc::new(
        Memcached::connect(&server.url(), "t:", TEST_TIMEOUT)
            .await
            .unwrap(),
    );
    for policy in POLICIES {
        let cache = ReadThrough::new(backend.clone(), policy);
        let key = Key::new("article", &[policy.as_str()]);
        read_until(&cache, &key, Outcome::Miss).await;
        read_until(&cache, &key, Outcome::Hit).await;
    }
    server.kill().await.unwrap();
    let loads_before = AtomicUsize::new(0);
    for policy in POLICIES {
        let cache = ReadThrough::new(backend.clone(), policy);
        let key = Key::new("article", &[policy.as_str()]);
        let got = cache
            .get_or_load(&key, TTL, || async {
                loads_before.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(b"from the database".to_vec())
            })
            .await;
        assert_eq!(
            got,
            Ok((b"from the database".to_vec(), Outcome::Bypass)),
            "{policy:?}: served from the database"
        );
    }
    assert_eq!(loads_before.load(Ordering::SeqCst), POLICIES.len());
    server.restart().await.unwrap();
    // Back, and empty: a miss, then hits again.
    for policy in POLICIES {
        let cache = ReadThrough::new(backend.clone(), policy);
        let key = Key::new("article", &[policy.as_str()]);
        read_until(&cache, &key, Outcome::Miss).await;
        read_until(&cache, &key, Outcome::Hit).await;
    }
}

#[tokio::test]
async fn a_redis_that_refuses_is_a_bypass_and_fills_again_when_back() {
    let target = crate::support::host_port(&common::testing::stack().redis_url);
    let _ = redis("probe:").await; // fails loudly if Redis is not up
    let proxy = ChaosProxy::start(&target).await.unwrap();
    let url = proxy.url_for(&common::testing::stack().redis_url);
    let backend: Arc<dyn CacheBackend> = Arc::new(
        RedisCache::connect(&url, &prefix("refused"), TEST_TIMEOUT)
            .await
            .unwrap(),
    );
    let cache = ReadThrough::new(backend, Stampede::Lease);
    let key = Key::new("article", &["1"]);
    read_until(&cache, &key, Outcome::Miss).await;
    read_until(&cache, &key, Outcome::Hit).await;
    proxy.refuse();
    let got = cache
        .get_or_load(&key, TTL, || async {
            Ok::<_, ()>(b"from the database".to_vec())
        })
        .await;
    assert_eq!(got, Ok((b"from the database".to_vec(), Outcome::Bypass)));
    proxy.restore();
    read_until(&cache, &key, Outcome::Hit).await;
}

#[tokio::test]
async fn a_multi_get_fill_is_guarded_too() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("multiget");
        let reader = ReadThrough::new(connect(server, &prefix).await, Stampede::Lease);
        let writer = ReadThrough::new(connect(server, &prefix).await, Stampede::Lease);
        let keys = [Key::new("summary", &["1"]), Key::new("summary", &["2"])];
        // The feed's path: one multi-get, the misses' marks, load, store.
        assert_eq!(reader.get_many(&keys).await.unwrap(), [None, None]);
        let marks = reader.marks(&keys).await.unwrap();
        // A comment on article 1 commits and invalidates meanwhile.
        writer.invalidate(&keys[..1]).await.unwrap();
        let stored = [
            reader
                .set_unless_written(&keys[0], b"old 1", TTL, &marks[0])
                .await
                .unwrap(),
            reader
                .set_unless_written(&keys[1], b"v2", TTL, &marks[1])
                .await
                .unwrap(),
        ];
        assert_eq!(stored, [false, true], "{server:?}");
        assert_eq!(
            reader.get_many(&keys).await.unwrap(),
            [None, Some(b"v2".to_vec())],
            "{server:?}"
        );
        // A fill marked after the write stores.
        let mark = reader.mark(&keys[0]).await.unwrap();
        assert!(
            reader
                .set_unless_written(&keys[0], b"new 1", TTL, &mark)
                .await
                .unwrap()
        );
        assert_eq!(reader.skipped_stores(), 1, "{server:?}");
    }
}

/// A backend whose `delete_many` pauses twice: before the delete reaches
/// the server (the write's first marks are set) and after it (before the
/// write's second marks), each time telling the test and waiting for it.
struct PausedDelete {
    inner: Arc<dyn CacheBackend>,
    /// Told when the write has marked (before the delete) and when it has
    /// deleted (before the second marks).
    reached: tokio::sync::mpsc::UnboundedSender<&'static str>,
    /// Lets the write go on, once per pause.
    resume: tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<()>>,
}

impl PausedDelete {
    async fn pause(&self, at: &'static str) {
        self.reached.send(at).unwrap();
        self.resume.lock().await.recv().await.unwrap();
    }
}

impl CacheBackend for PausedDelete {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        self.inner.get(key)
    }
    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        self.inner.get_many(keys)
    }
    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        self.inner.set(key, value, ttl)
    }
    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, CacheError>> {
        self.inner.add(key, value, ttl)
    }
    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>> {
        self.inner.delete(key)
    }
    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.pause("marked").await;
            let done = self.inner.delete_many(keys).await;
            self.pause("deleted").await;
            done
        })
    }
}

/// Review 1.1: a page is rendered from the *cached* article, not from the
/// primary. A comment commits, marks `article:42` and `page:42`, and is
/// held before its delete; a page fill takes its mark then (after the
/// write's mark), reads the old article from the cache, and its store of
/// the page is held until the delete has run, while the write is held
/// before its second marks. Every marker check of the page fill sees the
/// same token, so the marker alone keeps the old page; re-reading the
/// source after the store (`keep_if_source_unchanged`, what the server's
/// page route does) takes it back: 0 stale pages.
#[tokio::test]
async fn a_page_rendered_from_the_cached_article_during_a_write_is_not_kept() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("pagefill");
        let (article, page) = (Key::new("article", &["42"]), Key::new("page", &["42"]));
        let hooked = Arc::new(HookedSet {
            inner: connect(server, &prefix).await,
            hook: Mutex::new(None),
        });
        let reader = Arc::new(ReadThrough::new(hooked.clone(), Stampede::None));
        // The article is cached, without the comment.
        let old = |what: &str| format!("{what} without the comment").into_bytes();
        reader
            .get_or_load(&article, TTL, || async { Ok::<_, ()>(old("article")) })
            .await
            .unwrap();

        let (reached_tx, mut reached) = tokio::sync::mpsc::unbounded_channel();
        let (resume, resume_rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = Arc::new(ReadThrough::new(
            Arc::new(PausedDelete {
                inner: connect(server, &prefix).await,
                reached: reached_tx,
                resume: tokio::sync::Mutex::new(resume_rx),
            }),
            Stampede::None,
        ));
        // The comment has committed; its invalidation marks, then waits.
        let write = {
            let (writer, keys) = (writer.clone(), [article.clone(), page.clone()]);
            tokio::spawn(async move { writer.invalidate(&keys).await })
        };
        assert_eq!(reached.recv().await, Some("marked"));

        // The page fill's set waits until the write has deleted (and is
        // held before its second marks).
        let (deleted_tx, deleted_rx) = tokio::sync::oneshot::channel::<()>();
        *hooked.hook.lock().unwrap() = Some(Box::pin({
            let resume = resume.clone();
            async move {
                resume.send(()).unwrap(); // the write may delete now
                deleted_rx.await.unwrap();
            }
        }) as BoxFuture<'static, ()>);
        let waiter = tokio::spawn(async move {
            assert_eq!(reached.recv().await, Some("deleted"));
            deleted_tx.send(()).unwrap();
            reached
        });
        let source = Mutex::new(None);
        let got = reader
            .get_or_load(&page, TTL, || async {
                let (json, x) = reader
                    .get_or_load(&article, TTL, || async {
                        Ok::<_, ()>(b"article with the comment".to_vec())
                    })
                    .await?;
                assert_eq!(x, Outcome::Hit, "{server:?}: read before the delete");
                let html = [b"<p>".as_slice(), &json].concat();
                *source.lock().unwrap() = Some(json);
                Ok::<_, ()>(html)
            })
            .await;
        assert_eq!(
            got,
            Ok((b"<p>article without the comment".to_vec(), Outcome::Miss))
        );
        let _reached = waiter.await.unwrap();
        // The marker alone did not stop it: the old page is in the cache.
        assert_eq!(
            reader.get_many(std::slice::from_ref(&page)).await.unwrap(),
            [Some(b"<p>article without the comment".to_vec())],
            "{server:?}: what the marker alone leaves (the race is real)"
        );
        let used = source.lock().unwrap().take().unwrap();
        assert!(
            !reader
                .keep_if_source_unchanged(&page, &article, &used)
                .await,
            "{server:?}: the article changed under the page"
        );
        resume.send(()).unwrap(); // the write's second marks
        write.await.unwrap().unwrap();

        // Every later read of the page renders the article with the comment.
        let mut stale = 0;
        for _ in 0..READS_AFTER {
            let (v, _) = reader
                .get_or_load(&page, TTL, || async {
                    let (json, _) = reader
                        .get_or_load(&article, TTL, || async {
                            Ok::<_, ()>(b"article with the comment".to_vec())
                        })
                        .await?;
                    Ok::<_, ()>([b"<p>".as_slice(), &json].concat())
                })
                .await
                .unwrap();
            if v != b"<p>article with the comment" {
                stale += 1;
            }
        }
        assert_eq!(stale, 0, "{server:?}: stale pages");
    }
}

/// Review 1.9: with `--query-flush-on-write`, the generation in the cache
/// names every query key. If it cannot be read the read bypasses (no key);
/// if it is missing (never set, or evicted) a fresh random one is created
/// with `add`, never the old `0`, where results stored before a flush may
/// still live.
#[tokio::test]
async fn the_query_generation_is_never_reused_and_unknown_means_bypass() {
    use part3_cache::pattern::{CachePattern, ObjectRef, QueryCache, Read};
    let flushing = QueryCache {
        flush_all_on_write: true,
    };
    let read = Read {
        object: ObjectRef::new("article", "7"),
        sql: "SELECT * FROM articles WHERE id = ?",
        params: &["7"],
    };
    let generation = |key: &Key| key.as_str().split(':').nth(1).unwrap().to_owned();
    for server in [Server::Memcached, Server::Redis] {
        let backend = connect(server, &prefix("querygen")).await;
        let cache = ReadThrough::new(backend.clone(), Stampede::None);
        // A result stored under generation 0 (before any flush).
        let zero = QueryCache::query_key("0", read.sql, read.params);
        cache.set(&zero, b"old", TTL).await.unwrap();

        let first = flushing.try_key(&cache, &read).await.expect("a key");
        assert_ne!(first, zero, "{server:?}: not generation 0");
        assert_eq!(
            flushing.try_key(&cache, &read).await,
            Some(first.clone()),
            "{server:?}: the created generation is the one every reader uses"
        );
        // The generation key is evicted: a new one, not 0, not the last.
        backend
            .delete(&Key::new("query:generation", &[]))
            .await
            .unwrap();
        let second = flushing.try_key(&cache, &read).await.expect("a key");
        assert_ne!(second, zero, "{server:?}");
        assert_ne!(generation(&second), generation(&first), "{server:?}");
    }
    // A cache that does not answer: no key, the read bypasses.
    let port = crate::backends::closed_port().await;
    let down: Arc<dyn CacheBackend> = Arc::new(
        Memcached::connect(&format!("memcache://127.0.0.1:{port}"), "", TEST_TIMEOUT)
            .await
            .unwrap(),
    );
    let cache = ReadThrough::new(down, Stampede::None);
    assert_eq!(flushing.try_key(&cache, &read).await, None);
    // Without flushing the generation is always 0 and needs no round trip.
    assert_eq!(
        QueryCache::default().try_key(&cache, &read).await,
        Some(zero_key(&read))
    );
}

fn zero_key(read: &part3_cache::pattern::Read<'_>) -> Key {
    part3_cache::pattern::QueryCache::query_key("0", read.sql, read.params)
}
