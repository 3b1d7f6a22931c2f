//! Activity streams and the friend graph (experiment 5): the feed merged
//! from objects for a user with few friends and for the most connected
//! one, mutual friends from Redis sets against SQL, later friends pages
//! cached by generation, and hostile names on the new route.

use std::time::Duration;

use common::testing;
use part3_cache::backend::{CacheBackend, Memcached};
use part3_cache::key::Key;
use part3_cache::server::{BackendKind, CacheMode};
use serde_json::json;

use crate::http::{feed_by_sql, hot, most_connected, two_clones};
use crate::support::{self, Loaded, config, cookie_for, get, post, spawn, user};

/// The mutual friends of `a` and `b` by SQL, ascending.
async fn mutual_by_sql(l: &Loaded, a: u64, b: u64) -> Vec<u64> {
    sqlx::query_scalar(
        "SELECT f.friend_id FROM friendships f WHERE f.user_id = ? AND f.friend_id IN \
         (SELECT g.friend_id FROM friendships g WHERE g.user_id = ?) ORDER BY f.friend_id",
    )
    .bind(a)
    .bind(b)
    .fetch_all(&l.db.pool)
    .await
    .unwrap()
}

fn ids(got: &support::Got) -> Vec<u64> {
    got.json()["mutual"]
        .as_array()
        .unwrap_or_else(|| panic!("no mutual list: {}", got.body))
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect()
}

/// The two users with the most friends.
async fn two_most_connected(l: &Loaded) -> ((u64, String), (u64, String)) {
    let top: Vec<u64> = sqlx::query_scalar(
        "SELECT user_id FROM friendships GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT 2",
    )
    .fetch_all(&l.db.pool)
    .await
    .unwrap();
    (user(l, top[0]).await, user(l, top[1]).await)
}

#[tokio::test]
async fn mutual_friends_from_redis_sets_equal_the_sql_and_follow_a_befriend() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    let ((x, xname), (y, yname)) = two_most_connected(&l).await;
    let path = format!("/users/{xname}/mutual-friends?with={yname}");

    let expected = mutual_by_sql(&l, x, y).await;
    assert!(!expected.is_empty(), "the two most connected share friends");
    let first = get(&a.url, &path, None).await;
    assert_eq!((first.status, first.x()), (200, "miss"), "{}", first.body);
    assert_eq!(ids(&first), expected, "SINTER = the SQL");
    let second = get(&b.url, &path, None).await;
    assert_eq!(second.x(), "hit", "the sets are shared by the clones");
    assert_eq!(ids(&second), expected);

    // x befriends a friend of y who is not x's friend yet: a new mutual friend.
    let z: u64 = sqlx::query_scalar(
        "SELECT g.friend_id FROM friendships g WHERE g.user_id = ? AND g.friend_id <> ? \
         AND g.friend_id NOT IN (SELECT f.friend_id FROM friendships f WHERE f.user_id = ?) \
         ORDER BY g.friend_id LIMIT 1",
    )
    .bind(y)
    .bind(x)
    .bind(x)
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    let (_, zname) = user(&l, z).await;
    let cookie = cookie_for(&prefix, x, &xname).await;
    let made = post(
        &a.url,
        &format!("/users/{zname}/friends"),
        &cookie,
        json!({}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);

    let after = get(&b.url, &path, None).await;
    assert_eq!(after.x(), "miss", "the befriend deleted x's set");
    let now = mutual_by_sql(&l, x, y).await;
    assert_eq!(now.len(), expected.len() + 1);
    assert!(ids(&after).contains(&z), "{}", after.body);
    assert_eq!(ids(&after), now);
    assert_eq!(get(&a.url, &path, None).await.x(), "hit");

    // The same question without the cache: the SQL, `bypass`.
    let none = spawn(config(&l, CacheMode::None, BackendKind::Memcached, &prefix)).await;
    // As x, whose write pins their reads to the primary (part 2's policy).
    let plain = get(&none.url, &path, Some(&cookie)).await;
    assert_eq!((plain.status, plain.x()), (200, "bypass"));
    assert_eq!(ids(&plain), now);

    // Unknown users and a missing `with`.
    let unknown = get(
        &a.url,
        &format!("/users/{xname}/mutual-friends?with=nobody_here"),
        None,
    )
    .await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let unknown = get(&a.url, "/users/nobody_here/mutual-friends?with=user1", None).await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    let missing = get(&a.url, &format!("/users/{xname}/mutual-friends"), None).await;
    assert_eq!(missing.status, 400, "{}", missing.body);
    l.db.drop_database().await;
}

#[tokio::test]
async fn hostile_names_in_mutual_friends_flush_nothing() {
    let l = support::loaded().await;
    let (a, _b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    // A canary of our own in the shared Memcached, and a cached article.
    let stack = testing::stack();
    let mc = Memcached::connect(
        &stack.memcached_url,
        &format!("{prefix}:"),
        Duration::from_secs(2),
    )
    .await
    .unwrap();
    let canary = Key::new("canary", &["1"]);
    mc.set(&canary, b"alive", Duration::from_secs(120))
        .await
        .unwrap();
    let article = format!("/articles/{}", hot(&l));
    assert_eq!(get(&a.url, &article, None).await.x(), "miss");

    for name in [
        "%0D%0Aflush_all%0D%0A",
        "x%0D%0Aflush_all%0D%0Aget",
        "a%20b",
        "flush_all%20",
        "delete%20article:1",
        "%F0%9F%98%80",
        "*",
    ] {
        for path in [
            format!("/users/{name}/mutual-friends?with=user1"),
            format!("/users/user1/mutual-friends?with={name}"),
        ] {
            let got = get(&a.url, &path, None).await;
            assert!(
                (400..500).contains(&got.status),
                "{path}: {} {}",
                got.status,
                got.body
            );
        }
    }
    // `flush_all` is a valid username: an unknown user, 404, nothing sent.
    let got = get(&a.url, "/users/flush_all/mutual-friends?with=user1", None).await;
    assert_eq!(got.status, 404, "{}", got.body);

    assert_eq!(
        mc.get(&canary).await.unwrap().as_deref(),
        Some(&b"alive"[..]),
        "nothing was flushed"
    );
    assert_eq!(get(&a.url, &article, None).await.x(), "hit");
    l.db.drop_database().await;
}

#[tokio::test]
async fn later_friends_pages_hit_on_second_read_and_change_after_a_befriend() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    let (x, xname) = most_connected(&l).await;
    let page1 = format!("/users/{xname}/friends?limit=5");
    let first = get(&a.url, &page1, None).await;
    assert_eq!((first.status, first.x()), (200, "miss"), "{}", first.body);
    assert_eq!(get(&b.url, &page1, None).await.x(), "hit");
    let next = first.json()["next"].as_u64().expect("more than 5 friends");
    let page2 = format!("/users/{xname}/friends?limit=5&after={next}");
    let second = get(&b.url, &page2, None).await;
    assert_eq!(second.x(), "miss");
    assert_eq!(get(&a.url, &page2, None).await.x(), "hit");
    assert_eq!(get(&a.url, &page2, None).await.json(), second.json());
    let all = format!("/users/{xname}/friends?limit=1000");
    assert_eq!(get(&a.url, &all, None).await.x(), "miss");
    assert_eq!(get(&b.url, &all, None).await.x(), "hit");

    // x befriends someone new: every later page of x is a new generation.
    let w: u64 = sqlx::query_scalar(
        "SELECT u.id FROM users u WHERE u.id <> ? AND u.id NOT IN \
         (SELECT f.friend_id FROM friendships f WHERE f.user_id = ?) ORDER BY u.id DESC LIMIT 1",
    )
    .bind(x)
    .bind(x)
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    let (_, wname) = user(&l, w).await;
    let cookie = cookie_for(&prefix, x, &xname).await;
    let made = post(
        &b.url,
        &format!("/users/{wname}/friends"),
        &cookie,
        json!({}),
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.body);
    let after = get(&a.url, &all, None).await;
    assert_eq!(after.x(), "miss", "one delete dropped every later page");
    let names: Vec<String> = after.json()["friends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["username"].as_str().unwrap().to_owned())
        .collect();
    assert!(names.contains(&wname), "{}", after.body);
    assert_eq!(get(&b.url, &page2, None).await.x(), "miss");
    assert_eq!(get(&b.url, &page2, None).await.x(), "hit");
    assert_eq!(get(&b.url, &all, None).await.x(), "hit");
    l.db.drop_database().await;
}

#[tokio::test]
async fn the_feed_of_a_user_with_few_friends_equals_the_sql_and_shows_a_post() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Redis).await;
    // The user with the fewest friends among those whose friends wrote 20+ articles.
    let uid: u64 = sqlx::query_scalar(
        "SELECT f.user_id FROM friendships f JOIN articles a ON a.author_id = f.friend_id \
         GROUP BY f.user_id HAVING COUNT(*) >= 20 ORDER BY COUNT(DISTINCT f.friend_id), f.user_id LIMIT 1",
    )
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    let (uid, name) = user(&l, uid).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let expected = feed_by_sql(&l, uid).await;
    let cold = get(&a.url, "/feed", Some(&cookie)).await;
    assert_eq!((cold.status, cold.x()), (200, "miss"), "{}", cold.body);
    assert_eq!(cold.json(), expected);
    let warm = get(&b.url, "/feed", Some(&cookie)).await;
    assert_eq!((warm.x(), warm.json()), ("hit", expected));

    let posted = support::a_friend_posts(&l, &prefix, uid, &a.url).await;
    let after = get(&b.url, "/feed", Some(&cookie)).await;
    assert_eq!(after.x(), "miss");
    assert_eq!(after.json()[0]["id"], posted.json()["id"]);
    assert_eq!(after.json(), feed_by_sql(&l, uid).await);
    l.db.drop_database().await;
}
