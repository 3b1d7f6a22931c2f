//! Part 2's server: part 1's, plus the pages the later parts cache.
//!
//! Every read goes through the [`SplitPool`] (a healthy replica, else the
//! primary); every write goes to the primary. Read-your-writes is the
//! "pin to primary" policy, made to work across clones: after a write the
//! clone sets `{prefix}:pin:{user_id}` in Redis for a short window, and any
//! clone serving that user's next reads sends them to the primary while
//! the key lives.
//!
//! | route | does |
//! |---|---|
//! | `GET /articles/{id}` | article + author + comments + like count |
//! | `GET /articles?author={username}&page=N` | a page of an author's articles |
//! | `GET /users/{username}`, `GET /users/{username}/friends` | profile, friends |
//! | `GET /feed` | the logged-in user's friends' latest articles |
//! | `POST /articles` `{"title","body"}` | post (logged in); 201 with the id |
//! | `POST /articles/{id}/comments` `{"body"}`, `POST /articles/{id}/likes` | write |
//! | `POST /users/{username}/friends` | befriend |

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use part1_clones::app::{AppState, Body, Extension, current};
use part1_clones::error::ApiError;
use part1_clones::session::SessionStore;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::articles::{self, ArticlePage, ArticleSummary, Shape};
use crate::replication::{SplitPool, is_connection_error};

/// Part 2's routes, added to part 1's server.
#[derive(Clone)]
pub struct DataLayer {
    /// Primary and replicas.
    pub db: SplitPool,
    /// How long a user's reads stay on the primary after their write.
    pub pin_window: Duration,
    /// Redis key prefix (the clone's).
    pub prefix: String,
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
    /// How long a user's reads stay on the primary after their write, in ms.
    #[arg(long, env = "PIN_WINDOW_MS", default_value_t = 2000)]
    pub pin_window_ms: u64,
}

/// Connects, migrates, loads the dataset if asked (`LOAD_DATASET`), binds.
pub async fn build(mut config: Part2Config) -> anyhow::Result<part1_clones::app::Application> {
    let primary =
        part1_clones::app::connect_database(&config.server.stack.mariadb_primary_url).await?;
    crate::schema::migrate(&primary).await?;
    if let Some(scale) = config.server.load_dataset.take() {
        let spec = common::dataset::DatasetSpec::new(config.server.dataset_seed, scale);
        if let Some(stats) = crate::schema::ensure_loaded(&primary, &spec).await? {
            tracing::info!(rows = stats.rows, rate = stats.rate(), "dataset loaded");
        }
    }
    let replica = crate::replication::lazy_pool(&config.server.stack.mariadb_replica_url, 16)?;
    let data = DataLayer {
        db: SplitPool::new(primary, vec![replica]),
        pin_window: Duration::from_millis(config.pin_window_ms),
        prefix: config.server.key_prefix.clone(),
    };
    part1_clones::app::Application::build_with(config.server, data).await
}

struct Ctx<S> {
    app: Arc<AppState<S>>,
    data: DataLayer,
}

impl Extension for DataLayer {
    fn routes<S: SessionStore>(&self, app: Arc<AppState<S>>) -> Router {
        let ctx = Arc::new(Ctx {
            app,
            data: self.clone(),
        });
        Router::new()
            .route("/articles", get(list::<S>).post(post_article::<S>))
            .route("/articles/{id}", get(article::<S>))
            .route("/articles/{id}/comments", post(comment::<S>))
            .route("/articles/{id}/likes", post(like::<S>))
            .route("/users/{username}", get(profile::<S>))
            .route(
                "/users/{username}/friends",
                get(friends::<S>).post(befriend::<S>),
            )
            .route("/feed", get(feed::<S>))
            .with_state(ctx)
    }
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

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| (1..=i64::MAX as u64).contains(id))
        .ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{:?} is not an id: ids are positive integers",
                truncate(raw)
            ))
        })
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn username(raw: &str) -> Result<&str, ApiError> {
    common::domain::validate_username(raw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    Ok(raw)
}

fn text(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    let n = value.chars().count();
    if n == 0 || n > max || value.chars().any(|c| c.is_control() && c != '\n') {
        return Err(ApiError::BadRequest(format!(
            "{field} has 1 to {max} characters, no control characters but newlines"
        )));
    }
    Ok(())
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl<S: SessionStore> Ctx<S> {
    fn pin_key(&self, user_id: u64) -> String {
        format!("{}:pin:{user_id}", self.data.prefix)
    }

    /// After a write: this user's reads go to the primary for the window.
    async fn pin(&self, user_id: u64) {
        let mut redis = self.app.redis.clone();
        let r: Result<(), _> = redis::cmd("SET")
            .arg(self.pin_key(user_id))
            .arg(1)
            .arg("PX")
            .arg(self.data.pin_window.as_millis() as u64)
            .query_async(&mut redis)
            .await;
        if let Err(e) = r {
            tracing::warn!(error = %e, "could not pin a user to the primary");
        }
    }

    /// The pool for this user's reads: the primary while pinned, else a replica.
    async fn read_pool(&self, user_id: Option<u64>) -> MySqlPool {
        if let Some(u) = user_id {
            let mut redis = self.app.redis.clone();
            let pinned: bool = redis::cmd("EXISTS")
                .arg(self.pin_key(u))
                .query_async(&mut redis)
                .await
                .unwrap_or(true);
            if pinned {
                return self.data.db.primary().clone();
            }
        }
        self.data.db.reader().1.clone()
    }

    /// Runs a read where it belongs, falling back to the primary if the
    /// replica does not answer.
    async fn read<T, F, Fut>(&self, user_id: Option<u64>, query: F) -> Result<T, ApiError>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let pool = self.read_pool(user_id).await;
        match query(pool).await {
            Err(e) if is_connection_error(&e) => self
                .data
                .db
                .read(query)
                .await
                .map(|(v, _)| v)
                .map_err(db_error),
            other => other.map_err(db_error),
        }
    }

    async fn viewer(&self, headers: &HeaderMap) -> Option<u64> {
        current(&self.app, headers)
            .await
            .ok()
            .map(|(_, s)| s.user_id)
    }

    async fn user_id(&self, viewer: Option<u64>, username: &str) -> Result<u64, ApiError> {
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
        .ok_or_else(|| ApiError::NotFound(format!("no user {username}")))
    }
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
) -> Result<Json<Vec<ArticleSummary>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.page > 10_000 {
        return Err(ApiError::BadRequest("page is 0 to 10000".into()));
    }
    let viewer = ctx.viewer(&headers).await;
    let author = ctx.user_id(viewer, username(&q.author)?).await?;
    let page = q.page;
    Ok(Json(
        ctx.read(viewer, move |p| async move {
            articles::by_author(&p, Shape::Denormalized, author, page).await
        })
        .await?,
    ))
}

async fn article<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<ArticlePage>, ApiError> {
    let id = parse_id(&raw)?;
    let viewer = ctx.viewer(&headers).await;
    ctx.read(viewer, move |p| async move {
        articles::page(&p, Shape::Denormalized, id).await
    })
    .await?
    .map(Json)
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
) -> Result<Json<Profile>, ApiError> {
    let name = username(&raw)?.to_owned();
    let viewer = ctx.viewer(&headers).await;
    let found = ctx
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
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no user {raw}")))
}

async fn friends<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Json<Vec<Profile>>, ApiError> {
    let viewer = ctx.viewer(&headers).await;
    let id = ctx.user_id(viewer, username(&raw)?).await?;
    Ok(Json(
        ctx.read(viewer, move |p| async move {
            sqlx::query_as(
                "SELECT u.id, u.username, u.display_name, u.bio FROM friendships f JOIN users u ON u.id = f.friend_id \
                 WHERE f.user_id = ? ORDER BY u.id LIMIT 1000",
            )
            .bind(id)
            .fetch_all(&p)
            .await
        })
        .await?,
    ))
}

async fn feed<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
) -> Result<Json<Vec<ArticleSummary>>, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let user = s.user_id;
    Ok(Json(
        ctx.read(Some(user), move |p| async move {
            articles::feed_join(&p, user, 20).await
        })
        .await?,
    ))
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
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    text("title", &a.title, 200)?;
    text("body", &a.body, 10_000)?;
    let id = articles::post(ctx.data.db.primary(), s.user_id, &a.title, &a.body, now())
        .await
        .map_err(db_error)?;
    ctx.pin(s.user_id).await;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
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
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let article = parse_id(&raw)?;
    text("body", &c.body, 1000)?;
    let id = articles::add_comment(
        ctx.data.db.primary(),
        Shape::Denormalized,
        article,
        s.user_id,
        &c.body,
        now(),
    )
    .await
    .map_err(db_error)?;
    ctx.pin(s.user_id).await;
    Ok((StatusCode::CREATED, Json(serde_json::json!({ "id": id }))))
}

async fn like<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let article = parse_id(&raw)?;
    let new = articles::add_like(ctx.data.db.primary(), article, s.user_id, now())
        .await
        .map_err(db_error)?;
    ctx.pin(s.user_id).await;
    let status = if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(serde_json::json!({ "liked": true, "new": new })),
    ))
}

async fn befriend<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let friend = ctx.user_id(Some(s.user_id), username(&raw)?).await?;
    if friend == s.user_id {
        return Err(ApiError::BadRequest("you cannot befriend yourself".into()));
    }
    // Both directions in one transaction: a friendship is never half there.
    let mut tx = ctx.data.db.primary().begin().await.map_err(db_error)?;
    for (a, b) in [(s.user_id, friend), (friend, s.user_id)] {
        sqlx::query("INSERT IGNORE INTO friendships (user_id, friend_id, since) VALUES (?, ?, ?)")
            .bind(a)
            .bind(b)
            .bind(now())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    ctx.pin(s.user_id).await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "friend": raw })),
    ))
}
