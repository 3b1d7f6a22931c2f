//! The app: routes, state, and the server's life (build, run, stop).
//!
//! The router is generic over the [`SessionStore`], so the anti-pattern and
//! the fix are the same code with one type changed; `Application::build`
//! picks the store from `--sessions` and erases the type.
//!
//! ## How a later part grows the app
//!
//! A part implements [`AppPart`]: its routes, plus two hooks part 1 calls
//! (`after_write` after a signup commits, `user_read_pool` for login's
//! read). Part 2's server is part 1's with `DataLayer` as its part.
//!
//! ## Body limits
//!
//! Every route takes at most [`BODY_LIMIT`] bytes unless it says otherwise;
//! part 1's JSON routes take [`JSON_LIMIT`], the avatar route
//! `MAX_AVATAR_BYTES`. A route that needs more (part 2's articles: 10,000
//! characters of any script, up to 4 bytes each in UTF-8 and 12 as a JSON
//! escape) gives itself its own limit with a layer on that route:
//!
//! ```ignore
//! .route("/articles", post(post_article).layer(DefaultBodyLimit::max(128 * 1024)))
//! ```
//!
//! The limit nearest the handler wins, so this replaces the global one for
//! that route alone. A body over the limit gets `413` with a JSON message.
//! The load balancer refuses (413) anything over the largest route limit
//! at the edge, so a client never uploads megabytes to be refused.
//!
//! ## Connections
//!
//! The server drives hyper itself (rather than `axum::serve`) for one
//! setting: a header-read timeout, so a client that sends its headers one
//! byte at a time (slowloris) is cut after `HEADER_READ_TIMEOUT_MS`
//! instead of holding a connection for ever. Graceful shutdown still
//! finishes the requests in flight.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::BytesRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, MatchedPath, Path, Request, State,
};
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
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
use crate::idempotency::IdempotencyKey;
use crate::session::{
    CartAdd, CartPush, Expiry, MariadbSessions, MemorySessions, RedisSessions, Session, SessionId,
    SessionStore,
};
use crate::throttle::{self, IpBlock, LoginThrottle};
use crate::users::{self, Users};

/// The session cookie's name: generic, so it does not advertise the stack.
pub const COOKIE_NAME: &str = "sid";

/// Items in a cart have 1 to 100 characters.
pub const MAX_ITEM_CHARS: usize = 100;

/// The body limit of every route that does not set its own.
pub const BODY_LIMIT: usize = 16 * 1024;

/// Part 1's JSON routes (credentials, a cart item): small by nature.
pub const JSON_LIMIT: usize = 4 * 1024;

/// At most this many `sid` cookies of one request are looked up. A few
/// would cover one planted cookie beside the real one, but a planter can
/// plant several (and a cookie with a longer `Path` is sent first), so the
/// cap sits near what a browser keeps for one site (about 50), while
/// still bounding the lookups a hostile request can cause. Duplicates are
/// looked up once.
pub const MAX_SID_COOKIES: usize = 32;

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
    /// The avatar route's body limit.
    pub max_avatar_bytes: usize,
    /// Redis, for what later parts keep there.
    pub redis: redis::aio::ConnectionManager,
    /// Failed-login counters, shared by every clone.
    pub throttle: LoginThrottle,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpBlock>,
    /// The cart's cap.
    pub cart_max_items: u64,
    /// The part's hooks, type-erased (see [`AppPart`]).
    pub(crate) hooks: Arc<dyn PartHooks>,
}

/// What a later part adds to part 1's server: the app grows chapter by
/// chapter, and part 2's server is part 1's plus the data layer.
///
/// (Named for what it is, a part of the app; `axum::Extension` is another
/// thing entirely.)
pub trait AppPart: Send + Sync + 'static {
    /// The extra routes, with their state applied, over part 1's state.
    fn routes<S: SessionStore>(&self, state: Arc<AppState<S>>) -> Router;

    /// Called after part 1 commits a write for this user (a signup). Part
    /// 2 pins the user's reads to the primary, so the new user can read
    /// their own write on any clone.
    fn after_write(&self, user_id: u64) -> impl Future<Output = ()> + Send {
        let _ = user_id;
        async {}
    }

    /// The pool login reads credentials from (part 2: a healthy replica);
    /// `None` is the primary. Login falls back to the primary when the
    /// user is not found there or the pool fails.
    fn user_read_pool(&self) -> impl Future<Output = Option<MySqlPool>> + Send {
        async { None }
    }
}

/// Part 1 alone: no extra routes, no hooks.
impl AppPart for () {
    fn routes<S: SessionStore>(&self, _: Arc<AppState<S>>) -> Router {
        Router::new()
    }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`AppPart`]'s hooks as an object, so [`AppState`] needs no second type
/// parameter and later parts' handlers keep their signatures.
pub(crate) trait PartHooks: Send + Sync {
    fn after_write(&self, user_id: u64) -> BoxFuture<'_, ()>;
    fn user_read_pool(&self) -> BoxFuture<'_, Option<MySqlPool>>;
}

impl<P: AppPart> PartHooks for P {
    fn after_write(&self, user_id: u64) -> BoxFuture<'_, ()> {
        Box::pin(AppPart::after_write(self, user_id))
    }
    fn user_read_pool(&self) -> BoxFuture<'_, Option<MySqlPool>> {
        Box::pin(AppPart::user_read_pool(self))
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
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(
                ApiError::PayloadTooLarge("the body is larger than this route accepts".into()),
            ),
            Err(e) => Err(ApiError::BadRequest(e.body_text())),
        }
    }
}

/// `{"username", "password", "display_name"?}`: a signup.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signup {
    /// Login name.
    pub username: String,
    /// Password.
    pub password: String,
    /// The name shown beside the user's writing; the username if absent.
    #[serde(default)]
    pub display_name: Option<String>,
}

/// `{"username", "password"}`: a login.
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

/// Every well-formed `sid` of a request, in order, from every `Cookie`
/// header. A browser sends several when cookies of the same name were set
/// for different paths or domains, and an attacker who can set a cookie
/// for a sibling domain can plant one: taking only the first would let
/// that planted cookie lock the user out, so each is tried in turn.
fn session_cookies(headers: &HeaderMap) -> Vec<SessionId> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(name, _)| *name == COOKIE_NAME)
        .filter_map(|(_, value)| SessionId::parse(value.trim()))
        .fold(Vec::new(), |mut ids, id| {
            if ids.len() < MAX_SID_COOKIES && !ids.contains(&id) {
                ids.push(id);
            }
            ids
        })
}

tokio::task_local! {
    /// The session a request was served with, for [`refresh_cookie`].
    static SERVED_SESSION: RefCell<Option<(SessionId, i64)>>;
}

/// The session of a request, or `Unauthorized`. Later parts' routes use it.
pub async fn current<S: SessionStore>(
    state: &AppState<S>,
    headers: &HeaderMap,
) -> Result<(SessionId, Session), ApiError> {
    let mut brought = false;
    for id in session_cookies(headers) {
        brought = true;
        if let Some(session) = state.sessions.load(&id).await? {
            // Tell the cookie middleware, so the answer re-sends the cookie.
            let _ = SERVED_SESSION.try_with(|seen| {
                *seen.borrow_mut() = Some((id.clone(), session.created_at));
            });
            count_session(state, "found", 1);
            return Ok((id, session));
        }
    }
    if brought {
        // A cookie this clone's store does not know: expired, forged, or
        // (with `--sessions memory`) made by another clone.
        count_session(state, "missing", 1);
    }
    Err(ApiError::Unauthorized)
}

/// `n` [`common::metrics::SESSIONS`] events of this clone's store.
fn count_session<S: SessionStore>(state: &AppState<S>, event: &'static str, n: u64) {
    metrics::counter!(common::metrics::SESSIONS, "store" => state.sessions.name(), "event" => event)
        .increment(n);
}

/// The cookie's lifetime: what is left of the session's life on the
/// server. The idle expiry slides with every request and the absolute one
/// does not, so it is the smaller of the two.
pub fn cookie_max_age(expiry: Expiry, created_at: i64, now: i64) -> u64 {
    let lived = u64::try_from(now - created_at).unwrap_or(0);
    let left = expiry.absolute.as_secs().saturating_sub(lived);
    expiry.idle.as_secs().min(left)
}

fn set_cookie<S>(state: &AppState<S>, id: Option<(&SessionId, u64)>) -> HeaderValue {
    let secure = if state.secure_cookies { "; Secure" } else { "" };
    let value = match id {
        Some((id, max_age)) => format!(
            "{COOKIE_NAME}={}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}",
            id.as_str(),
        ),
        None => format!("{COOKIE_NAME}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}"),
    };
    HeaderValue::from_str(&value).expect("cookie is ASCII")
}

/// Middleware: an answer served with a session re-sends its cookie with
/// the Max-Age the server now gives it, on every such answer. Set once at
/// login, a browser would drop an active user's cookie when the idle
/// timeout passed, though the server kept sliding the session.
async fn refresh_cookie<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    req: Request,
    next: Next,
) -> Response {
    let (seen, mut res) = SERVED_SESSION
        .scope(RefCell::new(None), async move {
            let res = next.run(req).await;
            (SERVED_SESSION.with(|s| s.borrow_mut().take()), res)
        })
        .await;
    if let Some((id, created_at)) = seen
        && !res.headers().contains_key(SET_COOKIE)
        && res.status() != StatusCode::UNAUTHORIZED
    {
        let max_age = cookie_max_age(state.expiry, created_at, crate::session::now());
        res.headers_mut()
            .insert(SET_COOKIE, set_cookie(&state, Some((&id, max_age))));
    }
    res
}

async fn signup<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    Body(c): Body<Signup>,
) -> Result<impl IntoResponse, ApiError> {
    common::domain::validate_username(&c.username)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    users::validate_password(&c.password)?;
    let display_name = users::validate_display_name(c.display_name.as_deref())?;
    let id = state
        .users
        .create(&c.username, &c.password, display_name)
        .await?;
    // Committed: let the part pin this user's next reads (read-your-writes).
    state.hooks.after_write(id).await;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "id": id,
            "username": c.username,
            "display_name": display_name.unwrap_or(&c.username),
        })),
    ))
}

/// The TCP peer of a request (set by the server loop), if known.
pub struct Peer(pub Option<SocketAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0),
        ))
    }
}

async fn login<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    Peer(peer): Peer,
    headers: HeaderMap,
    Body(c): Body<Credentials>,
) -> Result<impl IntoResponse, ApiError> {
    // Malformed names cannot exist: same answer as a wrong password.
    if common::domain::validate_username(&c.username).is_err()
        || c.password.len() > 4 * *users::PASSWORD_CHARS.end()
    {
        return Err(ApiError::BadCredentials);
    }
    // Refused before any hash is computed: guessing costs the clone nothing.
    let ip = throttle::client_ip(peer, &headers, &state.trusted_proxies);
    state.throttle.attempt(&c.username, ip).await?;
    let read_pool = state.hooks.user_read_pool().await;
    let user = match state
        .users
        .authenticate_via(read_pool.as_ref(), &c.username, &c.password)
        .await
    {
        Ok(user) => user,
        // Counted already: a failure stays counted.
        Err(ApiError::BadCredentials) => return Err(ApiError::BadCredentials),
        Err(e) => {
            // The database failed, not the user: give the attempt back.
            let _ = state.throttle.not_a_failure(&c.username, ip, false).await;
            return Err(e);
        }
    };
    state.throttle.not_a_failure(&c.username, ip, true).await?;
    // A new id at every login, and the old sessions gone: no fixation.
    for old in session_cookies(&headers) {
        state.sessions.delete(&old).await?;
    }
    let id = state.sessions.create(user.id, &user.username).await?;
    count_session(&state, "created", 1);
    let me = Me {
        id: user.id,
        username: user.username,
        served_by: state.clone_id.clone(),
        version: state.build.clone(),
    };
    let max_age = cookie_max_age(state.expiry, crate::session::now(), crate::session::now());
    Ok((
        [(SET_COOKIE, set_cookie(&state, Some((&id, max_age))))],
        Json(me),
    ))
}

async fn logout<S: SessionStore>(
    State(state): State<Arc<AppState<S>>>,
    headers: HeaderMap,
) -> Result<impl IntoResponse, ApiError> {
    for id in session_cookies(&headers) {
        state.sessions.delete(&id).await?;
        count_session(&state, "ended", 1);
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
    let (id, session) = current(&state, &headers).await?;
    let n = c.item.chars().count();
    if n == 0 || n > MAX_ITEM_CHARS || c.item.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "an item has 1 to {MAX_ITEM_CHARS} printable characters"
        )));
    }
    let key = IdempotencyKey::from_headers(&headers)?;
    let push = CartPush {
        user_id: session.user_id,
        item: &c.item,
        max_items: state.cart_max_items,
        key: key.as_ref(),
    };
    let (len, replayed) = match state.sessions.add_to_cart(&id, push).await? {
        CartAdd::Added(len) => (len, false),
        CartAdd::Repeated(len) => (len, true),
        CartAdd::Full => {
            return Err(ApiError::Conflict(format!(
                "the cart is full: it holds at most {} items",
                state.cart_max_items
            )));
        }
    };
    // A repeat gets the first answer, marked so a client can tell.
    let replayed = HeaderValue::from_static(if replayed { "true" } else { "false" });
    Ok((
        StatusCode::CREATED,
        [("idempotent-replayed", replayed)],
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
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let (_, s) = current(&state, &headers).await?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge(format!(
            "an avatar is at most {} bytes",
            state.max_avatar_bytes
        )),
        _ => ApiError::BadRequest(e.body_text()),
    })?;
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

/// Stamps every answer with the clone that gave it, and with `nosniff`:
/// a browser must believe the declared content type, never guess one from
/// the bytes (an uploaded "image" must not become a page that runs script).
async fn stamp(State(clone): State<HeaderValue>, req: Request, next: Next) -> Response {
    let mut res = next.run(req).await;
    let headers = res.headers_mut();
    headers.insert("x-served-by", clone);
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    res
}

/// The part 1 router over a session store, with a later part's routes.
pub fn app<S: SessionStore, P: AppPart>(
    state: Arc<AppState<S>>,
    capacity: crate::capacity::Capacity,
    part: &P,
) -> Router {
    let clone = HeaderValue::from_str(&state.clone_id).unwrap_or(HeaderValue::from_static("clone"));
    let json = DefaultBodyLimit::max(JSON_LIMIT);
    let work = Router::new()
        .route("/signup", post(signup::<S>).layer(json))
        .route("/login", post(login::<S>).layer(json))
        .route("/logout", post(logout::<S>))
        .route("/me", get(me::<S>))
        .route("/cart", get(cart::<S>))
        .route("/cart/items", post(add_item::<S>).layer(json))
        .route(
            "/me/avatar",
            put(put_avatar::<S>).layer(DefaultBodyLimit::max(state.max_avatar_bytes)),
        )
        .route("/users/{username}/avatar", get(get_avatar::<S>))
        .route_layer(middleware::from_fn_with_state(
            Arc::new(capacity),
            crate::capacity::limit,
        ));
    common::metrics::install();
    // Every session series exists from the start, at 0: a series born at
    // its first event would start at 1, and Prometheus's rate() would not
    // count that first step (a login and a few requests would show nothing).
    for event in ["created", "found", "missing", "ended"] {
        count_session(&state, event, 0);
    }
    Router::new()
        .route("/health", get(health::<S>))
        .route("/ready", get(ready::<S>))
        .route("/metrics", get(metrics_page))
        .merge(work)
        .with_state(state.clone())
        .merge(part.routes(state.clone()))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn_with_state(state, refresh_cookie::<S>))
        .layer(middleware::from_fn_with_state(clone, stamp))
        .layer(middleware::from_fn(count_requests))
}

/// `GET /metrics`: what this process recorded, in Prometheus's text format
/// (see [`common::metrics`]); Prometheus scrapes it for the live page.
async fn metrics_page() -> impl IntoResponse {
    (
        [(CONTENT_TYPE, common::metrics::CONTENT_TYPE)],
        common::metrics::render(),
    )
}

/// Middleware: counts and times every request by its route *template*
/// (`/users/{username}/avatar`, from axum's [`MatchedPath`]), never the raw
/// path, so the number of series stays bounded whatever clients send; a
/// path no route matches is `unmatched`. `/health` and `/metrics` are the
/// balancer's and Prometheus's polls, not traffic: left out.
async fn count_requests(req: Request, next: Next) -> Response {
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) if matches!(m.as_str(), "/health" | "/metrics") => return next.run(req).await,
        Some(m) => m.as_str().to_owned(),
        None => "unmatched".to_owned(),
    };
    let method: &'static str = match *req.method() {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let started = std::time::Instant::now();
    let res = next.run(req).await;
    let status = res.status().as_u16().to_string();
    metrics::histogram!(common::metrics::HTTP_DURATION, "route" => route.clone())
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(
        common::metrics::HTTP_REQUESTS,
        "route" => route,
        "method" => method,
        "status" => status,
    )
    .increment(1);
    res
}

/// `part1-server`'s whole `main` (the binary only calls it;
/// [`common::entry`] says why): [`serve`] with [`Application::build`].
pub fn main() -> anyhow::Result<()> {
    serve(Application::build)
}

/// Every part's server `main`: `.env`, logging, the flags `C`, then
/// `build` and serve until SIGTERM. Each part calls it from its library
/// (`part4_async::server::main`), so the server is compiled there.
pub fn serve<C, F>(build: fn(C) -> F) -> anyhow::Result<()>
where
    C: clap::Parser,
    F: Future<Output = anyhow::Result<Application>>,
{
    common::entry::run(|| async {
        build(C::parse()).await?.run_until_stopped().await?;
        Ok(())
    })
}

/// A built, bound, not yet running server.
pub struct Application {
    port: u16,
    listener: TcpListener,
    router: Router,
    header_read_timeout: Duration,
}

/// Connects to the user database and runs the migrations.
pub async fn connect_database(url: &str, acquire: Duration) -> anyhow::Result<MySqlPool> {
    use anyhow::Context;
    let pool = MySqlPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(acquire)
        .connect(url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::config::redact(url)
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

    /// The same, with a later part's routes and hooks added.
    pub async fn build_with<P: AppPart>(config: ServerConfig, part: P) -> anyhow::Result<Self> {
        // The dataset is loaded by `part1-load` before clones start, never here.
        let acquire = Duration::from_millis(config.db_acquire_timeout_ms.max(1));
        let pool = connect_database(&config.stack.mariadb_primary_url, acquire).await?;
        let redis = connect_redis(&config.stack.redis_url).await?;
        let expiry = Expiry {
            idle: Duration::from_secs(config.session_idle_secs),
            absolute: Duration::from_secs(config.session_absolute_secs),
        };
        let capacity = crate::capacity::Capacity::new(
            config.max_concurrency,
            Duration::from_millis(config.service_time_ms),
        );
        let part = Arc::new(part);
        let shared = Shared {
            config: &config,
            pool: &pool,
            redis: &redis,
            expiry,
            hooks: part.clone(),
        };
        let router = match config.sessions {
            SessionKind::Memory => app(shared.state(MemorySessions::new(expiry)), capacity, &*part),
            SessionKind::Redis => app(
                shared.state(RedisSessions::new(
                    redis.clone(),
                    &config.key_prefix,
                    expiry,
                )),
                capacity,
                &*part,
            ),
            SessionKind::Mariadb => app(
                shared.state(MariadbSessions::new(pool.clone(), expiry)),
                capacity,
                &*part,
            ),
        };
        let addr = SocketAddr::new(config.bind_addr, config.port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr}: {e} (is another clone there? ./lab status)")
        })?;
        let port = listener.local_addr()?.port();
        tracing::info!(port, clone = %config.clone_name(), sessions = config.sessions.as_str(), build = %config.build, "clone ready");
        Ok(Application {
            port,
            listener,
            router,
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
        })
    }

    /// The port it listens on (useful with port 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves (tests stop servers this way), then
    /// stops accepting, lets idle connections go and finishes the requests
    /// in flight.
    pub async fn run_until(
        self,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioIo, TokioTimer};
        let mut http = hyper::server::conn::http1::Builder::new();
        // The timer is what makes the header-read timeout tick at all.
        http.timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(stop);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    // Out of file descriptors and the like: wait, go on.
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut stop => break,
            };
            let _ = stream.set_nodelay(true);
            let router = self.router.clone();
            let service =
                hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    tower::ServiceExt::oneshot(router.clone(), req)
                });
            let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    // Timeouts and resets by clients: not the server's fault.
                    tracing::debug!(error = %e, %peer, "connection ended");
                }
            });
        }
        drop(self.listener);
        graceful.shutdown().await;
        Ok(())
    }
}

/// What every clone's state shares, whatever its session store.
struct Shared<'a> {
    config: &'a ServerConfig,
    pool: &'a MySqlPool,
    redis: &'a redis::aio::ConnectionManager,
    expiry: Expiry,
    hooks: Arc<dyn PartHooks>,
}

impl Shared<'_> {
    fn state<S>(&self, sessions: S) -> Arc<AppState<S>> {
        let c = self.config;
        let limits = throttle::Limits {
            per_account: c.login_failures_per_account,
            per_ip: c.login_failures_per_ip,
            window: Duration::from_secs(c.login_failure_window_secs),
        };
        Arc::new(AppState {
            sessions,
            users: Users::with_hash_concurrency(self.pool.clone(), c.hash_concurrency),
            avatars: Avatars::new(self.redis.clone(), &c.key_prefix),
            clone_id: c.clone_name(),
            build: c.build.clone(),
            expiry: self.expiry,
            secure_cookies: c.secure_cookies,
            max_avatar_bytes: c.max_avatar_bytes,
            redis: self.redis.clone(),
            throttle: LoginThrottle::new(self.redis.clone(), &c.key_prefix, limits),
            trusted_proxies: c.trusted_proxies.clone(),
            cart_max_items: c.cart_max_items,
            hooks: self.hooks.clone(),
        })
    }
}

async fn shutdown_signal() {
    common::signal::terminated().await;
    tracing::info!("stopping: finishing the requests in flight");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_lives_as_long_as_the_session_has_left() {
        let e = Expiry {
            idle: Duration::from_secs(1800),
            absolute: Duration::from_secs(86_400),
        };
        let t0 = 1_000_000;
        assert_eq!(cookie_max_age(e, t0, t0), 1800, "idle, at login");
        assert_eq!(cookie_max_age(e, t0, t0 + 3600), 1800, "still idle, later");
        assert_eq!(
            cookie_max_age(e, t0, t0 + 86_400 - 60),
            60,
            "a minute to the absolute expiry"
        );
        assert_eq!(cookie_max_age(e, t0, t0 + 90_000), 0, "past it");
        assert_eq!(cookie_max_age(e, t0, t0 - 5), 1800, "a clock behind");
    }

    #[test]
    fn every_sid_is_a_candidate_in_order() {
        let a = SessionId::generate();
        let b = SessionId::generate();
        let mut h = HeaderMap::new();
        h.append(
            COOKIE,
            format!("sid=garbage; other=1; sid={}", a.as_str())
                .parse()
                .unwrap(),
        );
        h.append(COOKIE, format!("sid={}", b.as_str()).parse().unwrap());
        assert_eq!(session_cookies(&h), vec![a.clone(), b]);
        // The same id many times is looked up once; distinct ids up to the cap.
        let mut same = HeaderMap::new();
        let all = vec![format!("sid={}", a.as_str()); 10].join("; ");
        same.append(COOKIE, all.parse().unwrap());
        assert_eq!(session_cookies(&same), vec![a]);
        let mut many = HeaderMap::new();
        let all: Vec<String> = (0..MAX_SID_COOKIES + 5)
            .map(|_| format!("sid={}", SessionId::generate().as_str()))
            .collect();
        many.append(COOKIE, all.join("; ").parse().unwrap());
        assert_eq!(session_cookies(&many).len(), MAX_SID_COOKIES);
    }
}
