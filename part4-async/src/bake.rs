//! Way 1, do it in advance: the baker.
//!
//! > Precompute the whole page ahead of time and serve it as a static file:
//! > "bake at night", serve from a static server or a CDN.
//!
//! An article page costs part 3's server three queries and a render on a
//! cache miss, and a hop through HAProxy and a clone even on a hit. Yet it
//! changes only when someone writes to it, and is read thousands of times
//! in between. So render it *before* anyone asks, once, into a file, and
//! let a static server hand that file out: no clone, no cache, no
//! database on the read path at all. nginx serving a file from the page
//! cache is the cheapest read a web stack has, and it keeps working with
//! every clone down.
//!
//! ## The baked tree
//!
//! The [`Baker`] writes, under its directory (`BAKE_DIR`):
//!
//! | URL | file |
//! |---|---|
//! | `/articles/42` | `articles/42.html`: part 3's page ([`part3_cache::render::article_page`]), byte for byte, plus a `baked-at` meta tag |
//! | `/users/user7` | `users/user7.html`: the author page, their newest [`AUTHOR_PAGE_ARTICLES`] articles linked to `/articles/<id>` |
//!
//! and a gzip copy of each, `42.html.gz`, beside it. nginx serves the tree
//! with `try_files $uri.html @app;`: a baked page is sent from disk (with
//! `X-Baked: true`), and anything not baked falls through to the app tier
//! behind HAProxy, so both paths answer on one port. `gzip_static on;`
//! makes nginx send the `.gz` file as is to a client that accepts gzip:
//! the page is compressed once, here, instead of on every request.
//!
//! Every page carries `<meta name="baked-at" content="<ms since epoch>">`
//! ([`baked_at`] reads it back), so a reader can tell how old it is.
//!
//! ## Atomic writes
//!
//! nginx may be reading `42.html` at the very moment the baker replaces
//! it. Writing in place would let a reader see half a page (or an empty
//! file, right after the truncate). So each file is written whole to a
//! temporary file *in the same directory* (`.42.html.<pid>-<n>.tmp`;
//! the leading dot keeps it out of every URL), then `rename`d over the old
//! one. A rename within one file system is atomic: a reader opens either
//! the old page or the new one, never a mix. (The same directory matters:
//! across file systems a rename is a copy.) No `fsync`: a crash may lose
//! the newest page, and the next bake writes it again; a database that
//! promises durability would sync the file and the directory.
//!
//! ## Freshness
//!
//! A baked page is a copy, and copies go stale. Two mechanisms keep it
//! fresh, as big sites do:
//!
//! 1. **On change.** Each committed write is published as a change; a
//!    worker re-bakes the pages it touches ([`Baker::article`],
//!    [`Baker::author`]), within about a queue hop of the commit (the demo
//!    measures this staleness window). An article that no longer exists
//!    has its files removed, so nginx falls through to the app (and its
//!    404). Two workers re-baking two changes of one article may finish
//!    out of order: each bake takes the time *before* its read and tags
//!    the page with it (`<meta name="read-at">`, µs), and a bake keeps a
//!    page on disk whose tag is later than its own read
//!    ([`Baked::kept_fresher`]): the newer page stays.
//! 2. **On a schedule.** `part4-bake --interval-secs N` re-bakes
//!    everything ([`Baker::all`]) every N seconds: whatever the events
//!    missed (a lost message, a worker down, a page format change) is right
//!    again within N seconds. It also removes the files of pages that no
//!    longer exist, and rewrites only the pages that changed (the rest
//!    keep their file and their `baked-at`). A full bake does not overwrite a page that a worker
//!    re-baked after the full bake read it (the same `read-at` guard; a
//!    page written before the tag existed is judged by its file's
//!    modification time), so the schedule never puts an older page back
//!    over a fresher one.
//!
//! What the guard leaves open: it reads the page on disk, then renames
//! its own over it. Two bakes of one page whose checks and renames
//! interleave within those few microseconds can still leave the older
//! page, until the next change or the next full bake. Closing it would
//! need a lock per page (or a versioned file name and an atomic symlink
//! swap).
//!
//! The baker reads the pool it is given; the workers and `part4-bake`
//! give it the *primary*: a re-bake that follows a write must see that
//! write, and a lagging replica would bake the old page and leave it there
//! until the next full bake.
//!
//! ## Fast enough for the whole site
//!
//! The default dataset has 100 000 articles and 10 000 users. Baking them
//! one by one would be three queries per article. [`Baker::all`] reads in
//! batches of [`BATCH`]: one query for the bodies, one for the summaries
//! and one for the latest comments of the whole batch
//! ([`part2_database::articles::comments_batched`]), renders, gzips and
//! writes on the blocking pool, and keeps [`CONCURRENCY`] batches in
//! flight. It reports pages, bytes and time ([`BakeStats`]).
//!
//! ```text
//! cargo run -p part4-async --bin part4-bake -- --once --bake-dir /tmp/baked
//! ls /tmp/baked/articles | head
//! ```

use std::collections::{HashMap, HashSet};
use std::fs;
use std::future::Future;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use futures::TryStreamExt as _;
use part2_database::articles::{
    self, ArticlePage, ArticleSummary, COMMENTS_SHOWN, CommentView, Shape,
};
use part3_cache::render;
use sqlx::{MySqlPool, QueryBuilder};

/// Where the baked tree goes when nothing says otherwise: relative to the
/// working directory (`./lab` runs binaries from the repository root,
/// where its nginx finds it).
pub const DEFAULT_DIR: &str = ".lab/data/nginx/html";
/// Articles an author page lists (the newest); it says how many there are
/// in all. The dataset's busiest author has over ten thousand.
pub const AUTHOR_PAGE_ARTICLES: usize = 100;
/// Rows a batched read of [`Baker::all`] fetches at once.
pub const BATCH: u32 = 500;
/// Batches [`Baker::all`] keeps in flight: database reads overlap with
/// rendering and writing, on a pool of a few connections.
pub const CONCURRENCY: usize = 4;
/// The shape the pages are read in: part 2's server default, the
/// denormalized row (no join, no counting).
const SHAPE: Shape = Shape::Denormalized;

/// The baker's settings: flag, environment variable and default.
#[derive(Debug, Clone, clap::Args)]
pub struct BakeConfig {
    /// The baked tree's root: `articles/<id>.html` and
    /// `users/<username>.html` go under it (nginx serves it).
    #[arg(long = "bake-dir", env = "BAKE_DIR", default_value = DEFAULT_DIR)]
    pub bake_dir: PathBuf,
    /// Seconds between full re-bakes; 0 bakes once and exits.
    #[arg(long, env = "BAKE_INTERVAL_SECS", default_value_t = 0)]
    pub interval_secs: u64,
}

/// One page written (or removed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Baked {
    /// The `.html` file (the `.html.gz` is beside it).
    pub path: PathBuf,
    /// The page's size, uncompressed (0 when removed).
    pub bytes: u64,
    /// The gzip copy's size (0 when removed).
    pub gzip_bytes: u64,
    /// The page's subject no longer exists: its files were removed.
    pub removed: bool,
    /// Not written: the page on disk comes from a read later than this
    /// bake's (a worker's re-bake of a newer change finished first), so
    /// it is kept (`bytes` are then 0).
    pub kept_fresher: bool,
    /// Not written: the page on disk is this page but for its tags.
    pub unchanged: bool,
}

/// What a full bake did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BakeStats {
    /// Pages written: `articles + authors`. Into an empty directory,
    /// every page; on a re-bake, only those that changed (the rest are
    /// [`BakeStats::unchanged`]).
    pub pages: u64,
    /// Article pages written.
    pub articles: u64,
    /// Author pages written.
    pub authors: u64,
    /// Bytes of the pages written, uncompressed.
    pub bytes: u64,
    /// Bytes of their gzip copies.
    pub gzip_bytes: u64,
    /// Pages left as they were because a fresher bake (a worker's, after a
    /// write) replaced them after this bake read them.
    pub kept_fresher: u64,
    /// Pages already baked exactly as they would be (bar the `baked-at`
    /// tag): not written again. A scheduled re-bake finds most pages so,
    /// and skipping them spares two renames (and the old files' unlinks)
    /// per page.
    pub unchanged: u64,
    /// Pages removed: their article vanished while the bake ran, or their
    /// file was older than the bake and nothing baked it again (deleted
    /// articles, renamed users).
    pub removed: u64,
    /// Author pages refused because the username is not a safe file name.
    pub refused: u64,
    /// Wall time of the whole bake.
    pub elapsed: Duration,
}

impl BakeStats {
    fn add(&mut self, other: &BakeStats) {
        self.pages += other.pages;
        self.articles += other.articles;
        self.authors += other.authors;
        self.bytes += other.bytes;
        self.gzip_bytes += other.gzip_bytes;
        self.kept_fresher += other.kept_fresher;
        self.unchanged += other.unchanged;
        self.removed += other.removed;
        self.refused += other.refused;
    }

    fn count(&mut self, baked: &Outcome, article: bool) {
        match baked {
            Outcome::Written(b) => {
                self.pages += 1;
                if article {
                    self.articles += 1;
                } else {
                    self.authors += 1;
                }
                self.bytes += b.bytes;
                self.gzip_bytes += b.gzip_bytes;
            }
            Outcome::Removed => self.removed += 1,
            Outcome::KeptFresher => self.kept_fresher += 1,
            Outcome::Unchanged => self.unchanged += 1,
        }
    }
}

/// A username that must not become a path.
#[derive(Debug, thiserror::Error)]
#[error(
    "refusing to bake the page of user {user_id}: the username {username:?} is not a safe file name \
     (a baked page is users/<username>.html, so only 3 to 32 of a-z, 0-9 and '_' are allowed: \
     no '/', '..' or NUL)"
)]
pub struct UnsafeUsername {
    /// The user's id.
    pub user_id: u64,
    /// The name as stored.
    pub username: String,
}

/// Renders pages into the baked tree. Cheap to clone (a pool and a path).
#[derive(Debug, Clone)]
pub struct Baker {
    /// Read for every page; the primary, so a re-bake sees the write that
    /// asked for it.
    pool: MySqlPool,
    /// The tree's root.
    dir: Arc<PathBuf>,
}

/// A user as the author page shows them.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Author {
    id: u64,
    username: String,
    display_name: String,
}

/// What writing one page came to.
enum Outcome {
    Written(Baked),
    Removed,
    KeptFresher,
    Unchanged,
}

impl Baker {
    /// A baker reading `pool` (give it the primary) and writing under `dir`
    /// (created when the first page is written).
    pub fn new(pool: MySqlPool, dir: impl Into<PathBuf>) -> Self {
        Baker {
            pool,
            dir: Arc::new(dir.into()),
        }
    }

    /// The tree's root.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where article `id`'s page goes: `<dir>/articles/<id>.html`.
    pub fn article_path(&self, id: u64) -> PathBuf {
        self.dir.join("articles").join(format!("{id}.html"))
    }

    /// Where `username`'s author page goes: `<dir>/users/<username>.html`,
    /// or [`UnsafeUsername`] for a name that is not a safe file name.
    pub fn author_path(&self, user_id: u64, username: &str) -> Result<PathBuf, UnsafeUsername> {
        if common::domain::validate_username(username).is_err() {
            return Err(UnsafeUsername {
                user_id,
                username: username.to_owned(),
            });
        }
        Ok(self.dir.join("users").join(format!("{username}.html")))
    }

    /// Bakes article `id`'s page (and its `.gz`); if the article no longer
    /// exists, removes them and answers `removed: true`.
    ///
    /// Guarded like a full bake: the time is taken before the read, and a
    /// page on disk that comes from a later read is kept
    /// ([`Baked::kept_fresher`]). So two workers re-baking two changes of
    /// one article, finishing out of order, never leave the older page.
    pub async fn article(&self, id: u64) -> anyhow::Result<Baked> {
        let read_at = SystemTime::now();
        let page = articles::page(&self.pool, SHAPE, id)
            .await
            .with_context(|| format!("reading article {id} to bake its page"))?;
        let path = self.article_path(id);
        blocking(move || match page {
            None => remove_page(&path).map(|_| removed(path)),
            Some(page) => {
                let html = article_html(&page, now_ms());
                bake_unless_fresher(&path, read_at, &html).map(|o| outcome_baked(path, o))
            }
        })
        .await
    }

    /// Writes `html` as the page at `path` (one of this baker's), through
    /// the guard every bake goes through: kept as it is if the page there
    /// comes from a read later than `read_at`, or is this page already.
    /// For a caller that read and rendered the page itself (`read_at`:
    /// when its read began), and for tests of the guard.
    pub async fn write_unless_fresher(
        &self,
        path: PathBuf,
        read_at: SystemTime,
        html: String,
    ) -> anyhow::Result<Baked> {
        blocking(move || bake_unless_fresher(&path, read_at, &html).map(|o| outcome_baked(path, o)))
            .await
    }

    /// Bakes user `user_id`'s author page (and its `.gz`): their newest
    /// [`AUTHOR_PAGE_ARTICLES`] articles, linked. An error if the user does
    /// not exist (users are never deleted here) or if their username is
    /// not a safe file name ([`UnsafeUsername`]). Guarded as
    /// [`Baker::article`] is: a page from a later read is kept.
    pub async fn author(&self, user_id: u64) -> anyhow::Result<Baked> {
        let read_at = SystemTime::now();
        let author: Option<Author> =
            sqlx::query_as("SELECT id, username, display_name FROM users WHERE id = ?")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await
                .with_context(|| format!("reading user {user_id} to bake their page"))?;
        let author = author
            .with_context(|| format!("no user {user_id}: there is no author page to bake"))?;
        let path = self.author_path(author.id, &author.username)?;
        let sql = format!(
            "{} WHERE a.author_id = ? ORDER BY a.published_at DESC, a.id DESC LIMIT ?",
            articles::summary_sql(SHAPE)
        );
        let list: Vec<ArticleSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(AUTHOR_PAGE_ARTICLES as u64)
            .fetch_all(&self.pool)
            .await
            .with_context(|| format!("reading user {user_id}'s articles"))?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM articles WHERE author_id = ?")
            .bind(user_id)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("counting user {user_id}'s articles"))?;
        blocking(move || {
            let html = author_html(&author, &list, total.max(0) as u64, now_ms());
            bake_unless_fresher(&path, read_at, &html).map(|o| outcome_baked(path, o))
        })
        .await
    }

    /// Bakes every article and every user's author page, in batches
    /// ([`BATCH`] rows, [`CONCURRENCY`] in flight), then removes the pages
    /// of what it did not find (articles deleted, users gone) unless
    /// something wrote them since it began. A page already on disk as it
    /// would be baked is left alone ([`BakeStats::unchanged`], its
    /// `baked-at` tag says when it last changed); a page a worker re-baked
    /// after this bake read it is kept ([`BakeStats::kept_fresher`]); an
    /// unsafe username is skipped with a warning ([`BakeStats::refused`]).
    /// Stops at the first error (the database, the disk), before removing
    /// anything.
    pub async fn all(&self) -> anyhow::Result<BakeStats> {
        let clock = Instant::now();
        let began = SystemTime::now();
        let mut stats = BakeStats::default();

        let pool = self.pool.clone();
        let article_batches = futures::stream::try_unfold(Some(0u64), move |after| {
            let pool = pool.clone();
            async move {
                let Some(after) = after else {
                    return Ok(None);
                };
                let read_at = SystemTime::now();
                let rows: Vec<(u64, String)> = sqlx::query_as(
                    "SELECT id, body FROM articles WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(after)
                .bind(BATCH)
                .fetch_all(&pool)
                .await
                .with_context(|| format!("reading the articles after id {after}"))?;
                let Some(&(last, _)) = rows.last() else {
                    return anyhow::Ok(None);
                };
                let next = (rows.len() as u32 == BATCH).then_some(last);
                Ok(Some(((read_at, rows), next)))
            }
        });
        let mut done = std::pin::pin!(
            article_batches
                .map_ok(|(read_at, rows)| self.article_batch(read_at, rows))
                .try_buffer_unordered(CONCURRENCY)
        );
        let mut articles_seen = HashSet::new();
        while let Some((s, seen)) = done.try_next().await? {
            stats.add(&s);
            articles_seen.extend(seen);
        }

        let pool = self.pool.clone();
        let user_batches = futures::stream::try_unfold(Some(0u64), move |after| {
            let pool = pool.clone();
            async move {
                let Some(after) = after else {
                    return Ok(None);
                };
                let read_at = SystemTime::now();
                let users: Vec<Author> = sqlx::query_as(
                    "SELECT id, username, display_name FROM users WHERE id > ? ORDER BY id LIMIT ?",
                )
                .bind(after)
                .bind(BATCH)
                .fetch_all(&pool)
                .await
                .with_context(|| format!("reading the users after id {after}"))?;
                let Some(last) = users.last().map(|u| u.id) else {
                    return anyhow::Ok(None);
                };
                let next = (users.len() as u32 == BATCH).then_some(last);
                Ok(Some(((read_at, users), next)))
            }
        });
        let mut done = std::pin::pin!(
            user_batches
                .map_ok(|(read_at, users)| self.author_batch(read_at, users))
                .try_buffer_unordered(CONCURRENCY)
        );
        let mut users_seen = HashSet::new();
        while let Some((s, seen)) = done.try_next().await? {
            stats.add(&s);
            users_seen.extend(seen);
        }

        let dir = self.dir.clone();
        stats.removed += blocking(move || prune(&dir, began, &articles_seen, &users_seen)).await?;
        stats.elapsed = clock.elapsed();
        Ok(stats)
    }

    /// Bakes `interval` apart until `stop` resolves: a full bake after
    /// `first` (zero: at once; `./lab` passes one interval, having just
    /// baked with `--once`), then one every `interval` (measured from the
    /// end of the last one, so a slow bake never overlaps the next). While it runs, `health` (if
    /// given) answers `GET /health` with the last bake's figures (and
    /// `GET /metrics`). A failed
    /// bake is logged and retried at the next tick; pages stay as they
    /// were. `stop` also interrupts a bake in flight: the pages written so
    /// far are whole (each rename is atomic), temporary files left behind
    /// are removed by the next bake.
    pub async fn run_every(
        &self,
        first: Duration,
        interval: Duration,
        health: Option<tokio::net::TcpListener>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            stop.await;
            let _ = stopped_tx.send(true);
        });
        let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let status = Arc::new(Mutex::new(Health::default()));
        let server = match health {
            Some(listener) => {
                // `/metrics` for the live view's scrape: the process's
                // registry (nothing baker-specific yet; its up/down is the
                // scrape itself).
                common::metrics::install();
                let app = axum::Router::new()
                    .route("/health", axum::routing::get(health_answer))
                    .with_state(status.clone())
                    .route(
                        "/metrics",
                        axum::routing::get(|| async {
                            (
                                [(
                                    axum::http::header::CONTENT_TYPE,
                                    common::metrics::CONTENT_TYPE,
                                )],
                                common::metrics::render(),
                            )
                        }),
                    );
                let shutdown = until_stopped(stopped.clone());
                Some(tokio::spawn(async move {
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown)
                        .await
                }))
            }
            None => None,
        };
        let mut wait = first;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = until_stopped(stopped.clone()) => break,
            }
            wait = interval;
            tokio::select! {
                result = self.all() => match result {
                    Ok(stats) => {
                        tracing::info!(
                            pages = stats.pages, bytes = stats.bytes, gzip_bytes = stats.gzip_bytes,
                            removed = stats.removed, kept_fresher = stats.kept_fresher,
                            unchanged = stats.unchanged,
                            refused = stats.refused, elapsed_ms = stats.elapsed.as_millis() as u64,
                            "baked everything"
                        );
                        metrics::counter!(common::metrics::BAKES, "result" => "ok").increment(1);
                        metrics::gauge!(common::metrics::BAKE_SECONDS).set(stats.elapsed.as_secs_f64());
                        let mut s = status.lock().unwrap_or_else(|p| p.into_inner());
                        s.bakes += 1;
                        s.last = Some((stats, now_ms()));
                    }
                    Err(e) => {
                        tracing::warn!("the full bake failed, retrying in {interval:?}: {e:#}");
                        metrics::counter!(common::metrics::BAKES, "result" => "failed").increment(1);
                        status.lock().unwrap_or_else(|p| p.into_inner()).failures += 1;
                    }
                },
                _ = until_stopped(stopped.clone()) => break,
            }
        }
        if let Some(server) = server {
            server
                .await
                .context("the health endpoint's task panicked")?
                .context("serving /health")?;
        }
        Ok(())
    }

    /// One batch of articles: summaries and latest comments for the batch's
    /// ids in two queries, then render and write on the blocking pool.
    async fn article_batch(
        &self,
        read_at: SystemTime,
        rows: Vec<(u64, String)>,
    ) -> anyhow::Result<(BakeStats, Vec<u64>)> {
        let ids: Vec<u64> = rows.iter().map(|(id, _)| *id).collect();
        let mut q = QueryBuilder::new(articles::summary_sql(SHAPE));
        q.push(" WHERE a.id IN (");
        let mut list = q.separated(", ");
        for id in &ids {
            list.push_bind(*id);
        }
        q.push(")");
        let summaries: Vec<ArticleSummary> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .context("reading a batch of article summaries")?;
        let (mut comments, _) = articles::comments_batched(&self.pool, &ids, COMMENTS_SHOWN)
            .await
            .context("reading a batch of latest comments")?;
        let mut summaries: HashMap<u64, ArticleSummary> =
            summaries.into_iter().map(|s| (s.id, s)).collect();
        let dir = self.dir.clone();
        blocking(move || {
            let mut stats = BakeStats::default();
            let mut seen = Vec::with_capacity(rows.len());
            fs::create_dir_all(dir.join("articles"))
                .with_context(|| format!("creating {}", dir.join("articles").display()))?;
            for (id, body) in rows {
                let path = dir.join("articles").join(format!("{id}.html"));
                let outcome = match summaries.remove(&id) {
                    // Deleted between the two reads.
                    None => remove_page(&path).map(|_| Outcome::Removed)?,
                    Some(summary) => {
                        seen.push(id);
                        let mut comments: Vec<CommentView> =
                            comments.remove(&id).unwrap_or_default();
                        // Newest first, as `COMMENTS_SQL` orders them (the
                        // stable sort keeps the query's order for ties).
                        comments.sort_by_key(|c| std::cmp::Reverse(c.created_at));
                        let page = ArticlePage {
                            summary,
                            body,
                            comments,
                        };
                        bake_unless_fresher(&path, read_at, &article_html(&page, now_ms()))?
                    }
                };
                stats.count(&outcome, true);
            }
            Ok((stats, seen))
        })
        .await
    }

    /// One batch of users: all their articles in one query, then render and
    /// write on the blocking pool.
    async fn author_batch(
        &self,
        read_at: SystemTime,
        users: Vec<Author>,
    ) -> anyhow::Result<(BakeStats, Vec<String>)> {
        let mut q = QueryBuilder::new(articles::summary_sql(SHAPE));
        q.push(" WHERE a.author_id IN (");
        let mut list = q.separated(", ");
        for u in &users {
            list.push_bind(u.id);
        }
        q.push(") ORDER BY a.author_id, a.published_at DESC, a.id DESC");
        let rows: Vec<ArticleSummary> = q
            .build_query_as()
            .fetch_all(&self.pool)
            .await
            .context("reading a batch of authors' articles")?;
        let mut by_author: HashMap<u64, Vec<ArticleSummary>> = HashMap::new();
        for a in rows {
            by_author.entry(a.author_id).or_default().push(a);
        }
        let baker = self.clone();
        blocking(move || {
            let mut stats = BakeStats::default();
            let mut seen = Vec::with_capacity(users.len());
            let users_dir = baker.dir.join("users");
            fs::create_dir_all(&users_dir)
                .with_context(|| format!("creating {}", users_dir.display()))?;
            for author in users {
                let path = match baker.author_path(author.id, &author.username) {
                    Ok(path) => path,
                    Err(e) => {
                        tracing::warn!("{e}");
                        stats.refused += 1;
                        continue;
                    }
                };
                let mut list = by_author.remove(&author.id).unwrap_or_default();
                let total = list.len() as u64;
                list.truncate(AUTHOR_PAGE_ARTICLES);
                let html = author_html(&author, &list, total, now_ms());
                let outcome = bake_unless_fresher(&path, read_at, &html)?;
                seen.push(author.username);
                stats.count(&outcome, false);
            }
            Ok((stats, seen))
        })
        .await
    }
}

/// What `GET /health` reports.
#[derive(Debug, Default)]
struct Health {
    bakes: u64,
    failures: u64,
    last: Option<(BakeStats, u64)>,
}

async fn health_answer(
    axum::extract::State(status): axum::extract::State<Arc<Mutex<Health>>>,
) -> axum::Json<serde_json::Value> {
    let s = status.lock().unwrap_or_else(|p| p.into_inner());
    let last = s.last.as_ref().map(|(stats, at)| {
        serde_json::json!({
            "finished_at_ms": at,
            "pages": stats.pages,
            "bytes": stats.bytes,
            "gzip_bytes": stats.gzip_bytes,
            "removed": stats.removed,
            "kept_fresher": stats.kept_fresher,
            "unchanged": stats.unchanged,
            "refused": stats.refused,
            "elapsed_ms": stats.elapsed.as_millis() as u64,
        })
    });
    axum::Json(serde_json::json!({
        "status": "ok",
        "bakes": s.bakes,
        "failures": s.failures,
        "last": last,
    }))
}

/// The meta tag that says when a page was baked.
fn baked_at_meta(ms: u64) -> String {
    format!("<meta name=\"baked-at\" content=\"{ms}\">")
}

/// When a baked page was baked (ms since the epoch), read from its
/// `baked-at` meta tag; `None` if it has none.
pub fn baked_at(html: &str) -> Option<u64> {
    let start = html.find("<meta name=\"baked-at\" content=\"")? + 31;
    let len = html[start..].find('"')?;
    html[start..start + len].parse().ok()
}

/// Part 3's page for the article, with the `baked-at` tag added after the
/// charset declaration (which must stay first in `<head>`).
pub fn article_html(page: &ArticlePage, baked_at_ms: u64) -> String {
    let mut html = render::article_page(page);
    let meta = baked_at_meta(baked_at_ms);
    let at = ["<meta charset=\"utf-8\">", "<head>"]
        .iter()
        .find_map(|tag| html.find(tag).map(|i| i + tag.len()))
        .unwrap_or(0);
    html.insert_str(at, &meta);
    html
}

/// The author page: their newest articles (`list`, newest first) linked to
/// `/articles/<id>`, out of `total`. Every user-written text goes through
/// part 3's [`render::escape`].
fn author_html(author: &Author, list: &[ArticleSummary], total: u64, baked_at_ms: u64) -> String {
    use std::fmt::Write as _;
    let name = if author.display_name.is_empty() {
        &author.username
    } else {
        &author.display_name
    };
    let name = render::escape(name);
    let mut items = String::new();
    for a in list {
        // Writing to a String cannot fail.
        let _ = writeln!(
            items,
            "<li id=\"article-{id}\"><a href=\"/articles/{id}\">{title}</a> \
             <small>at {at}, {likes} likes, {comments} comments</small></li>",
            id = a.id,
            title = render::escape(&a.title),
            at = a.published_at,
            likes = a.like_count,
            comments = a.comment_count,
        );
    }
    let more = if (list.len() as u64) < total {
        format!(
            "<p class=\"more\">The newest {} of {total} articles.</p>\n",
            list.len()
        )
    } else {
        String::new()
    };
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\">{meta}<title>{name}</title></head>\n<body>\n\
         <section id=\"user-{id}\" class=\"author\">\n<h1>{name}</h1>\n\
         <p class=\"byline\">@{username}, {total} articles</p>\n\
         <ol class=\"articles\">\n{items}</ol>\n{more}</section>\n</body>\n</html>\n",
        meta = baked_at_meta(baked_at_ms),
        id = author.id,
        username = render::escape(&author.username),
    )
}

/// Now, in milliseconds since the epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs file work on the blocking pool (it would stall the runtime's
/// threads otherwise).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a baking task panicked")?
}

fn removed(path: PathBuf) -> Baked {
    Baked {
        path,
        bytes: 0,
        gzip_bytes: 0,
        removed: true,
        kept_fresher: false,
        unchanged: false,
    }
}

/// A guarded write's outcome as the one-page calls report it.
fn outcome_baked(path: PathBuf, outcome: Outcome) -> Baked {
    let mut b = match outcome {
        Outcome::Written(b) => return b,
        Outcome::Removed => return removed(path),
        Outcome::KeptFresher | Outcome::Unchanged => Baked {
            path,
            bytes: 0,
            gzip_bytes: 0,
            removed: false,
            kept_fresher: false,
            unchanged: false,
        },
    };
    match outcome {
        Outcome::KeptFresher => b.kept_fresher = true,
        _ => b.unchanged = true,
    }
    b
}

/// The gzip copy's path: `42.html` → `42.html.gz`.
fn gz_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".gz");
    PathBuf::from(p)
}

/// Microseconds since the epoch.
fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// The tag that says when the bake of a page began reading the database
/// (µs since the epoch): what the freshness guard compares.
fn read_at_meta(us: u64) -> String {
    format!("<meta name=\"read-at\" content=\"{us}\">")
}

/// When the bake that wrote `html` began its read (µs), from its
/// `read-at` tag; `None` for a page without one.
fn read_at_of(html: &str) -> Option<u64> {
    let start = html.find("<meta name=\"read-at\" content=\"")? + 30;
    let len = html[start..].find('"')?;
    html[start..start + len].parse().ok()
}

/// Whether the page on disk comes from a bake that read the database later
/// than `read_at`: by its `read-at` tag, or, for a page without one, by
/// the file's modification time (written after `read_at`).
fn fresher_than(path: &Path, old: Option<&str>, read_at: SystemTime) -> bool {
    match old.and_then(read_at_of) {
        Some(us) => us > micros(read_at),
        None => fs::metadata(path)
            .and_then(|m| m.modified())
            .is_ok_and(|m| m > read_at),
    }
}

/// A guarded write (full bakes and one-page bakes alike): none if the page
/// on disk comes from a later read (a fresher bake finished first), none
/// if it is this one but for its tags, else the page, tagged with
/// `read_at`, and its gzip copy.
///
/// What is left: the check and the rename are two steps, so two bakes of
/// one page finishing within the same few microseconds can still leave
/// the older one; the next change or the next full bake puts it right.
fn bake_unless_fresher(path: &Path, read_at: SystemTime, html: &str) -> anyhow::Result<Outcome> {
    let old = fs::read_to_string(path).ok();
    if fresher_than(path, old.as_deref(), read_at) {
        return Ok(Outcome::KeptFresher);
    }
    if let Some(old) = &old
        && without_tags(old) == without_tags(html)
        && gz_path(path).exists()
    {
        return Ok(Outcome::Unchanged);
    }
    let html = with_read_at(html, read_at);
    write_page(path, html.as_bytes()).map(Outcome::Written)
}

/// The page with its `read-at` tag set to `read_at` (after the `baked-at`
/// tag, or first in `<head>`).
fn with_read_at(html: &str, read_at: SystemTime) -> String {
    let mut html = without_read_at(html).into_owned();
    let at = html
        .find("<meta name=\"baked-at\"")
        .and_then(|i| html[i..].find('>').map(|j| i + j + 1))
        .or_else(|| html.find("<head>").map(|i| i + 6))
        .unwrap_or(0);
    html.insert_str(at, &read_at_meta(micros(read_at)));
    html
}

fn without_read_at(html: &str) -> std::borrow::Cow<'_, str> {
    match read_at_of(html) {
        Some(us) => html.replacen(&read_at_meta(us), "", 1).into(),
        None => html.into(),
    }
}

/// The page with its `baked-at` and `read-at` tags cut out.
fn without_tags(html: &str) -> String {
    let html = without_read_at(html);
    match baked_at(&html) {
        Some(ms) => html.replacen(&baked_at_meta(ms), "", 1),
        None => html.into_owned(),
    }
}

/// Writes the page and its gzip copy, each atomically. The `.gz` first: by
/// the time the `.html` (what `try_files` looks for) appears or changes,
/// its compressed copy is already the same page.
fn write_page(path: &Path, html: &[u8]) -> anyhow::Result<Baked> {
    let dir = path
        .parent()
        .with_context(|| format!("{} has no directory", path.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut gz = flate2::write::GzEncoder::new(
        Vec::with_capacity(html.len() / 2),
        flate2::Compression::best(),
    );
    gz.write_all(html).context("compressing a page")?;
    let gz = gz.finish().context("compressing a page")?;
    write_atomically(&gz_path(path), &gz)?;
    write_atomically(path, html)?;
    Ok(Baked {
        path: path.to_owned(),
        bytes: html.len() as u64,
        gzip_bytes: gz.len() as u64,
        removed: false,
        kept_fresher: false,
        unchanged: false,
    })
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over
/// `path`: a reader sees the old file or the new one, never a part.
fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}-{}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

/// Removes a page and its gzip copy (the `.html` first, so nginx falls
/// through to the app at once); a file already gone is fine.
fn remove_page(path: &Path) -> anyhow::Result<()> {
    for p in [path.to_owned(), gz_path(path)] {
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", p.display())),
        }
    }
    Ok(())
}

/// After a full bake: removes, under `articles/` and `users/`, the pages
/// whose subject the bake did not see (deleted articles, renamed users)
/// and temporary files left by an interrupted bake; in both cases only
/// files older than the bake (with a margin for file systems that keep
/// mtimes to the second), so a page a worker baked for an article newer
/// than the bake's read stays. Only names the baker writes are touched,
/// so a mistaken `--bake-dir` never loses anyone's files. Returns the
/// pages (`.html` files) removed.
fn prune(
    dir: &Path,
    began: SystemTime,
    articles_seen: &HashSet<u64>,
    users_seen: &HashSet<String>,
) -> anyhow::Result<u64> {
    let cutoff = began
        .checked_sub(Duration::from_secs(2))
        .unwrap_or(UNIX_EPOCH);
    // For a page's subject (`42`, `user7`): whether it is one of ours and
    // was seen by the bake.
    let article = |s: &str| -> Option<bool> {
        let ours = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        ours.then(|| s.parse().is_ok_and(|id: u64| articles_seen.contains(&id)))
    };
    let user = |s: &str| -> Option<bool> {
        common::domain::validate_username(s)
            .is_ok()
            .then(|| users_seen.contains(s))
    };
    let mut pages = 0;
    for (sub, seen) in [
        ("articles", &article as &dyn Fn(&str) -> Option<bool>),
        ("users", &user),
    ] {
        let sub = dir.join(sub);
        let entries = match fs::read_dir(&sub) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("listing {}", sub.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("listing {}", sub.display()))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let gone_page = name
                .strip_suffix(".html")
                .or_else(|| name.strip_suffix(".html.gz"))
                .and_then(seen)
                == Some(false);
            let temporary = name.starts_with('.') && name.ends_with(".tmp");
            if !gone_page && !temporary {
                continue;
            }
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|m| m < cutoff);
            if !old {
                continue;
            }
            match fs::remove_file(entry.path()) {
                Ok(()) => {
                    if name.ends_with(".html") {
                        pages += 1;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("removing {}", entry.path().display()));
                }
            }
        }
    }
    Ok(pages)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baked_at_reads_back_what_was_written() {
        let html = format!(
            "<head><meta charset=\"utf-8\">{}</head>",
            baked_at_meta(1234)
        );
        assert_eq!(baked_at(&html), Some(1234));
        assert_eq!(baked_at("<head></head>"), None);
    }

    #[test]
    fn the_read_at_tag_goes_after_baked_at_and_is_replaced() {
        let html = format!(
            "<head><meta charset=\"utf-8\">{}</head>",
            baked_at_meta(1234)
        );
        let t = UNIX_EPOCH + Duration::from_micros(5_000_001);
        let tagged = with_read_at(&html, t);
        assert_eq!(read_at_of(&tagged), Some(5_000_001));
        assert!(tagged.contains(&format!(
            "{}{}",
            baked_at_meta(1234),
            read_at_meta(5_000_001)
        )));
        let again = with_read_at(&tagged, t + Duration::from_micros(1));
        assert_eq!(read_at_of(&again), Some(5_000_002));
        assert_eq!(again.matches("read-at").count(), 1);
        assert_eq!(without_tags(&again), without_tags(&html));
    }

    #[test]
    fn the_gzip_copy_sits_beside_the_page() {
        assert_eq!(
            gz_path(Path::new("/x/articles/42.html")),
            PathBuf::from("/x/articles/42.html.gz")
        );
    }
}
