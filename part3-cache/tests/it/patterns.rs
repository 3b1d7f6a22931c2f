//! The patterns of experiments 1 to 4, as counted tests against the real
//! stack (Memcached and MariaDB; `./lab up` starts them): with no cache
//! every read costs MariaDB an assembly (its own `Com_select`), with
//! cached objects one load serves every read until a write (the clone's
//! own count of loads), the query cache
//! serves a stale article after a comment, the object cache serves it
//! fresh, flush-on-write turns the next read into a miss, a file cache on
//! each server's disk leaves the other server's copy stale, and the guard
//! that turns MariaDB's own query cache on puts the lab's
//! configuration back on the shared primary and replica on every path (Ok,
//! Err, panic, a dropped future),
//! checked under the drill's own lock. Counts only, never timings.

use std::panic::AssertUnwindSafe;

use common::testing;
use futures::FutureExt;
use part3_cache::demo::no_cache::{is_stale, stale_reads};
use part3_cache::demo::query_cache::{
    DrillLock, lab_query_cache, query_cache_drill, query_cache_settings, with_mariadb_query_cache,
};
use part3_cache::server::{BackendKind, CacheMode};
use serde_json::json;

use crate::support::{self, Loaded, config, cookie_for, get, post, spawn, user};

/// The three most read articles of the tiny dataset.
fn hot(l: &Loaded) -> Vec<u64> {
    let pop = l.spec.article_popularity();
    (1..=3).map(|r| pop.id_of_rank(r)).collect()
}

/// One server with `cache` on Memcached, and a logged-in user's cookie.
async fn one(l: &Loaded, cache: CacheMode, flush: bool) -> (support::App, String) {
    support::require(BackendKind::Memcached).await;
    let prefix = testing::unique_name("pat");
    let mut c = config(l, cache, BackendKind::Memcached, &prefix);
    c.query_flush_on_write = flush;
    let app = spawn(c).await;
    let (uid, name) = user(l, 3).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    (app, cookie)
}

#[tokio::test]
async fn the_query_cache_serves_a_stale_article_after_a_comment() {
    let l = support::loaded().await;
    let (app, cookie) = one(&l, CacheMode::Query, false).await;
    let ids = hot(&l);
    let s = stale_reads(&l.db.pool, &app.url, &app.url, &cookie, &ids)
        .await
        .unwrap();
    assert_eq!(s.checked, 3);
    assert_eq!(s.warm, 3, "each article was cached before the write");
    assert_eq!(
        s.stale, 3,
        "nothing names the hashed query: every read after a comment is stale"
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn the_object_cache_serves_the_article_fresh_after_a_comment() {
    let l = support::loaded().await;
    let (app, cookie) = one(&l, CacheMode::Object, false).await;
    let ids = hot(&l);
    let s = stale_reads(&l.db.pool, &app.url, &app.url, &cookie, &ids)
        .await
        .unwrap();
    assert_eq!((s.checked, s.warm), (3, 3));
    assert_eq!(
        s.stale, 0,
        "the comment deleted article:{{id}} after commit"
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn flush_on_write_makes_the_next_read_a_miss() {
    let l = support::loaded().await;
    let (app, cookie) = one(&l, CacheMode::Query, true).await;
    let id = hot(&l)[0];
    let path = format!("/articles/{id}");
    assert_eq!(get(&app.url, &path, None).await.x(), "miss");
    assert_eq!(get(&app.url, &path, None).await.x(), "hit");
    // A comment on another article flushes this one too: every query.
    let other = hot(&l)[1];
    let wrote = post(
        &app.url,
        &format!("/articles/{other}/comments"),
        &cookie,
        json!({"body": "flush"}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    let after = get(&app.url, &path, None).await;
    assert_eq!(
        after.x(),
        "miss",
        "a new generation: every cached query is gone"
    );
    let body = "fresh after flush";
    let wrote = post(
        &app.url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": body}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    let after = get(&app.url, &path, None).await;
    assert_eq!(after.x(), "miss");
    assert!(!is_stale(&l.db.pool, id, body, &after.json()).await.unwrap());
    l.db.drop_database().await;
}

#[tokio::test]
async fn a_file_cache_leaves_the_other_servers_copy_stale() {
    let l = support::loaded().await;
    let prefix = testing::unique_name("patf");
    let dirs: Vec<_> = ["a", "b"]
        .iter()
        .map(|s| std::env::temp_dir().join(testing::unique_name(&format!("patfile_{s}"))))
        .collect();
    let mut servers = Vec::new();
    for dir in &dirs {
        let mut c = config(&l, CacheMode::Object, BackendKind::File, &prefix);
        c.cache_file_dir = Some(dir.clone());
        servers.push(spawn(c).await);
    }
    let (a, b) = (&servers[0], &servers[1]);
    let (uid, name) = user(&l, 3).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let id = hot(&l)[0];
    let path = format!("/articles/{id}");
    for s in [a, b] {
        assert_eq!(get(&s.url, &path, None).await.x(), "miss", "its own file");
        assert_eq!(get(&s.url, &path, None).await.x(), "hit");
    }
    let body = "written through a";
    let wrote = post(
        &a.url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": body}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    let on_a = get(&a.url, &path, None).await;
    assert_eq!(on_a.x(), "miss", "the write deleted a's own file");
    assert!(!is_stale(&l.db.pool, id, body, &on_a.json()).await.unwrap());
    let on_b = get(&b.url, &path, None).await;
    assert_eq!(on_b.x(), "hit", "b's file was never deleted");
    assert!(
        is_stale(&l.db.pool, id, body, &on_b.json()).await.unwrap(),
        "b serves the old page: {}",
        on_b.body
    );
    drop(servers);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    l.db.drop_database().await;
}

/// An admin pool on the server of `var` (default `url`).
async fn admin(var: &str, url: &str, name: &str) -> sqlx::MySqlPool {
    let url = std::env::var(var).unwrap_or_else(|_| url.to_owned());
    testing::mariadb_at(name, &url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Both servers' settings.
async fn both(servers: &[(&str, &sqlx::MySqlPool)]) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for (_, pool) in servers {
        out.push(query_cache_settings(pool).await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_mariadb_query_cache_guard_puts_the_settings_back_on_every_path() {
    let primary = admin(
        "MARIADB_PRIMARY_ADMIN_URL",
        "mysql://labadmin:labadmin@127.0.0.1:13306/lab",
        "MariaDB primary (admin)",
    )
    .await;
    let replica = admin(
        "MARIADB_REPLICA_ADMIN_URL",
        "mysql://labadmin:labadmin@127.0.0.1:13307/lab",
        "MariaDB replica (admin)",
    )
    .await;
    let servers = [("primary", &primary), ("replica", &replica)];
    let bytes = 8 * 1024 * 1024;
    let on = vec![("ON".to_owned(), bytes); 2];
    let lab = vec![lab_query_cache(); 2];
    // Every check runs under the drill's lock, so no other drill (a demo,
    // another checkout's test) can turn the cache on between two reads.
    let mut lock = DrillLock::take(&primary).await.unwrap();

    let inside = query_cache_drill(&mut lock, &servers, bytes, || async {
        Ok(both(&servers).await)
    })
    .await
    .unwrap();
    assert_eq!(inside, on, "the guard turned it on, on both servers");
    assert_eq!(both(&servers).await, lab, "Ok");

    let failed = query_cache_drill(&mut lock, &servers, bytes, || async {
        Err::<(), _>(anyhow::anyhow!("the closure failed"))
    })
    .await;
    assert!(format!("{:#}", failed.unwrap_err()).contains("the closure failed"));
    assert_eq!(both(&servers).await, lab, "Err");

    let panicked = AssertUnwindSafe(query_cache_drill(&mut lock, &servers, bytes, || async {
        if bytes > 0 {
            panic!("the closure panicked");
        }
        Ok(())
    }))
    .catch_unwind()
    .await;
    assert!(panicked.is_err(), "the panic goes on after the undo");
    assert_eq!(both(&servers).await, lab, "panic");

    // Dropped mid-drill (a cancelled future): the undo is spawned and takes
    // the lock with it; taking the lock again waits for the undo.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let drill = query_cache_drill(&mut lock, &servers, bytes, || async {
        let _ = tx.send(both(&servers).await);
        std::future::pending::<anyhow::Result<()>>().await
    });
    let seen = tokio::select! {
        r = drill => panic!("the drill never ends by itself: {r:?}"),
        seen = rx => seen.unwrap(),
    };
    assert_eq!(seen, on, "the cancelled drill had turned it on");
    assert!(!lock.held(), "the spawned undo took the lock");
    lock.release().await;
    let lock = DrillLock::take(&primary).await.unwrap();
    assert_eq!(both(&servers).await, lab, "dropped");
    lock.release().await;

    // The public guard: takes and gives back the lock itself.
    let inside = with_mariadb_query_cache(&servers, bytes, || async { Ok(both(&servers).await) })
        .await
        .unwrap();
    assert_eq!(inside, on);
}

/// `Com_select` on the primary plus the replica: the SELECTs both servers
/// ran, by their own counters (global: other tests add to it, never take
/// away, so a delta is at least what this test caused).
async fn com_select(l: &Loaded) -> u64 {
    let mut total = 0;
    for pool in [
        &l.db.pool,
        &testing::mariadb_at("MariaDB replica", &l.replica_url)
            .await
            .unwrap(),
    ] {
        let (_, v): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Com_select'")
            .fetch_one(pool)
            .await
            .unwrap();
        total += v.parse::<u64>().unwrap();
    }
    total
}

/// The clone's own count of database loads (`GET /cache/stats`).
async fn loads(app: &support::App) -> u64 {
    get(&app.url, "/cache/stats", None).await.json()["loads"]
        .as_u64()
        .unwrap()
}

#[tokio::test]
async fn without_a_cache_every_read_costs_the_database_an_assembly() {
    // Experiment 1: what a read costs with no cache, counted by MariaDB.
    let l = support::loaded().await;
    let (app, _) = one(&l, CacheMode::None, false).await;
    let id = hot(&l)[0];
    let before = com_select(&l).await;
    for _ in 0..5 {
        let got = get(&app.url, &format!("/articles/{id}"), None).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.x(), "bypass");
    }
    let ran = com_select(&l).await - before;
    assert!(
        ran >= 5 * 3,
        "5 reads of part 2's article (3 SELECTs each) ran at least 15 SELECTs; MariaDB counted {ran}"
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn with_cached_objects_one_load_serves_every_read_until_a_write() {
    // Experiment 3: the database work the object cache saves, counted by
    // the clone (its loads) and by the X-Cache answers.
    let l = support::loaded().await;
    let (app, cookie) = one(&l, CacheMode::Object, false).await;
    let id = hot(&l)[1];
    let first = loads(&app).await;
    let mut hits = 0;
    for _ in 0..10 {
        let got = get(&app.url, &format!("/articles/{id}"), None).await;
        hits += usize::from(got.x() == "hit");
    }
    assert_eq!(loads(&app).await - first, 1, "ten reads, one assembly");
    assert_eq!(hits, 9);
    let posted = post(
        &app.url,
        &format!("/articles/{id}/comments"),
        &cookie,
        json!({"body": "counted"}),
    )
    .await;
    assert_eq!(posted.status, 201);
    let got = get(&app.url, &format!("/articles/{id}"), None).await;
    assert_eq!(got.x(), "miss", "the comment deleted the object");
    assert_eq!(
        loads(&app).await - first,
        2,
        "the write cost one more assembly"
    );
    l.db.drop_database().await;
}
