//! Experiment 6: SQL tuning: "the comments of an article" without its index (dropped
//! through [`drill::with_index_dropped`], which creates it again exactly
//! as it was, whatever happens) and with it, with EXPLAIN's plan for each.

use common::demo::figure;
use common::measure::{self, LatencySummary, fmt_us};
use common::results::Kind;
use sqlx::MySqlPool;

use super::Demo;
use crate::drill;
use crate::tuning::{self, Plan};

/// EXPLAIN and `n` sequential runs of the query over the ten hottest articles.
async fn measure_query(
    pool: &MySqlPool,
    hot: &[u64],
    n: u64,
) -> anyhow::Result<(Plan, LatencySummary)> {
    let plan = tuning::explain_comments(pool, hot[0]).await?;
    let lat = measure::sequential(n, |i| {
        let (pool, id) = (pool.clone(), hot[(i as usize) % hot.len()]);
        async move {
            sqlx::query(tuning::COMMENTS_OF_ARTICLE)
                .bind(id)
                .fetch_all(&pool)
                .await
                .map(drop)
        }
    })
    .await?;
    Ok((plan, lat.summary()))
}

/// Without the index, then with it.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let hot: Vec<u64> = (1..=10)
        .map(|r| demo.spec.article_popularity().id_of_rank(r))
        .collect();
    let pool = demo.primary.clone();
    // A full scan per query: fewer runs, or the lesson takes minutes.
    let without = drill::with_index_dropped(&pool, "comments", tuning::COMMENTS_INDEX, || {
        measure_query(&pool, &hot, 20)
    })
    .await?;
    let with = measure_query(&pool, &hot, 200).await?;
    let cmp = "SQL tuning: comments of an article, without and with its index";
    for (name, (plan, lat)) in [("without the index", without), ("with the index", with)] {
        figure(Kind::Measured, format!("{name:<18} EXPLAIN: {plan}"));
        figure(
            Kind::Measured,
            format!(
                "{:<18} p50 {:>8}  p99 {:>8}",
                "",
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ),
        );
        demo.measured(
            cmp,
            &format!("{name}: p50"),
            lat.p50_us as f64,
            "µs",
            "latency of the query",
        );
        demo.measured(
            cmp,
            &format!("{name}: rows examined"),
            plan.rows as f64,
            "rows",
            "EXPLAIN's estimate of rows read",
        );
    }
    Ok(())
}
