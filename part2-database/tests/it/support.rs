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
