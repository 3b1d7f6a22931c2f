//! `part1-load`: the dataset's users are loaded by a command before the
//! clones start, never by the server; loading twice adds nothing.

use crate::support::spawn_app;

fn part1_load(db_url: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_part1-load"))
        .env("LOAD_DATASET", "tiny")
        .env("MARIADB_PRIMARY_URL", db_url)
        .env("RUST_LOG", "warn")
        .output()
        .expect("part1-load runs");
    assert!(
        out.status.success(),
        "part1-load failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn part1_load_loads_the_users_once_and_they_log_in() {
    let app = spawn_app("redis", |_| {}).await;
    let users: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(users, 0, "the server loaded nothing by itself");

    let first = part1_load(&app.db.url);
    let loaded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(loaded > 0, "{first}");
    assert!(first.contains(&format!("{loaded} new")), "{first}");
    let second = part1_load(&app.db.url);
    assert!(second.contains(" 0 new"), "idempotent: {second}");

    let me = app
        .user()
        .login("user1", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();
    assert_eq!(me.username, "user1");
    let display: String = sqlx::query_scalar("SELECT display_name FROM users WHERE id = ?")
        .bind(me.id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert!(
        !display.trim().is_empty(),
        "dataset users have a display name"
    );
    app.stop().await;
}
