//! Part 2's server: part 1's, plus the pages the later parts cache.
//!
//! Every read goes through the [`SplitPool`] (a replica in rotation, else
//! the primary); every write goes to the primary. Read-your-writes is a
//! flag, so the anti-pattern and the fixes run side by side (`--reads`):
//!
//! - `naive`: read any replica that answers, however far behind (after a
//!   write you may read the old data: watch it fail with the replica's SQL
//!   thread stopped, see the guide);
//! - `pin` (default): before a write the clone sets `{prefix}:pin:{user}`
//!   in Redis for `PIN_WINDOW_MS`, and any clone serving that user's reads
//!   sends them to the primary while the key lives;
//! - `gtid-wait`: the same key holds the write's GTID; the user's reads
//!   wait on the replica until it has applied it (`MASTER_GTID_WAIT`, up
//!   to `GTID_WAIT_MS`), else go to the primary.
//!
//! The pin is stored *before* the write. If Redis cannot store it, the
//! write is refused (503) and nothing is written: a write the user could
//! not read back is a broken promise, and the part's sessions live in
//! Redis anyway, so a clone without Redis cannot serve logged-in users for
//! long. Every read answer says where it was read (`X-Read-From: primary`
//! or `replica-0`).
//!
//! Writes honour an `Idempotency-Key` header: the key is stored in the same
//! transaction as the write, with the answer, so a retried request (a
//! client or a balancer that did not see the first answer) gets the first
//! answer back (`Idempotent-Replayed: true`) and writes nothing.
//!
//! | route | does |
//! |---|---|
//! | `GET /articles/{id}` | article + author + comments + like count |
//! | `GET /articles?author={username}&page=N` | a page of an author's articles |
//! | `GET /users/{username}` | a profile |
//! | `GET /users/{username}/friends?limit=&after=` | friends, a page at a time (`next` is the cursor) |
//! | `GET /feed` | the logged-in user's friends' latest articles |
//! | `POST /articles` `{"title","body"}` | post (logged in); 201 with the id |
//! | `POST /articles/{id}/comments` `{"body"}`, `POST /articles/{id}/likes` | write |
//! | `POST /users/{username}/friends` | befriend |
//!
//! ## Configuration
//!
//! Every flag and variable of part 1's clone, plus:
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `READS` | `--reads` | `pin` (`naive` \| `pin` \| `gtid-wait`) |
//! | `SHAPE` | `--shape` | `denormalized` (`join` \| `denormalized`) |
//! | `PIN_WINDOW_MS` | `--pin-window-ms` | `2000` |
//! | `GTID_WAIT_MS` | `--gtid-wait-ms` | `1000` |
//! | `REPLICA_MAX_LAG_MS` | `--replica-max-lag-ms` | `1000` |
//! | `REPLICA_CHECK_MS` | `--replica-check-ms` | `500` |
//!
//! Ids have one spelling: decimal digits without a sign or leading zeros
//! (`/articles/1`); `/articles/+1` and `/articles/001` get 400, so a cache
//! in front (part 3) never holds one article under three keys.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use part1_clones::app::{AppPart, AppState, Body, current};
use part1_clones::error::ApiError;
use part1_clones::idempotency::IdempotencyKey;
use part1_clones::session::SessionStore;
use serde::{Deserialize, Serialize};
use sqlx::{MySqlConnection, MySqlPool};

use crate::articles::{self, ArticlePage, ArticleSummary, Shape};
use crate::replication::{HealthPolicy, ReadFrom, SplitPool, is_connection_error};

/// The body limit of `POST /articles`: 10,000 characters of any script are
/// up to 40,000 bytes of UTF-8, and up to 120,000 bytes when a client
/// JSON-escapes each as `\uXXXX` surrogate pairs (12 bytes for an emoji),
/// plus the title's 200 characters.
pub const ARTICLE_BODY_LIMIT: usize = 128 * 1024;

/// Friends a page holds unless `limit` says otherwise, and the most it may say.
pub const FRIENDS_PAGE: u32 = 100;
/// The largest `limit` of a friends page.
pub const FRIENDS_PAGE_MAX: u32 = 1000;

/// How a user's reads find their own writes (`--reads`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Reads {
    /// Any live replica, however stale: the anti-pattern.
    Naive,
    /// The user's reads go to the primary for a window after their write.
    Pin,
    /// The user's reads wait on the replica for their write's GTID.
    GtidWait,
}

impl Reads {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reads::Naive => "naive",
            Reads::Pin => "pin",
            Reads::GtidWait => "gtid-wait",
        }
    }
}

/// Part 2's routes and hooks, added to part 1's server.
#[derive(Clone)]
pub struct DataLayer {
    /// Primary and replicas.
    pub db: SplitPool,
    /// Read-your-writes policy.
    pub reads: Reads,
    /// Which read path the pages use: JOIN at read time, or the
    /// denormalized columns.
    pub shape: Shape,
    /// How long a user's reads stay on the primary (or wait for their
    /// GTID) after their write.
    pub pin_window: Duration,
    /// The longest `MASTER_GTID_WAIT` of `--reads gtid-wait`.
    pub gtid_wait: Duration,
    /// Redis key prefix (the clone's).
    pub prefix: String,
    /// Redis, where pins live (shared by every clone).
    pub redis: redis::aio::ConnectionManager,
    /// Told of every write after it commits (part 3's cache invalidates
    /// here); part 2 itself sets none.
    pub after_commit: Option<AfterCommit>,
}

/// A hook called after a write commits, with what it changed.
pub type AfterCommit = Arc<dyn Fn(Committed) -> BoxFuture<'static, ()> + Send + Sync>;

/// What a committed write changed, for whoever keeps copies of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Committed {
    /// An author posted an article.
    Post {
        /// The author's id.
        author: u64,
    },
    /// An article got a comment or a like.
    Article {
        /// The article's id.
        id: u64,
    },
    /// Two users became friends.
    Friends {
        /// One user's id and username.
        a: (u64, String),
        /// The other's.
        b: (u64, String),
    },
}

/// Part 2's server: part 1's flags, plus its own.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "part2-server",
    version,
    about = "Part 2: part 1's clone plus the data layer (read/write split)"
)]
pub struct Part2Config {
    /// Everything part 1's clone takes.
    #[command(flatten)]
    pub server: part1_clones::config::ServerConfig,
    /// How a user's reads find their own writes.
    #[arg(long, env = "READS", value_enum, default_value_t = Reads::Pin)]
    pub reads: Reads,
    /// Pages read by JOIN at read time, or from denormalized columns.
    #[arg(long, env = "SHAPE", value_enum, default_value_t = Shape::Denormalized)]
    pub shape: Shape,
    /// How long a user's reads stay on the primary after their write, in ms.
    #[arg(long, env = "PIN_WINDOW_MS", default_value_t = 2000)]
    pub pin_window_ms: u64,
    /// The longest wait for a write's GTID on the replica (`--reads gtid-wait`), in ms.
    #[arg(long, env = "GTID_WAIT_MS", default_value_t = 1000)]
    pub gtid_wait_ms: u64,
    /// A replica lagging more than this is out of rotation, in ms.
    #[arg(long, env = "REPLICA_MAX_LAG_MS", default_value_t = 1000)]
    pub replica_max_lag_ms: u64,
    /// How often replicas are checked, in ms.
    #[arg(long, env = "REPLICA_CHECK_MS", default_value_t = 500)]
    pub replica_check_ms: u64,
}

/// `part2-server`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): part 1's [`part1_clones::app::serve`] with [`build`].
pub fn main() -> anyhow::Result<()> {
    part1_clones::app::serve(build)
}

/// Connects and binds. The schema and the dataset are `part2-load`'s job
/// (a deploy step), not the server's.
pub async fn build(config: Part2Config) -> anyhow::Result<part1_clones::app::Application> {
    let data = data_layer(&config).await?;
    part1_clones::app::Application::build_with(config.server, data).await
}

/// Part 2's data layer for this configuration, connected (a later part
/// builds its server around it).
pub async fn data_layer(config: &Part2Config) -> anyhow::Result<DataLayer> {
    let acquire = Duration::from_millis(config.server.db_acquire_timeout_ms.max(1));
    let stack = &config.server.stack;
    // The data layer's own pools, with a short acquire timeout: a stopped
    // primary refuses connections, and sqlx retries the connect until this
    // timeout, so it is how long a write takes to answer 503.
    let primary =
        crate::replication::counted_pool(&stack.mariadb_primary_url, 16, acquire, "primary")?;
    let replica =
        crate::replication::counted_pool(&stack.mariadb_replica_url, 16, acquire, "replica")?;
    let redis = part1_clones::app::connect_redis(&stack.redis_url).await?;
    let policy = HealthPolicy {
        max_lag: Duration::from_millis(config.replica_max_lag_ms),
        interval: Duration::from_millis(config.replica_check_ms.max(10)),
    };
    let data = DataLayer {
        db: SplitPool::with_policy(primary, vec![replica], policy),
        reads: config.reads,
        shape: config.shape,
        pin_window: Duration::from_millis(config.pin_window_ms),
        gtid_wait: Duration::from_millis(config.gtid_wait_ms),
        prefix: config.server.key_prefix.clone(),
        redis,
        after_commit: None,
    };
    tracing::info!(
        reads = config.reads.as_str(),
        shape = ?config.shape,
        replica_max_lag_ms = config.replica_max_lag_ms,
        db_acquire_timeout_ms = config.server.db_acquire_timeout_ms,
        "part 2's data layer"
    );
    println!(
        "part2-server: --reads {} --shape {} (replica max lag {} ms, DB acquire timeout {} ms)",
        config.reads.as_str(),
        config.shape.as_str(),
        config.replica_max_lag_ms,
        config.server.db_acquire_timeout_ms
    );
    Ok(data)
}

/// What a user's pin holds in `--reads gtid-wait` before the write's GTID
/// is known: read from the primary.
const PENDING: &str = "pending";

impl DataLayer {
    fn pin_key(&self, user_id: u64) -> String {
        format!("{}:pin:{user_id}", self.prefix)
    }

    /// Before a write: this user's reads go to the primary for the window
    /// (`gtid-wait` refines it to the write's GTID afterwards). Fails if
    /// Redis cannot store it; `naive` stores nothing.
    pub async fn pin(&self, user_id: u64) -> Result<(), ApiError> {
        if self.reads == Reads::Naive {
            return Ok(());
        }
        let value = match self.reads {
            Reads::GtidWait => PENDING,
            _ => "1",
        };
        self.set_pin(user_id, value)
            .await
            .map_err(|e| ApiError::Unavailable {
                what: "the read-your-writes store",
                cause: e.to_string(),
            })
    }

    async fn set_pin(&self, user_id: u64, value: &str) -> redis::RedisResult<()> {
        let mut redis = self.redis.clone();
        redis::cmd("SET")
            .arg(self.pin_key(user_id))
            .arg(value)
            .arg("PX")
            .arg(self.pin_window.as_millis().max(1) as u64)
            .query_async(&mut redis)
            .await
    }

    /// After a committed write the pin is set again, so its window counts
    /// from the commit; in `gtid-wait` it becomes the write's GTID to wait
    /// for. If Redis fails now, the pin set before the write stays: in
    /// `gtid-wait` that sends the user's reads to the primary (slower,
    /// still correct); in `pin` its window is shorter by the write's time.
    async fn repin(&self, user_id: u64, gtid: &str) {
        let value = match self.reads {
            Reads::Naive => return,
            Reads::GtidWait if !gtid.is_empty() => gtid,
            Reads::GtidWait => PENDING,
            Reads::Pin => "1",
        };
        if let Err(e) = self.set_pin(user_id, value).await {
            tracing::warn!(error = %e, "could not renew a write's pin after commit");
        }
    }

    /// Where this user's read goes: `None` for "wherever the split pool
    /// says", `Some(pin)` when a write of theirs is recent.
    async fn pinned(&self, user_id: Option<u64>) -> Option<String> {
        let u = user_id?;
        let mut redis = self.redis.clone();
        let got: Result<Option<String>, _> = redis::cmd("GET")
            .arg(self.pin_key(u))
            .query_async(&mut redis)
            .await;
        // Redis down: we cannot know, so assume a recent write (primary).
        got.unwrap_or_else(|_| Some(PENDING.into()))
    }

    /// Runs a read where the policy says, falling back to the primary if
    /// the replica does not answer.
    pub async fn read<T, F, Fut>(
        &self,
        user_id: Option<u64>,
        query: F,
    ) -> Result<(T, ReadFrom), ApiError>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let db = &self.db;
        let read = match self.reads {
            Reads::Naive => db.read_naive(query).await,
            Reads::Pin => match self.pinned(user_id).await {
                Some(_) => self.read_pinned(query).await,
                None => db.read(query).await,
            },
            Reads::GtidWait => match self.pinned(user_id).await {
                None => db.read(query).await,
                Some(pin) if pin == PENDING || pin == "1" => self.read_pinned(query).await,
                Some(gtid) => self.read_after_gtid(&gtid, query).await,
            },
        };
        read.map_err(db_error)
    }

    /// A pinned read: the primary, or, if the primary does not answer, a
    /// replica. With the primary down no newer write can exist, so the
    /// replica misses at most a write committed just before the crash;
    /// a possibly old answer beats a 503 (and a failed write, which pins
    /// first, would otherwise cut its user off every read).
    async fn read_pinned<T, F, Fut>(&self, query: F) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        match query(self.db.primary().clone()).await {
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "pinned read: the primary does not answer, reading a replica");
                self.db.read(query).await
            }
            other => other.map(|v| (v, ReadFrom::Primary)),
        }
    }

    /// Waits on a replica for `gtid`, then reads there; else the primary.
    async fn read_after_gtid<T, F, Fut>(
        &self,
        gtid: &str,
        query: F,
    ) -> Result<(T, ReadFrom), sqlx::Error>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let (from, replica) = self.db.reader();
        if from == ReadFrom::Primary {
            return self.read_pinned(query).await;
        }
        let waited: Option<i64> = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
            .bind(gtid)
            .bind(self.gtid_wait.as_secs_f64())
            .fetch_one(replica)
            .await
            .unwrap_or(Some(-1));
        // 0: the replica has applied it, so any of its connections sees it.
        if waited == Some(0) {
            match query(replica.clone()).await {
                Ok(v) => return Ok((v, from)),
                Err(e) if is_connection_error(&e) => self.db.mark_down(from, &e),
                Err(e) => return Err(e),
            }
        }
        self.read_pinned(query).await
    }

    /// The pool login reads credentials from: a replica in rotation, or
    /// `None` (the primary).
    pub fn credentials_pool(&self) -> Option<MySqlPool> {
        match self.db.reader() {
            (ReadFrom::Replica(_), pool) => Some(pool.clone()),
            (ReadFrom::Primary, _) => None,
        }
    }
}

impl DataLayer {
    /// Every route but the three pages a later part serves itself (part 3
    /// caches `GET /articles/{id}`, `GET /users/{username}/friends` and
    /// `GET /feed`): the writes, the article list and the profile.
    pub fn routes_but_pages<S: SessionStore>(&self, app: Arc<AppState<S>>) -> Router {
        let ctx = Arc::new(Ctx {
            app,
            data: self.clone(),
        });
        Router::new()
            .route(
                "/articles",
                get(list::<S>)
                    .post(post_article::<S>)
                    .layer(DefaultBodyLimit::max(ARTICLE_BODY_LIMIT)),
            )
            .route("/articles/{id}/comments", post(comment::<S>))
            .route("/articles/{id}/likes", post(like::<S>))
            .route("/users/{username}", get(profile::<S>))
            .route("/users/{username}/friends", post(befriend::<S>))
            .with_state(ctx)
    }

    /// Tells the after-commit hook, if there is one.
    async fn committed(&self, what: Committed) {
        if let Some(hook) = &self.after_commit {
            hook(what).await;
        }
    }

    /// A user's id by username, read where the policy says; 404 if none.
    pub async fn user_id(&self, viewer: Option<u64>, username: &str) -> Result<u64, ApiError> {
        let name = username.to_owned();
        self.read(viewer, move |p| {
            let name = name.clone();
            async move {
                sqlx::query_scalar("SELECT id FROM users WHERE username = ?")
                    .bind(name)
                    .fetch_optional(&p)
                    .await
            }
        })
        .await?
        .0
        .ok_or_else(|| ApiError::NotFound(format!("no user {username}")))
    }

    /// An article's page (`None`: no such article), and where it was read.
    pub async fn article(
        &self,
        viewer: Option<u64>,
        id: u64,
    ) -> Result<(Option<ArticlePage>, ReadFrom), ApiError> {
        let shape = self.shape;
        self.read(viewer, move |p| async move {
            articles::page(&p, shape, id).await
        })
        .await
    }

    /// A page of a user's friends, and where it was read.
    pub async fn friends_page(
        &self,
        viewer: Option<u64>,
        user: u64,
        limit: u32,
        after: u64,
    ) -> Result<(FriendsPage, ReadFrom), ApiError> {
        self.read(viewer, move |p| async move {
            load_friends_page(&p, user, limit, after).await
        })
        .await
    }

    /// A user's feed by the JOIN, and where it was read.
    pub async fn feed(&self, user: u64) -> Result<(Vec<ArticleSummary>, ReadFrom), ApiError> {
        self.read(Some(user), move |p| async move {
            articles::feed_join(&p, user, FEED_LENGTH).await
        })
        .await
    }
}

/// Articles a feed shows.
pub const FEED_LENGTH: u32 = 20;

/// A page of `user`'s friends with ids above `after`.
pub async fn load_friends_page(
    pool: &MySqlPool,
    user: u64,
    limit: u32,
    after: u64,
) -> sqlx::Result<FriendsPage> {
    // Keyset paging: `friend_id > after` walks the primary key, so page
    // 80 costs what page 1 costs, and a friend added meanwhile is neither
    // skipped nor repeated (OFFSET would do both). One row more than the
    // page says whether there is a next page.
    let mut rows: Vec<Profile> = sqlx::query_as(FRIENDS_PAGE_SQL)
        .bind(user)
        .bind(after)
        .bind(limit + 1)
        .fetch_all(pool)
        .await?;
    let next = (rows.len() > limit as usize).then(|| {
        rows.truncate(limit as usize);
        rows.last().map_or(after, |p| p.id)
    });
    Ok(FriendsPage {
        friends: rows,
        next,
    })
}

/// A page of friends (binds: the user, `after`, the limit + 1).
pub const FRIENDS_PAGE_SQL: &str = "SELECT u.id, u.username, u.display_name, u.bio FROM friendships f JOIN users u ON u.id = f.friend_id \
     WHERE f.user_id = ? AND f.friend_id > ? ORDER BY f.friend_id LIMIT ?";

impl AppPart for DataLayer {
    fn routes<S: SessionStore>(&self, app: Arc<AppState<S>>) -> Router {
        let app2 = app.clone();
        let ctx = Arc::new(Ctx {
            app,
            data: self.clone(),
        });
        Router::new()
            .route("/articles/{id}", get(article::<S>))
            .route("/users/{username}/friends", get(friends::<S>))
            .route("/feed", get(feed::<S>))
            .with_state(ctx)
            .merge(self.routes_but_pages(app2))
    }

    /// A signup is a write: pin the new user, so their first reads on any
    /// clone see them. The signup is already committed here, so a pin
    /// Redis cannot store is logged, not refused.
    async fn after_write(&self, user_id: u64) {
        if let Err(e) = self.pin(user_id).await {
            tracing::warn!(error = %e, user_id, "could not pin a new user to the primary");
        }
    }

    /// Login is a read: from a replica in rotation, so it survives the
    /// primary's loss (part 1 falls back to the primary for a user the
    /// replica does not have yet).
    fn user_read_pool(&self) -> impl Future<Output = Option<MySqlPool>> + Send {
        let pool = self.credentials_pool();
        async move { pool }
    }
}

struct Ctx<S> {
    app: Arc<AppState<S>>,
    data: DataLayer,
}

/// Maps a database error: a dead server is 503, a missing row 404.
fn db_error(e: sqlx::Error) -> ApiError {
    match e {
        sqlx::Error::RowNotFound => ApiError::NotFound("no such article".into()),
        e if is_connection_error(&e) => ApiError::Unavailable {
            what: "the database",
            cause: e.to_string(),
        },
        e => ApiError::Internal(e.to_string()),
    }
}

/// MariaDB's error code of a failed statement, if it is one.
fn mysql_code(e: &sqlx::Error) -> Option<u16> {
    match e {
        sqlx::Error::Database(d) => d
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|m| m.number()),
        _ => None,
    }
}

/// ER_LOCK_DEADLOCK: InnoDB rolled this transaction back to break a cycle.
const DEADLOCK: u16 = 1213;
/// ER_DUP_ENTRY.
const DUPLICATE: u16 = 1062;

/// A short digest of a write's content, stored beside its Idempotency-Key:
/// the same key sent again with a different body is another request (409),
/// not a repeat whose new content would be dropped silently.
fn digest(parts: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    hex::encode(&h.finalize()[..8])
}

/// An id as the one canonical spelling: `1`..=`i64::MAX` in decimal digits,
/// no sign, no leading zero.
pub fn parse_id(raw: &str) -> Result<u64, ApiError> {
    let canonical =
        !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) && !raw.starts_with('0');
    canonical
        .then(|| raw.parse::<u64>().ok())
        .flatten()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{:?} is not an id: ids are positive integers written in digits, without sign or leading zeros",
                truncate(raw)
            ))
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// A username from a path, or 400 (names are validated before any lookup).
pub fn username(raw: &str) -> Result<&str, ApiError> {
    common::domain::validate_username(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(raw)
}

/// A text field: 1 to `max` characters once surrounding spaces are
/// trimmed (a title of three spaces is empty), no control characters but
/// newlines. Characters, not bytes: 中 and 😀 count one each.
fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if value.trim().is_empty() || n > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::BadRequest(format!(
            "{field} has 1 to {max} characters, not only spaces, no control characters but newlines"
        )));
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A read's answer, with where it was read (`X-Read-From`).
struct Read<T>(T, ReadFrom);

impl<T: Serialize> IntoResponse for Read<T> {
    fn into_response(self) -> Response {
        let mut res = Json(self.0).into_response();
        if let Ok(v) = HeaderValue::from_str(&self.1.label()) {
            res.headers_mut().insert("x-read-from", v);
        }
        res
    }
}

/// What a write answers: a status and a JSON body (also what an
/// idempotency key stores).
type Answer = (StatusCode, serde_json::Value);

/// A write's work, on the transaction's connection.
type Work = Box<
    dyn for<'c> FnOnce(&'c mut MySqlConnection) -> BoxFuture<'c, Result<Answer, sqlx::Error>>
        + Send,
>;

impl<S: SessionStore> Ctx<S> {
    async fn viewer(&self, headers: &HeaderMap) -> Option<u64> {
        current(&self.app, headers)
            .await
            .ok()
            .map(|(_, s)| s.user_id)
    }

    async fn user_id(&self, viewer: Option<u64>, username: &str) -> Result<u64, ApiError> {
        self.data.user_id(viewer, username).await
    }

    /// A write of `user`: pin first, then one transaction holding the work
    /// and (with an `Idempotency-Key`) the key and the answer. A deadlock
    /// (1213) is retried: InnoDB rolled the whole transaction back, so
    /// running it again is safe.
    async fn write(
        &self,
        headers: &HeaderMap,
        user: u64,
        request: String,
        work: impl Fn() -> Work,
    ) -> Result<Response, ApiError> {
        let key = IdempotencyKey::from_headers(headers)?;
        self.data.pin(user).await?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.write_once(user, key.as_ref(), &request, work()).await {
                Err(e) if mysql_code(&e) == Some(DEADLOCK) && attempt < 5 => {
                    tracing::info!(attempt, "deadlock, retrying the write");
                }
                Err(e) => return Err(db_error(e)),
                Ok(Written::Done((status, body), gtid)) => {
                    // The window counts from the commit, not from the pin
                    // set before it: a write that waited for a connection
                    // or a lock must not leave its user a shorter window.
                    self.data.repin(user, &gtid).await;
                    return Ok((status, Json(body)).into_response());
                }
                Ok(Written::Replay(status, body)) => {
                    let mut res = (status, Json(body)).into_response();
                    res.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return Ok(res);
                }
                Ok(Written::KeyReused) => {
                    return Err(ApiError::Conflict(
                        "this Idempotency-Key was used for another request".into(),
                    ));
                }
            }
        }
    }

    async fn write_once(
        &self,
        user: u64,
        key: Option<&IdempotencyKey>,
        request: &str,
        work: Work,
    ) -> Result<Written, sqlx::Error> {
        use sqlx::Connection;
        let mut conn = self.data.db.primary().acquire().await?;
        let mut tx = conn.begin().await?;
        if let Some(key) = key {
            // Claims the key. A concurrent request with the same key waits
            // here on our row lock until we commit, then gets a duplicate.
            let claimed = sqlx::query(
                "INSERT INTO idempotency_keys (user_id, idem_key, request, status, body, created_at) \
                 VALUES (?, ?, ?, 0, '', ?)",
            )
            .bind(user)
            .bind(key.as_str())
            .bind(request)
            .bind(now())
            .execute(&mut *tx)
            .await;
            match claimed {
                Ok(_) => {}
                Err(e) if mysql_code(&e) == Some(DUPLICATE) => {
                    tx.rollback().await?;
                    let (req, status, body): (String, u16, String) = sqlx::query_as(
                        "SELECT request, status, body FROM idempotency_keys WHERE user_id = ? AND idem_key = ?",
                    )
                    .bind(user)
                    .bind(key.as_str())
                    .fetch_one(&mut *conn)
                    .await?;
                    if req != request {
                        return Ok(Written::KeyReused);
                    }
                    return Ok(Written::Replay(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        let (status, body) = work(&mut tx).await?;
        if let Some(key) = key {
            sqlx::query("UPDATE idempotency_keys SET status = ?, body = ? WHERE user_id = ? AND idem_key = ?")
                .bind(status.as_u16())
                .bind(body.to_string())
                .bind(user)
                .bind(key.as_str())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        // The GTID of the commit, on the connection that made it.
        let gtid: String = if self.data.reads == Reads::GtidWait {
            sqlx::query_scalar("SELECT @@last_gtid")
                .fetch_one(&mut *conn)
                .await
                .unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Written::Done((status, body), gtid))
    }
}

enum Written {
    /// Written now; the answer and the commit's GTID.
    Done(Answer, String),
    /// Written before under this key: the answer stored then.
    Replay(StatusCode, serde_json::Value),
    /// The key was stored for a different request.
    KeyReused,
}

/// `?author=&page=`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// The author's username.
    pub author: String,
    /// Page number from 0.
    #[serde(default)]
    pub page: u32,
}

async fn list<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Read<Vec<ArticleSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.page > 10_000 {
        return Err(ApiError::BadRequest("page is 0 to 10000".into()));
    }
    let viewer = ctx.viewer(&headers).await;
    let author = ctx.user_id(viewer, username(&q.author)?).await?;
    let (page, shape) = (q.page, ctx.data.shape);
    let (v, from) = ctx
        .data
        .read(viewer, move |p| async move {
            articles::by_author(&p, shape, author, page).await
        })
        .await?;
    Ok(Read(v, from))
}

async fn article<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Read<ArticlePage>, ApiError> {
    let id = parse_id(&raw)?;
    let viewer = ctx.viewer(&headers).await;
    let (page, from) = ctx.data.article(viewer, id).await?;
    page.map(|p| Read(p, from))
        .ok_or_else(|| ApiError::NotFound(format!("no article {id}")))
}

/// A profile.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow)]
pub struct Profile {
    /// Id.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Display name.
    pub display_name: String,
    /// Bio.
    pub bio: String,
}

async fn profile<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Read<Profile>, ApiError> {
    let name = username(&raw)?.to_owned();
    let viewer = ctx.viewer(&headers).await;
    let (found, from) = ctx
        .data
        .read(viewer, move |p| {
            let name = name.clone();
            async move {
                sqlx::query_as(
                    "SELECT id, username, display_name, bio FROM users WHERE username = ?",
                )
                .bind(name)
                .fetch_optional(&p)
                .await
            }
        })
        .await?;
    found
        .map(|p| Read(p, from))
        .ok_or_else(|| ApiError::NotFound(format!("no user {raw}")))
}

/// `?limit=&after=`: keyset paging by friend id.
#[derive(Debug, Deserialize)]
pub struct FriendsQuery {
    /// Friends per page, 1 to [`FRIENDS_PAGE_MAX`] (default [`FRIENDS_PAGE`]).
    pub limit: Option<u32>,
    /// The `next` of the previous page: friends with a greater id.
    pub after: Option<u64>,
}

/// A page of friends; `next` is the `after` of the next page, `null` on the last.
#[derive(Debug, Serialize, Deserialize)]
pub struct FriendsPage {
    /// Friends, by id.
    pub friends: Vec<Profile>,
    /// The cursor of the next page, if there is one.
    pub next: Option<u64>,
}

async fn friends<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    query: Result<Query<FriendsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Read<FriendsPage>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(FRIENDS_PAGE);
    if !(1..=FRIENDS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit is 1 to {FRIENDS_PAGE_MAX}"
        )));
    }
    let after = q.after.unwrap_or(0);
    let viewer = ctx.viewer(&headers).await;
    let id = ctx.user_id(viewer, username(&raw)?).await?;
    let (page, from) = ctx.data.friends_page(viewer, id, limit, after).await?;
    Ok(Read(page, from))
}

async fn feed<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
) -> Result<Read<Vec<ArticleSummary>>, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let (v, from) = ctx.data.feed(s.user_id).await?;
    Ok(Read(v, from))
}

/// `{"title","body"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewArticle {
    /// 1 to 200 characters.
    pub title: String,
    /// 1 to 10,000 characters.
    pub body: String,
}

async fn post_article<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Body(a): Body<NewArticle>,
) -> Result<Response, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    text("title", &a.title, 200)?;
    text("body", &a.body, 10_000)?;
    let user = s.user_id;
    let a = Arc::new(a);
    let request = format!("POST /articles {}", digest(&[&a.title, &a.body]));
    let res = ctx
        .write(&headers, user, request, || {
            let a = a.clone();
            Box::new(move |c: &mut MySqlConnection| {
                Box::pin(async move {
                    let id = articles::post(&mut *c, user, &a.title, &a.body, now()).await?;
                    Ok((StatusCode::CREATED, serde_json::json!({ "id": id })))
                })
            })
        })
        .await?;
    if res.status().is_success() {
        ctx.data.committed(Committed::Post { author: user }).await;
    }
    Ok(res)
}

/// `{"body"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewComment {
    /// 1 to 1,000 characters.
    pub body: String,
}

async fn comment<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    Body(c): Body<NewComment>,
) -> Result<Response, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let article = parse_id(&raw)?;
    text("body", &c.body, 1000)?;
    let (user, shape) = (s.user_id, ctx.data.shape);
    let request = format!("POST /articles/{article}/comments {}", digest(&[&c.body]));
    let body = Arc::new(c.body);
    let res = ctx
        .write(&headers, user, request, || {
            let body = body.clone();
            Box::new(move |c: &mut MySqlConnection| {
                Box::pin(async move {
                    let id =
                        articles::add_comment(&mut *c, shape, article, user, &body, now()).await?;
                    Ok((StatusCode::CREATED, serde_json::json!({ "id": id })))
                })
            })
        })
        .await?;
    if res.status().is_success() {
        ctx.data.committed(Committed::Article { id: article }).await;
    }
    Ok(res)
}

async fn like<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let article = parse_id(&raw)?;
    let user = s.user_id;
    let res = ctx
        .write(
            &headers,
            user,
            format!("POST /articles/{article}/likes"),
            || {
                Box::new(move |c: &mut MySqlConnection| {
                    Box::pin(async move {
                        let new = articles::add_like(&mut *c, article, user, now()).await?;
                        let status = if new {
                            StatusCode::CREATED
                        } else {
                            StatusCode::OK
                        };
                        Ok((status, serde_json::json!({ "liked": true, "new": new })))
                    })
                })
            },
        )
        .await?;
    if res.status().is_success() {
        ctx.data.committed(Committed::Article { id: article }).await;
    }
    Ok(res)
}

async fn befriend<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let me = s.user_id;
    let friend = ctx.user_id(Some(me), username(&raw)?).await?;
    if friend == me {
        return Err(ApiError::BadRequest("you cannot befriend yourself".into()));
    }
    let name = Arc::new(raw.clone());
    let res = ctx
        .write(&headers, me, format!("POST /users/{raw}/friends"), || {
            let name = name.clone();
            Box::new(move |c: &mut MySqlConnection| {
                Box::pin(async move {
                    articles::befriend(&mut *c, me, friend, now()).await?;
                    Ok((StatusCode::CREATED, serde_json::json!({ "friend": *name })))
                })
            })
        })
        .await?;
    if res.status().is_success() {
        let (a, b) = ((me, s.username.clone()), (friend, raw.clone()));
        ctx.data.committed(Committed::Friends { a, b }).await;
    }
    Ok(res)
}
