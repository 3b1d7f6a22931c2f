//! Coalesced gets: concurrent `Memcached::get`s are served as pipelined
//! multi-gets (see `backend/coalesce.rs`), counted on the wire by the
//! relay of experiment 6 ([`TurnCounter`]): a round trip is the client
//! speaking after the server answered. Against the stack's Memcached, a
//! key prefix of the test's own. Counts only, never timings.

use std::time::Duration;

use futures::future::join_all;
use part3_cache::backend::{CacheBackend, CacheError, Memcached};
use part3_cache::demo::backends::TurnCounter;
use part3_cache::key::Key;

use crate::backends::{TEST_TIMEOUT, closed_port, memcached, prefix};

const TTL: Duration = Duration::from_secs(60);

/// A relay in front of the stack's Memcached, and a client through it.
async fn relayed(test: &str) -> (TurnCounter, Memcached) {
    // Fails loudly, with the command that starts it, if it is down.
    drop(memcached(&prefix(test)).await);
    let url = common::testing::stack().memcached_url;
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let addr = rest.split(['?', '/', ',']).next().unwrap_or(rest);
    let relay = TurnCounter::start(addr).await.unwrap();
    let client = Memcached::connect(
        &format!("memcache://127.0.0.1:{}", relay.port()),
        &prefix(test),
        TEST_TIMEOUT,
    )
    .await
    .unwrap();
    (relay, client)
}

/// A caller that must not hang (the client's own deadline should end it).
async fn guarded<T>(op: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .expect("a coalesced get hung past every deadline")
}

fn key(i: usize) -> Key {
    Key::new("article", &[&i.to_string()])
}

#[tokio::test]
async fn concurrent_gets_each_get_their_own_value_in_fewer_round_trips() {
    let (relay, mc) = relayed("coal").await;
    let keys: Vec<Key> = (0..200).map(key).collect();
    // Half present (the even ones), each with a value of its own.
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        mc.set(k, format!("value {i}").as_bytes(), TTL)
            .await
            .unwrap();
    }
    let t0 = relay.turns();
    let answers = guarded(join_all(keys.iter().map(|k| mc.get(k)))).await;
    let turns = relay.turns() - t0;
    for (i, answer) in answers.into_iter().enumerate() {
        let want = (i % 2 == 0).then(|| format!("value {i}").into_bytes());
        assert_eq!(answer.unwrap(), want, "key {i}");
    }
    assert!(
        turns < 200,
        "200 concurrent gets took {turns} round trips: not coalesced"
    );
    assert!(turns >= 1);

    // One caller at a time: nothing to share, one round trip each.
    let t1 = relay.turns();
    for (i, k) in keys.iter().enumerate().take(20) {
        let want = (i % 2 == 0).then(|| format!("value {i}").into_bytes());
        assert_eq!(mc.get(k).await.unwrap(), want, "key {i}");
    }
    assert_eq!(relay.turns() - t1, 20, "20 sequential gets, 20 round trips");
    mc.delete_many(&keys).await.unwrap();
}

#[tokio::test]
async fn the_same_key_many_times_in_one_batch_answers_every_caller() {
    let (relay, mc) = relayed("coaldup").await;
    let (hit, miss) = (key(1), key(2));
    mc.set(&hit, b"shared", TTL).await.unwrap();
    let t0 = relay.turns();
    let answers = guarded(join_all(
        (0..100).map(|i| mc.get(if i % 4 == 0 { &miss } else { &hit })),
    ))
    .await;
    assert!(relay.turns() - t0 < 100);
    for (i, a) in answers.into_iter().enumerate() {
        let want = (i % 4 != 0).then(|| b"shared".to_vec());
        assert_eq!(a.unwrap(), want, "caller {i}");
    }
    mc.delete(&hit).await.unwrap();
}

#[tokio::test]
async fn clones_share_the_batches() {
    let (relay, mc) = relayed("coalclone").await;
    let k = key(3);
    mc.set(&k, b"v", TTL).await.unwrap();
    let clones: Vec<Memcached> = (0..50).map(|_| mc.clone()).collect();
    drop(mc);
    let t0 = relay.turns();
    let answers = guarded(join_all(clones.iter().map(|c| c.get(&k)))).await;
    assert!(relay.turns() - t0 < 50);
    assert!(
        answers
            .into_iter()
            .all(|a| a.unwrap().as_deref() == Some(&b"v"[..]))
    );
    clones[0].delete(&k).await.unwrap();
}

#[tokio::test]
async fn concurrent_sets_each_store_their_own_value_in_fewer_round_trips() {
    let (relay, mc) = relayed("coalset").await;
    let keys: Vec<Key> = (0..200).map(key).collect();
    let values: Vec<Vec<u8>> = (0..200).map(|i| format!("set {i}").into_bytes()).collect();
    let t0 = relay.turns();
    let stored = guarded(join_all(
        keys.iter().zip(&values).map(|(k, v)| mc.set(k, v, TTL)),
    ))
    .await;
    let turns = relay.turns() - t0;
    assert!(
        stored.iter().all(Result::is_ok),
        "{:?}",
        stored.iter().find(|r| r.is_err())
    );
    assert!(
        turns < 200,
        "200 concurrent sets took {turns} round trips: not coalesced"
    );
    // Each key holds its own value (read back in one multi-get).
    let back = mc.get_many(&keys).await.unwrap();
    for (i, (got, want)) in back.iter().zip(&values).enumerate() {
        assert_eq!(got.as_ref(), Some(want), "key {i}");
    }
    // One caller at a time: one round trip each.
    let t1 = relay.turns();
    for (k, v) in keys.iter().zip(&values).take(20) {
        mc.set(k, v, TTL).await.unwrap();
    }
    assert_eq!(relay.turns() - t1, 20, "20 sequential sets, 20 round trips");
    mc.delete_many(&keys).await.unwrap();
}

#[tokio::test]
async fn a_refused_connection_fails_every_waiter_without_a_hang() {
    let port = closed_port().await;
    let mc = Memcached::connect(
        &format!("memcache://127.0.0.1:{port}"),
        "",
        part3_cache::backend::DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    let keys: Vec<Key> = (0..100).map(key).collect();
    let answers = guarded(join_all(keys.iter().map(|k| mc.get(k)))).await;
    let errors = answers.iter().filter(|a| a.is_err()).count();
    assert_eq!(errors, 100, "{:?}", answers.first());
    let stored = guarded(join_all(keys.iter().map(|k| mc.set(k, b"v", TTL)))).await;
    let errors = stored.iter().filter(|a| a.is_err()).count();
    assert_eq!(errors, 100, "{:?}", stored.first());
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_every_waiter() {
    // Accepted by the kernel, never read: a hung server.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mc = Memcached::connect(
        &format!("memcache://127.0.0.1:{port}"),
        "",
        part3_cache::backend::DEFAULT_TIMEOUT,
    )
    .await
    .unwrap();
    let keys: Vec<Key> = (0..100).map(key).collect();
    let answers = guarded(join_all(keys.iter().map(|k| mc.get(k)))).await;
    let timeouts = answers
        .iter()
        .filter(|a| matches!(a, Err(CacheError::Timeout(_))))
        .count();
    assert_eq!(timeouts, 100, "{:?}", answers.first());
    drop(listener);
}
