//! The social blog in MariaDB: migrations and a fast, repeatable loader.
//!
//! Part 2's server is part 1's plus this data layer, so part 1's migrations
//! (users, sessions) run first and part 2's add to them. Each part records
//! its migrations in a table of its own, so neither mistakes the other's
//! for unknown ones.
//!
//! Loading uses multi-row `INSERT`s of 1,000 rows: one round trip and one
//! commit per thousand rows instead of per row, which is most of the
//! difference between minutes and seconds. The denormalized columns
//! (`author_name`, `comment_count`, `like_count`) are computed while loading,
//! so the loaded data is consistent from the start.
//!
//! Loading is a deploy step, not the server's business: `part2-load`
//! ([`prepare`]) migrates and loads the `lab` database before `./lab up
//! part2` starts the clones, as a production deploy runs its migrations
//! once before rolling the app tier.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Context;
use common::dataset::DatasetSpec;
use sqlx::{MySqlPool, QueryBuilder};

/// Runs part 1's migrations, then part 2's, under a named lock (clones
/// start together). Idempotent.
pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
    part1_clones::app::migrate(pool).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT GET_LOCK('part2_migrations', 30)")
        .execute(&mut *conn)
        .await?;
    let mut migrator = sqlx::migrate!("./migrations");
    migrator.dangerous_set_table_name("_part2_migrations");
    let outcome = migrator.run(&mut *conn).await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('part2_migrations')")
        .execute(&mut *conn)
        .await;
    outcome.context("running part 2's migrations")
}

/// What a load did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoadStats {
    /// Rows inserted (all tables).
    pub rows: u64,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// "1395014 rows in 15.8 s", as every loader and demo says it.
impl std::fmt::Display for LoadStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} rows in {:.1} s", self.rows, self.seconds)
    }
}

impl LoadStats {
    /// Rows per second.
    pub fn rate(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }
}

const BATCH: usize = 1000;

/// Inserts `rows` in multi-row statements of [`BATCH`] rows:
/// `{head} VALUES (...), (...) {tail}`.
pub(crate) async fn insert_batches<T, F>(
    pool: &MySqlPool,
    head: &str,
    tail: &str,
    rows: impl Iterator<Item = T>,
    mut bind: F,
) -> anyhow::Result<u64>
where
    F: FnMut(&mut sqlx::query_builder::Separated<'_, sqlx::MySql, &'static str>, T),
{
    let mut n = 0;
    let mut batch = Vec::with_capacity(BATCH);
    let mut rows = rows.peekable();
    while rows.peek().is_some() {
        batch.clear();
        batch.extend(rows.by_ref().take(BATCH));
        let mut q = QueryBuilder::new(head);
        q.push_values(batch.drain(..), |mut row, item| bind(&mut row, item));
        q.push(tail);
        n += q
            .build()
            .execute(pool)
            .await
            .with_context(|| format!("loading: {head}"))?
            .rows_affected();
    }
    Ok(n)
}

/// Whether the dataset is already there (the loader is then a no-op).
pub async fn loaded(pool: &MySqlPool, spec: &DatasetSpec) -> anyhow::Result<bool> {
    let articles: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM articles")
        .fetch_one(pool)
        .await?;
    Ok(articles as u64 >= spec.sizes.articles)
}

/// Loads the dataset into empty tables (users already there keep their
/// password, so part 1's signups survive). Every generated user logs in with
/// [`common::dataset::DATASET_PASSWORD`].
pub async fn load(pool: &MySqlPool, spec: &DatasetSpec) -> anyhow::Result<LoadStats> {
    let start = Instant::now();
    let mut rows = 0;
    let hash = tokio::task::spawn_blocking(|| {
        part1_clones::users::hash_password(common::dataset::DATASET_PASSWORD)
    })
    .await?;

    let names: HashMap<u64, String> = spec.users().map(|u| (u.id, u.display_name)).collect();
    rows += insert_batches(
        pool,
        "INSERT INTO users (id, username, password_hash, created_at, display_name, bio) ",
        // Users part 1 loaded (name and password only) get the rest.
        " ON DUPLICATE KEY UPDATE display_name = VALUES(display_name), bio = VALUES(bio)",
        spec.users(),
        |row, u| {
            row.push_bind(u.id)
                .push_bind(u.username)
                .push_bind(hash.clone())
                .push_bind(u.joined_at)
                .push_bind(u.display_name)
                .push_bind(u.bio);
        },
    )
    .await?;
    rows += insert_batches(
        pool,
        "INSERT INTO friendships (user_id, friend_id, since) ",
        "",
        spec.friendships().flat_map(|f| {
            [
                (f.user_id, f.friend_id, f.since),
                (f.friend_id, f.user_id, f.since),
            ]
        }),
        |row, (a, b, since)| {
            row.push_bind(a).push_bind(b).push_bind(since);
        },
    )
    .await?;
    // Count first, so articles are inserted with their denormalized counts.
    let mut comment_counts: HashMap<u64, u32> = HashMap::new();
    for c in spec.comments() {
        *comment_counts.entry(c.article_id).or_default() += 1;
    }
    let mut like_counts: HashMap<u64, u32> = HashMap::new();
    for l in spec.likes() {
        *like_counts.entry(l.article_id).or_default() += 1;
    }
    rows += insert_batches(
        pool,
        "INSERT INTO articles (id, author_id, title, body, published_at, author_name, comment_count, like_count) ",
        "",
        spec.articles(),
        |row, a| {
            row.push_bind(a.id)
                .push_bind(a.author_id)
                .push_bind(a.title)
                .push_bind(a.body)
                .push_bind(a.published_at)
                .push_bind(names.get(&a.author_id).cloned().unwrap_or_default())
                .push_bind(comment_counts.get(&a.id).copied().unwrap_or(0))
                .push_bind(like_counts.get(&a.id).copied().unwrap_or(0));
        },
    )
    .await?;
    rows += insert_batches(
        pool,
        "INSERT INTO comments (id, article_id, author_id, body, created_at) ",
        "",
        spec.comments(),
        |row, c| {
            row.push_bind(c.id)
                .push_bind(c.article_id)
                .push_bind(c.author_id)
                .push_bind(c.body)
                .push_bind(c.created_at);
        },
    )
    .await?;
    rows += insert_batches(
        pool,
        "INSERT INTO likes (article_id, user_id, created_at) ",
        "",
        spec.likes(),
        |row, l| {
            row.push_bind(l.article_id)
                .push_bind(l.user_id)
                .push_bind(l.created_at);
        },
    )
    .await?;
    Ok(LoadStats {
        rows,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Loads the dataset unless it is there, under a named lock: clones start
/// together and each asks. Returns the load's figures, or `None` if it was
/// already loaded.
pub async fn ensure_loaded(
    pool: &MySqlPool,
    spec: &DatasetSpec,
) -> anyhow::Result<Option<LoadStats>> {
    let mut conn = pool.acquire().await?;
    sqlx::query("SELECT GET_LOCK('part2_dataset', 600)")
        .execute(&mut *conn)
        .await?;
    let outcome = async {
        if loaded(pool, spec).await? {
            return Ok(None);
        }
        load(pool, spec).await.map(Some)
    }
    .await;
    let _ = sqlx::query("SELECT RELEASE_LOCK('part2_dataset')")
        .execute(&mut *conn)
        .await;
    outcome
}

/// `part2-load`'s work: part 1's and part 2's migrations, then the whole
/// dataset at `spec`'s scale, unless it is there already. Idempotent and
/// safe to run twice at once (named locks). Returns the load's figures, or
/// `None` if that scale was already loaded.
pub async fn prepare(primary_url: &str, spec: &DatasetSpec) -> anyhow::Result<Option<LoadStats>> {
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect(primary_url)
        .await
        .with_context(|| {
            format!(
                "MariaDB is not reachable at {}: run ./lab up",
                common::config::redact(primary_url)
            )
        })?;
    migrate(&pool).await?;
    let loaded = ensure_loaded(&pool, spec).await;
    pool.close().await;
    loaded
}

/// `part2-load`'s work (the binary is one line, see [`common::entry`]):
/// migrates parts 1 and 2 and loads the whole dataset, once per scale.
pub fn load_main() -> anyhow::Result<()> {
    common::entry::run(|| async {
        use clap::Parser;
        // The same flags as part1-load: one dataset, one way to ask for it.
        let config = part1_clones::config::LoadConfig::parse();
        let spec = common::dataset::DatasetSpec::new(config.dataset_seed, config.scale);
        match prepare(&config.stack.mariadb_primary_url, &spec).await? {
            Some(stats) => println!("part2-load: {stats} ({:.0} rows/s)", stats.rate()),
            None => println!("part2-load: the dataset is already loaded"),
        }
        Ok(())
    })
}
