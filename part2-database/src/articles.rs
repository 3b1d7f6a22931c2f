//! Reading and writing articles: the join against the denormalized row,
//! and N+1 queries against one batched query.
//!
//! **Denormalization.** The article list shows each article's author name,
//! comment count and like count. Normalized, that is a join to `users` and
//! two `COUNT(*)` subqueries per article: cheap for one row, expensive for a
//! page of a popular author's articles. Denormalized, the three values are
//! columns of `articles`, kept right by every write *in the same
//! transaction* ([`add_comment`], [`add_like`]): reads get cheaper, each
//! write does a little more. [`Shape`] picks one, so both are measured on
//! the same data.
//!
//! **N+1.** A page of 20 articles with their latest comments, fetched as one
//! query for the page and one per article ([`comments_n_plus_1`]), costs 21
//! round trips; batched into one statement ([`comments_batched`]) it
//! costs 2. Each function returns how many queries it sent.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sqlx::{Executor, MySql, MySqlPool, QueryBuilder};

/// Which read path: the normalized join or the denormalized columns
/// (`part2-server --shape join|denormalized`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// JOIN `users` and COUNT comments and likes, at read time.
    Join,
    /// Read the copies and counters kept on the article row.
    Denormalized,
}

/// An article as a list shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct ArticleSummary {
    /// Id.
    pub id: u64,
    /// Author's id.
    pub author_id: u64,
    /// Author's display name.
    pub author_name: String,
    /// Title.
    pub title: String,
    /// Unix seconds.
    pub published_at: i64,
    /// Comments on it.
    pub comment_count: i64,
    /// Likes of it.
    pub like_count: i64,
}

/// A comment as a page shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct CommentView {
    /// Id.
    pub id: u64,
    /// The article.
    pub article_id: u64,
    /// Who wrote it.
    pub author_id: u64,
    /// Text.
    pub body: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A whole article page: the article, its author, comments, likes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArticlePage {
    /// The summary (author name and counts).
    #[serde(flatten)]
    pub summary: ArticleSummary,
    /// The text.
    pub body: String,
    /// The latest comments, newest first.
    pub comments: Vec<CommentView>,
}

impl Shape {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Join => "join",
            Shape::Denormalized => "denormalized",
        }
    }
}

const JOIN_SUMMARY: &str = "SELECT a.id, a.author_id, u.display_name AS author_name, a.title, a.published_at, \
     (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id) AS comment_count, \
     (SELECT COUNT(*) FROM likes l WHERE l.article_id = a.id) AS like_count \
     FROM articles a JOIN users u ON u.id = a.author_id";
const DENORM_SUMMARY: &str = "SELECT a.id, a.author_id, a.author_name, a.title, a.published_at, \
     CAST(a.comment_count AS SIGNED) AS comment_count, CAST(a.like_count AS SIGNED) AS like_count FROM articles a";

/// The select list and `FROM` of an article summary in this shape (a
/// later part's query cache keys its results by the SQL they came from).
pub fn summary_sql(shape: Shape) -> &'static str {
    match shape {
        Shape::Join => JOIN_SUMMARY,
        Shape::Denormalized => DENORM_SUMMARY,
    }
}

/// Articles a page holds.
pub const PAGE_SIZE: u32 = 20;
/// Comments an article page shows.
pub const COMMENTS_SHOWN: u32 = 20;

/// A page of an author's articles, newest first.
pub async fn by_author<'e, E: Executor<'e, Database = MySql>>(
    db: E,
    shape: Shape,
    author_id: u64,
    page: u32,
) -> sqlx::Result<Vec<ArticleSummary>> {
    let sql = format!(
        "{} WHERE a.author_id = ? ORDER BY a.published_at DESC LIMIT ? OFFSET ?",
        summary_sql(shape)
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(author_id)
        .bind(PAGE_SIZE)
        .bind(page.saturating_mul(PAGE_SIZE))
        .fetch_all(db)
        .await
}

/// The statements of [`page`] after the summary (`WHERE a.id = ?`).
pub const BODY_SQL: &str = "SELECT body FROM articles WHERE id = ?";
/// The latest comments of an article.
pub const COMMENTS_SQL: &str = "SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id = ? ORDER BY created_at DESC LIMIT ?";

/// One article's page, or `None`.
pub async fn page(pool: &MySqlPool, shape: Shape, id: u64) -> sqlx::Result<Option<ArticlePage>> {
    let sql = format!("{} WHERE a.id = ?", summary_sql(shape));
    let Some(summary): Option<ArticleSummary> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await?
    else {
        return Ok(None);
    };
    let body: String = sqlx::query_scalar(BODY_SQL)
        .bind(id)
        .fetch_one(pool)
        .await?;
    let comments = sqlx::query_as(COMMENTS_SQL)
        .bind(id)
        .bind(COMMENTS_SHOWN)
        .fetch_all(pool)
        .await?;
    Ok(Some(ArticlePage {
        summary,
        body,
        comments,
    }))
}

/// The latest comments of each article, one query per article: the N+1
/// anti-pattern. Returns the comments and the number of queries sent.
pub async fn comments_n_plus_1(
    pool: &MySqlPool,
    article_ids: &[u64],
    per_article: u32,
) -> sqlx::Result<(HashMap<u64, Vec<CommentView>>, usize)> {
    let mut out = HashMap::new();
    for id in article_ids {
        let comments: Vec<CommentView> = sqlx::query_as(
            "SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id = ? ORDER BY created_at DESC LIMIT ?",
        )
        .bind(id)
        .bind(per_article)
        .fetch_all(pool)
        .await?;
        out.insert(*id, comments);
    }
    Ok((out, article_ids.len()))
}

/// The same in one query, one round trip: a `UNION ALL` of one indexed,
/// `LIMIT`ed branch per article. (`IN (...)` with a window function is the
/// textbook batch, but it ranks *every* comment of the page's articles; on
/// hot articles with tens of thousands of comments that loses to N+1. The
/// demo measured both; see the guide.) Returns the comments and the number
/// of queries (1).
pub async fn comments_batched(
    pool: &MySqlPool,
    article_ids: &[u64],
    per_article: u32,
) -> sqlx::Result<(HashMap<u64, Vec<CommentView>>, usize)> {
    let mut out: HashMap<u64, Vec<CommentView>> =
        article_ids.iter().map(|id| (*id, Vec::new())).collect();
    if article_ids.is_empty() {
        return Ok((out, 0));
    }
    let mut q = QueryBuilder::new("");
    for (i, id) in article_ids.iter().enumerate() {
        if i > 0 {
            q.push(" UNION ALL ");
        }
        q.push(
            "(SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id = ",
        )
        .push_bind(*id)
        .push(" ORDER BY created_at DESC LIMIT ")
        .push_bind(per_article)
        .push(")");
    }
    let rows: Vec<CommentView> = q.build_query_as().fetch_all(pool).await?;
    for c in rows {
        out.entry(c.article_id).or_default().push(c);
    }
    Ok((out, 1))
}

/// Posts an article (its author name copied in, counters at zero); returns
/// its id. A user who never set a display name is shown by username.
pub async fn post<'e, E: Executor<'e, Database = MySql>>(
    db: E,
    author_id: u64,
    title: &str,
    body: &str,
    at: i64,
) -> sqlx::Result<u64> {
    let r = sqlx::query(
        "INSERT INTO articles (author_id, title, body, published_at, author_name) \
         SELECT ?, ?, ?, ?, IF(display_name = '', username, display_name) FROM users WHERE id = ?",
    )
    .bind(author_id)
    .bind(title)
    .bind(body)
    .bind(at)
    .bind(author_id)
    .execute(db)
    .await?;
    if r.rows_affected() == 0 {
        return Err(sqlx::Error::RowNotFound);
    }
    Ok(r.last_insert_id())
}

/// Locks an article's row for the rest of the transaction, so concurrent
/// writes to one article's counters queue instead of losing updates;
/// `RowNotFound` if there is no such article.
async fn lock_article(tx: &mut sqlx::Transaction<'_, MySql>, article_id: u64) -> sqlx::Result<()> {
    let exists: Option<u64> = sqlx::query_scalar("SELECT id FROM articles WHERE id = ? FOR UPDATE")
        .bind(article_id)
        .fetch_optional(&mut **tx)
        .await?;
    exists.map(drop).ok_or(sqlx::Error::RowNotFound)
}

/// Adds a comment. With [`Shape::Denormalized`], the article's counter is
/// bumped in the same transaction, so it can never disagree with the rows.
/// `RowNotFound` if the article does not exist.
pub async fn add_comment<'a, A>(
    db: A,
    shape: Shape,
    article_id: u64,
    author_id: u64,
    body: &str,
    at: i64,
) -> sqlx::Result<u64>
where
    A: sqlx::Acquire<'a, Database = MySql>,
{
    let mut tx = db.begin().await?;
    lock_article(&mut tx, article_id).await?;
    let id = sqlx::query(
        "INSERT INTO comments (article_id, author_id, body, created_at) VALUES (?, ?, ?, ?)",
    )
    .bind(article_id)
    .bind(author_id)
    .bind(body)
    .bind(at)
    .execute(&mut *tx)
    .await?
    .last_insert_id();
    if shape == Shape::Denormalized {
        sqlx::query("UPDATE articles SET comment_count = comment_count + 1 WHERE id = ?")
            .bind(article_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Likes an article once per user; returns whether it was new.
pub async fn add_like<'a, A>(db: A, article_id: u64, user_id: u64, at: i64) -> sqlx::Result<bool>
where
    A: sqlx::Acquire<'a, Database = MySql>,
{
    let mut tx = db.begin().await?;
    lock_article(&mut tx, article_id).await?;
    let new =
        sqlx::query("INSERT IGNORE INTO likes (article_id, user_id, created_at) VALUES (?, ?, ?)")
            .bind(article_id)
            .bind(user_id)
            .bind(at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
            == 1;
    if new {
        sqlx::query("UPDATE articles SET like_count = like_count + 1 WHERE id = ?")
            .bind(article_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(new)
}

/// Makes two users friends, both directions in one transaction, so a
/// friendship is never half there. The rows are taken lower id first:
/// two users befriending each other at once would otherwise each lock
/// "their" row and wait for the other's, a deadlock InnoDB breaks by
/// failing one of them (1213).
pub async fn befriend<'a, A>(db: A, user_id: u64, friend_id: u64, at: i64) -> sqlx::Result<()>
where
    A: sqlx::Acquire<'a, Database = MySql>,
{
    let (lo, hi) = (user_id.min(friend_id), user_id.max(friend_id));
    let mut tx = db.begin().await?;
    for (a, b) in [(lo, hi), (hi, lo)] {
        sqlx::query("INSERT IGNORE INTO friendships (user_id, friend_id, since) VALUES (?, ?, ?)")
            .bind(a)
            .bind(b)
            .bind(at)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await
}

/// Articles whose denormalized counters disagree with the rows (should be none).
pub async fn counter_mismatches(pool: &MySqlPool) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM articles a WHERE a.comment_count <> (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id) \
         OR a.like_count <> (SELECT COUNT(*) FROM likes l WHERE l.article_id = a.id)",
    )
    .fetch_one(pool)
    .await
}

/// The friends of a user, by id.
pub async fn friends<'e, E: Executor<'e, Database = MySql>>(
    db: E,
    user_id: u64,
) -> sqlx::Result<Vec<u64>> {
    sqlx::query_scalar("SELECT friend_id FROM friendships WHERE user_id = ? ORDER BY friend_id")
        .bind(user_id)
        .fetch_all(db)
        .await
}

/// The feed's JOIN (binds: the user, the limit).
pub const FEED_SQL: &str = "SELECT a.id, a.author_id, a.author_name, a.title, a.published_at, CAST(a.comment_count AS SIGNED) AS comment_count, \
     CAST(a.like_count AS SIGNED) AS like_count FROM friendships f JOIN articles a ON a.author_id = f.friend_id \
     WHERE f.user_id = ? ORDER BY a.published_at DESC, a.id DESC LIMIT ?";

/// The feed by SQL JOIN: friends' latest articles, in one query.
pub async fn feed_join<'e, E: Executor<'e, Database = MySql>>(
    db: E,
    user_id: u64,
    limit: u32,
) -> sqlx::Result<Vec<ArticleSummary>> {
    sqlx::query_as(FEED_SQL)
        .bind(user_id)
        .bind(limit)
        .fetch_all(db)
        .await
}
