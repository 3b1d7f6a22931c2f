//! What a later part gets from part 1: hooks called at the right moments,
//! login reading from the part's pool with a fallback to the primary, and
//! a route of its own with its own body limit.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use part1_clones::app::{AppPart, AppState};
use part1_clones::session::SessionStore;
use reqwest::Method;
use sqlx::MySqlPool;

use crate::support::{PASSWORD, fresh_username, spawn_app_with};

/// A part that records the writes it is told of and offers a read pool.
#[derive(Clone, Default)]
struct Recorder {
    written: Arc<Mutex<Vec<u64>>>,
    read_pool: Option<MySqlPool>,
}

impl AppPart for Recorder {
    fn routes<S: SessionStore>(&self, _: Arc<AppState<S>>) -> Router {
        // Its own limit on its own route, above the global one.
        Router::new().route(
            "/big",
            post(|body: String| async move { body.chars().count().to_string() })
                .layer(DefaultBodyLimit::max(64 * 1024)),
        )
    }

    async fn after_write(&self, user_id: u64) {
        self.written.lock().unwrap().push(user_id);
    }

    async fn user_read_pool(&self) -> Option<MySqlPool> {
        self.read_pool.clone()
    }
}

#[tokio::test]
async fn signup_tells_the_part_after_it_commits() {
    let part = Recorder::default();
    let app = spawn_app_with(part.clone(), "redis", |_| {}).await;
    let u = app.user();
    let name = fresh_username();
    let res = u
        .raw(Method::POST, "/signup")
        .json(&serde_json::json!({ "username": name, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let body: serde_json::Value = res.json().await.unwrap();
    let id = body["id"].as_u64().unwrap();
    let stored: u64 = sqlx::query_scalar("SELECT id FROM users WHERE username = ?")
        .bind(&name)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(id, stored);
    assert_eq!(
        *part.written.lock().unwrap(),
        vec![id],
        "after_write(id) once"
    );
    assert_eq!(u.signup(&name, PASSWORD).await.unwrap(), 409);
    assert_eq!(
        part.written.lock().unwrap().len(),
        1,
        "no hook for a failed write"
    );
    app.stop().await;
}

#[tokio::test]
async fn login_reads_the_parts_pool_and_falls_back_to_the_primary() {
    // A second database stands in for a replica that knows one user the
    // primary does not (so a success proves the read went there).
    let stack = common::testing::stack();
    let replica =
        common::testing::TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    part1_clones::app::migrate(&replica.pool).await.unwrap();
    let only_there = fresh_username();
    sqlx::query("INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, 0)")
        .bind(&only_there)
        .bind(part1_clones::users::hash_password(PASSWORD))
        .execute(&replica.pool)
        .await
        .unwrap();
    let part = Recorder {
        read_pool: Some(replica.pool.clone()),
        ..Recorder::default()
    };
    let app = spawn_app_with(part, "redis", |_| {}).await;
    let u = app.user();
    u.login(&only_there, PASSWORD)
        .await
        .expect("the user is read from the part's pool");
    let (_, just_signed_up) = app.logged_in().await; // only on the primary: the fallback
    assert!(!just_signed_up.is_empty());
    app.stop().await;

    // A read pool that fails: login still works, from the primary.
    let dead = sqlx::mysql::MySqlPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_secs(1))
        .connect_lazy("mysql://nobody:none@127.0.0.1:1/none")
        .unwrap();
    let part = Recorder {
        read_pool: Some(dead),
        ..Recorder::default()
    };
    let app = spawn_app_with(part, "redis", |_| {}).await;
    app.logged_in().await;
    app.stop().await;
    replica.drop_database().await;
}

#[tokio::test]
async fn a_route_with_its_own_body_limit_takes_more_than_part_1s() {
    let app = spawn_app_with(Recorder::default(), "redis", |_| {}).await;
    let http = part1_clones::client::http();
    // 10,000 characters of a non-Latin script: 30,000 bytes of UTF-8.
    let text = "語".repeat(10_000);
    let res = http
        .post(format!("{}/big", app.url))
        .body(text.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), text.chars().count().to_string());

    let res = http
        .post(format!("{}/signup", app.url))
        .header("content-type", "application/json")
        .body(format!("{{\"username\":\"{text}\",\"password\":\"x\"}}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413, "part 1's own routes stay tight");
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("larger"), "{body}");

    let res = http
        .post(format!("{}/big", app.url))
        .body("x".repeat(100 * 1024))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413, "the part's own limit holds too");
    app.stop().await;
}
