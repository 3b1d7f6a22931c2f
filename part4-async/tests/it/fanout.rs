//! Fan-out on write: a post reaches every friend's timeline (as many
//! timelines written as the author has friends), a big author's does not
//! and is merged at read time, the cap holds, a new friendship is pushed,
//! and `GET /timeline` answers exactly what `GET /feed` answers, through
//! all of it. Counts only: no timed asserts.

use common::testing;
use part4_async::changes::{Change, ChangeOutcome};
use part4_async::fanout::{FanoutConfig, Timelines, amplification};
use part4_async::queue::Backend;
use reqwest::Method;
use serde_json::Value;

use crate::changes::{ChangesLab, cookie_for};
use crate::support::Db;

/// The reader, a small author, a big author, a stranger the reader
/// befriends later, and a friend with old articles.
const READER: u64 = 100;
const SMALL: u64 = 101;
const BIG: u64 = 102;
const STRANGER: u64 = 103;
const OLD_FRIEND: u64 = 104;
/// The hybrid's threshold in this test.
const MAX_FRIENDS: u64 = 20;
/// The small author's other friends (and the reader): 11 in all.
const SMALL_FANS: std::ops::RangeInclusive<u64> = 110..=119;
/// The big author's other friends (and the reader): 27 in all.
const BIG_FANS: std::ops::RangeInclusive<u64> = 120..=145;

fn name(id: u64) -> String {
    format!("user{id}")
}

async fn befriend(db: &Db, a: u64, b: u64) {
    for (x, y) in [(a, b), (b, a)] {
        sqlx::query("INSERT INTO friendships (user_id, friend_id, since) VALUES (?, ?, 0)")
            .bind(x)
            .bind(y)
            .execute(&db.db.pool)
            .await
            .unwrap();
    }
}

async fn social_graph() -> Db {
    let db = Db::new().await;
    let users: Vec<u64> = (READER..=OLD_FRIEND).chain(110..=145).collect();
    for id in &users {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, created_at, display_name) VALUES (?, ?, 'x', 0, ?)",
        )
        .bind(id)
        .bind(name(*id))
        .bind(name(*id))
        .execute(&db.db.pool)
        .await
        .unwrap();
    }
    for f in [SMALL, BIG, OLD_FRIEND] {
        befriend(&db, READER, f).await;
    }
    for f in SMALL_FANS {
        befriend(&db, SMALL, f).await;
    }
    for f in BIG_FANS {
        befriend(&db, BIG, f).await;
    }
    // Older articles: three each, published long before the test's posts.
    let mut id = 1000u64;
    for author in [SMALL, BIG, STRANGER, OLD_FRIEND] {
        for _ in 0..3 {
            sqlx::query(
                "INSERT INTO articles (id, author_id, title, body, published_at, author_name) VALUES (?, ?, ?, 'old', ?, ?)",
            )
            .bind(id)
            .bind(author)
            .bind(format!("old {id}"))
            .bind(id as i64 * 10)
            .bind(name(author))
            .execute(&db.db.pool)
            .await
            .unwrap();
            id += 1;
        }
    }
    db
}

fn ids(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("a JSON array: {v}"))
        .iter()
        .map(|a| a["id"].as_u64().unwrap())
        .collect()
}

/// `GET /timeline` and `GET /feed` for the reader: the same articles in
/// the same order (the whole JSON, counts included). Returns the ids and
/// the timeline's headers.
async fn timeline_is_feed(
    lab: &ChangesLab,
    cookie: &str,
) -> (Vec<u64>, reqwest::header::HeaderMap) {
    let t = lab.get("/timeline", cookie).await;
    assert_eq!(t.status, 200, "{}", t.body);
    assert_eq!(t.header("x-timeline"), Some("precomputed"));
    let f = lab.get("/feed", cookie).await;
    assert_eq!(f.status, 200, "{}", f.body);
    assert_eq!(t.json(), f.json(), "/timeline answers what /feed answers");
    (ids(&t.json()), t.headers)
}

async fn post(lab: &ChangesLab, author: u64) -> u64 {
    let cookie = cookie_for(&lab.prefix, author, &name(author)).await;
    let got = lab
        .send(
            Method::POST,
            "/articles",
            &cookie,
            Some(r#"{"title":"news","body":"fresh"}"#),
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.body);
    got.json()["id"].as_u64().unwrap()
}

#[tokio::test]
async fn posts_fan_out_big_authors_merge_and_the_timeline_is_the_feed() {
    let db = social_graph().await;
    let mut lab = ChangesLab::start(db, Backend::Redis, |c| {
        c.fanout.fanout_max_friends = MAX_FRIENDS;
    })
    .await;
    let timelines = lab.worker.timelines().clone();
    let reader = cookie_for(&lab.prefix, READER, &name(READER)).await;

    // 1. Never fanned out to: built once from SQL.
    let (first, headers) = timeline_is_feed(&lab, &reader).await;
    assert_eq!(headers.get("x-timeline-built").unwrap(), "true");
    assert_eq!(
        first.len(),
        9,
        "three old articles of each of three friends"
    );
    let (_, headers) = timeline_is_feed(&lab, &reader).await;
    assert!(headers.get("x-timeline-built").is_none(), "built once");

    // 2. A small author posts: one timeline per friend.
    let small_post = post(&lab, SMALL).await;
    let p = lab.step().await;
    assert_eq!(p.change, Some(Change::Post { author: SMALL }));
    let ChangeOutcome::Done(fx) = &p.outcome else {
        panic!("{:?}", p.outcome)
    };
    let fanout = fx.fanout.clone().unwrap();
    let friends = 1 + SMALL_FANS.count() as u64;
    assert_eq!(fanout.friends, friends);
    assert_eq!(fanout.timelines, friends, "write amplification = friends");
    assert_eq!(fanout.timelines, amplification(friends, MAX_FRIENDS));
    assert!(!fanout.big);
    assert_eq!(fx.baked, 2, "the author's page and the new article");
    for user in SMALL_FANS.chain([READER]) {
        assert!(
            timelines.members(user).await.unwrap().contains(&small_post),
            "user {user}"
        );
    }
    assert!(
        timelines.members(BIG).await.unwrap().is_empty(),
        "not a friend"
    );
    let (now, _) = timeline_is_feed(&lab, &reader).await;
    assert_eq!(now[0], small_post);
    // Delivered again: nothing new to push, the same state.
    let again = lab
        .worker
        .apply(&Change::Post { author: SMALL })
        .await
        .unwrap();
    assert_eq!(again.timelines, 0, "nothing newer than the high-water mark");
    assert_eq!(timeline_is_feed(&lab, &reader).await.0, now);

    // 3. A big author posts: not fanned out, merged at read time.
    let big_post = post(&lab, BIG).await;
    let p = lab.step().await;
    let ChangeOutcome::Done(fx) = &p.outcome else {
        panic!("{:?}", p.outcome)
    };
    let fanout = fx.fanout.clone().unwrap();
    assert!(fanout.big);
    assert_eq!(fanout.timelines, 0);
    assert_eq!(
        fanout.friends,
        MAX_FRIENDS + 1,
        "counted up to the threshold"
    );
    for user in BIG_FANS.chain([READER]) {
        assert!(
            !timelines.members(user).await.unwrap().contains(&big_post),
            "user {user}"
        );
    }
    let (now, headers) = timeline_is_feed(&lab, &reader).await;
    assert_eq!(now[0], big_post, "merged at read time");
    assert_eq!(headers.get("x-timeline-merged").unwrap(), "1");

    // 4. A new friend: their articles pushed into the reader's timeline.
    let got = lab
        .send(
            Method::POST,
            &format!("/users/{}/friends", name(STRANGER)),
            &reader,
            None,
        )
        .await;
    assert_eq!(got.status, 201, "{}", got.body);
    let p = lab.step().await;
    assert_eq!(
        p.change,
        Some(Change::Friends {
            a: READER,
            b: STRANGER
        })
    );
    assert!(
        timelines.members(READER).await.unwrap().contains(&1008),
        "the stranger's newest"
    );
    let (now, _) = timeline_is_feed(&lab, &reader).await;
    assert!(now.contains(&1008));
    assert_eq!(now.len(), 14, "9 old + 3 of the new friend + 2 posts");

    let users: Vec<u64> = (READER..=OLD_FRIEND).chain(110..=145).collect();
    lab.stop(&users).await;
}

#[tokio::test]
async fn the_cap_holds_and_keeps_the_newest() {
    let prefix = testing::unique_name("p4cap");
    let config = FanoutConfig {
        timeline_cap: 5,
        fanout_max_friends: 1000,
    };
    let t = Timelines::new(testing::redis().await, &prefix, &config);
    let articles: Vec<u64> = (1..=12).collect();
    // A timeline not built yet keeps one more (the sentinel's place).
    let (written, trips) = t.push(&[1, 2, 3], &articles).await.unwrap();
    assert_eq!((written, trips), (3, 1), "three timelines, one round trip");
    assert_eq!(t.members(1).await.unwrap(), vec![12, 11, 10, 9, 8, 7]);
    // Built (here from an empty database: no friends), exactly the cap.
    let db = Db::new().await;
    assert_eq!(t.build(&db.db.pool, 2).await.unwrap(), 0);
    t.push(&[2], &[13, 3]).await.unwrap();
    assert_eq!(t.members(2).await.unwrap(), vec![13, 12, 11, 10, 9]);
    let (newest, big) = t.newest(2, 3).await.unwrap();
    assert_eq!(
        newest,
        Some(vec![13, 12, 11]),
        "the sentinel marks it built"
    );
    assert!(big.is_empty());
    assert_eq!(t.newest(1, 3).await.unwrap().0, None, "not built");
    // A thousand timelines in two round trips.
    let many: Vec<u64> = (1000..2000).collect();
    assert_eq!(t.push(&many, &[1]).await.unwrap(), (1000, 2));
    t.forget(&[1, 2, 3].into_iter().chain(many).collect::<Vec<_>>(), &[])
        .await
        .unwrap();
    db.drop().await;
}

/// Figures on the lab's seeded dataset (`./lab up` seeds it; ignored by
/// default, it reads the shared `lab` database): the fan-out of one post
/// by `user1` (8,846 friends at the default scale) with the hybrid off,
/// then with the default threshold. Writes only timelines under a prefix
/// of its own, deleted at the end. Run with
/// `cargo test -p part4-async --test it fanout::user1 -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "reads the lab's seeded dataset"]
async fn user1_write_amplification_on_the_lab_dataset() {
    let stack = testing::stack();
    let pool = testing::mariadb_at("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut redis = testing::redis().await;
    let used = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    let prefix = testing::unique_name("p4amp");
    let off = FanoutConfig {
        timeline_cap: 200,
        fanout_max_friends: u64::MAX - 1,
    };
    let t = Timelines::new(redis.clone(), &prefix, &off);
    let before: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis)
        .await
        .unwrap();
    let clock = std::time::Instant::now();
    let f = t.fan_out(&pool, 1).await.unwrap();
    let elapsed = clock.elapsed();
    let after: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut redis)
        .await
        .unwrap();
    println!(
        "user1, hybrid off: friends {} (measured, SQL), timelines written {} (measured, Redis acks), \
         articles each {}, round trips {}, {:.0} ms, Redis used_memory +{} KB (measured, INFO)",
        f.friends,
        f.timelines,
        f.articles,
        f.round_trips,
        elapsed.as_secs_f64() * 1000.0,
        used(after).saturating_sub(used(before)) / 1024
    );
    assert_eq!(f.timelines, f.friends);
    let friends: Vec<u64> =
        sqlx::query_scalar("SELECT friend_id FROM friendships WHERE user_id = 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let hybrid = Timelines::new(redis.clone(), &prefix, &FanoutConfig::default());
    let g = hybrid.fan_out(&pool, 1).await.unwrap();
    println!(
        "user1, hybrid (FANOUT_MAX_FRIENDS {}): big {}, timelines written {}",
        hybrid.max_friends(),
        g.big,
        g.timelines
    );
    assert!(g.big);
    assert_eq!(g.timelines, amplification(g.friends, hybrid.max_friends()));
    t.forget(&friends, &[1]).await.unwrap();
}
