//! The app: routes, state, and the server's life (build, run, stop).
//!
//! The router is generic over the [`SessionStore`], so the anti-pattern and
//! the fix are the same code with one type changed; `Application::build`
//! picks the store from `--sessions` and erases the type.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, FromRequest, Path, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use tokio::net::TcpListener;

use crate::avatar::{self, Avatars};
use crate::config::{ServerConfig, SessionKind};
use crate::error::ApiError;
use crate::session::{
    Expiry, MariadbSessions, MemorySessions, RedisSessions, Session, SessionId, SessionStore,
};
use crate::users::{self, Users};

/// The session cookie's name: generic, so it does not advertise the stack.
pub const COOKIE_NAME: &str = "sid";

/// Items in a cart have 1 to 100 characters.
pub const MAX_ITEM_CHARS: usize = 100;

/// What every request handler shares.
pub struct AppState<S> {
    /// Where sessions live.
    pub sessions: S,
    /// The users table.
    pub users: Users,
    /// Profile pictures.
    pub avatars: Avatars,
    /// This clone's name.
    pub clone_id: String,
    /// The build it runs.
    pub build: String,
    /// Session lifetimes (for the cookie's Max-Age).
    pub expiry: Expiry,
    /// Whether cookies are marked `Secure`.
    pub secure_cookies: bool,
    /// Redis, for what later parts keep there.
    pub redis: redis::aio::ConnectionManager,
}

/// Routes a later part adds to part 1's server: the app grows chapter by
/// chapter, and part 2's server is part 1's plus the data layer.
pub trait Extension: Send + Sync + 'static {
    /// The extra routes, with their state applied, over part 1's state.
    fn routes<S: SessionStore>(&self, state: Arc<AppState<S>>) -> Router;
}

/// Part 1 alone: no extra routes.
impl Extension for () {
    fn routes<S: SessionStore>(&self, _: Arc<AppState<S>>) -> Router {
        Router::new()
    }
}

/// A JSON body whose rejection is a clear 400 in our error format, not
/// axum's plain-text default.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Body(v)),
            Err(e) if e.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Err(ApiError::UnsupportedMediaType(
                    "send JSON with Content-Type: application/json".into(),
                ))
            }
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::PayloadTooLarge("the body is too large".into()))
            }
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `{"username", "password"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
}

/// `{"item"}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CartItem {
    /// What to add.
    pub item: String,
}

/// What `GET /me` answers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Me {
    /// The user's id.
    pub id: u64,
    /// The user's name.
    pub username: String,
    /// The clone that answered.
    pub served_by: String,
    /// The build it runs.
    pub version: String,
}

/// What the cart routes answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Cart {
    /// Items, oldest first.
    pub items: Vec<String>,
    /// The clone that answered.
    pub served_by: String,
}

fn session_cookie(headers: &HeaderMap) -> Option<SessionId> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .and_then(|(_, value)| SessionId::parse(value.trim()))
}

/// The session of a request, or `Unauthorized`. Later parts' routes use it.
pub async fn current<S: SessionStore>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Result<(SessionId, Session), ApiError> {
    let id = session_cookie(headers).ok_or(ApiError::Unauthorized)?;
    let session = state
        .sessions
        .load(&id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok((id, session))
}

fn set_cookie<S>(state: &AppState<S>, id: Option<&SessionId>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let value = match id {
        Some(id) => format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={}{secure}",
            id.as_str(),
            state.expiry.idle.as_secs()
        ),
        None => format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("cookie is ASCII")
}

async fn signup<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    Body(c): Body<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    common::domain::validate_username(&c.username)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    users::validate_password(&c.password)?;
    let id = state.users.create(&c.username, &c.password).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "id": id, "username": c.username })),
    ))
}

async fn login<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Body(c): Body<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    // Malformed names cannot exist: same answer as a wrong password.
    if common::domain::validate_username(&c.username).is_err()
        || c.password.len() > 4 * *users::PASSWORD_CHARS.end()
    {
        return Err(ApiError::BadCredentials);
    }
    let user = state.users.authenticate(&c.username, &c.password).await?;
    // A new id at every login, and the old session gone: no fixation.
    if let Some(old) = session_cookie(&headers) {
        state.sessions.delete(&old).await?;
    }
    let id = state.sessions.create(user.id, &user.username).await?;
    let me = Me {
        id: user.id,
        username: user.username,
        served_by: state.clone_id.clone(),
        version: state.build.clone(),
    };
    Ok(([(SET_COOKIE, set_cookie(&state, Some(&id)))], Json(me)))
}

async fn logout<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    if let Some(id) = session_cookie(&headers) {
        state.sessions.delete(&id).await?;
    }
    Ok((
        StatusCode::NO_CONTENT,
        [(SET_COOKIE, set_cookie(&state, None))],
    ))
}

async fn me<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Json<Me>, ApiError> {
    let (_, s) = current(&state, &headers).await?;
    Ok(Json(Me {
        id: s.user_id,
        username: s.username,
        served_by: state.clone_id.clone(),
        version: state.build.clone(),
    }))
}

async fn add_item<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    Body(c): Body<CartItem>,
) -> Result<impl IntoResponse, ApiError> {
    let (id, _) = current(&state, &headers).await?;
    let n = c.item.chars().count();
    if n == 0 || n > MAX_ITEM_CHARS || c.item.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "an item has 1 to {MAX_ITEM_CHARS} printable characters"
        )));
    }
    let len = state.sessions.add_to_cart(&id, &c.item).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "items": len, "served_by": state.clone_id })),
    ))
}

async fn cart<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<Json<Cart>, ApiError> {
    let (id, _) = current(&state, &headers).await?;
    Ok(Json(Cart {
        items: state.sessions.cart(&id).await?,
        served_by: state.clone_id.clone(),
    }))
}

async fn put_avatar<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&state, &headers).await?;
    let kind = avatar::validate(
        headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        &body,
    )?;
    state.avatars.put(&s.username, kind, &body).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_avatar<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    Path(username): Path<String>,
) -> Result<Response, ApiError> {
    common::domain::validate_username(&username)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let (kind, bytes) = state
        .avatars
        .get(&username)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("{username} has no avatar")))?;
    Ok(([(CONTENT_TYPE, kind)], bytes).into_response())
}

/// Liveness: the process answers. Also says which clone and build, so a
/// rolling restart can be watched.
async fn health<S: SessionStore>(State(state): State<Arc<AppState<S>>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok", "clone": state.clone_id, "version": state.build }))
}

/// Readiness: the session store answers. A clone that cannot reach it is
/// alive but should get no traffic.
async fn ready<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    state.sessions.ping().await?;
    Ok(Json(
        serde_json::json!({ "status": "ready", "sessions": state.sessions.name() }),
    ))
}

/// Stamps every answer with the clone that gave it.
async fn served_by(State(clone): State<HeaderValue>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert("x-served-by", clone);
    res
}

/// The part 1 router over a session store.
pub fn app<S: SessionStore, E: Extension>(
    state: Arc<AppState<S>>,
    max_avatar_bytes: usize,
    capacity: crate::capacity::Capacity,
    extension: &E,
) -> Router {
    let clone = HeaderValue::from_str(&state.clone_id).unwrap_or(HeaderValue::from_static("clone"));
    let work = Router::new()
        .route("/signup", post(signup::<S>))
        .route("/login", post(login::<S>))
        .route("/logout", post(logout::<S>))
        .route("/me", get(me::<S>))
        .route("/cart", get(cart::<S>))
        .route("/cart/items", post(add_item::<S>))
        .route(
            "/me/avatar",
            put(put_avatar::<S>).layer(DefaultBodyLimit::max(max_avatar_bytes)),
        )
        .route("/users/{username}/avatar", get(get_avatar::<S>))
        .route_layer(middleware::from_fn_with_state(
            Arc::new(capacity),
            crate::capacity::limit,
        ));
    Router::new()
        .route("/health", get(health::<S>))
        .route("/ready", get(ready::<S>))
        .merge(work)
        .with_state(state.clone())
        .merge(extension.routes(state))
        .layer(DefaultBodyLimit::max(16 * 1024))
        .layer(middleware::from_fn_with_state(clone, served_by))
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
}

/// Connects to the user database and runs the migrations.
pub async fn connect_database(url: &str) -> anyhow::Result<MySqlPool> {
    use anyhow::Context;
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::testing::redact(url)
            )
        })?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Runs part 1's migrations. Clones start together, and each runs them:
/// a named lock serialises them so two clones never create the same table
/// at once. (Production runs migrations once, as a deploy step before the roll.)
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    use anyhow::Context;
    let mut conn = pool
        .acquire()
        .await
        .context("a connection for the migrations")?;
    let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('part1_migrations', 30)")
        .fetch_one(&mut *conn)
        .await
        .context("taking the migration lock")?;
    anyhow::ensure!(
        locked == Some(1),
        "another clone held the migration lock for 30 s"
    );
    let migrated = sqlx::migrate!("./migrations").run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('part1_migrations')")
        .execute(&mut *conn)
        .await;
    migrated.context("running part 1's migrations")
}

/// Connects to Redis; the manager reconnects by itself if Redis restarts.
pub async fn connect_redis(url: &str) -> anyhow::Result<redis::aio::ConnectionManager> {
    use anyhow::Context;
    let client = redis::Client::open(url).with_context(|| format!("bad REDIS_URL {url}"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2);
    tokio::time::timeout(
        Duration::from_secs(5),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("Redis is not reachable at {url}: timed out; run ./lab up"))?
    .with_context(|| format!("Redis is not reachable at {url}: run ./lab up"))
}

impl Application {
    /// Connects to the stores, runs migrations, binds the port.
    pub async fn build(config: ServerConfig) -> anyhow::Result<Self> {
        Self::build_with(config, ()).await
    }

    /// The same, with a later part's routes added.
    pub async fn build_with<E: Extension>(
        config: ServerConfig,
        extension: E,
    ) -> anyhow::Result<Self> {
        let pool = connect_database(&config.stack.mariadb_primary_url).await?;
        if let Some(scale) = config.load_dataset {
            let spec = common::dataset::DatasetSpec::new(config.dataset_seed, scale);
            let new = Users::new(pool.clone()).load_dataset(&spec).await?;
            tracing::info!(new, users = spec.sizes.users, "dataset users loaded");
        }
        let redis = connect_redis(&config.stack.redis_url).await?;
        let expiry = Expiry {
            idle: Duration::from_secs(config.session_idle_secs),
            absolute: Duration::from_secs(config.session_absolute_secs),
        };
        let capacity = crate::capacity::Capacity::new(
            config.max_concurrency,
            Duration::from_millis(config.service_time_ms),
        );
        fn state<S>(
            sessions: S,
            c: &ServerConfig,
            pool: &MySqlPool,
            redis: &redis::aio::ConnectionManager,
            expiry: Expiry,
        ) -> Arc<AppState<S>> {
            Arc::new(AppState {
                sessions,
                users: Users::new(pool.clone()),
                avatars: Avatars::new(redis.clone(), &c.key_prefix),
                clone_id: c.clone_name(),
                build: c.build.clone(),
                expiry,
                secure_cookies: c.secure_cookies,
                redis: redis.clone(),
            })
        }
        let max = config.max_avatar_bytes;
        let router = match config.sessions {
            SessionKind::Memory => app(
                state(MemorySessions::new(expiry), &config, &pool, &redis, expiry),
                max,
                capacity,
                &extension,
            ),
            SessionKind::Redis => app(
                state(
                    RedisSessions::new(redis.clone(), &config.key_prefix, expiry),
                    &config,
                    &pool,
                    &redis,
                    expiry,
                ),
                max,
                capacity,
                &extension,
            ),
            SessionKind::Mariadb => app(
                state(
                    MariadbSessions::new(pool.clone(), expiry),
                    &config,
                    &pool,
                    &redis,
                    expiry,
                ),
                max,
                capacity,
                &extension,
            ),
        };
        let listener = TcpListener::bind(("127.0.0.1", config.port))
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on 127.0.0.1:{}: {e} (is another clone there? ./lab status)",
                    config.port
                )
            })?;
        let port = listener.local_addr()?.port();
        tracing::info!(port, clone = %config.clone_name(), sessions = config.sessions.as_str(), build = %config.build, "clone ready");
        Ok(Application {
            port,
            listener,
            router,
        })
    }

    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    }

    /// Serves until `stop` resolves (tests stop servers this way).
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(stop)
            .await
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("stopping: finishing the requests in flight");
}
