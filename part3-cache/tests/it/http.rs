//! Part 3's HTTP surface against the real stack: hits and misses, writes
//! that invalidate through another clone, the stale query cache, the feed
//! from objects, a cache that is down, and hostile input.

use common::testing;
use part3_cache::server::{BackendKind, CacheMode};
use serde_json::json;

use crate::support::{self, Loaded, config, cookie_for, get, get_html, post, spawn, user};

/// The most read article of the tiny dataset (it exists, it has comments).
pub(crate) fn hot(l: &Loaded) -> u64 {
    l.spec.article_popularity().id_of_rank(1)
}

/// Two clones sharing one cache (one key prefix), object pattern.
pub(crate) async fn two_clones(
    l: &Loaded,
    backend: BackendKind,
) -> (support::App, support::App, String) {
    support::require(backend).await;
    let prefix = testing::unique_name("p3");
    let a = spawn(config(l, CacheMode::Object, backend, &prefix)).await;
    let b = spawn(config(l, CacheMode::Object, backend, &prefix)).await;
    (a, b, prefix)
}

async fn read_your_writes_through_another_clone(backend: BackendKind) {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, backend).await;
    let id = hot(&l);
    let path = format!("/articles/{id}");

    let first = get(&a.url, &path, None).await;
    assert_eq!((first.status, first.x()), (200, "miss"), "{}", first.body);
    let second = get(&b.url, &path, None).await;
    assert_eq!(second.x(), "hit", "B reads what A stored");
    assert_eq!(second.json(), first.json());
    let count = first.json()["comment_count"].as_i64().unwrap();

    let (uid, name) = user(&l, 3).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let wrote = post(
        &a.url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": "cached?"}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);

    // Through the other clone: the write is there at once.
    let after = get(&b.url, &path, Some(&cookie)).await;
    assert_eq!(after.x(), "miss", "the comment deleted the object");
    assert_eq!(after.json()["comment_count"].as_i64().unwrap(), count + 1);
    assert_eq!(after.json()["comments"][0]["body"], "cached?");
    let again = get(&a.url, &path, None).await;
    assert_eq!(again.x(), "hit");
    assert_eq!(again.json()["comment_count"].as_i64().unwrap(), count + 1);

    // The rendered page: its own object, deleted by the same write.
    let page = get_html(&a.url, &path).await;
    assert_eq!((page.status, page.x()), (200, "miss"));
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(page.body.contains("cached?"), "{}", page.body);
    assert_eq!(get_html(&b.url, &path).await.x(), "hit");
    let liked = post(&b.url, &format!("{path}/likes"), &cookie, json!({})).await;
    assert!(liked.status == 201 || liked.status == 200, "{}", liked.body);
    let page = get_html(&a.url, &path).await;
    assert_eq!(page.x(), "miss", "a like deletes the page too");
    l.db.drop_database().await;
}

#[tokio::test]
async fn memcached_a_write_through_one_clone_is_read_through_the_other() {
    read_your_writes_through_another_clone(BackendKind::Memcached).await;
}

#[tokio::test]
async fn redis_a_write_through_one_clone_is_read_through_the_other() {
    read_your_writes_through_another_clone(BackendKind::Redis).await;
}

#[tokio::test]
async fn the_query_cache_serves_a_stale_page_after_a_comment() {
    support::require(BackendKind::Memcached).await;
    let l = support::loaded().await;
    let prefix = testing::unique_name("p3");
    let app = spawn(config(
        &l,
        CacheMode::Query,
        BackendKind::Memcached,
        &prefix,
    ))
    .await;
    let path = format!("/articles/{}", hot(&l));
    let before = get(&app.url, &path, None).await;
    assert_eq!(before.x(), "miss");
    assert_eq!(get(&app.url, &path, None).await.x(), "hit");

    let (uid, name) = user(&l, 4).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let wrote = post(
        &app.url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": "unseen"}),
    )
    .await;
    assert_eq!(wrote.status, 201);
    let stale = get(&app.url, &path, Some(&cookie)).await;
    assert_eq!(stale.x(), "hit", "no write can name a hashed query");
    assert_eq!(
        stale.json()["comment_count"],
        before.json()["comment_count"],
        "the anti-pattern: the comment is in the database, not in the page"
    );
    l.db.drop_database().await;
}

/// The user with the most friends in the test's database.
pub(crate) async fn most_connected(l: &Loaded) -> (u64, String) {
    let id: u64 = sqlx::query_scalar(
        "SELECT user_id FROM friendships GROUP BY user_id ORDER BY COUNT(*) DESC, user_id LIMIT 1",
    )
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    user(l, id).await
}

/// The feed as SQL gives it, ties broken by id as the object feed does.
pub(crate) async fn feed_by_sql(l: &Loaded, user: u64) -> serde_json::Value {
    let rows: Vec<part2_database::articles::ArticleSummary> = sqlx::query_as(
        "SELECT a.id, a.author_id, a.author_name, a.title, a.published_at, CAST(a.comment_count AS SIGNED) AS comment_count, \
         CAST(a.like_count AS SIGNED) AS like_count FROM friendships f JOIN articles a ON a.author_id = f.friend_id \
         WHERE f.user_id = ? ORDER BY a.published_at DESC, a.id DESC LIMIT 20",
    )
    .bind(user)
    .fetch_all(&l.db.pool)
    .await
    .unwrap();
    serde_json::to_value(rows).unwrap()
}

#[tokio::test]
async fn the_feed_from_objects_equals_the_join_and_a_post_shows_at_once() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    let (uid, name) = most_connected(&l).await;
    let friends: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM friendships WHERE user_id = ?")
        .bind(uid)
        .fetch_one(&l.db.pool)
        .await
        .unwrap();
    assert!(
        friends >= part3_cache::server::feed::WIDE as i64,
        "the most connected user has {friends} friends: the site-wide window answers"
    );
    let cookie = cookie_for(&prefix, uid, &name).await;

    let expected = feed_by_sql(&l, uid).await;
    assert_eq!(expected.as_array().unwrap().len(), 20);
    let cold = get(&a.url, "/feed", Some(&cookie)).await;
    assert_eq!((cold.status, cold.x()), (200, "miss"), "{}", cold.body);
    assert_eq!(cold.json(), expected, "assembled from objects = the JOIN");
    let warm = get(&b.url, "/feed", Some(&cookie)).await;
    assert_eq!(warm.x(), "hit");
    assert_eq!(warm.json(), expected);

    // A friend posts: only their `recent` object is deleted.
    let posted = support::a_friend_posts(&l, &prefix, uid, &b.url).await;
    let new_id = posted.json()["id"].as_u64().unwrap();
    let after = get(&a.url, "/feed", Some(&cookie)).await;
    assert_eq!(after.x(), "miss", "one author's object was reloaded");
    assert_eq!(
        after.json()[0]["id"].as_u64(),
        Some(new_id),
        "{}",
        after.body
    );
    assert_eq!(after.json(), feed_by_sql(&l, uid).await);
    assert_eq!(get(&b.url, "/feed", Some(&cookie)).await.x(), "hit");
    l.db.drop_database().await;
}

#[tokio::test]
async fn befriending_invalidates_both_friend_lists() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    // Two users who are not friends yet.
    let (x, y): (u64, u64) = sqlx::query_as(
        "SELECT u.id, v.id FROM users u JOIN users v ON v.id > u.id \
         WHERE NOT EXISTS (SELECT 1 FROM friendships f WHERE f.user_id = u.id AND f.friend_id = v.id) \
         ORDER BY u.id, v.id LIMIT 1",
    )
    .fetch_one(&l.db.pool)
    .await
    .unwrap();
    let ((xid, xname), (_, yname)) = (user(&l, x).await, user(&l, y).await);
    let (xpath, ypath) = (
        format!("/users/{xname}/friends"),
        format!("/users/{yname}/friends"),
    );
    assert_eq!(get(&a.url, &xpath, None).await.x(), "miss");
    assert_eq!(get(&b.url, &xpath, None).await.x(), "hit");
    assert_eq!(get(&a.url, &ypath, None).await.x(), "miss");

    let cookie = cookie_for(&prefix, xid, &xname).await;
    let made = post(&a.url, &ypath, &cookie, json!({})).await;
    assert_eq!(made.status, 201, "{}", made.body);
    let names = |g: &support::Got| -> Vec<String> {
        g.json()["friends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["username"].as_str().unwrap().to_owned())
            .collect()
    };
    let xs = get(&b.url, &xpath, None).await;
    assert_eq!(xs.x(), "miss");
    let ys = get(&b.url, &ypath, None).await;
    assert_eq!(ys.x(), "miss");
    assert!(names(&ys).contains(&xname), "{}", ys.body);
    // A page holds 100 friends, by id: x's new friend shows if it fits.
    let xs_all = get(&b.url, &format!("{xpath}?limit=1000"), None).await;
    assert_eq!(xs_all.x(), "miss", "a later page: its own object");
    assert!(names(&xs_all).contains(&yname), "{}", xs_all.body);
    assert_eq!(get(&a.url, &xpath, None).await.x(), "hit");
    l.db.drop_database().await;
}

#[tokio::test]
async fn with_the_cache_down_every_route_answers_from_the_database() {
    let l = support::loaded().await;
    // A port that nothing listens on: bound, then closed.
    let closed = {
        let s = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let prefix = testing::unique_name("p3");
    let mut c = config(&l, CacheMode::Object, BackendKind::Memcached, &prefix);
    c.part2.server.stack.memcached_url = format!("memcache://127.0.0.1:{closed}?protocol=ascii");
    let app = spawn(c).await;
    let (uid, name) = most_connected(&l).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let path = format!("/articles/{}", hot(&l));

    let expected_feed = feed_by_sql(&l, uid).await;
    for _ in 0..2 {
        let article = get(&app.url, &path, None).await;
        assert_eq!(
            (article.status, article.x()),
            (200, "bypass"),
            "{}",
            article.body
        );
        let page = get_html(&app.url, &path).await;
        assert_eq!((page.status, page.x()), (200, "bypass"));
        let friends = get(&app.url, &format!("/users/{name}/friends"), None).await;
        assert_eq!(
            (friends.status, friends.x()),
            (200, "bypass"),
            "{}",
            friends.body
        );
        let feed = get(&app.url, "/feed", Some(&cookie)).await;
        assert_eq!((feed.status, feed.x()), (200, "bypass"), "{}", feed.body);
        assert_eq!(feed.json(), expected_feed, "the JOIN's feed, same order");
    }
    // Writes still commit; their invalidation fails quietly.
    let wrote = post(
        &app.url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": "no cache"}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    let after = get(&app.url, &path, Some(&cookie)).await;
    assert_eq!(after.json()["comments"][0]["body"], "no cache");
    l.db.drop_database().await;
}

#[tokio::test]
async fn hostile_names_get_400_and_flush_nothing() {
    let l = support::loaded().await;
    let (a, _b, _) = two_clones(&l, BackendKind::Memcached).await;
    let path = format!("/articles/{}", hot(&l));
    assert_eq!(get(&a.url, &path, None).await.x(), "miss");
    assert_eq!(get(&a.url, &path, None).await.x(), "hit");
    for name in [
        "%0D%0Aflush_all%0D%0A",
        "x%0D%0Aflush_all%0D%0Aget",
        "a%20b",
        "delete%20article:1",
        "%F0%9F%98%80",
        "*",
    ] {
        let got = get(&a.url, &format!("/users/{name}/friends"), None).await;
        assert_eq!(got.status, 400, "{name}: {}", got.body);
    }
    assert_eq!(
        get(&a.url, &path, None).await.x(),
        "hit",
        "the cache was not flushed"
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn a_stored_script_comes_back_escaped_in_the_page() {
    let l = support::loaded().await;
    let (a, b, prefix) = two_clones(&l, BackendKind::Memcached).await;
    let (uid, name) = user(&l, 5).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let script = "<script>alert('x')</script>";
    let posted = post(
        &a.url,
        "/articles",
        &cookie,
        json!({"title": script, "body": format!("body {script}")}),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    let id = posted.json()["id"].as_u64().unwrap();
    post(
        &a.url,
        &format!("/articles/{id}/comments"),
        &cookie,
        json!({"body": script}),
    )
    .await;
    for app in [&a, &b, &a] {
        let page = get_html(&app.url, &format!("/articles/{id}")).await;
        assert_eq!(page.status, 200);
        assert!(!page.body.contains("<script"), "{}", page.body);
        assert!(
            page.body
                .contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
        );
    }
    // The JSON keeps the text as written: escaping is the page's job.
    let json = get(&b.url, &format!("/articles/{id}"), None).await;
    assert_eq!(json.json()["title"], script);
    l.db.drop_database().await;
}

/// The anti-pattern of experiment 4: each clone caches in files on its own
/// disk. A comment through A deletes A's file; B keeps serving its own.
#[tokio::test]
async fn a_file_cache_on_each_clone_serves_the_old_page_through_the_others() {
    let l = support::loaded().await;
    let prefix = testing::unique_name("p3");
    let dirs: Vec<std::path::PathBuf> = (0..2)
        .map(|i| std::env::temp_dir().join(format!("{prefix}-clone{i}")))
        .collect();
    let mut clones = Vec::new();
    for dir in &dirs {
        let mut c = config(&l, CacheMode::Object, BackendKind::File, &prefix);
        c.cache_file_dir = Some(dir.clone());
        clones.push(spawn(c).await);
    }
    let path = format!("/articles/{}", hot(&l));
    // Each clone fills its own disk: two misses, then hits.
    for app in &clones {
        assert_eq!(get(&app.url, &path, None).await.x(), "miss");
        assert_eq!(get(&app.url, &path, None).await.x(), "hit");
    }
    // The article's own file (not the lease or version markers beside it).
    let article_file = format!(":article:{}.entry", hot(&l));
    let files = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().ends_with(&article_file)
            })
            .count()
    };
    assert_eq!((files(&dirs[0]), files(&dirs[1])), (1, 1));
    for app in &clones {
        let stats = get(&app.url, "/cache/stats", None).await.json();
        assert_eq!(stats["backend"], "file");
        assert_eq!(stats["loads"], 1, "each clone assembled its own copy");
    }
    let count = get(&clones[0].url, &path, None).await.json()["comment_count"]
        .as_i64()
        .unwrap();

    let (uid, name) = user(&l, 3).await;
    let cookie = cookie_for(&prefix, uid, &name).await;
    let wrote = post(
        &clones[0].url,
        &format!("{path}/comments"),
        &cookie,
        json!({"body": "on one disk only"}),
    )
    .await;
    assert_eq!(wrote.status, 201, "{}", wrote.body);
    assert_eq!(
        (files(&dirs[0]), files(&dirs[1])),
        (0, 1),
        "the write deleted the file of the clone it went through, only"
    );
    let mut stale = 0;
    for app in &clones {
        let got = get(&app.url, &path, Some(&cookie)).await;
        if got.json()["comment_count"].as_i64() == Some(count) {
            assert_eq!(got.x(), "hit", "an old page is a cached one");
            stale += 1;
        }
    }
    assert_eq!(
        stale, 1,
        "one clone of two serves the page without the comment"
    );
    for dir in &dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    l.db.drop_database().await;
}

/// Review 6: one URL, two representations (JSON, HTML) chosen by
/// `Accept`: both say `Vary: Accept`, so an HTTP cache in front keys on it.
#[tokio::test]
async fn the_article_varies_by_accept() {
    support::require(BackendKind::Memcached).await;
    let l = support::loaded().await;
    let prefix = testing::unique_name("p3vary");
    let app = spawn(config(
        &l,
        CacheMode::Object,
        BackendKind::Memcached,
        &prefix,
    ))
    .await;
    let path = format!("/articles/{}", hot(&l));
    let json = get(&app.url, &path, None).await;
    let html = get_html(&app.url, &path).await;
    assert_eq!((json.status, html.status), (200, 200));
    assert!(html.content_type.starts_with("text/html"));
    for got in [&json, &html] {
        assert_eq!(
            got.vary.as_deref().map(str::to_ascii_lowercase).as_deref(),
            Some("accept"),
            "{}",
            got.content_type
        );
    }
    l.db.drop_database().await;
}

/// Review 1.2: `--cache none` is part 2's reads (an anonymous reader is
/// served by a replica), not every read on the primary; a fill that will
/// be stored (`--cache object`) reads the primary. Made visible with two
/// databases: the servers' primary is database A, their "replica" is
/// database B on the real replica, whose copy of the article has another
/// title.
#[tokio::test]
async fn without_a_cache_reads_go_where_part_2_sends_them() {
    support::require(BackendKind::Memcached).await;
    let a = support::loaded().await;
    let b = support::loaded().await;
    let id = hot(&a);
    let title = "the replica's copy";
    sqlx::query("UPDATE articles SET title = ? WHERE id = ?")
        .bind(title)
        .bind(id)
        .execute(&b.db.pool)
        .await
        .unwrap();
    let path = format!("/articles/{id}");
    let with_b_as_replica = |cache| {
        let mut c = config(
            &a,
            cache,
            BackendKind::Memcached,
            &testing::unique_name("p3reads"),
        );
        c.part2.server.stack.mariadb_replica_url = b.replica_url.clone();
        c
    };

    // No cache: the replica (once the update has replicated and the
    // health check has put the replica in rotation).
    let none = spawn(with_b_as_replica(CacheMode::None)).await;
    crate::backends::eventually(
        std::time::Duration::from_secs(20),
        "GET /articles/{id} under --cache none reads the replica",
        || async { get(&none.url, &path, None).await.json()["title"] == title },
    )
    .await;
    let got = get(&none.url, &path, None).await;
    assert_eq!((got.status, got.x()), (200, "bypass"));
    assert_eq!(get_html(&none.url, &path).await.status, 200);

    // The object cache's fill: the primary, whatever the replica holds.
    let object = spawn(with_b_as_replica(CacheMode::Object)).await;
    let filled = get(&object.url, &path, None).await;
    assert_eq!((filled.status, filled.x()), (200, "miss"));
    assert_ne!(
        filled.json()["title"],
        title,
        "a stored fill read the primary"
    );
    a.db.drop_database().await;
    b.db.drop_database().await;
}
