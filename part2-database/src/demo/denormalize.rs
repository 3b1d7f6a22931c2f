//! Experiment 5: Denormalization: a page of a popular author's articles by JOIN and
//! COUNT, against the copies and counters kept on the article row; then
//! what that costs the write (the counter is updated in the comment's own
//! transaction).

use std::sync::Arc;

use common::demo::figure;
use common::measure::{self, Load, fmt_us};
use common::results::Kind;

use super::Demo;
use crate::articles::{self, Shape};

/// Reads both ways under load, then writes both ways one at a time.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let authors: Arc<Vec<u64>> = Arc::new(
        (1..=20)
            .map(|r| demo.spec.user_popularity().id_of_rank(r))
            .collect(),
    );
    let cmp = "denormalization: a page of a popular author's articles";
    let mut throughput = Vec::new();
    for (shape, name) in [
        (Shape::Join, "JOIN + COUNT"),
        (Shape::Denormalized, "denormalized"),
    ] {
        let (pool, authors) = (demo.primary.clone(), authors.clone());
        let read = move |i: u64| {
            let (pool, authors) = (pool.clone(), authors.clone());
            async move {
                articles::by_author(&pool, shape, authors[(i % 20) as usize], 0)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
        };
        let load = Load::closed(4, demo.seconds());
        let runs = demo.load_runs(Kind::Measured, cmp, name, load, read).await;
        let mut t: Vec<f64> = runs.iter().map(|r| r.throughput).collect();
        t.sort_by(f64::total_cmp);
        throughput.push(t[t.len() / 2]);
    }
    figure(
        Kind::Measured,
        format!(
            "denormalized reads: {:.1}x the throughput of the join",
            throughput[1] / throughput[0].max(1e-9)
        ),
    );
    let cmp = "denormalization: the cost moves to the write";
    for (shape, name) in [
        (Shape::Join, "comment, no counter"),
        (Shape::Denormalized, "comment + counter"),
    ] {
        let pool = demo.primary.clone();
        let lat = measure::sequential(200, |i| {
            let pool = pool.clone();
            async move {
                articles::add_comment(&pool, shape, 1 + i % 100, 1, "write cost", 0)
                    .await
                    .map(drop)
            }
        })
        .await?
        .summary();
        figure(
            Kind::Measured,
            format!(
                "{name:<22} p50 {:>8}  p99 {:>8}",
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ),
        );
        demo.measured(
            cmp,
            &format!("{name}: p50"),
            lat.p50_us as f64,
            "µs",
            "latency of adding a comment",
        );
    }
    // The Join-shaped writes above skipped the counter on purpose; put it right.
    sqlx::query("UPDATE articles a SET comment_count = (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id) WHERE a.id <= 100")
        .execute(&demo.primary)
        .await?;
    counters_after_concurrent_writes(demo).await
}

/// Writers racing on the three hottest articles, then every article's
/// counters compared with the rows a JOIN counts: the copy is only worth
/// its speed if it stays right.
async fn counters_after_concurrent_writes(demo: &mut Demo) -> anyhow::Result<()> {
    let (writers, each) = (16u64, 20u64);
    let hot: Arc<Vec<u64>> = Arc::new(
        (1..=3)
            .map(|r| demo.spec.article_popularity().id_of_rank(r))
            .collect(),
    );
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..writers {
        let (pool, hot) = (demo.primary.clone(), hot.clone());
        tasks.spawn(async move {
            for i in 0..each {
                let article = hot[((w + i) % 3) as usize];
                articles::add_comment(&pool, Shape::Denormalized, article, w + 1, "race", 0)
                    .await?;
                articles::add_like(&pool, article, 1 + (w * 7 + i) % 40, 0).await?;
            }
            Ok::<(), sqlx::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    let differ = articles::counter_mismatches(&demo.primary).await?;
    figure(
        Kind::Measured,
        format!(
            "{writers} writers x {each} comments and likes on the 3 hottest articles: {differ} articles' counters differ from the rows"
        ),
    );
    demo.measured(
        "denormalization: counters after concurrent writes",
        "counters that differ",
        differ as f64,
        "articles",
        "comment_count and like_count compared with COUNT(*) of the rows, every article",
    );
    Ok(())
}
