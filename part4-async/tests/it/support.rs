//! A queue and a database of each test's own.

use std::time::Duration;

use common::testing::{self, TestDatabase};
use part4_async::job::{Envelope, JobId, JobStore};
use part4_async::queue::rabbitmq::RabbitQueue;
use part4_async::queue::redis::RedisQueue;
use part4_async::queue::{Backend, JobQueue, QueueConfig};

/// How long a test waits for something that should happen promptly.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A configuration with a queue name no other test uses.
pub fn config(backend: Backend) -> QueueConfig {
    QueueConfig::new(backend, testing::unique_name("p4q"))
}

/// A RabbitMQ queue of this test's own.
pub async fn rabbit_with(config: QueueConfig) -> RabbitQueue {
    RabbitQueue::connect(&testing::stack().rabbitmq_url, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A Redis queue of this test's own.
pub async fn redis_with(config: QueueConfig) -> RedisQueue {
    RedisQueue::connect(&testing::stack().redis_url, config)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A RabbitMQ queue with the defaults (3 deliveries).
pub async fn rabbit() -> RabbitQueue {
    rabbit_with(config(Backend::RabbitMq)).await
}

/// A Redis queue with the defaults (3 deliveries).
pub async fn redis() -> RedisQueue {
    redis_with(config(Backend::Redis)).await
}

/// An envelope for a job that has no row (queue-level tests).
pub fn envelope(kind: &str) -> Envelope {
    Envelope::new(JobId::generate(), kind, serde_json::json!({}))
}

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the queue's depth is `(ready, dead)`.
pub async fn depth_becomes<Q: JobQueue>(queue: &Q, ready: u64, dead: u64) {
    eventually(&format!("depth ready={ready} dead={dead}"), || async {
        let d = queue.depth().await.unwrap();
        (d.ready == ready && d.dead == dead).then_some(())
    })
    .await;
}

/// A database with part 2's and part 4's schema, one user (id 1) with
/// three articles and five comments, and user 2 with none; on the replica
/// too by the time [`Db::new`] returns.
pub struct Db {
    pub db: TestDatabase,
    pub store: JobStore,
}

impl Db {
    pub async fn new() -> Db {
        let db = TestDatabase::create("MariaDB primary", &testing::stack().mariadb_primary_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        JobStore::migrate(&db.pool).await.unwrap();
        for (id, name) in [(1u64, "ada"), (2, "bob")] {
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, created_at, display_name) VALUES (?, ?, 'x', 0, ?)",
            )
            .bind(id)
            .bind(name)
            .bind(name)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        for a in 1..=3u64 {
            sqlx::query(
                "INSERT INTO articles (id, author_id, title, body, published_at, author_name) VALUES (?, 1, ?, 'text 😀', ?, 'ada')",
            )
            .bind(a)
            .bind(format!("article {a}"))
            .bind(a as i64)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        for (c, article) in [(1u64, 1u64), (2, 1), (3, 2), (4, 3), (5, 3)] {
            sqlx::query(
                "INSERT INTO comments (id, article_id, author_id, body, created_at) VALUES (?, ?, 2, 'nice', ?)",
            )
            .bind(c)
            .bind(article)
            .bind(c as i64)
            .execute(&db.pool)
            .await
            .unwrap();
        }
        let store = JobStore::new(db.pool.clone());
        let db = Db { db, store };
        db.replicated().await;
        db
    }

    /// Waits until the replica has every write made on the primary so
    /// far: a server's reads may go there (see
    /// [`TestDatabase::replicated`]).
    pub async fn replicated(&self) {
        let replica = testing::stack().mariadb_replica_url;
        self.db.replicated(&replica).await;
    }

    pub async fn drop(self) {
        self.db.drop_database().await;
    }
}
