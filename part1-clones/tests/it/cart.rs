//! The cart: capped, and safe to retry with an `Idempotency-Key`, on every
//! store (Redis atomically by a Lua script, MariaDB by a transaction).

use std::sync::Arc;

use part1_clones::client::UserClient;
use reqwest::Method;

use crate::support::spawn_app;

/// POST /cart/items with a key; the status and the answer's item count.
async fn add_with_key(u: &UserClient, item: &str, key: &str) -> (u16, Option<u64>, String) {
    let res = u
        .raw(Method::POST, "/cart/items")
        .header("idempotency-key", key)
        .json(&serde_json::json!({ "item": item }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let replayed = res
        .headers()
        .get("idempotent-replayed")
        .map_or("", |v| v.to_str().unwrap())
        .to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    (status, body["items"].as_u64(), replayed)
}

async fn cart_len(u: &UserClient) -> usize {
    u.cart().await.unwrap().unwrap().items.len()
}

#[tokio::test]
async fn one_key_adds_one_item_however_often_it_is_sent() {
    for sessions in ["redis", "mariadb", "memory"] {
        let app = spawn_app(sessions, |_| {}).await;
        let (u, _) = app.logged_in().await;
        let key = common::testing::unique_name("k");
        let first = add_with_key(&u, "tea", &key).await;
        assert_eq!((first.0, first.2.as_str()), (201, "false"), "{sessions}");
        let again = add_with_key(&u, "tea", &key).await;
        assert_eq!(again.0, 201, "{sessions}: a repeat succeeds");
        assert_eq!(again.1, first.1, "{sessions}: with the first answer");
        assert_eq!(again.2, "true", "{sessions}: marked as a replay");
        assert_eq!(cart_len(&u).await, 1, "{sessions}: and adds nothing");

        let other = add_with_key(&u, "tea", &common::testing::unique_name("k")).await;
        assert_eq!(other.0, 201);
        assert_eq!(
            cart_len(&u).await,
            2,
            "{sessions}: another key is another item"
        );
        assert_eq!(u.add_item("no key").await.unwrap(), 201);
        assert_eq!(cart_len(&u).await, 3);

        for bad in ["", "has space", "colon:key", &"k".repeat(65)] {
            let res = u
                .raw(Method::POST, "/cart/items")
                .header("idempotency-key", bad)
                .json(&serde_json::json!({ "item": "x" }))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 400, "{sessions}: key {bad:?}");
        }
        assert_eq!(cart_len(&u).await, 3, "{sessions}: bad keys add nothing");
        app.stop().await;
    }
}

#[tokio::test]
async fn twenty_racing_retries_of_one_key_add_exactly_one_item() {
    for sessions in ["redis", "mariadb"] {
        let app = spawn_app(sessions, |_| {}).await;
        let (u, _) = app.logged_in().await;
        let u = Arc::new(u);
        let key = common::testing::unique_name("race");
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let (u, key) = (u.clone(), key.clone());
                tokio::spawn(async move { add_with_key(&u, "umbrella", &key).await })
            })
            .collect();
        let mut answers = Vec::new();
        for t in tasks {
            answers.push(t.await.unwrap());
        }
        assert!(
            answers.iter().all(|a| a.0 == 201),
            "{sessions}: {answers:?}"
        );
        let fresh = answers.iter().filter(|a| a.2 == "false").count();
        assert_eq!(fresh, 1, "{sessions}: one attempt wrote, the rest replayed");
        assert_eq!(cart_len(&u).await, 1, "{sessions}");
        app.stop().await;
    }
}

#[tokio::test]
async fn keys_belong_to_their_user() {
    let app = spawn_app("redis", |_| {}).await;
    let (a, _) = app.logged_in().await;
    let (b, _) = app.logged_in().await;
    let key = common::testing::unique_name("shared");
    assert_eq!(add_with_key(&a, "pen", &key).await.2, "false");
    assert_eq!(
        add_with_key(&b, "pen", &key).await.2,
        "false",
        "another user's key is not a repeat"
    );
    assert_eq!((cart_len(&a).await, cart_len(&b).await), (1, 1));
    app.stop().await;
}

#[tokio::test]
async fn a_full_cart_takes_nothing_more_with_a_clear_409() {
    for sessions in ["redis", "mariadb", "memory"] {
        let app = spawn_app(sessions, |c| c.cart_max_items = 3).await;
        let (u, _) = app.logged_in().await;
        let mut statuses = Vec::new();
        for i in 0..5 {
            statuses.push(u.add_item(&format!("item {i}")).await.unwrap().as_u16());
        }
        let accepted = statuses.iter().filter(|s| **s == 201).count();
        assert_eq!(cart_len(&u).await, accepted, "{sessions}: {statuses:?}");
        assert!(
            statuses.ends_with(&[409, 409]),
            "{sessions}: the cart stops growing: {statuses:?}"
        );
        let res = u
            .raw(Method::POST, "/cart/items")
            .json(&serde_json::json!({ "item": "one more" }))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 409);
        let body: serde_json::Value = res.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains("full"),
            "{sessions}: {body}"
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn racing_pushes_never_pass_the_cap() {
    for sessions in ["redis", "mariadb"] {
        let app = spawn_app(sessions, |c| c.cart_max_items = 5).await;
        let (u, _) = app.logged_in().await;
        let u = Arc::new(u);
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let u = u.clone();
                tokio::spawn(async move { u.add_item(&format!("i{i}")).await.unwrap().as_u16() })
            })
            .collect();
        let mut created = 0;
        for t in tasks {
            let status = t.await.unwrap();
            assert!(status == 201 || status == 409, "{sessions}: {status}");
            created += usize::from(status == 201);
        }
        let len = cart_len(&u).await;
        assert_eq!(len, created, "{sessions}: every 201 is in the cart");
        assert!(len <= 5, "{sessions}: {len} items passed the cap");
        app.stop().await;
    }
}
