//! Guessing passwords: failed logins are limited per account and per
//! client address (429 with Retry-After), counted in Redis for all clones,
//! and one account's failures never block another's login.

use reqwest::Method;

use crate::support::{PASSWORD, fresh_username, spawn_app};

/// POST /login as `name` with `password`, from `forwarded_for` if given
/// (the test client is on loopback, a trusted proxy by default).
async fn login(
    app: &crate::support::TestApp,
    name: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> reqwest::Response {
    let mut req = app
        .user()
        .raw(Method::POST, "/login")
        .json(&serde_json::json!({ "username": name, "password": password }));
    if let Some(ip) = forwarded_for {
        req = req.header("x-forwarded-for", ip);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn an_account_is_locked_after_its_failures_and_others_are_not() {
    let per_account = 10;
    let app = spawn_app("redis", |c| c.login_failures_per_account = per_account).await;
    let u = app.user();
    let victim = fresh_username();
    let bystander = fresh_username();
    for name in [&victim, &bystander] {
        assert_eq!(u.signup(name, PASSWORD).await.unwrap(), 201);
    }
    for i in 0..per_account {
        let res = login(&app, &victim, "wrong password", None).await;
        assert_eq!(res.status(), 401, "failure {}", i + 1);
    }
    let res = login(&app, &victim, "wrong password", None).await;
    assert_eq!(res.status(), 429, "one failure too many");
    let retry_after: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after > 0, "Retry-After says how long");
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("too many"));
    assert_eq!(
        login(&app, &victim, PASSWORD, None).await.status(),
        429,
        "locked even with the right password, until the window passes"
    );
    // Same client, another account: not blocked.
    assert_eq!(login(&app, &bystander, PASSWORD, None).await.status(), 200);
    app.stop().await;
}

#[tokio::test]
async fn a_client_address_is_limited_across_accounts() {
    let per_ip = 3;
    let app = spawn_app("redis", |c| c.login_failures_per_ip = per_ip).await;
    let guesser = "203.0.113.7";
    for _ in 0..per_ip {
        let res = login(&app, &fresh_username(), "wrong password", Some(guesser)).await;
        assert_eq!(res.status(), 401);
    }
    let res = login(&app, &fresh_username(), "wrong password", Some(guesser)).await;
    assert_eq!(res.status(), 429, "the address used up its failures");

    // Another client behind the same load balancer is someone else.
    let u = app.user();
    let name = fresh_username();
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 201);
    assert_eq!(
        login(&app, &name, PASSWORD, Some("198.51.100.9"))
            .await
            .status(),
        200
    );
    app.stop().await;
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let per_ip = 2;
    let app = spawn_app("redis", |c| {
        c.login_failures_per_ip = per_ip;
        c.trusted_proxies = vec!["192.0.2.1".parse().unwrap()];
    })
    .await;
    // Each attempt claims a new address; the peer (loopback) is not a
    // trusted proxy, so all count against loopback.
    for i in 0..per_ip {
        let res = login(
            &app,
            &fresh_username(),
            "wrong",
            Some(&format!("10.0.0.{i}")),
        )
        .await;
        assert_eq!(res.status(), 401);
    }
    let res = login(&app, &fresh_username(), "wrong", Some("10.9.9.9")).await;
    assert_eq!(res.status(), 429, "a made-up header buys no more tries");
    app.stop().await;
}
