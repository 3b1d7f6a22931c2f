//! Signup: a display name that is never blank, and text in any script
//! (utf8mb4: 3-byte 中 and 4-byte 😀) stored and read back intact.

use reqwest::Method;

use crate::support::{PASSWORD, fresh_username, spawn_app};

async fn signup(
    app: &crate::support::TestApp,
    display_name: Option<&str>,
) -> (u16, String, serde_json::Value) {
    let name = fresh_username();
    let mut body = serde_json::json!({ "username": name, "password": PASSWORD });
    if let Some(d) = display_name {
        body["display_name"] = d.into();
    }
    let res = app
        .user()
        .raw(Method::POST, "/signup")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, name, res.json().await.unwrap())
}

async fn stored_display_name(app: &crate::support::TestApp, username: &str) -> String {
    sqlx::query_scalar("SELECT display_name FROM users WHERE username = ?")
        .bind(username)
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_display_name_defaults_to_the_username_and_is_never_blank() {
    let app = spawn_app("redis", |_| {}).await;
    let (status, name, body) = signup(&app, None).await;
    assert_eq!(status, 201);
    assert_eq!(stored_display_name(&app, &name).await, name);
    assert_eq!(body["display_name"], name.as_str());

    for blank in ["", "   ", "\t \n"] {
        let (status, name, body) = signup(&app, Some(blank)).await;
        assert_eq!(status, 400, "{blank:?}");
        assert!(body["error"].as_str().unwrap().contains("display name"));
        let exists: Option<u64> = sqlx::query_scalar("SELECT id FROM users WHERE username = ?")
            .bind(&name)
            .fetch_optional(&app.db.pool)
            .await
            .unwrap();
        assert_eq!(exists, None, "a refused signup stores nothing");
    }
    let (status, _, _) = signup(&app, Some(&"x".repeat(65))).await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn three_and_four_byte_characters_round_trip() {
    let app = spawn_app("mariadb", |_| {}).await;
    let display = "Ada 中文 😀";
    let (status, name, _) = signup(&app, Some(display)).await;
    assert_eq!(status, 201);
    let stored = stored_display_name(&app, &name).await;
    assert_eq!(stored, display, "utf8mb4, not latin1 or 3-byte utf8");
    assert_eq!(stored.chars().count(), display.chars().count());

    // A cart item in the database (sessions=mariadb) as well.
    let u = app.user();
    u.login(&name, PASSWORD).await.unwrap();
    let item = "茶 🍵";
    assert_eq!(u.add_item(item).await.unwrap(), 201);
    assert_eq!(
        u.cart().await.unwrap().unwrap().items,
        vec![item.to_owned()]
    );
    app.stop().await;
}
