//! The lesson itself, on real clones behind a real HAProxy: memory sessions
//! lose, Redis sessions do not; a killed clone and a rolling restart lose
//! nothing (reads, and a write mix: every acknowledged cart item and signup
//! is in the stores exactly once, counted from Redis and MariaDB); parallel
//! cart updates on different clones all land.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::measure::{Load, run_load};
use common::testing::unique_name;
use part1_clones::client::{UserClient, http};
use part1_clones::cluster::{Cluster, WriteMix};

use crate::support::{PASSWORD, cluster, fresh_username};

async fn user(base: &str) -> UserClient {
    let u = UserClient::new(http(), base);
    let name = fresh_username();
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 201);
    u.login(&name, PASSWORD).await.unwrap();
    u
}

/// Requests of one logged-in user through the LB that found no session.
async fn requests_without_session(u: &UserClient, n: usize) -> (usize, HashSet<String>) {
    let mut missing = 0;
    let mut served_by = HashSet::new();
    for _ in 0..n {
        let res = u.raw(reqwest::Method::GET, "/me").send().await.unwrap();
        served_by.insert(res.headers()["x-served-by"].to_str().unwrap().to_owned());
        if res.status() == 401 {
            missing += 1;
        }
    }
    (missing, served_by)
}

#[tokio::test]
async fn memory_sessions_are_lost_behind_the_load_balancer() {
    let (c, db) = cluster(3, "memory").await;
    let u = user(&c.lb_url()).await;
    let (missing, served_by) = requests_without_session(&u, 30).await;
    assert_eq!(served_by.len(), 3, "round robin reaches every clone");
    // Round robin: the clone that saw the login answers 1 request in 3.
    assert!(
        (15..=25).contains(&missing),
        "{missing} of 30 requests found no session"
    );
    c.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn redis_sessions_survive_every_clone() {
    let (c, db) = cluster(3, "redis").await;
    let u = user(&c.lb_url()).await;
    let (missing, served_by) = requests_without_session(&u, 30).await;
    assert_eq!(served_by.len(), 3);
    assert_eq!(missing, 0);
    c.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn parallel_cart_updates_on_different_clones_all_land() {
    let (c, db) = cluster(3, "redis").await;
    let u = Arc::new(user(&c.lb_url()).await);
    let mut tasks = Vec::new();
    for i in 0..90 {
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            u.add_item(&format!("item-{i}")).await.unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    let cart = u.cart().await.unwrap().unwrap();
    assert_eq!(cart.items.len(), 90, "no update lost");
    let distinct: HashSet<_> = cart.items.iter().collect();
    assert_eq!(distinct.len(), 90);
    c.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn an_avatar_uploaded_through_one_clone_is_served_by_the_others() {
    let (c, db) = cluster(3, "redis").await;
    let u = user(&c.clone_url(0)).await;
    let name = u.me().await.unwrap().unwrap().username;
    let png = part1_clones::avatar::sample_png(16, 16);
    assert_eq!(u.put_avatar("image/png", png.clone()).await.unwrap(), 204);
    for i in 1..3 {
        let other = UserClient::new(http(), &c.clone_url(i));
        let (status, kind, bytes) = other.avatar(&name).await.unwrap();
        assert_eq!((status.as_u16(), kind.as_str()), (200, "image/png"));
        assert_eq!(bytes, png);
    }
    c.stop().await;
    db.drop_database().await;
}

async fn me_load(users: Vec<Arc<UserClient>>, duration: Duration) -> common::measure::LoadReport {
    let n = users.len() as u64;
    run_load("drill", Load::closed(6, duration), move |i| {
        let u = users[(i % n) as usize].clone();
        async move { u.me_required().await }
    })
    .await
}

/// Cart writers (one user each) for the write mix, logged in through the LB.
async fn cart_writers(c: &Cluster, n: usize) -> Vec<Arc<UserClient>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(Arc::new(user(&c.lb_url()).await));
    }
    out
}

/// Waits (with a deadline) until the write mix has written something, so
/// the drill breaks a clone in the middle of writes, not before them.
async fn until_writes_flow(u: &UserClient) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if u.cart().await.unwrap().is_some_and(|c| !c.items.is_empty()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the write mix wrote nothing in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_clone_killed_under_load_loses_no_request_and_no_session() {
    let (mut c, db) = cluster(3, "redis").await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(Arc::new(user(&c.lb_url()).await));
    }
    let writers = cart_writers(&c, 3).await;
    let run = tokio::spawn(me_load(users.clone(), Duration::from_secs(3)));
    let mix = WriteMix::start(&c.lb_url(), &writers, 1, &unique_name("k"));
    // Kill once reads and writes surely flow.
    until_writes_flow(&writers[0]).await;
    c.kill(1).await.unwrap();
    let report = run.await.unwrap();
    let writes = mix.finish(&writers).await.unwrap();
    assert!(report.requests > 100, "the load ran: {report:?}");
    assert_eq!(
        report.errors, 0,
        "failed requests: {:?}",
        report.first_errors
    );
    for u in &users {
        assert!(u.me().await.unwrap().is_some(), "a session was lost");
    }
    let audit = writes.audit(&db.pool).await.unwrap();
    assert!(audit.acknowledged > 0, "the writes ran: {audit:?}");
    assert_eq!(
        (audit.lost, audit.doubled),
        (0, 0),
        "every acknowledged write is stored exactly once: {}",
        audit.line()
    );
    assert_eq!(audit.stored, audit.acknowledged, "{}", audit.line());
    c.stop().await;
    db.drop_database().await;
}

#[tokio::test]
async fn a_rolling_restart_fails_no_request_and_ends_on_one_build() {
    let (mut c, db) = cluster(3, "redis").await;
    assert_eq!(c.versions().await.unwrap(), vec!["v1"; 3]);
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(Arc::new(user(&c.lb_url()).await));
    }
    let writers = cart_writers(&c, 3).await;
    let run = tokio::spawn(me_load(users.clone(), Duration::from_secs(8)));
    let mix = WriteMix::start(&c.lb_url(), &writers, 1, &unique_name("r"));
    until_writes_flow(&writers[0]).await;
    c.roll("v2").await.unwrap();
    let report = run.await.unwrap();
    let writes = mix.finish(&writers).await.unwrap();
    assert!(report.requests > 100, "the load ran: {report:?}");
    assert_eq!(
        report.errors, 0,
        "failed requests: {:?}",
        report.first_errors
    );
    assert_eq!(
        c.versions().await.unwrap(),
        vec!["v2"; 3],
        "every clone runs the new build"
    );
    let audit = writes.audit(&db.pool).await.unwrap();
    assert!(audit.acknowledged > 0, "the writes ran: {audit:?}");
    // A graceful restart finishes what is in flight: nothing even fails.
    assert_eq!(
        (audit.lost, audit.doubled),
        (0, 0),
        "every acknowledged write is stored exactly once: {}",
        audit.line()
    );
    assert_eq!(audit.stored, audit.acknowledged, "{}", audit.line());
    c.stop().await;
    db.drop_database().await;
}
