//! The lesson itself, on real clones behind a real HAProxy: memory sessions
//! lose, Redis sessions do not; a killed clone and a rolling restart lose
//! nothing; parallel cart updates on different clones all land.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::measure::{Load, run_load};
use part1_clones::client::{UserClient, http};

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
    let png = b"\x89PNG\r\n\x1a\npicture".to_vec();
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

#[tokio::test]
async fn a_clone_killed_under_load_loses_no_request_and_no_session() {
    let (mut c, db) = cluster(3, "redis").await;
    let mut users = Vec::new();
    for _ in 0..4 {
        users.push(Arc::new(user(&c.lb_url()).await));
    }
    let run = tokio::spawn(me_load(users.clone(), Duration::from_secs(3)));
    // Kill once the run has surely started: wait for requests to flow.
    let probe = UserClient::new(http(), &c.lb_url());
    let _ = probe.me().await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kill(1).await.unwrap();
    let report = run.await.unwrap();
    assert!(report.requests > 100, "the load ran: {report:?}");
    assert_eq!(
        report.errors, 0,
        "failed requests: {:?}",
        report.first_errors
    );
    for u in &users {
        assert!(u.me().await.unwrap().is_some(), "a session was lost");
    }
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
    let run = tokio::spawn(me_load(users.clone(), Duration::from_secs(8)));
    c.roll("v2").await.unwrap();
    let report = run.await.unwrap();
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
    c.stop().await;
    db.drop_database().await;
}
