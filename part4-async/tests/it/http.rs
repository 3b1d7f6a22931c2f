//! The jobs API over HTTP: an in-process `part4-server` (port 0, a
//! database and a queue of the test's own) and a worker running in the
//! test through the worker's own API. Each case on both queue backends
//! where the backend matters.

use std::time::Duration;

use common::testing::{self, prometheus};
use part4_async::job::{JobId, JobStatus};
use part4_async::queue::{AnyQueue, Backend, JobQueue, QueueConfig};
use part4_async::server::{AnswerMode, JobsMode, Part4Config};
use part4_async::worker::{Swept, Worker, WorkerConfig};
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::{self, DEADLINE, Db};

/// A server, its database, its queue and a session per user.
pub(crate) struct Lab {
    pub(crate) url: String,
    pub(crate) db: Db,
    queue_config: QueueConfig,
    /// The test's own handle on the server's queue (depth, cleanup).
    queue: Option<AnyQueue>,
    /// Cookies of user 1 (ada, who has articles) and user 2 (bob).
    ada: String,
    bob: String,
    /// The server's jobs API, for [`Lab::stop_serving`]'s drain.
    jobs: std::sync::Arc<part4_async::server::Jobs>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    worker_stop: Option<tokio::sync::oneshot::Sender<()>>,
    worker: Option<tokio::task::JoinHandle<()>>,
}

async fn cookie_for(prefix: &str, user_id: u64, username: &str) -> String {
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

impl Lab {
    /// Starts a server over a fresh database; `tweak` adjusts its
    /// configuration (the depth is read on every POST unless it says
    /// otherwise).
    pub(crate) async fn start(
        backend: Backend,
        jobs: JobsMode,
        tweak: impl FnOnce(&mut Part4Config),
    ) -> Lab {
        let db = Db::new().await;
        let stack = testing::stack();
        let prefix = testing::unique_name("p4h");
        let queue_config = support::config(backend);
        let mut c: Part4Config = clap::Parser::try_parse_from(["part4-server"]).unwrap();
        let server = &mut c.part3.part2.server;
        server.port = 0;
        server.clone_id = Some(testing::unique_name("clone"));
        server.key_prefix = prefix.clone();
        server.stack.mariadb_primary_url = db.db.url.clone();
        server.stack.mariadb_replica_url =
            common::config::with_database(&stack.mariadb_replica_url, &db.db.name);
        c.jobs = jobs;
        c.queue = queue_config.clone();
        c.depth_check_ms = 0;
        c.events_poll_ms = 50;
        c.job_min_ms = 0;
        tweak(&mut c);
        let (app, jobs_api) = part4_async::server::build_with_jobs(c).await.unwrap();
        let url = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(app.run_until(async move {
            let _ = rx.await;
        }));
        let queue = match jobs {
            JobsMode::Async => Some(AnyQueue::connect(&queue_config, &stack).await.unwrap()),
            JobsMode::Sync => None,
        };
        Lab {
            url,
            ada: cookie_for(&prefix, 1, "ada").await,
            bob: cookie_for(&prefix, 2, "bob").await,
            db,
            queue_config,
            queue,
            jobs: jobs_api,
            stop: Some(tx),
            server: Some(server),
            worker_stop: None,
            worker: None,
        }
    }

    /// Starts a worker on the server's queue, each job taking at least
    /// `job_min`.
    pub(crate) async fn start_worker(&mut self, job_min: Duration) {
        let queue = AnyQueue::connect(&self.queue_config, &testing::stack())
            .await
            .unwrap();
        let consumer = queue.consume("http-test-worker").await.unwrap();
        let worker = Worker::new(
            self.db.store.clone(),
            &WorkerConfig::new("http-test-worker", job_min),
            3,
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        self.worker_stop = Some(tx);
        self.worker = Some(tokio::spawn(async move {
            worker
                .run_until_stopped(consumer, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        }));
    }

    fn queue(&self) -> &AnyQueue {
        self.queue.as_ref().expect("an async server")
    }

    async fn waiting(&self) -> u64 {
        self.queue().depth().await.unwrap().ready
    }

    pub(crate) async fn jobs_of_ada(&self) -> u64 {
        self.db.store.count_for(1).await.unwrap()
    }

    /// Polls `GET /jobs/{id}` until the job is finished.
    async fn finished(&self, id: &str) -> Value {
        support::eventually("the job finished", || async {
            let got = send(
                Method::GET,
                &self.url,
                &format!("/jobs/{id}"),
                Some(&self.ada),
                None,
                &[],
            )
            .await;
            assert_eq!(got.status, 200, "{}", got.body);
            let v = got.json();
            (v["status"] == "done" || v["status"] == "failed").then_some(v)
        })
        .await
    }

    /// Stops the server as `SIGTERM` does (no new connections, the
    /// requests in flight finished), then drains what it owes, as
    /// `part4-server`'s `main` does.
    async fn stop_serving(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            tokio::time::timeout(DEADLINE, server)
                .await
                .expect("the server stopped")
                .unwrap()
                .unwrap();
        }
        self.jobs.drain(part4_async::server::SHUTDOWN_DRAIN).await;
    }

    pub(crate) async fn stop(mut self) {
        if let Some(tx) = self.worker_stop.take() {
            let _ = tx.send(());
        }
        if let Some(w) = self.worker.take() {
            tokio::time::timeout(DEADLINE, w).await.unwrap().unwrap();
        }
        if let Some(q) = &self.queue {
            q.destroy().await.unwrap();
            // An async server declares its changes queue at start: gone too.
            let changes = part4_async::changes::queue_config(&self.queue_config);
            if let Ok(c) = AnyQueue::connect(&changes, &testing::stack()).await {
                let _ = c.destroy().await;
            }
        }
        self.db.drop().await;
    }
}

/// What a request got back.
#[derive(Debug)]
struct Got {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request with an optional cookie, an optional raw body (sent as JSON
/// unless a `content-type` is among `headers`), and extra headers.
async fn send(
    method: Method,
    base: &str,
    path: &str,
    cookie: Option<&str>,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> Got {
    let mut req = part1_clones::client::http().request(method, format!("{base}{path}"));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(b) = body {
        if !headers
            .iter()
            .any(|(h, _)| h.eq_ignore_ascii_case("content-type"))
        {
            req = req.header("content-type", "application/json");
        }
        req = req.body(b.to_owned());
    }
    for (h, v) in headers {
        req = req.header(*h, *v);
    }
    let res = req.send().await.unwrap();
    Got {
        status: res.status().as_u16(),
        headers: res.headers().clone(),
        body: res.text().await.unwrap(),
    }
}

async fn post_job(lab: &Lab, body: &str, headers: &[(&str, &str)]) -> Got {
    send(
        Method::POST,
        &lab.url,
        "/jobs",
        Some(&lab.ada),
        Some(body),
        headers,
    )
    .await
}

const EXPORT: &str = r#"{"kind":"export"}"#;

// ---------------------------------------------------------------------
// A stopping clone publishes what it answered before it exits.

async fn a_stopping_clone_owes_nothing_once_drained(backend: Backend) {
    let mut lab = Lab::start(backend, JobsMode::Async, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let got = post_job(&lab, EXPORT, &[]).await;
        assert_eq!(got.status, 202, "{}", got.body);
        ids.push(got.json()["id"].as_str().unwrap().parse::<JobId>().unwrap());
    }
    // At once after the last 202: what part4-server's main does on SIGTERM.
    lab.stop_serving().await;
    // Nothing left to a sweeper: every row says its job is on the queue
    // (without the drain, the marks wait 50 ms for company and a clone's
    // runtime ends first), and it is.
    for id in &ids {
        assert!(
            lab.db.store.published_at(id).await.unwrap().is_some(),
            "{id} has no published_at"
        );
    }
    support::depth_becomes(lab.queue(), 5, 0).await;
    lab.stop().await;
}

#[tokio::test]
async fn a_stopping_clone_owes_nothing_once_drained_rabbitmq() {
    a_stopping_clone_owes_nothing_once_drained(Backend::RabbitMq).await;
}

#[tokio::test]
async fn a_stopping_clone_owes_nothing_once_drained_redis() {
    a_stopping_clone_owes_nothing_once_drained(Backend::Redis).await;
}

// ---------------------------------------------------------------------
// 202, Location, done, the result; the owner only.

async fn accepted_then_done(backend: Backend) {
    let mut lab = Lab::start(backend, JobsMode::Async, |_| {}).await;
    let got = post_job(&lab, EXPORT, &[]).await;
    assert_eq!(got.status, 202, "{}", got.body);
    let job = got.json();
    let id = job["id"].as_str().unwrap().to_owned();
    assert_eq!(got.header("location"), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(job["status"], "queued");
    assert_eq!(job["kind"], "export");
    // On the queue (published just after the answer: ANSWER=after-insert).
    support::depth_becomes(lab.queue(), 1, 0).await;

    // Not done yet: no result.
    let early = send(
        Method::GET,
        &lab.url,
        &format!("/jobs/{id}/result"),
        Some(&lab.ada),
        None,
        &[],
    )
    .await;
    assert_eq!(early.status, 409, "{}", early.body);

    // Someone else, anonymous, malformed and forged ids.
    for path in [
        format!("/jobs/{id}"),
        format!("/jobs/{id}/result"),
        format!("/jobs/{id}/events"),
    ] {
        let other = send(Method::GET, &lab.url, &path, Some(&lab.bob), None, &[]).await;
        assert_eq!(other.status, 404, "{path} for another user: {}", other.body);
        let anon = send(Method::GET, &lab.url, &path, None, None, &[]).await;
        assert_eq!(anon.status, 401, "{path} without a session");
    }
    let forged = JobId::generate();
    for path in [
        format!("/jobs/{forged}"),
        "/jobs/not-an-id".to_owned(),
        format!("/jobs/{}", id.to_uppercase()),
        "/jobs/..%2F..%2Fetc".to_owned(),
        format!("/jobs/{}", "f".repeat(5000)),
    ] {
        let got = send(Method::GET, &lab.url, &path, Some(&lab.ada), None, &[]).await;
        assert_eq!(got.status, 404, "{path}: {}", got.body);
    }

    lab.start_worker(Duration::ZERO).await;
    let done = lab.finished(&id).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["progress"], 100);
    let result_url = done["result_url"].as_str().unwrap();
    assert_eq!(result_url, format!("/jobs/{id}/result"));
    let result = send(Method::GET, &lab.url, result_url, Some(&lab.ada), None, &[]).await;
    assert_eq!(result.status, 200, "{}", result.body);
    assert!(
        result
            .header("content-type")
            .unwrap()
            .starts_with("application/json")
    );
    let doc = result.json();
    assert_eq!(doc["user_id"], 1);
    assert_eq!(doc["counts"]["articles"], 3);
    assert_eq!(doc["counts"]["comments"], 5);
    let theirs = send(Method::GET, &lab.url, result_url, Some(&lab.bob), None, &[]).await;
    assert_eq!(theirs.status, 404, "the result is the owner's alone");
    assert_eq!(lab.db.store.effects(&id.parse().unwrap()).await.unwrap(), 1);
    support::depth_becomes(lab.queue(), 0, 0).await;
    lab.stop().await;
}

#[tokio::test]
async fn rabbitmq_post_answers_202_and_the_owner_gets_the_result() {
    accepted_then_done(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_post_answers_202_and_the_owner_gets_the_result() {
    accepted_then_done(Backend::Redis).await;
}

// ---------------------------------------------------------------------
// Idempotency-Key.

async fn idempotent_retry(backend: Backend) {
    let lab = Lab::start(backend, JobsMode::Async, |c| c.drill_jobs = true).await;
    let key = [("idempotency-key", "retry-me-1")];
    let first = post_job(&lab, EXPORT, &key).await;
    assert_eq!(first.status, 202, "{}", first.body);
    assert_eq!(first.header("idempotent-replayed"), None);
    let again = post_job(&lab, EXPORT, &key).await;
    assert_eq!(again.status, 202, "{}", again.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"], "the same job");
    assert_eq!(again.header("location"), first.header("location"));
    // The same key for another kind of job: a client bug, refused.
    let other = post_job(&lab, r#"{"kind":"fail"}"#, &key).await;
    assert_eq!(other.status, 409, "{}", other.body);
    // The same key from another user is another user's key.
    let bobs = send(
        Method::POST,
        &lab.url,
        "/jobs",
        Some(&lab.bob),
        Some(EXPORT),
        &key,
    )
    .await;
    assert_eq!(bobs.status, 202);
    assert_ne!(bobs.json()["id"], first.json()["id"]);
    assert_eq!(lab.jobs_of_ada().await, 1, "one job row for ada");
    // Each sees their own list.
    for (cookie, id) in [
        (&lab.ada, first.json()["id"].clone()),
        (&lab.bob, bobs.json()["id"].clone()),
    ] {
        let list = send(Method::GET, &lab.url, "/jobs", Some(cookie), None, &[])
            .await
            .json();
        let ids: Vec<&Value> = list["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| &j["id"])
            .collect();
        assert_eq!(ids, [&id]);
    }
    assert_eq!(
        send(Method::GET, &lab.url, "/jobs", None, None, &[])
            .await
            .status,
        401
    );
    // Ada's job once, and Bob's.
    support::depth_becomes(lab.queue(), 2, 0).await;
    lab.stop().await;
}

#[tokio::test]
async fn rabbitmq_a_retried_post_with_its_key_returns_the_same_job() {
    idempotent_retry(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_a_retried_post_with_its_key_returns_the_same_job() {
    idempotent_retry(Backend::Redis).await;
}

/// Retries racing each other (two clones, one key): one job.
#[tokio::test]
async fn concurrent_retries_with_one_key_make_one_job() {
    let lab = Lab::start(Backend::Redis, JobsMode::Async, |_| {}).await;
    let key = [("idempotency-key", "raced")];
    let answers = futures::future::join_all((0..6).map(|_| post_job(&lab, EXPORT, &key))).await;
    let ids: std::collections::BTreeSet<String> = answers
        .iter()
        .map(|g| {
            assert_eq!(g.status, 202, "{}", g.body);
            g.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(lab.jobs_of_ada().await, 1);
    support::depth_becomes(lab.queue(), 1, 0).await;
    lab.stop().await;
}

// ---------------------------------------------------------------------
// Bad input: a clear 4xx, nothing written, nothing queued.

/// What is wrong, the cookie, the body, extra headers, the status expected.
type BadCase<'a> = (
    &'a str,
    Option<&'a str>,
    String,
    Vec<(&'a str, &'a str)>,
    u16,
);

async fn bad_input(backend: Backend) {
    let lab = Lab::start(backend, JobsMode::Async, |_| {}).await;
    let long_key = "k".repeat(65);
    let huge = format!(
        r#"{{"kind":"export","params":{{"x":"{}"}}}}"#,
        "a".repeat(4000)
    );
    let cases: Vec<BadCase> = vec![
        ("not logged in", None, EXPORT.into(), vec![], 401),
        (
            "not JSON",
            Some(&lab.ada),
            "{kind: export".into(),
            vec![],
            400,
        ),
        ("empty body", Some(&lab.ada), String::new(), vec![], 400),
        (
            "not an object",
            Some(&lab.ada),
            r#"["export"]"#.into(),
            vec![],
            400,
        ),
        ("no kind", Some(&lab.ada), "{}".into(), vec![], 400),
        (
            "unknown kind",
            Some(&lab.ada),
            r#"{"kind":"mine-bitcoin"}"#.into(),
            vec![],
            400,
        ),
        (
            "a kind in capitals",
            Some(&lab.ada),
            r#"{"kind":"EXPORT"}"#.into(),
            vec![],
            400,
        ),
        (
            "the drill's kind, drills off",
            Some(&lab.ada),
            r#"{"kind":"fail"}"#.into(),
            vec![],
            400,
        ),
        (
            "a kind that is not text",
            Some(&lab.ada),
            r#"{"kind":7}"#.into(),
            vec![],
            400,
        ),
        (
            "an extra field",
            Some(&lab.ada),
            r#"{"kind":"export","owner_id":2}"#.into(),
            vec![],
            400,
        ),
        (
            "parameters the export does not take",
            Some(&lab.ada),
            r#"{"kind":"export","params":{"user":2}}"#.into(),
            vec![],
            400,
        ),
        ("oversized", Some(&lab.ada), huge, vec![], 413),
        (
            "not declared JSON",
            Some(&lab.ada),
            EXPORT.into(),
            vec![("content-type", "text/plain")],
            415,
        ),
        (
            "a malformed idempotency key",
            Some(&lab.ada),
            EXPORT.into(),
            vec![("idempotency-key", "no spaces please")],
            400,
        ),
        (
            "an overlong idempotency key",
            Some(&lab.ada),
            EXPORT.into(),
            vec![("idempotency-key", &long_key)],
            400,
        ),
    ];
    for (what, cookie, body, headers, status) in &cases {
        let got = send(
            Method::POST,
            &lab.url,
            "/jobs",
            *cookie,
            Some(body),
            headers,
        )
        .await;
        assert_eq!(got.status, *status, "{what}: {}", got.body);
        let err = got.json();
        assert!(
            err["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {err}"
        );
    }
    assert_eq!(lab.jobs_of_ada().await, 0, "no job row written");
    assert_eq!(lab.db.store.count_for(2).await.unwrap(), 0);
    assert_eq!(lab.waiting().await, 0, "nothing queued");
    lab.stop().await;
}

#[tokio::test]
async fn rabbitmq_bad_input_gets_a_4xx_and_queues_nothing() {
    bad_input(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_bad_input_gets_a_4xx_and_queues_nothing() {
    bad_input(Backend::Redis).await;
}

// ---------------------------------------------------------------------
// Backpressure.

async fn backpressure(backend: Backend) {
    let lab = Lab::start(backend, JobsMode::Async, |c| {
        c.max_queue_depth = 2;
        c.retry_after_secs = 7;
    })
    .await;
    // Each published and confirmed before the next POST reads the depth
    // (the publish follows the 202; until its confirm the server counts
    // it apart, and one already on the queue counts twice meanwhile: the
    // gate errs towards refusing, as the server's docs say).
    let published = |got: &Got| {
        let id: JobId = got.json()["id"].as_str().unwrap().parse().unwrap();
        let store = lab.db.store.clone();
        async move {
            support::eventually("the publish confirmed and recorded", || async {
                store.published_at(&id).await.unwrap().map(drop)
            })
            .await;
        }
    };
    let key = [("idempotency-key", "first")];
    let first = post_job(&lab, EXPORT, &key).await;
    assert_eq!(first.status, 202);
    published(&first).await;
    let second = post_job(&lab, EXPORT, &[]).await;
    assert_eq!(second.status, 202);
    published(&second).await;
    for _ in 0..3 {
        let refused = post_job(&lab, EXPORT, &[]).await;
        assert_eq!(refused.status, 503, "{}", refused.body);
        assert_eq!(refused.header("retry-after"), Some("7"));
        let err = refused.json();
        assert_eq!(err["waiting"], 2);
        assert!(
            err["error"]
                .as_str()
                .unwrap()
                .contains("nothing was queued"),
            "{err}"
        );
    }
    // A retry of an accepted job is still answered with that job.
    let retry = post_job(&lab, EXPORT, &key).await;
    assert_eq!(retry.status, 202);
    assert_eq!(retry.json()["id"], first.json()["id"]);
    // The queue did not grow past the limit.
    support::depth_becomes(lab.queue(), 2, 0).await;
    assert_eq!(lab.jobs_of_ada().await, 2, "no row for a refused job");
    lab.stop().await;
}

#[tokio::test]
async fn rabbitmq_a_full_queue_answers_503_with_retry_after() {
    backpressure(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_a_full_queue_answers_503_with_retry_after() {
    backpressure(Backend::Redis).await;
}

/// Jobs accepted through the real `POST /jobs` and left waiting (no
/// worker yet, a backlog): the clone records each confirmed publish, so
/// the sweeper, long after its window, sends none of them again and the
/// queue does not grow past what the clone accepted.
async fn backlog_is_not_swept(backend: Backend) {
    let mut lab = Lab::start(backend, JobsMode::Async, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let got = post_job(&lab, EXPORT, &[]).await;
        assert_eq!(got.status, 202, "{}", got.body);
        ids.push(got.json()["id"].as_str().unwrap().parse::<JobId>().unwrap());
    }
    for id in &ids {
        // Written off the request's path: soon, not necessarily before the 202.
        support::eventually("the publish recorded", || async {
            lab.db.store.published_at(id).await.unwrap().map(drop)
        })
        .await;
    }
    // Two minutes in the queue: far past the sweeper's window.
    sqlx::query(
        "UPDATE jobs SET created_at = created_at - 120000, updated_at = updated_at - 120000",
    )
    .execute(&lab.db.db.pool)
    .await
    .unwrap();
    let sweeper = Worker::new(
        lab.db.store.clone(),
        &WorkerConfig::new("sweeper", Duration::ZERO),
        3,
    );
    let swept = sweeper.sweep(lab.queue()).await.unwrap();
    assert_eq!(swept, Swept::default(), "nothing sent again: {swept:?}");
    assert_eq!(lab.waiting().await, 3, "the backlog did not grow");
    lab.start_worker(Duration::ZERO).await;
    for id in &ids {
        let done = lab.finished(id.as_str()).await;
        assert_eq!(done["status"], "done", "{done}");
        assert_eq!(lab.db.store.effects(id).await.unwrap(), 1);
        let row = lab.db.store.get(id).await.unwrap().unwrap();
        assert_eq!(row.attempts, 1, "one delivery each");
    }
    support::depth_becomes(lab.queue(), 0, 0).await;
    lab.stop().await;
}

#[tokio::test]
async fn rabbitmq_a_backlog_is_not_swept_again() {
    backlog_is_not_swept(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_a_backlog_is_not_swept_again() {
    backlog_is_not_swept(Backend::Redis).await;
}

/// `ANSWER=after-confirm`: the queue goes away between the depth check
/// and the publish (here: it is deleted, and RabbitMQ returns the
/// mandatory publish unrouted): the job is marked failed with the reason,
/// never left queued, the answer is 503, and the key is free for the
/// retry.
#[tokio::test]
async fn rabbitmq_a_failed_enqueue_marks_the_job_failed_and_answers_503() {
    let lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |c| {
        c.depth_check_ms = 600_000; // the depth read once, then trusted
        c.answer = AnswerMode::AfterConfirm;
    })
    .await;
    assert_eq!(post_job(&lab, EXPORT, &[]).await.status, 202);
    lab.queue().destroy().await.unwrap();
    let key = [("idempotency-key", "after-the-outage")];
    let got = post_job(&lab, EXPORT, &key).await;
    assert_eq!(got.status, 503, "{}", got.body);
    assert!(got.header("retry-after").is_some());
    let err = got.json();
    assert_eq!(err["status"], "failed");
    let id: JobId = err["id"].as_str().unwrap().parse().unwrap();
    let row = lab.db.store.get(&id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert!(row.error.unwrap().contains("could not be queued"));
    // The retry (same key) is a new attempt, not the dead job. (The queue
    // is still gone: it fails the same way, with a new id.)
    let retry = post_job(&lab, EXPORT, &key).await;
    assert_eq!(retry.status, 503);
    assert_ne!(retry.json()["id"], err["id"]);
    lab.stop().await;
}

/// `ANSWER=after-insert` (the default), the same loss of the queue: the
/// `202` went out before the publish, so the user is told by the row,
/// which the failed publish marks failed with the reason (never left
/// queued for a sweeper to send into the void).
#[tokio::test]
async fn rabbitmq_a_publish_refused_after_the_answer_marks_the_job_failed() {
    let lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |c| {
        c.depth_check_ms = 600_000; // the depth read once, then trusted
    })
    .await;
    let before = post_job(&lab, EXPORT, &[]).await;
    assert_eq!(before.status, 202, "{}", before.body);
    let published: JobId = before.json()["id"].as_str().unwrap().parse().unwrap();
    // Confirmed and recorded, off the request's path.
    support::eventually("the first job's publish recorded", || async {
        lab.db
            .store
            .published_at(&published)
            .await
            .unwrap()
            .map(drop)
    })
    .await;
    lab.queue().destroy().await.unwrap();
    let got = post_job(&lab, EXPORT, &[]).await;
    assert_eq!(got.status, 202, "{}", got.body);
    let id: JobId = got.json()["id"].as_str().unwrap().parse().unwrap();
    let row = support::eventually("the unroutable job marked failed", || async {
        let row = lab.db.store.get(&id).await.unwrap().unwrap();
        (row.status == JobStatus::Failed).then_some(row)
    })
    .await;
    assert!(row.error.unwrap().contains("could not be queued"));
    assert_eq!(lab.db.store.published_at(&id).await.unwrap(), None);
    lab.stop().await;
}

// ---------------------------------------------------------------------
// Server-Sent Events.

/// Reads a whole event stream: `(event, data)` pairs, in order, until the
/// server ends it. The worker is started once the first event is in.
async fn read_events(lab: &mut Lab, id: &str, job_min: Duration) -> Vec<(String, Value)> {
    let client = reqwest::Client::builder()
        .timeout(DEADLINE)
        .build()
        .unwrap();
    let mut res = client
        .get(format!("{}/jobs/{id}/events", lab.url))
        .header("cookie", &lab.ada)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"),
        "{:?}",
        res.headers()
    );
    let mut buffer = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = res.chunk().await.unwrap() {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut name, mut data) = (None, String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = Some(v.trim().to_owned());
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
                // ":" lines are keep-alive comments.
            }
            if let Some(name) = name {
                events.push((name, serde_json::from_str(&data).unwrap()));
                if events.len() == 1 {
                    lab.start_worker(job_min).await;
                }
            }
        }
        assert!(events.len() < 200, "an endless stream: {events:?}");
    }
    events
}

async fn events_stream(backend: Backend) {
    let mut lab = Lab::start(backend, JobsMode::Async, |_| {}).await;
    let got = post_job(&lab, EXPORT, &[]).await;
    let id = got.json()["id"].as_str().unwrap().to_owned();
    let events = read_events(&mut lab, &id, Duration::from_millis(500)).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    let seen: Vec<String> = events
        .iter()
        .map(|(n, d)| {
            format!(
                "{n}:{}:{}",
                d["status"].as_str().unwrap_or("?"),
                d["progress"]
            )
        })
        .collect();
    println!("{backend:?} events: {seen:?}");
    assert!(events.len() >= 2, "{names:?}");
    assert_eq!(events[0].0, "progress");
    assert_eq!(
        events[0].1["status"], "queued",
        "the first event is the job as it was"
    );
    let (last, rest) = events.split_last().unwrap();
    assert_eq!(last.0, "done", "{names:?}");
    assert_eq!(last.1["progress"], 100);
    assert_eq!(last.1["result_url"], format!("/jobs/{id}/result"));
    let mut progress = 0;
    for (name, data) in rest {
        assert_eq!(name, "progress", "{names:?}");
        assert_eq!(data["id"], id.as_str());
        let p = data["progress"].as_u64().unwrap();
        assert!(p >= progress, "progress goes forward: {names:?}");
        progress = p;
    }
    // A finished job's stream is its last event, then the end.
    let again = read_events_now(&lab, &id).await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0, "done");
    lab.stop().await;
}

/// The stream of a finished job (no worker to start).
async fn read_events_now(lab: &Lab, id: &str) -> Vec<(String, Value)> {
    let got = send(
        Method::GET,
        &lab.url,
        &format!("/jobs/{id}/events"),
        Some(&lab.ada),
        None,
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    got.body
        .split("\n\n")
        .filter_map(|block| {
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))?
                .trim()
                .to_owned();
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data:"))?
                .trim_start();
            Some((name, serde_json::from_str(data).unwrap()))
        })
        .collect()
}

#[tokio::test]
async fn rabbitmq_the_event_stream_tells_progress_then_done() {
    events_stream(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_the_event_stream_tells_progress_then_done() {
    events_stream(Backend::Redis).await;
}

/// A job that fails for good: `GET` says `failed` with the reason, its
/// stream ends with a `failed` event, its result is a 409.
#[tokio::test]
async fn a_failed_job_says_why() {
    let mut lab = Lab::start(Backend::Redis, JobsMode::Async, |c| c.drill_jobs = true).await;
    let got = post_job(&lab, r#"{"kind":"fail"}"#, &[]).await;
    assert_eq!(got.status, 202, "{}", got.body);
    let id = got.json()["id"].as_str().unwrap().to_owned();
    lab.start_worker(Duration::ZERO).await;
    let v = lab.finished(&id).await;
    assert_eq!(v["status"], "failed");
    assert!(v["error"].as_str().unwrap().contains("always fails"), "{v}");
    assert!(v.get("result_url").is_none());
    let events = read_events_now(&lab, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "failed");
    let result = send(
        Method::GET,
        &lab.url,
        &format!("/jobs/{id}/result"),
        Some(&lab.ada),
        None,
        &[],
    )
    .await;
    assert_eq!(result.status, 409);
    support::depth_becomes(lab.queue(), 0, 1).await;
    lab.stop().await;
}

// ---------------------------------------------------------------------
// The anti-pattern: --jobs sync.

#[tokio::test]
async fn sync_jobs_answer_with_the_result_in_the_request() {
    let lab = Lab::start(Backend::Redis, JobsMode::Sync, |c| c.job_min_ms = 200).await;
    let key = [("idempotency-key", "sync-1")];
    let got = post_job(&lab, EXPORT, &key).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let doc = got.json();
    assert_eq!(doc["user_id"], 1);
    assert_eq!(doc["counts"]["articles"], 3);
    assert_eq!(doc["counts"]["comments"], 5);
    let id = got.header("x-job-id").unwrap().to_owned();
    let row = send(
        Method::GET,
        &lab.url,
        &format!("/jobs/{id}"),
        Some(&lab.ada),
        None,
        &[],
    )
    .await;
    assert_eq!(row.json()["status"], "done", "done when the answer came");
    // The retry gets the same result, without doing the job again.
    let again = post_job(&lab, EXPORT, &key).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.header("x-job-id"), Some(id.as_str()));
    assert_eq!(lab.jobs_of_ada().await, 1);
    assert_eq!(lab.db.store.effects(&id.parse().unwrap()).await.unwrap(), 1);
    // Bad input is refused the same way.
    let bad = post_job(&lab, r#"{"kind":"nope"}"#, &[]).await;
    assert_eq!(bad.status, 400);
    lab.stop().await;
}

/// Part 3's routes are still there: part 4's server is part 3's plus jobs.
#[tokio::test]
async fn part3s_routes_are_served_too() {
    let lab = Lab::start(Backend::Redis, JobsMode::Async, |_| {}).await;
    let article = send(Method::GET, &lab.url, "/articles/1", None, None, &[]).await;
    assert_eq!(article.status, 200, "{}", article.body);
    assert!(
        article.header("x-cache").is_some(),
        "served by part 3's cached route"
    );
    let me = send(Method::GET, &lab.url, "/me", Some(&lab.ada), None, &[]).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["username"], "ada");
    let posted = send(
        Method::POST,
        &lab.url,
        "/articles",
        Some(&lab.ada),
        Some(&json!({"title": "t", "body": "b"}).to_string()),
        &[],
    )
    .await;
    assert!(
        posted.status < 300,
        "part 2's write route: {} {}",
        posted.status,
        posted.body
    );
    lab.stop().await;
}

/// A stream lives at most `EVENTS_MAX_SECS`: with 0, the job as it is
/// now (with the reconnect delay), then the end, though the job is not.
#[tokio::test]
async fn an_event_stream_ends_after_its_longest_life() {
    let lab = Lab::start(Backend::Redis, JobsMode::Async, |c| c.events_max_secs = 0).await;
    let id = post_job(&lab, EXPORT, &[]).await.json()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let got = send(
        Method::GET,
        &lab.url,
        &format!("/jobs/{id}/events"),
        Some(&lab.ada),
        None,
        &[],
    )
    .await;
    assert_eq!(got.status, 200);
    assert!(
        got.body.contains("retry: 1000") || got.body.contains("retry:1000"),
        "{}",
        got.body
    );
    let events = read_events_now(&lab, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].0, "progress");
    assert_eq!(events[0].1["status"], "queued");
    lab.stop().await;
}

// ---------------------------------------------------------------------
// The binaries, as `./lab` will run them.

/// A port free now (bound, then released: good enough for a test).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `part4-server` and `part4-worker` processes, configured by environment
/// variables only: a job posted to the server is done by the worker.
async fn binaries(backend: Backend) {
    let db = Db::new().await;
    let stack = testing::stack();
    let queue_config = support::config(backend);
    let prefix = testing::unique_name("p4b");
    let port = free_port();
    let replica = common::config::with_database(&stack.mariadb_replica_url, &db.db.name);
    let env = |cmd: &mut tokio::process::Command| {
        cmd.env("MARIADB_PRIMARY_URL", &db.db.url)
            .env("MARIADB_REPLICA_URL", &replica)
            .env("QUEUE", backend.as_str())
            .env("QUEUE_NAME", &queue_config.queue_name)
            .env("JOB_MIN_MS", "0")
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
    };
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_part4-server"));
    env(&mut server);
    server
        .env("PORT", port.to_string())
        .env("KEY_PREFIX", &prefix)
        .env("CLONE_ID", "bin-test-clone")
        .env("JOBS", "async");
    let mut server = server.spawn().expect("the part4-server binary runs");
    let mut worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_part4-worker"));
    env(&mut worker);
    let worker_port = free_port();
    // The pages the article's change bakes: a directory of the test's own.
    let bake_dir = std::env::temp_dir().join(testing::unique_name("p4bake"));
    // The clones' key prefix, as `./lab` gives both: the change's fan-out
    // writes timelines under it, never the lab's own.
    worker
        .env("KEY_PREFIX", &prefix)
        .env("WORKER_NAME", "bin-test-worker")
        .env("PORT", worker_port.to_string())
        .env("BAKE_DIR", &bake_dir);
    let mut worker = worker.spawn().expect("the part4-worker binary runs");

    let url = format!("http://127.0.0.1:{port}");
    support::eventually("the server answering", || async {
        let ok = part1_clones::client::http()
            .get(format!("{url}/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        ok.then_some(())
    })
    .await;
    let ada = cookie_for(&prefix, 1, "ada").await;
    let got = send(Method::POST, &url, "/jobs", Some(&ada), Some(EXPORT), &[]).await;
    assert_eq!(got.status, 202, "{}", got.body);
    let id = got.json()["id"].as_str().unwrap().to_owned();
    let done = support::eventually("the job done by the worker process", || async {
        let v = send(
            Method::GET,
            &url,
            &format!("/jobs/{id}"),
            Some(&ada),
            None,
            &[],
        )
        .await
        .json();
        (v["status"] == "done").then_some(v)
    })
    .await;
    let result = send(
        Method::GET,
        &url,
        done["result_url"].as_str().unwrap(),
        Some(&ada),
        None,
        &[],
    )
    .await;
    assert_eq!(result.json()["counts"]["articles"], 3);

    // Both processes' /metrics parse and carry what the live page reads
    // (issue 10): the clone's queries by pool, the replica's lag as it
    // sees it, ada's session found, the job it enqueued, the change its
    // write published; the worker's job done, how many it runs, the
    // queue's depth.
    let article = send(Method::GET, &url, "/articles/1", Some(&ada), None, &[]).await;
    assert_eq!(article.status, 200, "{}", article.body);
    let posted = send(
        Method::POST,
        &url,
        "/articles",
        Some(&ada),
        Some(r#"{"title":"metrics","body":"counted"}"#),
        &[],
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    let wanted: [(&str, &[(&str, &str)]); 8] = [
        ("lab_db_queries_total", &[("pool", "primary")]),
        ("lab_db_queries_total", &[("pool", "replica")]),
        ("lab_replica_lag_seconds", &[("replica", "0")]),
        ("lab_sessions_total", &[("event", "found")]),
        ("lab_jobs_total", &[("event", "enqueued")]),
        ("lab_changes_total", &[("result", "published")]),
        ("lab_cache_requests_total", &[("pattern", "object")]),
        (
            "lab_http_requests_total",
            &[("route", "/jobs"), ("status", "202")],
        ),
    ];
    // The replica's series come from the clone's health check, which may
    // not have run its first round yet (the job can be done sooner).
    let clone_metrics = format!("{url}/metrics");
    let clone = support::eventually(
        "the clone's /metrics carries every series the live page reads",
        || async {
            let samples = scrape(&clone_metrics).await;
            let missing: Vec<_> = wanted
                .iter()
                .filter(|(name, with)| prometheus::find(&samples, name, with).is_empty())
                .collect();
            if !missing.is_empty() {
                eprintln!("not yet on the clone's /metrics: {missing:?}");
                return None;
            }
            Some(samples)
        },
    )
    .await;
    assert!(prometheus::find(&clone, "lab_jobs_total", &[("event", "enqueued")])[0].value >= 1.0);
    let worker_metrics = format!("http://127.0.0.1:{worker_port}/metrics");
    // The depth is read at each scrape, within a second (NaN if the queue
    // was slower): a busy machine may need a few scrapes.
    let seen = support::eventually(
        "the worker's /metrics counts the job done and reads the queue's depth",
        || async {
            let samples = scrape(&worker_metrics).await;
            let value = |name: &str, with: &[(&str, &str)]| {
                prometheus::find(&samples, name, with)
                    .first()
                    .map(|s| s.value)
            };
            let done = value("lab_jobs_total", &[("event", "done")]);
            let ready = value("lab_queue_depth", &[("state", "ready")]);
            (done >= Some(1.0) && ready.is_some_and(|r| r >= 0.0)).then_some(samples)
        },
    )
    .await;
    assert_eq!(prometheus::find(&seen, "lab_jobs_running", &[]).len(), 1);

    for child in [&mut server, &mut worker] {
        // SIGTERM, as `./lab stop` sends it: both exit 0.
        let stopped = common::signal::stop(child, DEADLINE).await.unwrap();
        assert!(stopped.cleanly(), "exits 0 on SIGTERM: {stopped:?}");
    }
    // The jobs queue and the changes queue both processes declared (each
    // with its dead-letter and parked queues): none left on the broker.
    for config in [
        queue_config.clone(),
        part4_async::changes::queue_config(&queue_config),
    ] {
        AnyQueue::connect(&config, &stack)
            .await
            .unwrap()
            .destroy()
            .await
            .unwrap();
    }
    let _ = std::fs::remove_dir_all(&bake_dir);
    db.drop().await;
}

/// A `/metrics` page, parsed (a malformed one fails the test).
async fn scrape(url: &str) -> Vec<prometheus::Sample> {
    let r = part1_clones::client::http()
        .get(url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status(), 200, "GET {url}");
    let text = r.text().await.unwrap();
    prometheus::parse(&text).unwrap_or_else(|e| panic!("{url}: {e}\n{text}"))
}

#[tokio::test]
async fn rabbitmq_the_server_and_worker_binaries_do_a_job() {
    binaries(Backend::RabbitMq).await;
}

#[tokio::test]
async fn redis_the_server_and_worker_binaries_do_a_job() {
    binaries(Backend::Redis).await;
}

/// The broker goes away (its port refuses, as a stopped RabbitMQ does):
/// `POST /jobs` answers 503 with `Retry-After`, writes no row and queues
/// nothing; when it is back, the clone's publisher reconnects by itself
/// and jobs are accepted again, without a restart.
#[tokio::test]
async fn rabbitmq_down_gives_a_clear_503_and_the_clone_reconnects() {
    let stack = testing::stack();
    let rest = stack
        .rabbitmq_url
        .split_once("://")
        .map_or(stack.rabbitmq_url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let target = rest.split(['/', '?']).next().unwrap().to_owned();
    let proxy = testing::ChaosProxy::start(&target).await.unwrap();
    let through = proxy.url_for(&stack.rabbitmq_url);
    let lab = Lab::start(Backend::RabbitMq, JobsMode::Async, |c| {
        c.part3.part2.server.stack.rabbitmq_url = through;
    })
    .await;
    assert_eq!(post_job(&lab, EXPORT, &[]).await.status, 202);

    proxy.refuse();
    for key in [None, Some("while-down")] {
        let headers: Vec<(&str, &str)> = key.map(|k| ("idempotency-key", k)).into_iter().collect();
        let got = post_job(&lab, EXPORT, &headers).await;
        assert_eq!(got.status, 503, "{}", got.body);
        assert!(got.header("retry-after").is_some());
        assert!(
            got.json()["error"]
                .as_str()
                .unwrap()
                .contains("nothing was queued"),
            "{}",
            got.body
        );
    }
    assert_eq!(lab.jobs_of_ada().await, 1, "no row for the refused jobs");

    proxy.restore();
    let accepted = support::eventually("a job accepted after the broker is back", || async {
        let got = post_job(&lab, EXPORT, &[("idempotency-key", "while-down")]).await;
        assert!(got.status == 202 || got.status == 503, "{}", got.body);
        (got.status == 202).then_some(got)
    })
    .await;
    assert_eq!(
        accepted.header("idempotent-replayed"),
        None,
        "a new job: the refused one left nothing"
    );
    assert_eq!(lab.jobs_of_ada().await, 2);
    // Both accepted jobs queued. (The first job's publish may have been
    // cut after the broker took it but before its confirm came back: the
    // clone then sends it again, and the queue holds a copy, which the
    // claim makes harmless. So two or three, never fewer.)
    support::eventually("both accepted jobs on the queue", || async {
        let ready = lab.waiting().await;
        (2..=3).contains(&ready).then_some(())
    })
    .await;
    lab.stop().await;
}

/// `--jobs sync` and a client that gives up before the job is done (its
/// timeout is shorter than the job's stated minimum): the job still
/// finishes, once, and the retry with the same key gets its result.
#[tokio::test]
async fn a_sync_job_whose_client_gave_up_still_finishes_once() {
    let lab = Lab::start(Backend::Redis, JobsMode::Sync, |c| c.job_min_ms = 1500).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let gave_up = impatient
        .post(format!("{}/jobs", lab.url))
        .header("cookie", &lab.ada)
        .header("content-type", "application/json")
        .header("idempotency-key", "impatient")
        .body(EXPORT)
        .send()
        .await;
    assert!(
        gave_up.is_err(),
        "the client gave up before the job was done"
    );
    let job = support::eventually("the abandoned request's job done", || async {
        let list = send(Method::GET, &lab.url, "/jobs", Some(&lab.ada), None, &[])
            .await
            .json();
        let job = list["jobs"][0].clone();
        (job["status"] == "done").then_some(job)
    })
    .await;
    let retry = post_job(&lab, EXPORT, &[("idempotency-key", "impatient")]).await;
    assert_eq!(retry.status, 200, "{}", retry.body);
    assert_eq!(retry.header("idempotent-replayed"), Some("true"));
    assert_eq!(retry.header("x-job-id"), job["id"].as_str());
    assert_eq!(retry.json()["counts"]["articles"], 3);
    assert_eq!(lab.jobs_of_ada().await, 1);
    let id: JobId = job["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(lab.db.store.effects(&id).await.unwrap(), 1);
    lab.stop().await;
}
