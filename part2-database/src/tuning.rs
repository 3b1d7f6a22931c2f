//! SQL tuning: the same query without its index and with it, and what
//! `EXPLAIN` says about each.
//!
//! "Comments of an article" is `WHERE article_id = ? ORDER BY created_at`.
//! Without `comments_article (article_id, created_at)` MariaDB reads every
//! row of `comments` and sorts (`type: ALL`, `Using filesort`); with it,
//! it reads just that article's rows in order (`type: ref`).

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

/// Whether `comments_article` exists.
pub async fn has_index(pool: &MySqlPool) -> sqlx::Result<bool> {
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.statistics WHERE table_schema = DATABASE() \
         AND table_name = 'comments' AND index_name = 'comments_article'",
    )
    .fetch_one(pool)
    .await?;
    Ok(n > 0)
}

/// Drops `comments_article` (the "before" of the lesson).
pub async fn drop_index(pool: &MySqlPool) -> sqlx::Result<()> {
    if has_index(pool).await? {
        sqlx::query("ALTER TABLE comments DROP INDEX comments_article")
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Creates `comments_article` again (the "after", and the normal state).
pub async fn create_index(pool: &MySqlPool) -> sqlx::Result<()> {
    if !has_index(pool).await? {
        sqlx::query("ALTER TABLE comments ADD INDEX comments_article (article_id, created_at)")
            .execute(pool)
            .await?;
    }
    Ok(())
}
