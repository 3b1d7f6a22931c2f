//! SQL tuning: the same query without its index and with it, and what
//! `EXPLAIN` says about each.
//!
//! "Comments of an article" is `WHERE article_id = ? ORDER BY created_at`.
//! Without `comments_article (article_id, created_at)` MariaDB reads every
//! row of `comments` and sorts (`type: ALL`, `Using filesort`); with it,
//! it reads just that article's rows in order (`type: ref`).
//!
//! How many queries a piece of code sends (N+1 against one batch) is
//! counted by the server, not by the code: [`count_selects`] runs it on a
//! pool of one connection and reads MariaDB's own session counter
//! `Com_select` before and after.

use std::future::Future;

use anyhow::Context;
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{MySqlPool, Row};

/// The query the lesson tunes.
pub const COMMENTS_OF_ARTICLE: &str = "SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id = ? ORDER BY created_at DESC LIMIT 20";

/// One line of EXPLAIN: access type, key used, rows examined, extra.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// `ALL` is a full scan; `ref`/`range` use an index.
    pub access: String,
    /// The index used, if any.
    pub key: Option<String>,
    /// Rows MariaDB expects to examine.
    pub rows: u64,
    /// Extra notes (`Using filesort`...).
    pub extra: String,
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "type={} key={} rows={} extra={}",
            self.access,
            self.key.as_deref().unwrap_or("NULL"),
            self.rows,
            self.extra
        )
    }
}

/// EXPLAIN of [`COMMENTS_OF_ARTICLE`] for `article_id`.
pub async fn explain_comments(pool: &MySqlPool, article_id: u64) -> sqlx::Result<Plan> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "EXPLAIN {COMMENTS_OF_ARTICLE}"
    )))
    .bind(article_id)
    .fetch_one(pool)
    .await?;
    Ok(Plan {
        access: row
            .try_get::<Option<String>, _>("type")?
            .unwrap_or_default(),
        key: row.try_get("key")?,
        rows: row
            .try_get::<Option<String>, _>("rows")?
            .and_then(|r| r.parse().ok())
            .unwrap_or(0),
        extra: row
            .try_get::<Option<String>, _>("Extra")?
            .unwrap_or_default(),
    })
}

/// The index the lesson drops and restores
/// ([`drill::with_index_dropped`](crate::drill::with_index_dropped)):
/// `comments (article_id, created_at)`.
pub const COMMENTS_INDEX: &str = "comments_article";

/// Whether [`COMMENTS_INDEX`] exists.
pub async fn has_index(pool: &MySqlPool) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
         AND table_name = 'comments' AND index_name = ?",
    )
    .bind(COMMENTS_INDEX)
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Runs `f` on a pool of exactly one connection to `pool`'s server and
/// database, and returns its output with the `SELECT`s that connection ran,
/// as MariaDB's session status counter `Com_select` counted them.
///
/// One connection, because session counters are per connection; the
/// connection id is checked before and after, so a reconnect in between
/// is an error rather than a wrong count. `SHOW SESSION STATUS` itself is
/// not a `SELECT`, so reading the counter does not move it. Prepared
/// statements (what sqlx sends) count once per execution.
pub async fn count_selects<T, F, Fut>(pool: &MySqlPool, f: F) -> anyhow::Result<(T, u64)>
where
    F: FnOnce(MySqlPool) -> Fut,
    Fut: Future<Output = sqlx::Result<T>>,
{
    let one = MySqlPoolOptions::new()
        .max_connections(1)
        .connect_with((*pool.connect_options()).clone())
        .await
        .context("a connection to count on")?;
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&one)
        .await?;
    let before = com_select(&one).await?;
    let out = f(one.clone()).await?;
    let after = com_select(&one).await?;
    let id_after: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(&one)
        .await?;
    one.close().await;
    anyhow::ensure!(
        id == id_after,
        "the connection was replaced while counting: the count is unknown"
    );
    Ok((out, after - before))
}

async fn com_select(one: &MySqlPool) -> anyhow::Result<u64> {
    let (_, value): (String, String) = sqlx::query_as("SHOW SESSION STATUS LIKE 'Com_select'")
        .fetch_one(one)
        .await?;
    value
        .parse()
        .with_context(|| format!("Com_select is {value:?}"))
}
