//! Part 3 servers over a database of the test's own (the tiny dataset),
//! with a cache key prefix of the test's own on the stack's Memcached or
//! Redis, so tests run in parallel without seeing each other's keys.

use std::time::Duration;

use common::dataset::{DatasetSpec, Scale};
use common::testing::{self, TestDatabase};
use part2_database::articles::Shape;
use part2_database::schema;
use part2_database::server::Reads;
use part3_cache::server::{BackendKind, CacheMode, Part3Config};
use part3_cache::stampede::Stampede;

pub struct Loaded {
    pub db: TestDatabase,
    pub spec: DatasetSpec,
    pub replica_url: String,
}

/// A fresh database with the schema and the tiny dataset, once it has
/// reached the replica (part 2's reads may go there).
pub async fn loaded() -> Loaded {
    let stack = testing::stack();
    let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    schema::migrate(&db.pool).await.unwrap();
    let spec = DatasetSpec::new(5, Scale::Tiny);
    schema::load(&db.pool, &spec).await.unwrap();
    let replica_url = common::config::with_database(&stack.mariadb_replica_url, &db.name);
    let l = Loaded {
        db,
        spec,
        replica_url,
    };
    l.db.replicated(&stack.mariadb_replica_url).await;
    l
}

/// Fails with the command that starts it if the cache server is not up.
pub async fn require(backend: BackendKind) {
    let stack = testing::stack();
    let (service, url) = match backend {
        BackendKind::Memcached => ("Memcached", stack.memcached_url),
        // The file cache needs no server; Redis holds the sessions.
        BackendKind::Redis | BackendKind::File => ("Redis", stack.redis_url),
    };
    let addr = host_port(&url);
    testing::tcp(service, &addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

/// `host:port` of `scheme://[user@]host:port[/...][?...]`.
pub fn host_port(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
}

/// A server's configuration for a test: port 0, the test's database, the
/// given cache and key prefix (clones of one test share the prefix, as
/// clones of one deployment share the cache).
pub fn config(l: &Loaded, cache: CacheMode, backend: BackendKind, prefix: &str) -> Part3Config {
    let mut config: Part3Config = clap::Parser::try_parse_from(["part3-server"]).unwrap();
    config.part2.server.port = 0;
    config.part2.server.clone_id = Some(testing::unique_name("clone"));
    config.part2.server.key_prefix = prefix.to_owned();
    config.part2.server.stack.mariadb_primary_url = l.db.url.clone();
    config.part2.server.stack.mariadb_replica_url = l.replica_url.clone();
    config.cache = cache;
    config.cache_backend = backend;
    // Every cache setting explicit, at the server's default unless said:
    // `try_parse_from` reads the environment (`STAMPEDE=xfetch` or
    // `QUERY_FLUSH_ON_WRITE=true` exported by a developer, or the lab's
    // `.env`), which must not change what a test exercises. A test that
    // wants another value sets it on what this returns.
    config.stampede = Stampede::Lease;
    config.cache_ttl_secs = 300;
    config.cache_jitter = 0.1;
    config.query_flush_on_write = false;
    config.cache_max_value_bytes = 512 * 1024;
    config.cache_file_dir = None;
    config.cache_file_max_bytes = part3_cache::backend::DEFAULT_MAX_DIR_BYTES;
    // Part 2's read policy and schema shape too (`READS`, `SHAPE`, ...).
    config.part2.reads = Reads::Pin;
    config.part2.shape = Shape::Denormalized;
    config.part2.pin_window_ms = 2000;
    config.part2.gtid_wait_ms = 1000;
    config.part2.replica_max_lag_ms = 1000;
    config.part2.replica_check_ms = 500;
    // Generous for a loaded debug build: what is tested is hit, miss and
    // bypass, not speed.
    config.cache_timeout_ms = 2000;
    config
}

/// One running server; dropped with the test.
pub struct App {
    pub url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Builds and runs a server.
pub async fn spawn(config: Part3Config) -> App {
    let app = part3_cache::server::build(config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", app.port());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    App { url, _stop: tx }
}

/// A session cookie for `user_id` in the Redis store under `prefix`, as
/// login would make it, without hashing a password (slow in a debug
/// build, and not what these tests are about).
pub async fn cookie_for(prefix: &str, user_id: u64, username: &str) -> String {
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
#[derive(Debug)]
pub struct Got {
    pub status: u16,
    pub x_cache: Option<String>,
    pub content_type: String,
    pub vary: Option<String>,
    pub body: String,
}

impl Got {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    pub fn x(&self) -> &str {
        self.x_cache.as_deref().unwrap_or("(none)")
    }
}

/// A request, with an optional cookie and `Accept`.
pub async fn send(
    method: reqwest::Method,
    url: &str,
    cookie: Option<&str>,
    accept: Option<&str>,
    body: Option<serde_json::Value>,
) -> Got {
    let mut req = part1_clones::client::http().request(method, url);
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let header = |name: &str| {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let x_cache = header("x-cache");
    let content_type = header("content-type").unwrap_or_default();
    let vary = header("vary");
    Got {
        status: res.status().as_u16(),
        x_cache,
        content_type,
        vary,
        body: res.text().await.unwrap(),
    }
}

/// `GET base + path`.
pub async fn get(base: &str, path: &str, cookie: Option<&str>) -> Got {
    send(
        reqwest::Method::GET,
        &format!("{base}{path}"),
        cookie,
        None,
        None,
    )
    .await
}

/// `GET` the HTML page.
pub async fn get_html(base: &str, path: &str) -> Got {
    send(
        reqwest::Method::GET,
        &format!("{base}{path}"),
        None,
        Some("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"),
        None,
    )
    .await
}

/// `POST base + path` with a JSON body, as the cookie's user.
pub async fn post(base: &str, path: &str, cookie: &str, body: serde_json::Value) -> Got {
    send(
        reqwest::Method::POST,
        &format!("{base}{path}"),
        Some(cookie),
        None,
        Some(body),
    )
    .await
}

/// A user's id and username.
pub async fn user(l: &Loaded, id: u64) -> (u64, String) {
    let name: String = sqlx::query_scalar("SELECT username FROM users WHERE id = ?")
        .bind(id)
        .fetch_one(&l.db.pool)
        .await
        .unwrap();
    (id, name)
}

/// One of `uid`'s friends posts an article through `base`: the answer
/// (201 with the new article's id).
pub async fn a_friend_posts(l: &Loaded, prefix: &str, uid: u64, base: &str) -> Got {
    let friend: u64 =
        sqlx::query_scalar("SELECT friend_id FROM friendships WHERE user_id = ? LIMIT 1")
            .bind(uid)
            .fetch_one(&l.db.pool)
            .await
            .unwrap();
    let (fid, fname) = user(l, friend).await;
    let poster = cookie_for(prefix, fid, &fname).await;
    let posted = post(
        base,
        "/articles",
        &poster,
        serde_json::json!({"title": "fresh", "body": "news"}),
    )
    .await;
    assert_eq!(posted.status, 201, "{}", posted.body);
    posted
}
