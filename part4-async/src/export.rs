//! The heavy job: export all of a user's articles, each with its comments,
//! as one JSON document the user downloads when it is done.
//!
//! Real work with a real result, but on the lab's dataset it takes
//! milliseconds, too fast for the lesson to show (a request that waits for
//! it would hardly notice). So the job also has a **stated minimum
//! duration**, `JOB_MIN_MS` (default 1000 ms): the work is cut into
//! [`STEPS`] slices and each slice waits until its share of the minimum has
//! passed, reporting progress as it goes. That wait stands for the slow
//! part of a real export (rendering a PDF, zipping images, calling a slow
//! service); figures measured with it say so, and `JOB_MIN_MS=0` gives the
//! bare work.
//!
//! The reads avoid part 2's N+1: one query for the articles, one per slice
//! for the comments of that slice's articles (`WHERE article_id IN (...)`).

use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use sqlx::{MySqlPool, QueryBuilder, Row};

/// Progress is reported this many times (every 10 %).
pub const STEPS: usize = 10;

/// The export document, as stored in `job_results`.
#[derive(Debug, Serialize)]
pub struct ExportDocument {
    /// Whose articles these are.
    pub user_id: u64,
    /// When the export ran (milliseconds since the epoch).
    pub generated_at: i64,
    /// How many articles and comments it holds.
    pub counts: Counts,
    /// The articles, oldest first, each with its comments.
    pub articles: Vec<ArticleExport>,
}

/// The document's totals.
#[derive(Debug, Serialize, Default)]
pub struct Counts {
    /// Articles exported.
    pub articles: usize,
    /// Comments exported (on those articles, by anyone).
    pub comments: usize,
}

/// One article and its comments.
#[derive(Debug, Serialize)]
pub struct ArticleExport {
    /// The article's id.
    pub id: u64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// When it was published (seconds since the epoch, as in part 2).
    pub published_at: i64,
    /// Its comments, oldest first.
    pub comments: Vec<CommentExport>,
}

/// One comment.
#[derive(Debug, Serialize)]
pub struct CommentExport {
    /// The comment's id.
    pub id: u64,
    /// Who wrote it.
    pub author_id: u64,
    /// What they wrote.
    pub body: String,
    /// When (seconds since the epoch).
    pub created_at: i64,
}

/// Builds `user_id`'s export, taking at least `min_duration` (see the
/// module docs), calling `progress` with 10, 20, ... 90 percent as slices
/// finish. 100 % is written by the commit that stores the result.
pub async fn export<F, Fut>(
    pool: &MySqlPool,
    user_id: u64,
    min_duration: Duration,
    mut progress: F,
) -> anyhow::Result<ExportDocument>
where
    F: FnMut(u8) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let start = tokio::time::Instant::now();
    let rows = sqlx::query(
        "SELECT id, title, body, published_at FROM articles \
         WHERE author_id = ? ORDER BY published_at, id",
    )
    .bind(user_id)
    .fetch_all(pool)
    .await
    .with_context(|| format!("reading user {user_id}'s articles"))?;
    let mut articles = rows
        .iter()
        .map(|r| {
            Ok(ArticleExport {
                id: r.try_get("id")?,
                title: r.try_get("title")?,
                body: r.try_get("body")?,
                published_at: r.try_get("published_at")?,
                comments: Vec::new(),
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;

    let per_step = articles.len().div_ceil(STEPS).max(1);
    let mut counts = Counts {
        articles: articles.len(),
        comments: 0,
    };
    for step in 0..STEPS {
        let from = (step * per_step).min(articles.len());
        let to = ((step + 1) * per_step).min(articles.len());
        let slice = &mut articles[from..to];
        if !slice.is_empty() {
            let mut q = QueryBuilder::new(
                "SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id IN ",
            );
            q.push("(");
            let mut ids = q.separated(", ");
            for a in slice.iter() {
                ids.push_bind(a.id);
            }
            q.push(") ORDER BY created_at, id");
            let comments =
                q.build().fetch_all(pool).await.with_context(|| {
                    format!("reading the comments of user {user_id}'s articles")
                })?;
            for c in comments {
                let article_id: u64 = c.try_get("article_id")?;
                if let Some(a) = slice.iter_mut().find(|a| a.id == article_id) {
                    a.comments.push(CommentExport {
                        id: c.try_get("id")?,
                        author_id: c.try_get("author_id")?,
                        body: c.try_get("body")?,
                        created_at: c.try_get("created_at")?,
                    });
                    counts.comments += 1;
                }
            }
        }
        // The stated minimum: this slice ends no earlier than its share.
        let due = start + min_duration.mul_f64((step + 1) as f64 / STEPS as f64);
        tokio::time::sleep_until(due).await;
        if step + 1 < STEPS {
            progress(((step + 1) * 100 / STEPS) as u8).await?;
        }
    }
    Ok(ExportDocument {
        user_id,
        generated_at: crate::job::now_ms(),
        counts,
        articles,
    })
}
