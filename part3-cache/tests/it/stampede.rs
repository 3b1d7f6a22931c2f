//! A hot object expires while 100 readers want it: how many times is it
//! assembled? The measurement is the loader's own counter, not a timing.
//!
//! Each "clone" is a [`ReadThrough`] over a backend connection of its own,
//! as three `part3-server` processes would have; they share the server and
//! the key prefix, as clones share the cache.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use part3_cache::backend::{CacheBackend, Memcached, RedisCache};
use part3_cache::key::Key;
use part3_cache::stampede::{Outcome, ReadThrough, Stampede};

use crate::backends::{closed_port, eventually, memcached, prefix, redis};

const READERS: usize = 100;
/// How long one assembly takes: long beside a cache round trip, so the
/// readers' misses overlap as they do under load.
const LOAD_TIME: Duration = Duration::from_millis(200);
const TTL: Duration = Duration::from_secs(60);
/// Longer than any test waits: the lease wait never decides a count.
const LEASE_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Debug)]
enum Server {
    Memcached,
    Redis,
}

/// `clones` read paths over `server`, sharing one fresh prefix.
async fn clones(server: Server, policy: Stampede, clones: usize) -> Vec<Arc<ReadThrough>> {
    let prefix = prefix("herd");
    let mut out = Vec::new();
    for _ in 0..clones {
        let backend: Arc<dyn CacheBackend> = match server {
            Server::Memcached => Arc::new(memcached(&prefix).await),
            Server::Redis => Arc::new(redis(&prefix).await),
        };
        // A lease loser waits up to 30 s (not 1 s) for the holder's value:
        // on a loaded debug build a starved poller must not give up and
        // load for itself, so a deadline never decides a count.
        out.push(Arc::new(
            ReadThrough::new(backend, policy).with_lease_wait(LEASE_WAIT),
        ));
    }
    out
}

/// A key that was hot and has just expired: stored with the shortest TTL
/// the server keeps, then polled until it is gone.
async fn expired_hot_key(cache: &ReadThrough) -> Key {
    let key = Key::new("article", &["hot"]);
    cache
        .backend()
        .set(&key, b"old", Duration::from_secs(1))
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "the hot key expires", || async {
        cache.backend().get(&key).await.unwrap().is_none()
    })
    .await;
    key
}

/// `READERS` concurrent reads of `key`, spread over `clones`; the loader
/// counts its calls in `loads`.
async fn herd(clones: &[Arc<ReadThrough>], key: &Key, loads: &Arc<AtomicUsize>) -> Vec<Outcome> {
    let reads = (0..READERS).map(|i| {
        let cache = clones[i % clones.len()].clone();
        let (key, loads) = (key.clone(), loads.clone());
        tokio::spawn(async move {
            let (value, outcome) = cache
                .get_or_load(&key, TTL, || async {
                    loads.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(LOAD_TIME).await; // the database's work
                    Ok::<_, std::convert::Infallible>(b"assembled".to_vec())
                })
                .await
                .unwrap();
            assert_eq!(value, b"assembled");
            outcome
        })
    });
    futures::future::join_all(reads)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect()
}

async fn loads_for(server: Server, policy: Stampede, n_clones: usize) -> (usize, Vec<Outcome>) {
    let clones = clones(server, policy, n_clones).await;
    let key = expired_hot_key(&clones[0]).await;
    let loads = Arc::new(AtomicUsize::new(0));
    let outcomes = herd(&clones, &key, &loads).await;
    let loads = loads.load(Ordering::SeqCst);
    // The read paths' own counters (what `GET /cache/stats` serves) agree
    // with the loader's.
    let counted: u64 = clones.iter().map(|c| c.loads()).sum();
    assert_eq!(counted, loads as u64, "{server:?} {policy:?}: loads()");
    (loads, outcomes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_protection_the_herd_loads_many_times() {
    for server in [Server::Memcached, Server::Redis] {
        let clones = clones(server, Stampede::None, 1).await;
        let key = expired_hot_key(&clones[0]).await;
        // Every load is held until all readers are loading: no reader can
        // find a value another one stored, whatever the scheduling.
        let gate = Arc::new(tokio::sync::Barrier::new(READERS));
        let loads = Arc::new(AtomicUsize::new(0));
        let reads = (0..READERS).map(|_| {
            let (cache, key, loads, gate) =
                (clones[0].clone(), key.clone(), loads.clone(), gate.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, TTL, || async {
                        loads.fetch_add(1, Ordering::SeqCst);
                        gate.wait().await;
                        Ok::<_, std::convert::Infallible>(b"assembled".to_vec())
                    })
                    .await
                    .unwrap()
                    .1
            })
        });
        let outcomes: Vec<Outcome> = futures::future::join_all(reads)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let loads = loads.load(Ordering::SeqCst);
        println!("{server:?} none: {loads} loads for {READERS} readers");
        assert_eq!(loads, READERS, "{server:?}: one load per reader");
        assert_eq!(clones[0].loads(), READERS as u64, "{server:?}: loads()");
        assert!(outcomes.iter().all(|o| *o != Outcome::Bypass), "{server:?}");
    }
}

/// Review 1.5: the first load of a hot key fails while 50 readers of the
/// same clone wait for it. They do not all load at once: one leads the
/// next flight, which succeeds, and the others get its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_of_a_failed_load_do_not_herd() {
    const FOLLOWERS: usize = 50;
    for server in [Server::Memcached, Server::Redis] {
        for policy in [Stampede::SingleFlight, Stampede::Lease] {
            let clones = clones(server, policy, 1).await;
            let cache = clones[0].clone();
            let key = Key::new("article", &["failing"]);
            let loads = Arc::new(AtomicUsize::new(0));
            let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
            let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
            let leader = {
                let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load(&key, TTL, || async move {
                            loads.fetch_add(1, Ordering::SeqCst);
                            started_tx.send(()).unwrap();
                            fail_rx.await.unwrap();
                            Err::<Vec<u8>, _>("the database timed out")
                        })
                        .await
                })
            };
            started_rx.await.unwrap();
            let followers: Vec<_> = (0..FOLLOWERS)
                .map(|_| {
                    let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
                    tokio::spawn(async move {
                        cache
                            .get_or_load(&key, TTL, || async move {
                                loads.fetch_add(1, Ordering::SeqCst);
                                Ok::<_, &str>(b"assembled".to_vec())
                            })
                            .await
                    })
                })
                .collect();
            // Let the followers reach the flight (how many got there does
            // not change the bound asserted: with the fix, a load can only
            // start when no other is in flight, and the second one stores).
            tokio::time::sleep(Duration::from_millis(200)).await;
            fail_tx.send(()).unwrap();
            assert_eq!(
                leader.await.unwrap(),
                Err("the database timed out"),
                "{server:?} {policy:?}"
            );
            for f in followers {
                assert_eq!(
                    f.await.unwrap().unwrap().0,
                    b"assembled",
                    "{server:?} {policy:?}"
                );
            }
            let loads = loads.load(Ordering::SeqCst);
            assert!(
                loads <= 2,
                "{server:?} {policy:?}: {loads} loads for 1 failed leader and {FOLLOWERS} followers"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_flight_loads_once_per_clone() {
    for server in [Server::Memcached, Server::Redis] {
        let (loads, _) = loads_for(server, Stampede::SingleFlight, 1).await;
        assert_eq!(loads, 1, "{server:?}: one clone");
        let (loads, _) = loads_for(server, Stampede::SingleFlight, 3).await;
        println!("{server:?} single-flight, 3 clones: {loads} loads");
        assert!(
            (1..=3).contains(&loads),
            "{server:?}: {loads} loads for 3 clones"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_loads_once_across_clones() {
    for server in [Server::Memcached, Server::Redis] {
        let (loads, outcomes) = loads_for(server, Stampede::Lease, 3).await;
        assert_eq!(loads, 1, "{server:?}: 3 clones");
        assert!(outcomes.contains(&Outcome::Miss), "{server:?}");
        assert!(outcomes.iter().all(|o| *o != Outcome::Bypass), "{server:?}");
    }
}

#[tokio::test]
async fn a_hit_does_not_load() {
    for policy in [
        Stampede::None,
        Stampede::SingleFlight,
        Stampede::Lease,
        Stampede::XFetch,
    ] {
        for server in [Server::Memcached, Server::Redis] {
            let group = clones(server, policy, 1).await;
            let cache = &group[0];
            let key = Key::new("article", &["1"]);
            let counter = AtomicUsize::new(0);
            let loads = &counter;
            let load = move || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, ()>(b"v".to_vec())
            };
            assert_eq!(
                cache.get_or_load(&key, TTL, load).await,
                Ok((b"v".to_vec(), Outcome::Miss))
            );
            assert_eq!(
                cache.get_or_load(&key, TTL, load).await,
                Ok((b"v".to_vec(), Outcome::Hit))
            );
            assert_eq!(loads.load(Ordering::SeqCst), 1, "{server:?} {policy:?}");
            // What a writer does after commit: the next read loads again.
            cache.invalidate(std::slice::from_ref(&key)).await.unwrap();
            assert_eq!(
                cache.get_or_load(&key, TTL, load).await,
                Ok((b"v".to_vec(), Outcome::Miss))
            );
        }
    }
}

#[tokio::test]
async fn a_cache_that_is_down_is_a_bypass_not_an_error() {
    let port = closed_port().await;
    let timeout = part3_cache::backend::DEFAULT_TIMEOUT;
    let backends: Vec<Arc<dyn CacheBackend>> = vec![
        Arc::new(
            Memcached::connect(&format!("memcache://127.0.0.1:{port}"), "", timeout)
                .await
                .unwrap(),
        ),
        Arc::new(
            RedisCache::connect(&format!("redis://127.0.0.1:{port}"), "", timeout)
                .await
                .unwrap(),
        ),
    ];
    for backend in backends {
        for policy in [
            Stampede::None,
            Stampede::SingleFlight,
            Stampede::Lease,
            Stampede::XFetch,
        ] {
            let cache = ReadThrough::new(backend.clone(), policy);
            let key = Key::new("article", &["1"]);
            let got = cache
                .get_or_load(&key, TTL, || async {
                    Ok::<_, ()>(b"from the database".to_vec())
                })
                .await;
            assert_eq!(
                got,
                Ok((b"from the database".to_vec(), Outcome::Bypass)),
                "{} {policy:?}",
                backend.name()
            );
        }
    }
}

#[tokio::test]
async fn the_loader_error_is_the_only_error() {
    let group = clones(Server::Memcached, Stampede::Lease, 1).await;
    let cache = &group[0];
    let key = Key::new("article", &["missing"]);
    let got = cache
        .get_or_load(&key, TTL, || async { Err::<Vec<u8>, _>("no such article") })
        .await;
    assert_eq!(got, Err("no such article"));
    // Nothing was cached, and the lease was released for the next reader.
    let got = cache
        .get_or_load(&key, TTL, || async {
            Ok::<_, &str>(b"now it exists".to_vec())
        })
        .await;
    assert_eq!(got, Ok((b"now it exists".to_vec(), Outcome::Miss)));
}

#[tokio::test]
async fn xfetch_keeps_a_fresh_value_and_refreshes_one_near_expiry() {
    for server in [Server::Memcached, Server::Redis] {
        let prefix = prefix("xfetch");
        let backend: Arc<dyn CacheBackend> = match server {
            Server::Memcached => Arc::new(memcached(&prefix).await),
            Server::Redis => Arc::new(redis(&prefix).await),
        };
        let counter = AtomicUsize::new(0);
        let loads = &counter;
        let load = move || async move {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok::<_, ()>(format!("v{n}").into_bytes())
        };

        // beta 1, 60 s to live, 20 ms to compute: the chance of an early
        // recompute is exp(-3000) per read, nil.
        let calm = ReadThrough::new(backend.clone(), Stampede::XFetch);
        let key = Key::new("article", &["calm"]);
        calm.get_or_load(&key, TTL, load).await.unwrap();
        for _ in 0..50 {
            assert_eq!(
                calm.get_or_load(&key, TTL, load).await.unwrap().1,
                Outcome::Hit
            );
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1, "{server:?}");

        // A huge beta puts "expiry nears" at once: the next read recomputes
        // while the old value is still cached (chance of not doing so:
        // under 1e-6), so no reader ever sees a miss from the cache.
        let eager = ReadThrough::new(backend, Stampede::XFetch).with_xfetch_beta(1e9);
        let key = Key::new("article", &["eager"]);
        let (first, _) = eager.get_or_load(&key, TTL, load).await.unwrap();
        let (second, outcome) = eager.get_or_load(&key, TTL, load).await.unwrap();
        assert_eq!(outcome, Outcome::Miss, "{server:?}");
        assert_ne!(first, second, "{server:?}: recomputed");
        assert_eq!(
            eager.get_many(std::slice::from_ref(&key)).await.unwrap(),
            [Some(second)]
        );
    }
}

#[tokio::test]
async fn a_dead_lease_holder_stalls_readers_only_for_the_lease_wait() {
    for server in [Server::Memcached, Server::Redis] {
        let group = clones(server, Stampede::Lease, 1).await;
        let cache = ReadThrough::new(group[0].backend().clone(), Stampede::Lease)
            .with_lease_wait(Duration::from_millis(100));
        let key = Key::new("article", &["orphaned"]);
        // Another clone took the lease and died before filling the value.
        // 3 s: memcached's clock ticks in whole seconds, so a 1 s lease
        // could be gone before this reader even asks for it.
        let lease = key.derived("lease");
        assert!(
            cache
                .backend()
                .add(&lease, b"1", Duration::from_secs(3))
                .await
                .unwrap()
        );
        let counter = AtomicUsize::new(0);
        let loads = &counter;
        let load = move || async move {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, ()>(b"mine".to_vec())
        };
        let got = cache.get_or_load(&key, TTL, load).await;
        assert_eq!(got, Ok((b"mine".to_vec(), Outcome::Miss)), "{server:?}");
        // Loaded for itself, and left the filling to the lease holder.
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(cache.backend().get(&key).await.unwrap(), None, "{server:?}");
        // Once the orphaned lease expires, the next reader fills the value.
        eventually(
            Duration::from_secs(10),
            "the orphaned lease expires",
            || async { cache.backend().get(&lease).await.unwrap().is_none() },
        )
        .await;
        assert_eq!(
            cache.get_or_load(&key, TTL, load).await,
            Ok((b"mine".to_vec(), Outcome::Miss))
        );
        assert_eq!(
            cache.backend().get(&key).await.unwrap().as_deref(),
            Some(&b"mine"[..]),
            "{server:?}"
        );
    }
}

#[tokio::test]
async fn xfetch_refreshes_once_per_clone_and_the_others_keep_hitting() {
    for server in [Server::Memcached, Server::Redis] {
        let backend: Arc<dyn CacheBackend> = match server {
            Server::Memcached => Arc::new(memcached(&prefix("xfone")).await),
            Server::Redis => Arc::new(redis(&prefix("xfone")).await),
        };
        // A huge beta: every read wants to refresh.
        let cache = Arc::new(ReadThrough::new(backend, Stampede::XFetch).with_xfetch_beta(1e9));
        let key = Key::new("article", &["hot"]);
        // Stored with a compute time of 20 ms (XFetch's delta; 0 would
        // never refresh early, whatever beta).
        cache
            .get_or_load(&key, TTL, || async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok::<_, ()>(b"v1".to_vec())
            })
            .await
            .unwrap();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let refresh = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                cache
                    .get_or_load(&key, TTL, || async move {
                        started_tx.send(()).unwrap();
                        go_rx.await.unwrap();
                        Ok::<_, ()>(b"v2".to_vec())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        // While the refresh is in flight, 20 readers whose draw also says
        // "refresh" are served the cached value: no load, no wait.
        for _ in 0..20 {
            let got = cache
                .get_or_load(&key, TTL, || async { Ok::<_, ()>(b"loaded".to_vec()) })
                .await;
            assert_eq!(got, Ok((b"v1".to_vec(), Outcome::Hit)), "{server:?}");
        }
        go_tx.send(()).unwrap();
        assert_eq!(
            refresh.await.unwrap(),
            Ok((b"v2".to_vec(), Outcome::Miss)),
            "{server:?}"
        );
        assert_eq!(
            cache.loads(),
            2,
            "{server:?}: the first fill and one refresh"
        );
    }
}
