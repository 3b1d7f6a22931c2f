//! Sessions done properly: cookie flags, rotation, expiry, logout, garbage.

use std::time::Duration;

use reqwest::Method;
use reqwest::header::{COOKIE, SET_COOKIE};

use crate::support::{PASSWORD, fresh_username, spawn_app};

#[tokio::test]
async fn login_sets_a_safe_cookie_and_me_answers() {
    let app = spawn_app("redis", |_| {}).await;
    let u = app.user();
    let name = fresh_username();
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 201);
    let res = u
        .raw(Method::POST, "/login")
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("sid="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Lax", "Path=/", "Max-Age=1800"] {
        assert!(cookie.contains(flag), "{flag} missing from {cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "Secure only when configured: {cookie}"
    );
    let id = cookie["sid=".len()..].split(';').next().unwrap();
    assert_eq!(id.len(), 64, "256-bit id in hex");

    u.set_cookie(Some(id.to_owned()));
    let me = u.me().await.unwrap().expect("logged in");
    assert_eq!(me.username, name);
    assert_eq!(me.served_by, "test-clone");
    let res = u.raw(Method::GET, "/me").send().await.unwrap();
    assert_eq!(res.headers()["x-served-by"], "test-clone");
    app.stop().await;
}

#[tokio::test]
async fn secure_cookies_when_configured() {
    let app = spawn_app("redis", |c| c.secure_cookies = true).await;
    let u = app.user();
    let name = fresh_username();
    u.signup(&name, PASSWORD).await.unwrap();
    let res = u
        .raw(Method::POST, "/login")
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert!(
        res.headers()[SET_COOKIE]
            .to_str()
            .unwrap()
            .contains("; Secure")
    );
    app.stop().await;
}

#[tokio::test]
async fn login_rotates_the_id_and_ends_the_old_session() {
    for sessions in ["redis", "memory", "mariadb"] {
        let app = spawn_app(sessions, |_| {}).await;
        let (u, name) = app.logged_in().await;
        let first = u.cookie().unwrap();
        u.login(&name, PASSWORD).await.unwrap();
        let second = u.cookie().unwrap();
        assert_ne!(first, second, "{sessions}: a login must issue a new id");
        let old = app.user();
        old.set_cookie(Some(first));
        assert_eq!(
            old.me().await.unwrap(),
            None,
            "{sessions}: the old id is dead"
        );
        assert!(u.me().await.unwrap().is_some());
        app.stop().await;
    }
}

#[tokio::test]
async fn logout_deletes_the_server_side_record() {
    let app = spawn_app("redis", |_| {}).await;
    let (u, _) = app.logged_in().await;
    let id = u.cookie().unwrap();
    assert_eq!(u.add_item("book").await.unwrap(), 201);
    let mut redis = common::testing::redis().await;
    let key = format!("{}:session:{id}", app.prefix);
    let exists: bool = redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(exists, "the session lives in Redis under {key}");

    assert_eq!(u.logout().await.unwrap(), 204);
    assert_eq!(u.cookie(), None, "the cookie is cleared");
    let left: u64 = redis::cmd("EXISTS")
        .arg(&key)
        .arg(format!("{}:cart:{id}", app.prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(left, 0, "logout deletes the session and its cart");
    u.set_cookie(Some(id));
    assert_eq!(
        u.me().await.unwrap(),
        None,
        "a replayed cookie is not a session"
    );
    app.stop().await;
}

#[tokio::test]
async fn sessions_expire_when_idle_and_absolutely() {
    for (idle, absolute) in [(1u64, 3600u64), (3600, 1)] {
        for sessions in ["redis", "memory", "mariadb"] {
            let app = spawn_app(sessions, |c| {
                c.session_idle_secs = idle;
                c.session_absolute_secs = absolute;
            })
            .await;
            let (u, _) = app.logged_in().await;
            assert!(u.me().await.unwrap().is_some());
            // Expiry is measured in whole seconds of wall time, so this one
            // test waits: any request in between would slide the idle expiry.
            tokio::time::sleep(Duration::from_millis(2100)).await;
            assert_eq!(
                u.me().await.unwrap(),
                None,
                "{sessions}: idle {idle}s / absolute {absolute}s never expired"
            );
            app.stop().await;
        }
    }
}

#[tokio::test]
async fn garbage_cookies_mean_not_logged_in_never_a_500() {
    let app = spawn_app("redis", |_| {}).await;
    let http = part1_clones::client::http();
    let long = "a".repeat(5000);
    let hostile = [
        "sid=",
        "sid=nonsense",
        "sid=../../etc/passwd",
        "sid=%00%0d%0aFLUSHALL",
        "sid=0000000000000000000000000000000000000000000000000000000000000000",
        "sid=ZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZZ",
        "garbage",
        ";;;=;",
        long.as_str(),
    ];
    for cookie in hostile {
        let res = http
            .get(format!("{}/me", app.url))
            .header(COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(
            res.status(),
            401,
            "cookie {:?}",
            &cookie[..cookie.len().min(40)]
        );
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "not logged in");
    }
    app.stop().await;
}

#[tokio::test]
async fn bad_signups_and_logins_get_clear_4xx() {
    let app = spawn_app("redis", |_| {}).await;
    let u = app.user();
    let name = fresh_username();
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 201);
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 409, "taken");
    assert_eq!(u.signup("Bad Name", PASSWORD).await.unwrap(), 400);
    assert_eq!(u.signup(&fresh_username(), "short").await.unwrap(), 400);
    assert!(u.login(&name, "wrong password").await.is_err());
    assert!(u.login("nobody_here", PASSWORD).await.is_err());
    let http = part1_clones::client::http();
    for (body, ctype, want) in [
        ("{not json", "application/json", 400),
        ("{\"username\":1}", "application/json", 400),
        (
            "{\"username\":\"a\",\"password\":\"b\",\"extra\":1}",
            "application/json",
            400,
        ),
        ("username=a", "application/x-www-form-urlencoded", 415),
    ] {
        let res = http
            .post(format!("{}/signup", app.url))
            .header("content-type", ctype)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), want, "{body}");
        let err: serde_json::Value = res.json().await.unwrap();
        assert!(err["error"].is_string());
    }
    let huge = format!(
        "{{\"username\":\"{}\",\"password\":\"x\"}}",
        "a".repeat(100_000)
    );
    let res = http
        .post(format!("{}/login", app.url))
        .header("content-type", "application/json")
        .body(huge)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    // What was stored before is still there.
    u.login(&name, PASSWORD).await.unwrap();
    app.stop().await;
}

#[tokio::test]
async fn cart_items_are_validated() {
    let app = spawn_app("redis", |_| {}).await;
    let (u, _) = app.logged_in().await;
    assert_eq!(u.add_item("").await.unwrap(), 400);
    assert_eq!(u.add_item(&"x".repeat(101)).await.unwrap(), 400);
    assert_eq!(u.add_item("line\r\nbreak").await.unwrap(), 400);
    assert_eq!(u.add_item("a book").await.unwrap(), 201);
    assert_eq!(u.cart().await.unwrap().unwrap().items, vec!["a book"]);
    app.stop().await;
}

#[tokio::test]
async fn the_datasets_users_log_in_with_the_dataset_password() {
    // The server never loads the dataset: part1-load's work, run here directly.
    let app = spawn_app("redis", |_| {}).await;
    let users = part1_clones::users::Users::new(app.db.pool.clone());
    let spec = common::dataset::DatasetSpec::new(42, common::dataset::Scale::Tiny);
    let loaded = users.load_dataset(&spec).await.unwrap();
    assert_eq!(loaded, spec.sizes.users, "every user is new");
    let u = app.user();
    let me = u
        .login("user1", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();
    assert_eq!((me.id, me.username.as_str()), (1, "user1"));
    assert!(u.login("user2", "not the password").await.is_err());
    // Loading again keeps what is there and adds nothing.
    assert_eq!(users.load_dataset(&spec).await.unwrap(), 0);
    app.stop().await;
}

fn max_age(res: &reqwest::Response) -> Option<(String, u64)> {
    let cookie = res.headers().get(SET_COOKIE)?.to_str().ok()?;
    let id = cookie.strip_prefix("sid=")?.split(';').next()?.to_owned();
    let age = cookie
        .split("; ")
        .find_map(|p| p.strip_prefix("Max-Age="))?
        .parse()
        .ok()?;
    Some((id, age))
}

#[tokio::test]
async fn the_cookie_is_resent_with_what_the_session_has_left() {
    // Absolute expiry shorter than idle: the cookie must follow the
    // absolute one, which no request extends.
    let absolute = 120;
    let app = spawn_app("redis", |c| {
        c.session_idle_secs = 3600;
        c.session_absolute_secs = absolute;
    })
    .await;
    let (u, _) = app.logged_in().await;
    let id = u.cookie().unwrap();
    let res = u.raw(Method::GET, "/me").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let (resent, age) = max_age(&res).expect("an authenticated answer re-sends the cookie");
    assert_eq!(resent, id, "the same session, not a new one");
    assert!(
        age <= absolute && age + 5 >= absolute,
        "Max-Age {age} is what is left of {absolute}s"
    );
    let res = u.raw(Method::GET, "/cart").send().await.unwrap();
    assert!(max_age(&res).is_some(), "every authenticated answer");
    let anonymous = app.user().raw(Method::GET, "/me").send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(max_age(&anonymous).is_none(), "no session, no cookie");
    let health = u.raw(Method::GET, "/health").send().await.unwrap();
    assert!(
        max_age(&health).is_none(),
        "a route that does not read the session"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_planted_sid_does_not_lock_the_user_out() {
    let app = spawn_app("redis", |_| {}).await;
    let (u, name) = app.logged_in().await;
    let valid = u.cookie().unwrap();
    let unknown = "b".repeat(64);
    let http = part1_clones::client::http();
    let me = |cookies: Vec<String>| {
        let mut req = http.get(format!("{}/me", app.url));
        for c in cookies {
            req = req.header(COOKIE, c);
        }
        async move {
            let res = req.send().await.unwrap();
            let status = res.status().as_u16();
            let body: serde_json::Value = res.json().await.unwrap();
            (status, body["username"].as_str().map(str::to_owned))
        }
    };
    for cookies in [
        vec![format!("sid=garbage; sid={valid}")],
        vec![format!("sid={unknown}; sid={valid}")],
        vec![format!("sid={valid}; sid={unknown}")],
        vec![format!("sid={unknown}"), format!("theme=dark; sid={valid}")],
    ] {
        assert_eq!(
            me(cookies.clone()).await,
            (200, Some(name.clone())),
            "{cookies:?}"
        );
    }
    assert_eq!(me(vec![format!("sid={unknown}; sid=x")]).await.0, 401);
    app.stop().await;
}
