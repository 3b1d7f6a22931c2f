//! Part 3's server: part 2's, plus a cache between the app and the database.
//!
//! Part 2's writes, lists and profiles are served as part 2 serves them
//! ([`DataLayer::routes_but_pages`]); the three pages the article names are
//! served here, through the cache, each answer saying what the cache did
//! (`X-Cache: hit|miss|bypass`):
//!
//! | route | object key (`--cache object`) |
//! |---|---|
//! | `GET /articles/{id}` | `article:{id}`, the assembled article (JSON) |
//! | `GET /articles/{id}` with `Accept: text/html` | `page:{id}`, the rendered page |
//! | `GET /users/{username}/friends` (first page) | `friends:{username}` |
//! | `GET /users/{username}/friends?limit=&after=` (any other page) | `friends_page:{username}:{generation}:{after}:{limit}` |
//! | `GET /feed` | `friend_ids:{user}`, `latest:site` or `recent:{author}` per friend, `summary:{id}` (see [`feed`]) |
//! | `GET /users/{username}/mutual-friends?with={other}` | Redis sets `friendset:{id}`, `SINTER` (see [`graph`]) |
//!
//! Writes invalidate after they commit (part 2's after-commit hook):
//! a comment or a like deletes its article's object, page and summary; a
//! post deletes its author's recent-articles object and the site's window
//! (two deletes, whatever the author's friend count); befriending deletes
//! both users' friend ids, first pages and page generations, and their
//! friend sets in Redis. See [`cache`] for the rules of a read.
//!
//! `GET /cache/stats` answers this clone's cache counters (`loads`: the
//! database assemblies its misses ran; `skipped_stores`), for the demo.
//!
//! `--cache-backend file` is the anti-pattern of the article (a file cache
//! on each clone's own disk, [`crate::backend::FileCache`]): every route
//! works, and a write through one clone leaves the others' copies stale.
//!
//! ## Configuration
//!
//! Every flag and variable of part 2's server, plus:
//!
//! | variable | flag | default |
//! |---|---|---|
//! | `CACHE` | `--cache` | `object` (`none` \| `query` \| `object`) |
//! | `CACHE_BACKEND` | `--cache-backend` | `memcached` (`memcached` \| `redis` \| `file`, the anti-pattern) |
//! | `CACHE_FILE_DIR` | `--cache-file-dir` | `part3-file-cache/{clone id}` in the system's temporary directory (`file` only) |
//! | `CACHE_FILE_MAX_BYTES` | `--cache-file-max-bytes` | `268435456` (`file` only) |
//! | `CACHE_TTL_SECS` | `--cache-ttl-secs` | `300` |
//! | `CACHE_JITTER` | `--cache-jitter` | `0.1` (each TTL is cut by up to 10%, at random) |
//! | `STAMPEDE` | `--stampede` | `lease` (`none` \| `single-flight` \| `lease` \| `xfetch`) |
//! | `QUERY_FLUSH_ON_WRITE` | `--query-flush-on-write` | `false` (with `--cache query`) |
//! | `CACHE_TIMEOUT_MS` | `--cache-timeout-ms` | `50` |
//! | `CACHE_MAX_VALUE_BYTES` | `--cache-max-value-bytes` | `524288` |
//!
//! and `MEMCACHED_URL` / `REDIS_URL` from the stack's configuration.

pub mod cache;
pub mod feed;
pub mod graph;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, VARY};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::future::BoxFuture;
use part1_clones::app::{AppPart, AppState, Application, current};
use part1_clones::error::ApiError;
use part1_clones::session::SessionStore;
use part2_database::articles::{self, ArticlePage, COMMENTS_SHOWN};
use part2_database::replication::is_connection_error;
use part2_database::server::{
    Committed, DataLayer, FEED_LENGTH, FRIENDS_PAGE, FRIENDS_PAGE_MAX, FRIENDS_PAGE_SQL,
    FriendsQuery, Part2Config, load_friends_page, parse_id, username,
};
use sqlx::MySqlPool;

use crate::backend::{CacheBackend, FileCache, Memcached, RedisCache};
use crate::pattern::{CachePattern, ObjectCache, ObjectRef, QueryCache, Read};
use crate::stampede::{Outcome, ReadThrough, Stampede};
use cache::Cache;

/// Which cache pattern (`--cache`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CacheMode {
    /// No cache: part 2's reads (the baseline): every cached route reads
    /// where part 2's read policy sends it (`READS`: a replica unless the
    /// viewer is pinned), never forced onto the primary.
    None,
    /// Cached queries, keyed by the hash of the SQL and its parameters:
    /// the anti-pattern (writes cannot find what to invalidate).
    Query,
    /// Cached objects, deleted by the writes that change them: the fix.
    Object,
}

/// Where the cache lives (`--cache-backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// Memcached (`MEMCACHED_URL`).
    Memcached,
    /// Redis (`REDIS_URL`).
    Redis,
    /// Files on each clone's own disk (`CACHE_FILE_DIR`): the anti-pattern.
    /// A write through one clone deletes only that clone's copy.
    File,
}

/// `--cache-jitter`: a finite fraction from 0 to 0.9.
fn jitter(raw: &str) -> Result<f64, String> {
    match raw.trim().parse::<f64>() {
        Ok(j) if (0.0..=0.9).contains(&j) => Ok(j),
        _ => Err(format!(
            "CACHE_JITTER / --cache-jitter takes a fraction from 0 to 0.9 (0.1 cuts each TTL by up to 10 %), not {raw:?}"
        )),
    }
}

impl CacheMode {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::None => "none",
            CacheMode::Query => "query",
            CacheMode::Object => "object",
        }
    }
}

impl BackendKind {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Memcached => "memcached",
            BackendKind::Redis => "redis",
            BackendKind::File => "file",
        }
    }
}

/// Part 3's server: part 2's flags, plus the cache's.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "part3-server",
    version,
    about = "Part 3: part 2's server plus a cache between the app and the database"
)]
pub struct Part3Config {
    /// Everything part 2's server takes.
    #[command(flatten)]
    pub part2: Part2Config,
    /// The cache pattern.
    #[arg(long, env = "CACHE", value_enum, default_value_t = CacheMode::Object)]
    pub cache: CacheMode,
    /// Where the cache lives.
    #[arg(long, env = "CACHE_BACKEND", value_enum, default_value_t = BackendKind::Memcached)]
    pub cache_backend: BackendKind,
    /// How long a cached value lives, in seconds (1 to 2,592,000: memcached
    /// reads a TTL over 30 days as a Unix time).
    #[arg(long, env = "CACHE_TTL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=2_592_000))]
    pub cache_ttl_secs: u64,
    /// Each TTL is cut by up to this fraction, at random (0 to 0.9), so
    /// values stored together do not all expire together.
    #[arg(long, env = "CACHE_JITTER", default_value_t = 0.1, value_parser = jitter)]
    pub cache_jitter: f64,
    /// Stampede protection: what many readers of one missing object do.
    #[arg(long, env = "STAMPEDE", value_enum, default_value_t = Stampede::Lease)]
    pub stampede: Stampede,
    /// Under `--cache query`, make every cached query unreachable on every
    /// write (correct, and the hit ratio collapses under writes).
    #[arg(long, env = "QUERY_FLUSH_ON_WRITE", default_value_t = false)]
    pub query_flush_on_write: bool,
    /// The longest a cache call may take before the read bypasses the cache, in ms.
    #[arg(long, env = "CACHE_TIMEOUT_MS", default_value_t = 50)]
    pub cache_timeout_ms: u64,
    /// Larger values are not cached (the request is still served).
    #[arg(long, env = "CACHE_MAX_VALUE_BYTES", default_value_t = 512 * 1024)]
    pub cache_max_value_bytes: usize,
    /// With `--cache-backend file`: this clone's cache directory (default:
    /// `part3-file-cache/{clone id}` under the system's temporary directory).
    #[arg(long, env = "CACHE_FILE_DIR")]
    pub cache_file_dir: Option<std::path::PathBuf>,
    /// With `--cache-backend file`: the most the directory holds, in bytes.
    #[arg(long, env = "CACHE_FILE_MAX_BYTES", default_value_t = crate::backend::DEFAULT_MAX_DIR_BYTES)]
    pub cache_file_max_bytes: u64,
}

impl Part3Config {
    /// The file cache's directory: `CACHE_FILE_DIR`, else one per clone id
    /// under the system's temporary directory.
    pub fn file_dir(&self) -> std::path::PathBuf {
        self.cache_file_dir.clone().unwrap_or_else(|| {
            let id: String = self
                .part2
                .server
                .clone_name()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            std::env::temp_dir().join("part3-file-cache").join(id)
        })
    }
}

/// `part3-server`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): part 1's [`part1_clones::app::serve`] with [`build`].
pub fn main() -> anyhow::Result<()> {
    part1_clones::app::serve(build)
}

/// Connects and binds: part 2's data layer, the cache, and the hook that
/// tells the cache about committed writes.
pub async fn build(config: Part3Config) -> anyhow::Result<Application> {
    let layer = cache_layer(&config).await?;
    Application::build_with(config.part2.server, layer).await
}

/// Part 2's data layer with the cache in front, its invalidation hooked
/// after every commit: what [`build`] serves, for a later part to build on
/// (part 4's server is this plus jobs). Prints the cache's settings.
pub async fn cache_layer(config: &Part3Config) -> anyhow::Result<CacheLayer> {
    let mut data = part2_database::server::data_layer(&config.part2).await?;
    let mut cache = connect_cache(config).await?;
    if config.cache == CacheMode::Object {
        // The friend graph lives in Redis whatever the backend (sets).
        cache.sets = Some(graph::FriendSets::new(
            data.redis.clone(),
            &format!("{}:", config.part2.server.key_prefix),
            Duration::from_millis(config.cache_timeout_ms.max(1)),
            Duration::from_secs(config.cache_ttl_secs.max(1)),
        ));
    }
    let cache = Arc::new(cache);
    let c = cache.clone();
    data.after_commit = Some(Arc::new(move |what: Committed| -> BoxFuture<'static, ()> {
        let c = c.clone();
        // In a task of its own: if the client goes away after the commit,
        // hyper drops the handler's future, and an invalidation awaited
        // inline would be cut short (old objects until their TTL). The
        // handler still waits for it, so read-your-writes holds.
        Box::pin(async move {
            let _ = tokio::spawn(async move { c.invalidate(what).await }).await;
        })
    }));
    let stack = &config.part2.server.stack;
    let file_dir = config.file_dir().display().to_string();
    let url = match config.cache_backend {
        BackendKind::Memcached => common::config::redact(&stack.memcached_url),
        BackendKind::Redis => common::config::redact(&stack.redis_url),
        BackendKind::File => format!("{file_dir}, this clone's own disk"),
    };
    println!(
        "part3-server: --cache {}{} --cache-backend {} ({}) --cache-ttl-secs {} --cache-jitter {} --stampede {} (cache timeout {} ms, values up to {} bytes)",
        config.cache.as_str(),
        if config.query_flush_on_write {
            " --query-flush-on-write"
        } else {
            ""
        },
        config.cache_backend.as_str(),
        url,
        config.cache_ttl_secs,
        config.cache_jitter,
        config.stampede.as_str(),
        config.cache_timeout_ms,
        config.cache_max_value_bytes,
    );
    Ok(CacheLayer { data, cache })
}

/// The cache of this configuration. The backends connect lazily: a cache
/// that is down at start is a bypass per request, not a clone that will
/// not start.
pub async fn connect_cache(config: &Part3Config) -> anyhow::Result<Cache> {
    use anyhow::Context;
    let stack = &config.part2.server.stack;
    let timeout = Duration::from_millis(config.cache_timeout_ms.max(1));
    let prefix = format!("{}:", config.part2.server.key_prefix);
    let max = config.cache_max_value_bytes;
    let backend: Option<Arc<dyn CacheBackend>> = match (config.cache, config.cache_backend) {
        (CacheMode::None, _) => None,
        (_, BackendKind::Memcached) => Some(Arc::new(
            Memcached::connect(&stack.memcached_url, &prefix, timeout)
                .await
                .context("MEMCACHED_URL")?
                .with_max_value_bytes(max),
        )),
        (_, BackendKind::Redis) => Some(Arc::new(
            RedisCache::connect(&stack.redis_url, &prefix, timeout)
                .await
                .context("REDIS_URL for the cache")?
                .with_max_value_bytes(max),
        )),
        (_, BackendKind::File) => Some(Arc::new(
            FileCache::open(&config.file_dir(), &prefix, timeout)
                .await
                .context("CACHE_FILE_DIR")?
                .with_max_value_bytes(max)
                .with_max_dir_bytes(config.cache_file_max_bytes),
        )),
    };
    let pattern: Box<dyn CachePattern> = match config.cache {
        CacheMode::Query => Box::new(QueryCache {
            flush_all_on_write: config.query_flush_on_write,
        }),
        CacheMode::None | CacheMode::Object => Box::new(ObjectCache),
    };
    Ok(Cache {
        mode: config.cache,
        read_through: backend
            .map(|b| ReadThrough::new(b, config.stampede).with_jitter(config.cache_jitter)),
        pattern,
        ttl: Duration::from_secs(config.cache_ttl_secs.max(1)),
        sets: None,
    })
}

/// Part 3's part of the app: part 2's data layer plus the cache.
#[derive(Clone)]
pub struct CacheLayer {
    /// Part 2's data layer, its after-commit hook set to the cache's
    /// invalidation (which the pattern decides: the object pattern
    /// deletes, the query pattern cannot).
    pub data: DataLayer,
    /// The cache.
    pub cache: Arc<Cache>,
}

impl CacheLayer {
    /// Fills article `id`'s cached object (`article:{id}`) now, as a read
    /// that misses would, for part 4's workers: after a write's
    /// invalidation deleted it, the worker reads it back through the same
    /// read-through (from the primary, under the stampede protection and
    /// the stale-set guard: a write that lands during the load keeps this
    /// fill out of the cache), so the next reader hits. `Hit`: it was
    /// already there; `Bypass`: no object cache (`--cache none|query`) or
    /// the cache did not answer. `404` if the article does not exist.
    pub async fn fill_article(&self, id: u64) -> Result<Outcome, ApiError> {
        if self.cache.mode != CacheMode::Object {
            return Ok(Outcome::Bypass);
        }
        let (shape, primary) = (self.data.shape, self.data.db.primary().clone());
        let (_, x) = self
            .cache
            .bytes(Some(cache::article_key(id)), || async move {
                let page = articles::page(&primary, shape, id)
                    .await
                    .map_err(|e| ApiError::Internal(e.to_string()))?
                    .ok_or_else(|| ApiError::NotFound(format!("no article {id}")))?;
                Ok((to_json(&page)?, true))
            })
            .await?;
        Ok(x)
    }
}

impl AppPart for CacheLayer {
    fn routes<S: SessionStore>(&self, app: Arc<AppState<S>>) -> Router {
        let ctx = Arc::new(Ctx {
            app: app.clone(),
            data: self.data.clone(),
            cache: self.cache.clone(),
        });
        Router::new()
            .route("/articles/{id}", get(article::<S>))
            .route("/users/{username}/friends", get(friends::<S>))
            .route("/users/{username}/mutual-friends", get(mutual::<S>))
            .route("/feed", get(feed::<S>))
            .route("/cache/stats", get(stats::<S>))
            .with_state(ctx)
            .merge(self.data.routes_but_pages(app))
    }

    fn after_write(&self, user_id: u64) -> impl Future<Output = ()> + Send {
        AppPart::after_write(&self.data, user_id)
    }

    fn user_read_pool(&self) -> impl Future<Output = Option<MySqlPool>> + Send {
        AppPart::user_read_pool(&self.data)
    }
}

/// What the cached routes share.
pub(crate) struct Ctx<S> {
    app: Arc<AppState<S>>,
    data: DataLayer,
    cache: Arc<Cache>,
}

impl<S: SessionStore> Ctx<S> {
    async fn viewer(&self, headers: &HeaderMap) -> Option<u64> {
        current(&self.app, headers)
            .await
            .ok()
            .map(|(_, s)| s.user_id)
    }

    /// Runs a query for a load. Under `--cache none` nothing is stored, so
    /// it reads exactly as part 2 reads ([`DataLayer::read`]: a replica,
    /// or the primary for a pinned viewer) and answers `false`. Otherwise
    /// on the primary, so what is stored is not older than the last
    /// invalidation (see [`cache`]); `true`, it may be stored. If the
    /// primary does not answer: where part 2's policy says, and `false`,
    /// it must not be stored.
    async fn query<T, F, Fut>(&self, viewer: Option<u64>, query: F) -> Result<(T, bool), ApiError>
    where
        F: Fn(MySqlPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        if self.cache.mode == CacheMode::None {
            let (v, _) = self.data.read(viewer, query).await?;
            return Ok((v, false));
        }
        match query(self.data.db.primary().clone()).await {
            Ok(v) => return Ok((v, true)),
            Err(e) if is_connection_error(&e) => {
                tracing::debug!(error = %e, "a load could not read the primary: reading as part 2 does, not storing");
            }
            Err(e) => return Err(ApiError::Internal(e.to_string())),
        }
        let (v, _) = self.data.read(viewer, query).await?;
        Ok((v, false))
    }

    /// The article as JSON bytes, through the cache of this `--cache`.
    async fn article_json(
        &self,
        viewer: Option<u64>,
        id: u64,
    ) -> Result<(Vec<u8>, Outcome), ApiError> {
        let shape = self.data.shape;
        let summary = format!("{} WHERE a.id = ?", articles::summary_sql(shape));
        let sql = [summary.as_str(), articles::BODY_SQL, articles::COMMENTS_SQL].join(";\n");
        let (id_s, shown) = (id.to_string(), COMMENTS_SHOWN.to_string());
        let read = Read {
            object: ObjectRef::new(cache::ARTICLE, &id_s),
            sql: &sql,
            params: &[&id_s, &shown],
        };
        let key = self.cache.key(&read).await;
        self.cache
            .bytes(key, || async move {
                let (page, ok) = self
                    .query(viewer, move |p| async move {
                        articles::page(&p, shape, id).await
                    })
                    .await?;
                let page = page.ok_or_else(|| ApiError::NotFound(format!("no article {id}")))?;
                Ok((to_json(&page)?, ok))
            })
            .await
    }

    /// The rendered page. Under `object` it is cached whole (`page:{id}`),
    /// built from the cached article on a miss (and kept only if that
    /// article is still cached as it was once the page is stored: a write
    /// may have deleted it meanwhile); otherwise it is rendered from the
    /// article each time.
    async fn article_html(
        &self,
        viewer: Option<u64>,
        id: u64,
    ) -> Result<(Vec<u8>, Outcome), ApiError> {
        let render = |json: &[u8]| -> Result<Vec<u8>, ApiError> {
            let page: ArticlePage =
                serde_json::from_slice(json).map_err(|e| ApiError::Internal(e.to_string()))?;
            Ok(crate::render::article_page(&page).into_bytes())
        };
        if self.cache.mode != CacheMode::Object {
            let (json, x) = self.article_json(viewer, id).await?;
            return Ok((render(&json)?, x));
        }
        // The article the page was rendered from, when this read filled it.
        let source = std::sync::Mutex::new(None::<Vec<u8>>);
        let page = cache::page_key(id);
        let (html, x) = self
            .cache
            .bytes(Some(page.clone()), || async {
                let (json, x) = self.article_json(viewer, id).await?;
                let html = render(&json)?;
                *source.lock().unwrap_or_else(|p| p.into_inner()) = Some(json);
                Ok((html, x != Outcome::Bypass))
            })
            .await?;
        // A page is derived from the *cached* article: a comment's delete
        // may have removed that article while this fill ran, past what
        // the write marker sees (see `keep_if_source_unchanged`). Keep
        // the page only if the article is still the one it shows.
        let used = source.into_inner().unwrap_or_else(|p| p.into_inner());
        if let (Outcome::Miss, Some(json), Some(rt)) = (x, used, &self.cache.read_through) {
            rt.keep_if_source_unchanged(&page, &cache::article_key(id), &json)
                .await;
        }
        Ok((html, x))
    }

    /// A page of friends as JSON bytes. Under `object` the first page at
    /// the default size is `friends:{username}`; every other page is
    /// `friends_page:{username}:{generation}:{after}:{limit}`, where the
    /// generation is a token in the cache (`friends_gen:{username}`) that
    /// a befriend deletes: one delete makes all of a user's later pages
    /// unreachable, however many were cached.
    async fn friends_json(
        &self,
        viewer: Option<u64>,
        name: &str,
        limit: u32,
        after: u64,
    ) -> Result<(Vec<u8>, Outcome), ApiError> {
        let sql = [USER_ID_SQL, FRIENDS_PAGE_SQL].join(";\n");
        let (after_s, limit_s) = (after.to_string(), (limit + 1).to_string());
        let read = Read {
            object: ObjectRef::new(cache::FRIENDS, name),
            sql: &sql,
            params: &[name, &after_s, &limit_s],
        };
        let first = after == 0 && limit == FRIENDS_PAGE;
        let key = match self.cache.mode {
            CacheMode::Object if !first => self
                .friends_generation(name)
                .await
                .map(|g| cache::friends_page_key(name, &g, after, limit)),
            _ => self.cache.key(&read).await,
        };
        let name = name.to_owned();
        self.cache
            .bytes(key, || async move {
                let (id, ok1) = self
                    .query(viewer, |p| {
                        let name = name.clone();
                        async move {
                            sqlx::query_scalar::<_, u64>(USER_ID_SQL)
                                .bind(name)
                                .fetch_optional(&p)
                                .await
                        }
                    })
                    .await?;
                let id = id.ok_or_else(|| ApiError::NotFound(format!("no user {name}")))?;
                let (page, ok2) = self
                    .query(viewer, move |p| async move {
                        load_friends_page(&p, id, limit, after).await
                    })
                    .await?;
                Ok((to_json(&page)?, ok1 && ok2))
            })
            .await
    }

    /// The current generation of `name`'s later friends pages: the token
    /// in `friends_gen:{name}`, or a new random one if there is none (never
    /// an old one again, so pages of a deleted generation stay
    /// unreachable). `None` if the cache cannot say: the page bypasses.
    async fn friends_generation(&self, name: &str) -> Option<String> {
        let backend = self.cache.read_through.as_ref()?.backend();
        let key = cache::friends_gen_key(name);
        for _ in 0..2 {
            match backend.get(&key).await {
                Ok(Some(token)) => return String::from_utf8(token).ok(),
                Ok(None) => {}
                Err(_) => return None,
            }
            let token = format!("{:016x}", rand::random::<u64>());
            match backend.add(&key, token.as_bytes(), GENERATION_TTL).await {
                Ok(true) => return Some(token),
                Ok(false) => continue, // another reader started one: read it
                Err(_) => return None,
            }
        }
        None
    }

    /// The mutual friends of two users: SQL (`none`), the SQL's result
    /// cached by its hash (`query`), or a Redis set intersection
    /// (`object`, see [`graph`]).
    async fn mutual_json(
        &self,
        viewer: Option<u64>,
        (user, a): (&str, u64),
        (with, b): (&str, u64),
    ) -> Result<(Vec<u8>, Outcome), ApiError> {
        let answer = |ids: Vec<u64>| {
            to_json(&graph::Mutual {
                user: user.to_owned(),
                with: with.to_owned(),
                mutual: ids,
            })
        };
        let by_sql = |pool: MySqlPool| async move {
            sqlx::query_scalar::<_, u64>(graph::MUTUAL_SQL)
                .bind(b)
                .bind(a)
                .fetch_all(&pool)
                .await
        };
        match (self.cache.mode, &self.cache.sets) {
            (CacheMode::Object, Some(sets)) => {
                let load = |u: u64| async move {
                    self.query(
                        viewer,
                        move |p| async move { articles::friends(&p, u).await },
                    )
                    .await
                };
                match sets.mutual(a, b, load).await {
                    Ok((ids, x)) => return Ok((answer(ids)?, x)),
                    Err(graph::Unanswered::Failed(e)) => return Err(e),
                    Err(why) => {
                        tracing::debug!(?why, "mutual friends: the sets could not answer, SQL");
                    }
                }
                let (ids, _) = self.data.read(viewer, by_sql).await?;
                Ok((answer(ids)?, Outcome::Bypass))
            }
            (CacheMode::Query, _) => {
                let (a_s, b_s) = (a.to_string(), b.to_string());
                let read = Read {
                    object: ObjectRef::new("mutual", &a_s),
                    sql: graph::MUTUAL_SQL,
                    params: &[&b_s, &a_s],
                };
                let key = self.cache.key(&read).await;
                self.cache
                    .bytes(key, || async move {
                        let (ids, ok) = self.query(viewer, by_sql).await?;
                        Ok((answer(ids)?, ok))
                    })
                    .await
            }
            _ => {
                let (ids, _) = self.data.read(viewer, by_sql).await?;
                Ok((answer(ids)?, Outcome::Bypass))
            }
        }
    }

    /// The feed as JSON bytes: the JOIN (`none`), the JOIN's result cached
    /// by its hash (`query`), or assembled from objects (`object`, see
    /// [`feed`]).
    async fn feed_json(&self, user: u64) -> Result<(Vec<u8>, Outcome), ApiError> {
        match self.cache.mode {
            CacheMode::None => {
                let (v, _) = self.data.feed(user).await?;
                Ok((to_json(&v)?, Outcome::Bypass))
            }
            CacheMode::Query => {
                let (user_s, length) = (user.to_string(), FEED_LENGTH.to_string());
                let read = Read {
                    object: ObjectRef::new("feed", &user_s),
                    sql: articles::FEED_SQL,
                    params: &[&user_s, &length],
                };
                let key = self.cache.key(&read).await;
                self.cache
                    .bytes(key, || async move {
                        let (v, ok) = self
                            .query(Some(user), move |p| async move {
                                articles::feed_join(&p, user, FEED_LENGTH).await
                            })
                            .await?;
                        Ok((to_json(&v)?, ok))
                    })
                    .await
            }
            CacheMode::Object => {
                let (v, x) = feed::assemble(self, user).await?;
                Ok((to_json(&v)?, x))
            }
        }
    }
}

/// The user-id lookup of the friends page.
const USER_ID_SQL: &str = "SELECT id FROM users WHERE username = ?";

/// How long a generation of later friends pages lives: longer than any
/// page (if it expires, the pages of that generation become unreachable,
/// which is still correct).
const GENERATION_TTL: Duration = Duration::from_secs(24 * 3600);

fn to_json<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Whether the client asked for the HTML page (a browser's `Accept`
/// lists `text/html` first; `curl` sends `*/*` and gets JSON).
/// Simplified: any `Accept` naming `text/html` gets HTML, whatever its
/// `q` (`application/json, text/html;q=0.1` too); real content
/// negotiation would weigh the `q` values.
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// A body with its type and `X-Cache`.
fn answer(body: Vec<u8>, content_type: &'static str, x: Outcome) -> Response {
    let mut res = (
        [(CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response();
    res.headers_mut()
        .insert("x-cache", HeaderValue::from_static(x.as_str()));
    res
}

async fn article<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&raw)?;
    let viewer = ctx.viewer(&headers).await;
    let mut res = if wants_html(&headers) {
        let (html, x) = ctx.article_html(viewer, id).await?;
        answer(html, "text/html; charset=utf-8", x)
    } else {
        let (json, x) = ctx.article_json(viewer, id).await?;
        answer(json, "application/json", x)
    };
    // One URL, two representations picked by `Accept`: an HTTP cache in
    // front (a browser, nginx's proxy_cache, a CDN) must key on it too,
    // or it serves the page to a JSON client and the other way round.
    res.headers_mut()
        .insert(VARY, HeaderValue::from_static("accept"));
    Ok(res)
}

async fn friends<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    query: Result<Query<FriendsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(FRIENDS_PAGE);
    if !(1..=FRIENDS_PAGE_MAX).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "limit is 1 to {FRIENDS_PAGE_MAX}"
        )));
    }
    // Validated before any key is built or query sent: a name holding a
    // space or CR/LF gets 400 here, and `Key` hashes anything odd anyway.
    let name = username(&raw)?;
    let viewer = ctx.viewer(&headers).await;
    let (json, x) = ctx
        .friends_json(viewer, name, limit, q.after.unwrap_or(0))
        .await?;
    Ok(answer(json, "application/json", x))
}

async fn feed<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (_, s) = current(&ctx.app, &headers).await?;
    let (json, x) = ctx.feed_json(s.user_id).await?;
    Ok(answer(json, "application/json", x))
}

/// `?with={username}`.
#[derive(Debug, serde::Deserialize)]
pub struct MutualQuery {
    /// The other user.
    pub with: Option<String>,
}

async fn mutual<S: SessionStore>(
    State(ctx): State<Arc<Ctx<S>>>,
    headers: HeaderMap,
    Path(raw): Path<String>,
    query: Result<Query<MutualQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let other = q
        .with
        .ok_or_else(|| ApiError::BadRequest("?with={username} names the other user".into()))?;
    // Both names validated before any key is built or query sent.
    let (name, other) = (username(&raw)?, username(&other)?);
    let viewer = ctx.viewer(&headers).await;
    let a = ctx.data.user_id(viewer, name).await?;
    let b = ctx.data.user_id(viewer, other).await?;
    let (json, x) = ctx.mutual_json(viewer, (name, a), (other, b)).await?;
    Ok(answer(json, "application/json", x))
}

/// This clone's cache counters: `{"mode", "backend", "policy", "loads",
/// "skipped_stores"}` (`loads`: database assemblies this clone ran on
/// misses since it started). The demo sums them over the clones.
async fn stats<S: SessionStore>(State(ctx): State<Arc<Ctx<S>>>) -> Response {
    let rt = ctx.cache.read_through.as_ref();
    axum::Json(serde_json::json!({
        "mode": ctx.cache.mode.as_str(),
        "backend": rt.map(|r| r.backend().name()),
        "policy": rt.map(|r| r.policy().as_str()),
        "loads": rt.map_or(0, |r| r.loads()),
        "skipped_stores": rt.map_or(0, |r| r.skipped_stores()),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_file_backend_has_a_directory_per_clone() {
        let c = Part3Config::try_parse_from([
            "part3-server",
            "--cache-backend",
            "file",
            "--clone-id",
            "app/1 x",
        ])
        .unwrap();
        assert_eq!(c.cache_backend, BackendKind::File);
        assert_eq!(
            c.file_dir(),
            std::env::temp_dir()
                .join("part3-file-cache")
                .join("app_1_x"),
            "one directory per clone id, made a plain file name"
        );
        let c = Part3Config::try_parse_from([
            "part3-server",
            "--cache-backend",
            "file",
            "--cache-file-dir",
            "/var/tmp/c1",
        ])
        .unwrap();
        assert_eq!(c.file_dir(), std::path::PathBuf::from("/var/tmp/c1"));
        assert_eq!(
            c.cache_file_max_bytes,
            crate::backend::DEFAULT_MAX_DIR_BYTES
        );
    }

    #[test]
    fn ttls_and_jitter_that_would_break_the_cache_are_refused_with_their_name() {
        for bad in [
            &["--cache-ttl-secs", "0"][..],
            &["--cache-ttl-secs", "2592001"],
            &["--cache-jitter", "NaN"],
            &["--cache-jitter", "1.5"],
            &["--cache-jitter=-0.1"],
        ] {
            let err = Part3Config::try_parse_from(
                std::iter::once("part3-server").chain(bad.iter().copied()),
            )
            .unwrap_err()
            .to_string();
            assert!(
                err.contains(bad[0]) || err.contains("CACHE_JITTER"),
                "{bad:?}: {err}"
            );
        }
        let c = Part3Config::try_parse_from([
            "part3-server",
            "--cache-jitter",
            "0.9",
            "--cache-ttl-secs",
            "2592000",
        ])
        .unwrap();
        assert_eq!((c.cache_jitter, c.cache_ttl_secs), (0.9, 2_592_000));
    }
}
