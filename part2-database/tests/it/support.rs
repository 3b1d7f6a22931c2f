//! A database of each test's own, loaded with the tiny dataset, on the
//! primary and (by replication) on the replica.

use std::sync::LazyLock;
use std::time::Duration;

use common::dataset::{DatasetSpec, Scale};
use common::testing::{self, TestDatabase};
use part2_database::{replication, schema};
use sqlx::MySqlPool;
use tokio::sync::RwLock;

/// Tests that stop replication take this for writing; tests that read the
/// replica take it for reading, so they never run during a lag injection.
pub static REPLICA: LazyLock<RwLock<()>> = LazyLock::new(|| RwLock::new(()));

pub struct Loaded {
    pub db: TestDatabase,
    pub spec: DatasetSpec,
    pub replica_url: String,
}

/// A fresh database with the schema and the tiny dataset.
pub async fn loaded() -> Loaded {
    let stack = testing::stack();
    let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    schema::migrate(&db.pool).await.unwrap();
    let spec = DatasetSpec::new(5, Scale::Tiny);
    schema::load(&db.pool, &spec).await.unwrap();
    let replica_url = common::config::with_database(&stack.mariadb_replica_url, &db.name);
    Loaded {
        db,
        spec,
        replica_url,
    }
}

/// The test database on the replica, once replication has brought it there.
pub async fn replica_of(loaded: &Loaded) -> MySqlPool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(pool) = testing::mariadb_at("MariaDB replica", &loaded.replica_url).await
            && replication::measure_lag(&loaded.db.pool, &pool, Duration::from_secs(10))
                .await
                .ok()
                .flatten()
                .is_some()
        {
            return pool;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the test database never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An admin connection to the replica, for STOP/START SLAVE.
pub async fn replica_admin() -> MySqlPool {
    let url = std::env::var("MARIADB_REPLICA_ADMIN_URL")
        .unwrap_or_else(|_| "mysql://labadmin:labadmin@127.0.0.1:13307/lab".into());
    testing::mariadb_at("MariaDB replica (admin)", &url)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// One part 2 server over the test's database, running until `stop` fires.
pub struct App {
    pub url: String,
    pub stop: tokio::sync::oneshot::Sender<()>,
}

/// The server's configuration for a test: port 0, its own key prefix, the
/// test's database on the primary and the replica, and a generous acquire
/// timeout (the fail-fast drill sets its own).
pub fn config(l: &Loaded) -> part2_database::server::Part2Config {
    let mut config: part2_database::server::Part2Config =
        clap::Parser::try_parse_from(["part2-server"]).unwrap();
    config.server.port = 0;
    config.server.clone_id = Some(testing::unique_name("clone"));
    config.server.key_prefix = testing::unique_name("p2");
    config.server.stack.mariadb_primary_url = l.db.url.clone();
    config.server.stack.mariadb_replica_url = l.replica_url.clone();
    config.server.db_acquire_timeout_ms = 10_000;
    config
}

/// Builds and runs a server.
pub async fn spawn(config: part2_database::server::Part2Config) -> App {
    let app = part2_database::server::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    App { url, stop: tx }
}

/// A session for `user_id` in the Redis store under `prefix`, as login
/// would make it, without the password hash (argon2 is slow in a debug
/// build, and these tests are not about login). The cookie's value.
pub async fn session_for(prefix: &str, user_id: u64, username: &str) -> String {
    use part1_clones::session::{Expiry, RedisSessions, SessionStore};
    let store = RedisSessions::new(
        testing::redis().await,
        prefix,
        Expiry {
            idle: Duration::from_secs(600),
            absolute: Duration::from_secs(3600),
        },
    );
    store
        .create(user_id, username)
        .await
        .unwrap()
        .as_str()
        .to_owned()
}

/// Sends a request and returns the status, the `X-Read-From` header and
/// the JSON body (`Null` if there is none).
pub async fn call(req: reqwest::RequestBuilder) -> (u16, Option<String>, serde_json::Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let from = res
        .headers()
        .get("x-read-from")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (
        status,
        from,
        res.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Comments on `article`, counted on the primary.
pub async fn comments_on(l: &Loaded, article: u64) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM comments WHERE article_id = ?")
        .bind(article)
        .fetch_one(&l.db.pool)
        .await
        .unwrap()
}
