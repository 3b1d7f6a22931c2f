//! Changes: a committed write, published after part 3's invalidation, done
//! by a change worker: the cached article re-filled (the next read hits,
//! and the clone assembles nothing), the page re-baked with the write on
//! it; a message that is not a change dead-lettered, the others going
//! through. An in-process `part4-server` (port 0, a database, queues, a
//! key prefix and a bake directory of the test's own) and a change
//! worker stepped one delivery at a time: no timed asserts, and one
//! sleep (the bound's test waits out the hook's count interval, 1 s).

use std::path::PathBuf;
use std::time::Duration;

use common::testing;
use part3_cache::stampede::Outcome;
use part4_async::bake::Baker;
use part4_async::changes::{self, Change, ChangeOutcome, ChangeProcessed, ChangeWorker};
use part4_async::fanout::Timelines;
use part4_async::job::{Envelope, JobId};
use part4_async::queue::{AnyConsumer, AnyQueue, Backend, JobQueue, QueueConfig};
use part4_async::server::{JobsMode, Part4Config};
use serde_json::Value;

use crate::support::{self, DEADLINE, Db};

/// A server, a change worker beside it, and their database, queues,
/// cache prefix and baked tree.
pub(crate) struct ChangesLab {
    pub url: String,
    pub db: Db,
    pub prefix: String,
    pub jobs: AnyQueue,
    pub changes: AnyQueue,
    pub consumer: Option<AnyConsumer>,
    pub worker: ChangeWorker,
    pub bake_dir: PathBuf,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// A session cookie for `user_id`, as a login would make it.
pub(crate) async fn cookie_for(prefix: &str, user_id: u64, username: &str) -> String {
    use part1_clones::session::{Expiry, RedisSessions, SessionStore};
    let store = RedisSessions::new(
        testing::redis().await,
        prefix,
        Expiry {
            idle: Duration::from_secs(600),
            absolute: Duration::from_secs(3600),
        },
    );
    let id = store.create(user_id, username).await.unwrap();
    format!("{}={}", part1_clones::app::COOKIE_NAME, id.as_str())
}

/// What a request got back.
pub(crate) struct Got {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl ChangesLab {
    /// A server and a change worker over `db`; `tweak` adjusts the
    /// configuration both get.
    pub async fn start(db: Db, backend: Backend, tweak: impl FnOnce(&mut Part4Config)) -> Self {
        // Rows a test added after `Db::new`, readable where the server
        // reads.
        db.replicated().await;
        let stack = testing::stack();
        let prefix = testing::unique_name("p4c");
        let queue_config: QueueConfig = support::config(backend);
        let mut c: Part4Config = clap::Parser::try_parse_from(["part4-server"]).unwrap();
        let server = &mut c.part3.part2.server;
        server.port = 0;
        server.clone_id = Some(testing::unique_name("clone"));
        server.key_prefix = prefix.clone();
        server.stack.mariadb_primary_url = db.db.url.clone();
        server.stack.mariadb_replica_url =
            common::config::with_database(&stack.mariadb_replica_url, &db.db.name);
        c.jobs = JobsMode::Async;
        c.queue = queue_config.clone();
        tweak(&mut c);
        let part3 = c.part3.clone();
        let fanout = c.fanout.clone();
        let app = part4_async::server::build(c).await.unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        // The worker: part 3's cache configured as the server's, a baker
        // into a directory of the test's own, the timelines.
        let layer = part3_cache::server::cache_layer(&part3).await.unwrap();
        let timelines = Timelines::new(layer.data.redis.clone(), &prefix, &fanout);
        let bake_dir = std::env::temp_dir().join(testing::unique_name("p4bake"));
        let worker = ChangeWorker::new(
            layer,
            Baker::new(db.db.pool.clone(), &bake_dir),
            timelines,
            "changes-test",
            queue_config.max_deliveries,
            Duration::from_secs(10),
        );
        let jobs = AnyQueue::connect(&queue_config, &stack).await.unwrap();
        let changes = AnyQueue::connect(&changes::queue_config(&queue_config), &stack)
            .await
            .unwrap();
        let consumer = changes.consume("changes-test").await.unwrap();
        ChangesLab {
            url,
            db,
            prefix,
            jobs,
            changes,
            consumer: Some(consumer),
            worker,
            bake_dir,
            _stop: tx,
        }
    }

    /// The next change, handled (waits for it up to the deadline).
    pub async fn step(&mut self) -> ChangeProcessed {
        let consumer = self.consumer.as_mut().unwrap();
        self.worker
            .step(consumer, DEADLINE)
            .await
            .unwrap()
            .expect("a change within the deadline")
    }

    /// A request with a cookie and an optional JSON body.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        cookie: &str,
        body: Option<&str>,
    ) -> Got {
        let mut req = part1_clones::client::http()
            .request(method, format!("{}{path}", self.url))
            .header("cookie", cookie);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let res = req.send().await.unwrap();
        Got {
            status: res.status().as_u16(),
            headers: res.headers().clone(),
            body: res.text().await.unwrap(),
        }
    }

    pub async fn get(&self, path: &str, cookie: &str) -> Got {
        self.send(reqwest::Method::GET, path, cookie, None).await
    }

    /// The server's cache `loads` (database assemblies on misses).
    pub async fn loads(&self, cookie: &str) -> u64 {
        self.get("/cache/stats", cookie).await.json()["loads"]
            .as_u64()
            .unwrap()
    }

    pub async fn stop(mut self, users: &[u64]) {
        if let Some(c) = self.consumer.take() {
            use part4_async::queue::JobConsumer;
            c.close().await.unwrap();
        }
        self.worker.timelines().forget(users, users).await.unwrap();
        self.jobs.destroy().await.unwrap();
        self.changes.destroy().await.unwrap();
        let _ = std::fs::remove_dir_all(&self.bake_dir);
        self.db.drop().await;
    }
}

/// A comment through the server: after the worker's change, the baked page
/// shows it and the cached article is back (the next read hits and the
/// clone loads nothing).
async fn a_comment_is_baked_and_its_article_refilled(backend: Backend) {
    let db = Db::new().await;
    let mut lab = ChangesLab::start(db, backend, |_| {}).await;
    let bob = cookie_for(&lab.prefix, 2, "bob").await;

    // Article 1 cached by a first read.
    let first = lab.get("/articles/1", &bob).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("x-cache"), Some("miss"));

    let text = testing::unique_name("baked comment");
    let posted = lab
        .send(
            reqwest::Method::POST,
            "/articles/1/comments",
            &bob,
            Some(&serde_json::json!({ "body": text }).to_string()),
        )
        .await;
    assert_eq!(posted.status, 201, "{}", posted.body);

    // The write answered without waiting for the publish: the worker
    // waits for the change (up to the deadline).
    let done = lab.step().await;
    assert_eq!(done.change, Some(Change::Article { id: 1 }));
    let ChangeOutcome::Done(fx) = &done.outcome else {
        panic!("{:?}", done.outcome)
    };
    assert_eq!(
        fx.filled,
        Some(Outcome::Miss),
        "the worker loaded and stored it"
    );
    assert_eq!(
        (fx.baked, fx.kept),
        (2, 0),
        "the article page and its author's page"
    );
    assert!(done.settled);

    let page = std::fs::read_to_string(lab.bake_dir.join("articles/1.html")).unwrap();
    assert!(page.contains(&text), "the baked page shows the comment");
    assert!(page.contains("name=\"baked-at\""));
    // The author page shows the article's new comment count.
    let count: u32 = sqlx::query_scalar("SELECT comment_count FROM articles WHERE id = 1")
        .fetch_one(&lab.db.db.pool)
        .await
        .unwrap();
    let author = std::fs::read_to_string(lab.bake_dir.join("users/ada.html")).unwrap();
    assert!(
        author.contains(&format!("{count} comments")),
        "the author page counts {count} comments: {author}"
    );

    // The same change done again: both pages are already as they would
    // be, nothing is written.
    let again = lab.worker.apply(&Change::Article { id: 1 }).await.unwrap();
    assert_eq!((again.baked, again.kept), (0, 2), "{again:?}");

    let before = lab.loads(&bob).await;
    let next = lab.get("/articles/1", &bob).await;
    assert_eq!(next.status, 200);
    assert_eq!(next.header("x-cache"), Some("hit"), "filled by the worker");
    assert!(next.body.contains(&text));
    assert_eq!(lab.loads(&bob).await, before, "the clone assembled nothing");
    assert_eq!(
        lab.worker
            .stats()
            .filled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    support::depth_becomes(&lab.changes, 0, 0).await;
    lab.stop(&[]).await;
}

#[tokio::test]
async fn rabbitmq_a_comment_is_baked_and_its_article_refilled() {
    a_comment_is_baked_and_its_article_refilled(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_a_comment_is_baked_and_its_article_refilled() {
    a_comment_is_baked_and_its_article_refilled(Backend::Redis).await;
}

/// Garbage and a change that does not decode are dead-lettered at once;
/// the change behind them is done.
async fn a_malformed_change_is_dead_lettered(backend: Backend) {
    let db = Db::new().await;
    let mut lab = ChangesLab::start(db, backend, |_| {}).await;
    lab.changes
        .enqueue_raw("garbage", b"\x00 not a change")
        .await
        .unwrap();
    lab.changes
        .enqueue(&Envelope::new(
            JobId::generate(),
            changes::CHANGE_KIND,
            serde_json::json!({"change": {"change": "explode", "id": 1}, "at": 0}),
        ))
        .await
        .unwrap();
    changes::publish(&lab.changes, Change::Article { id: 2 })
        .await
        .unwrap();
    for _ in 0..2 {
        let p = lab.step().await;
        assert!(
            matches!(p.outcome, ChangeOutcome::DeadLettered { .. }),
            "{:?}",
            p.outcome
        );
        assert_eq!(p.change, None);
    }
    let p = lab.step().await;
    assert_eq!(p.change, Some(Change::Article { id: 2 }));
    assert!(
        matches!(p.outcome, ChangeOutcome::Done(_)),
        "{:?}",
        p.outcome
    );
    assert!(lab.bake_dir.join("articles/2.html").exists());
    support::depth_becomes(&lab.changes, 0, 2).await;
    lab.stop(&[]).await;
}

#[tokio::test]
async fn rabbitmq_a_malformed_change_is_dead_lettered() {
    a_malformed_change_is_dead_lettered(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_a_malformed_change_is_dead_lettered() {
    a_malformed_change_is_dead_lettered(Backend::Redis).await;
}

/// A change for an article that does not exist: nothing to fill, its page
/// removed, acked (not retried: there is nothing to wait for).
#[tokio::test]
async fn a_change_for_a_vanished_article_removes_its_page() {
    let db = Db::new().await;
    let mut lab = ChangesLab::start(db, Backend::Redis, |_| {}).await;
    let stale = lab.bake_dir.join("articles/999.html");
    std::fs::create_dir_all(stale.parent().unwrap()).unwrap();
    std::fs::write(&stale, "old").unwrap();
    changes::publish(&lab.changes, Change::Article { id: 999 })
        .await
        .unwrap();
    let p = lab.step().await;
    let ChangeOutcome::Done(fx) = &p.outcome else {
        panic!("{:?}", p.outcome)
    };
    assert_eq!(fx.filled, None);
    assert!(!stale.exists(), "the page of a vanished article is removed");
    lab.stop(&[]).await;
}

/// The `part4-worker` binary as `./lab` runs it: `GET /health` on `PORT`,
/// a change published on the queue baked into `BAKE_DIR`, exit 0 on
/// SIGTERM (both consumers stopped).
#[tokio::test]
async fn the_worker_binary_serves_health_does_changes_and_stops_on_sigterm() {
    let db = Db::new().await;
    let stack = testing::stack();
    let config = support::config(Backend::Redis);
    let changes_queue = AnyQueue::connect(&changes::queue_config(&config), &stack)
        .await
        .unwrap();
    let jobs_queue = AnyQueue::connect(&config, &stack).await.unwrap();
    let bake_dir = std::env::temp_dir().join(testing::unique_name("p4bake"));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_part4-worker"))
        .env("MARIADB_PRIMARY_URL", &db.db.url)
        .env(
            "MARIADB_REPLICA_URL",
            common::config::with_database(&stack.mariadb_replica_url, &db.db.name),
        )
        .env("QUEUE", config.backend.as_str())
        .env("QUEUE_NAME", &config.queue_name)
        .env("KEY_PREFIX", testing::unique_name("p4w"))
        .env("PORT", port.to_string())
        .env("BAKE_DIR", &bake_dir)
        .env("WORKER_NAME", "bin-changes")
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the part4-worker binary runs");
    let health = format!("http://127.0.0.1:{port}/health");
    support::eventually("GET /health answers 200", || async {
        let r = part1_clones::client::http()
            .get(&health)
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    changes::publish(&changes_queue, Change::Article { id: 1 })
        .await
        .unwrap();
    let page = bake_dir.join("articles/1.html");
    support::eventually("the worker baked article 1", || async {
        page.exists().then_some(())
    })
    .await;
    support::depth_becomes(&changes_queue, 0, 0).await;
    let stopped = common::signal::stop(&mut child, DEADLINE).await.unwrap();
    assert!(
        stopped.cleanly(),
        "the worker exits 0 on SIGTERM: {stopped:?}"
    );
    changes_queue.destroy().await.unwrap();
    jobs_queue.destroy().await.unwrap();
    let _ = std::fs::remove_dir_all(&bake_dir);
    db.drop().await;
}

/// The changes queue's bound, counted from the broker: with 3 changes
/// already waiting and no worker taking them, a hook allowed 5 publishes
/// 2 of 20 commits and counts 18 over the bound; once a worker has taken
/// 3 and the count is read again (a second on), 3 of 5 more go through.
async fn the_changes_queue_is_bounded(backend: Backend) {
    use part2_database::server::Committed;
    use std::sync::Arc;
    use std::sync::atomic::Ordering::Relaxed;

    use part4_async::queue::JobConsumer;

    let config = changes::queue_config(&support::config(backend));
    let queue = Arc::new(
        AnyQueue::connect(&config, &testing::stack())
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    for id in 1..=3 {
        changes::publish(&*queue, Change::Article { id })
            .await
            .unwrap();
    }
    let stats = Arc::new(changes::PublishStats::default());
    let hook = changes::after_commit(None, queue.clone(), DEADLINE, stats.clone(), 5);
    let settled = |want: u64| {
        let stats = stats.clone();
        move || {
            let stats = stats.clone();
            async move {
                let n = stats.published.load(Relaxed)
                    + stats.failed.load(Relaxed)
                    + stats.dropped.load(Relaxed)
                    + stats.over_bound.load(Relaxed);
                (n == want).then_some(())
            }
        }
    };
    for id in 1..=20 {
        hook(Committed::Article { id }).await;
    }
    support::eventually("the 20 changes settled", settled(20)).await;
    assert_eq!(stats.published.load(Relaxed), 2);
    assert_eq!(stats.over_bound.load(Relaxed), 18);
    assert_eq!(stats.failed.load(Relaxed), 0);
    support::depth_becomes(&*queue, 5, 0).await;

    // A worker takes 3; the next count (a second on) makes room for 3.
    let mut consumer = queue.consume("drain").await.unwrap();
    for _ in 0..3 {
        let d = consumer
            .next(DEADLINE)
            .await
            .unwrap()
            .expect("a change waiting");
        consumer.ack(&d).await.unwrap();
    }
    // Closed, so the next changes wait in the queue instead of being
    // delivered to it.
    consumer.close().await.unwrap();
    support::depth_becomes(&*queue, 2, 0).await;
    tokio::time::sleep(changes::WAITING_READ_EVERY).await;
    // One at a time: the first reads the count again, and a change that
    // found that read in progress would go on with the old count.
    for id in 21..=25 {
        hook(Committed::Article { id }).await;
        support::eventually("the next change settled", settled(id)).await;
    }
    assert_eq!(stats.published.load(Relaxed), 5);
    assert_eq!(stats.over_bound.load(Relaxed), 20);
    support::depth_becomes(&*queue, 5, 0).await;
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_the_changes_queue_is_bounded() {
    the_changes_queue_is_bounded(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_the_changes_queue_is_bounded() {
    the_changes_queue_is_bounded(Backend::Redis).await;
}
