//! The stack `./lab up` starts, checked for real: every service answers,
//! and a row written on the MariaDB primary is read back from the replica.

use std::time::{Duration, Instant};

use common::testing::{self, TestDatabase};

#[tokio::test]
async fn every_service_of_the_stack_answers() {
    let stack = testing::stack();
    let mut redis = testing::redis().await;
    let key = testing::unique_name("stack");
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("1")
        .arg("EX")
        .arg(60)
        .query_async(&mut redis)
        .await
        .unwrap();
    let back: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(back, "1");

    for (service, url) in [
        ("MariaDB primary", &stack.mariadb_primary_url),
        ("MariaDB replica", &stack.mariadb_replica_url),
        ("MariaDB shard 0", &stack.mariadb_shard0_url),
        ("MariaDB shard 1", &stack.mariadb_shard1_url),
    ] {
        let pool = testing::mariadb_at(service, url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let one: i64 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(one, 1, "{service}");
    }
    for (service, addr) in [
        ("Memcached", "127.0.0.1:11311"),
        ("RabbitMQ", "127.0.0.1:15673"),
        ("MongoDB-wire server", "127.0.0.1:27018"),
    ] {
        testing::tcp(service, addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
}

#[tokio::test]
async fn a_row_written_on_the_primary_is_read_back_from_the_replica() {
    let stack = testing::stack();
    let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query("CREATE TABLE notes (id INT PRIMARY KEY, body VARCHAR(100))")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("INSERT INTO notes VALUES (1, 'written on the primary')")
        .execute(&db.pool)
        .await
        .unwrap();

    let replica = testing::mariadb_at("MariaDB replica", &stack.mariadb_replica_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Replication is asynchronous: poll with a deadline, never sleep blindly.
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let row: Result<Option<String>, _> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT body FROM `{}`.notes WHERE id = 1",
            db.name
        )))
        .fetch_optional(&replica)
        .await;
        if let Ok(Some(body)) = row {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the row never reached the replica: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body, "written on the primary");

    // And the replica refuses writes: it is read-only (error 1290).
    let err = sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{}`.notes VALUES (2, 'x')",
        db.name
    )))
    .execute(&replica)
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("read-only") || err.contains("1290"), "{err}");
    db.drop_database().await;
}
