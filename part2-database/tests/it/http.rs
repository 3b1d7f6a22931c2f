//! Part 2's HTTP surface: reads, writes, read-your-writes across the split,
//! and bad input answered with a clear 4xx and nothing stored wrong.

use common::testing;
use part1_clones::client::{UserClient, http};
use part2_database::server::{Part2Config, build};
use reqwest::Method;

use crate::support::{REPLICA, loaded};

struct App {
    url: String,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn spawn(l: &crate::support::Loaded) -> App {
    spawn_with_primary(l, &l.db.url).await
}

/// The server over the test's database, with the primary at `primary_url`
/// (a chaos proxy, for the drills).
async fn spawn_with_primary(l: &crate::support::Loaded, primary_url: &str) -> App {
    let mut config: Part2Config = clap::Parser::try_parse_from(["part2-server"]).unwrap();
    config.server.port = 0;
    config.server.clone_id = Some("test-clone".into());
    config.server.key_prefix = testing::unique_name("p2");
    config.server.stack.mariadb_primary_url = primary_url.to_owned();
    config.server.stack.mariadb_replica_url = l.replica_url.clone();
    let app = build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    App { url, stop: tx }
}

async fn json(
    u: &UserClient,
    method: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut req = u.raw(method, path);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(serde_json::Value::Null))
}

#[tokio::test]
async fn pages_writes_and_read_your_writes_over_http() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    crate::support::replica_of(&l).await;
    let app = spawn(&l).await;
    let u = UserClient::new(http(), &app.url);
    u.login("user3", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();

    let hot = l.spec.article_popularity().id_of_rank(1);
    let (status, page) = json(&u, Method::GET, &format!("/articles/{hot}"), None).await;
    assert_eq!(status, 200);
    let comments_before = page["comment_count"].as_i64().unwrap();
    assert!(page["author_name"].as_str().unwrap().starts_with("User "));

    // Write, then read at once: the pin sends the read to the primary.
    let (status, _) = json(
        &u,
        Method::POST,
        &format!("/articles/{hot}/comments"),
        Some(serde_json::json!({"body": "first!"})),
    )
    .await;
    assert_eq!(status, 201);
    let (_, page) = json(&u, Method::GET, &format!("/articles/{hot}"), None).await;
    assert_eq!(
        page["comment_count"].as_i64().unwrap(),
        comments_before + 1,
        "read your own write"
    );

    let (status, created) = json(
        &u,
        Method::POST,
        "/articles",
        Some(serde_json::json!({"title": "Hello", "body": "World"})),
    )
    .await;
    assert_eq!(status, 201);
    let id = created["id"].as_u64().unwrap();
    let (status, list) = json(&u, Method::GET, "/articles?author=user3&page=0", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        list[0]["id"].as_u64(),
        Some(id),
        "newest first, and visible at once"
    );
    let (status, _) = json(&u, Method::POST, &format!("/articles/{id}/likes"), None).await;
    assert_eq!(status, 201);
    let (status, _) = json(&u, Method::POST, &format!("/articles/{id}/likes"), None).await;
    assert_eq!(status, 200, "a second like is not a new one");

    let (status, _) = json(&u, Method::POST, "/users/user4/friends", None).await;
    assert_eq!(status, 201);
    let (_, friends) = json(&u, Method::GET, "/users/user3/friends", None).await;
    assert!(
        friends
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["username"] == "user4")
    );
    let (status, feed) = json(&u, Method::GET, "/feed", None).await;
    assert_eq!(status, 200);
    assert!(!feed.as_array().unwrap().is_empty());
    let (status, profile) = json(&u, Method::GET, "/users/user4", None).await;
    assert_eq!(
        (status, profile["display_name"].as_str()),
        (200, Some("User 4"))
    );
    assert_eq!(
        part2_database::articles::counter_mismatches(&l.db.pool)
            .await
            .unwrap(),
        0
    );
    let _ = app.stop.send(());
    l.db.drop_database().await;
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_stores_nothing() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    crate::support::replica_of(&l).await;
    let app = spawn(&l).await;
    let anon = UserClient::new(http(), &app.url);
    let u = UserClient::new(http(), &app.url);
    u.login("user5", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();
    let before = part2_database::mongo::counts_sql(&l.db.pool).await.unwrap();

    for path in [
        "/articles/0",
        "/articles/-1",
        "/articles/abc",
        "/articles/99999999999999999999999",
        "/articles/1%27%20OR%201=1",
    ] {
        let (status, body) = json(&anon, Method::GET, path, None).await;
        assert_eq!(status, 400, "{path}");
        assert!(
            body["error"].as_str().unwrap().contains("not an id"),
            "{path}: {body}"
        );
    }
    assert_eq!(
        json(&anon, Method::GET, "/articles/10000000", None).await.0,
        404
    );
    assert_eq!(
        json(
            &anon,
            Method::GET,
            "/articles?author=Robert');DROP%20TABLE%20users;--",
            None
        )
        .await
        .0,
        400
    );
    assert_eq!(
        json(&anon, Method::GET, "/articles?author=user1&page=x", None)
            .await
            .0,
        400
    );
    assert_eq!(json(&anon, Method::GET, "/articles", None).await.0, 400);
    assert_eq!(
        json(&anon, Method::GET, "/users/nobody_at_all", None)
            .await
            .0,
        404
    );
    assert_eq!(json(&anon, Method::GET, "/feed", None).await.0, 401);
    assert_eq!(
        json(
            &anon,
            Method::POST,
            "/articles",
            Some(serde_json::json!({"title": "t", "body": "b"}))
        )
        .await
        .0,
        401
    );

    // Injection attempts are stored as text, exactly, or refused: never run.
    let evil = "'); DROP TABLE comments; --";
    let (status, _) = json(
        &u,
        Method::POST,
        "/articles/1/comments",
        Some(serde_json::json!({"body": evil})),
    )
    .await;
    assert_eq!(status, 201);
    let stored: String = sqlx::query_scalar("SELECT body FROM comments ORDER BY id DESC LIMIT 1")
        .fetch_one(&l.db.pool)
        .await
        .unwrap();
    assert_eq!(stored, evil);
    for body in [
        serde_json::json!({"title": "", "body": "b"}),
        serde_json::json!({"title": "x".repeat(201), "body": "b"}),
        serde_json::json!({"title": "t\u{0}", "body": "b"}),
        serde_json::json!({"title": "t"}),
        serde_json::json!({"title": "t", "body": "b", "author_id": 1}),
    ] {
        assert_eq!(
            json(&u, Method::POST, "/articles", Some(body.clone()))
                .await
                .0,
            400,
            "{body}"
        );
    }
    assert_eq!(
        json(
            &u,
            Method::POST,
            "/articles/1/comments",
            Some(serde_json::json!({"body": ""}))
        )
        .await
        .0,
        400
    );
    assert_eq!(
        json(
            &u,
            Method::POST,
            "/articles/10000000/comments",
            Some(serde_json::json!({"body": "x"}))
        )
        .await
        .0,
        404
    );
    assert_eq!(
        json(&u, Method::POST, "/articles/10000000/likes", None)
            .await
            .0,
        404
    );
    assert_eq!(
        json(&u, Method::POST, "/users/user5/friends", None).await.0,
        400,
        "not yourself"
    );
    let res = u
        .raw(Method::POST, "/articles")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);

    let after = part2_database::mongo::counts_sql(&l.db.pool).await.unwrap();
    assert_eq!(
        after.articles, before.articles,
        "no article stored by bad input"
    );
    assert_eq!(
        after.comments,
        before.comments + 1,
        "only the one valid comment"
    );
    assert_eq!(
        part2_database::articles::counter_mismatches(&l.db.pool)
            .await
            .unwrap(),
        0
    );
    let _ = app.stop.send(());
    l.db.drop_database().await;
}

#[tokio::test]
async fn with_the_primary_down_writes_get_503_and_reads_go_on() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    crate::support::replica_of(&l).await;
    let proxy = testing::ChaosProxy::start("127.0.0.1:13306").await.unwrap();
    let app = spawn_with_primary(&l, &proxy.url_for(&l.db.url)).await;
    let u = UserClient::new(http(), &app.url);
    u.login("user6", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();
    // This user has not written, so no pin sends their reads to the primary.
    proxy.cut();
    let (status, body) = json(
        &u,
        Method::POST,
        "/articles/1/comments",
        Some(serde_json::json!({"body": "x"})),
    )
    .await;
    assert_eq!(status, 503);
    assert_eq!(
        body["error"], "the database is unavailable",
        "clear, and no internals"
    );
    let (status, page) = json(&u, Method::GET, "/articles/1", None).await;
    assert_eq!(status, 200, "reads go on from the replica: {page}");
    proxy.restore();
    let _ = app.stop.send(());
    l.db.drop_database().await;
}
