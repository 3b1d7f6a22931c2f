//! Writes that are safe to retry and safe to race: idempotency keys,
//! mutual befriending, and paging that never cuts a list silently.

use std::collections::HashSet;
use std::sync::Arc;

use crate::support::{REPLICA, call, config, loaded, replica_of, session_for, spawn};

/// 20 copies of one request, sent at once with one `Idempotency-Key` (a
/// client retrying, a balancer replaying): exactly one comment is stored,
/// and every copy gets the same answer.
#[tokio::test]
async fn one_key_twenty_parallel_comments_one_write() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let c = config(&l);
    let prefix = c.server.key_prefix.clone();
    let app = spawn(c).await;
    let cookie = Arc::new(format!("sid={}", session_for(&prefix, 11, "user11").await));
    let http = part1_clones::client::http();
    let article = l.spec.article_popularity().id_of_rank(5);
    let body = common::testing::unique_name("once");
    let key = common::testing::unique_name("k");
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let req = http
            .post(format!("{}/articles/{article}/comments", app.url))
            .header("cookie", cookie.as_str())
            .header("idempotency-key", &key)
            .json(&serde_json::json!({ "body": body }));
        tasks.push(tokio::spawn(async move {
            let res = req.send().await.unwrap();
            let replay = res.headers().contains_key("idempotent-replayed");
            let status = res.status().as_u16();
            let json: serde_json::Value = res.json().await.unwrap();
            (status, replay, json["id"].as_u64())
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM comments WHERE article_id = ? AND body = ?")
            .bind(article)
            .bind(&body)
            .fetch_one(&l.db.pool)
            .await
            .unwrap();
    assert_eq!(stored, 1, "one comment, counted in the database");
    assert!(answers.iter().all(|(s, _, _)| *s == 201), "{answers:?}");
    assert_eq!(answers.iter().filter(|(_, replay, _)| !replay).count(), 1);
    let ids: HashSet<_> = answers.iter().map(|(_, _, id)| *id).collect();
    assert_eq!(ids.len(), 1, "every copy got the first answer: {answers:?}");
    assert_eq!(
        part2_database::articles::counter_mismatches(&l.db.pool)
            .await
            .unwrap(),
        0
    );

    // The same key for another request is a conflict, not a replay.
    let (status, _, _) = call(
        http.post(format!("{}/articles/{article}/likes", app.url))
            .header("cookie", cookie.as_str())
            .header("idempotency-key", &key),
    )
    .await;
    assert_eq!(status, 409);
    // A malformed key is a 400, and nothing is written.
    let (status, _, _) = call(
        http.post(format!("{}/articles", app.url))
            .header("cookie", cookie.as_str())
            .header("idempotency-key", "no spaces allowed")
            .json(&serde_json::json!({"title": "t", "body": "b"})),
    )
    .await;
    assert_eq!(status, 400);
    // Articles, likes and friends honour keys too.
    let title = common::testing::unique_name("title");
    for _ in 0..3 {
        let (status, _, _) = call(
            http.post(format!("{}/articles", app.url))
                .header("cookie", cookie.as_str())
                .header("idempotency-key", "post-once")
                .json(&serde_json::json!({"title": title, "body": "b"})),
        )
        .await;
        assert_eq!(status, 201);
        let (status, _, _) = call(
            http.post(format!("{}/users/user12/friends", app.url))
                .header("cookie", cookie.as_str())
                .header("idempotency-key", "befriend-once"),
        )
        .await;
        assert_eq!(status, 201);
    }
    let posted: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM articles WHERE title = ?")
        .bind(&title)
        .fetch_one(&l.db.pool)
        .await
        .unwrap();
    assert_eq!(posted, 1);
    let _ = app.stop.send(());
    l.db.drop_database().await;
}

/// 16 users, every pair befriending each other from both sides at once:
/// 240 requests. Taking the rows in one order (lower id first) means no
/// deadlock, so no 500; every friendship is stored both ways.
#[tokio::test]
async fn mutual_befriends_at_once_never_fail() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let c = config(&l);
    let prefix = c.server.key_prefix.clone();
    let app = spawn(c).await;
    let http = part1_clones::client::http();
    // Users the tiny dataset has but who have no friends among themselves
    // would be ideal; any 16 do: INSERT IGNORE keeps existing rows.
    let users: Vec<u64> = (40..56).collect();
    let mut cookies = std::collections::HashMap::new();
    for u in &users {
        cookies.insert(
            *u,
            format!(
                "sid={}",
                session_for(&prefix, *u, &format!("user{u}")).await
            ),
        );
    }
    let gate = Arc::new(tokio::sync::Barrier::new(240));
    let mut tasks = Vec::new();
    for (i, a) in users.iter().enumerate() {
        for b in &users[i + 1..] {
            for (from, to) in [(*a, *b), (*b, *a)] {
                let req = http
                    .post(format!("{}/users/user{to}/friends", app.url))
                    .header("cookie", &cookies[&from]);
                let gate = gate.clone();
                tasks.push(tokio::spawn(async move {
                    gate.wait().await;
                    req.send().await.unwrap().status().as_u16()
                }));
            }
        }
    }
    assert_eq!(tasks.len(), 240);
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        *statuses.entry(t.await.unwrap()).or_insert(0) += 1;
    }
    assert_eq!(statuses.into_iter().collect::<Vec<_>>(), vec![(201, 240)]);
    let in_list = users
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let edges: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM friendships WHERE user_id IN ({in_list}) AND friend_id IN ({in_list})"
    )))
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    assert_eq!(edges, 16 * 15, "every pair, both directions");
    let _ = app.stop.send(());
    l.db.drop_database().await;
}

/// The most-befriended user's list, walked a page at a time, gives every
/// friend exactly once, and the last page says there is no next one.
#[tokio::test]
async fn paging_walks_every_friend_exactly_once() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let app = spawn(config(&l)).await;
    let http = part1_clones::client::http();
    let user = l.spec.user_popularity().id_of_rank(1);
    let truth: Vec<u64> = sqlx::query_scalar(
        "SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id",
    )
    .bind(user)
    .fetch_all(&l.db.pool)
    .await
    .unwrap();
    assert!(truth.len() > 7, "a list of several pages");
    let mut walked = Vec::new();
    let mut after: Option<u64> = None;
    let mut pages = 0;
    loop {
        let cursor = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let (status, _, page) = call(http.get(format!(
            "{}/users/user{user}/friends?limit=7{cursor}",
            app.url
        )))
        .await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        walked.extend(
            page["friends"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_u64().unwrap()),
        );
        match page["next"].as_u64() {
            Some(next) => after = Some(next),
            None => break,
        }
        assert!(pages <= truth.len(), "paging never ends");
    }
    assert_eq!(walked, truth, "each friend once, in order");
    for bad in ["limit=0", "limit=1001", "limit=x", "after=-1", "after=x"] {
        let (status, _, _) =
            call(http.get(format!("{}/users/user{user}/friends?{bad}", app.url))).await;
        assert_eq!(status, 400, "{bad}");
    }
    let _ = app.stop.send(());
    l.db.drop_database().await;
}
