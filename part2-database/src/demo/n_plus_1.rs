//! Experiment 7: N+1 queries: the comments of a page of 20 articles, one query per
//! article, or one query for the page. How many queries each sent is
//! counted by MariaDB (`Com_select` on the connection that ran them, see
//! [`tuning::count_selects`]), not by the code that sent them.

use std::time::Instant;

use common::demo::figure;
use common::measure::{Latencies, fmt_us};
use common::results::Kind;

use super::Demo;
use crate::articles;
use crate::tuning;

/// Pages of the article ranking, each fetched both ways.
const PAGES: u64 = 100;

/// Both ways, over the same pages.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let cmp = "N+1 queries against one batched query (a page of 20 articles' comments)";
    for batched in [false, true] {
        let mut selects = 0;
        let mut lat = Latencies::new();
        for page in 0..PAGES {
            let ids: Vec<u64> = (0..20)
                .map(|k| demo.spec.article_popularity().id_of_rank(1 + page * 20 + k))
                .collect();
            let (took, counted) = tuning::count_selects(&demo.primary, |pool| async move {
                // Timed inside: the counting connection's setup is not the query's.
                let t = Instant::now();
                if batched {
                    articles::comments_batched(&pool, &ids, 5).await?;
                } else {
                    articles::comments_n_plus_1(&pool, &ids, 5).await?;
                }
                Ok(t.elapsed())
            })
            .await?;
            lat.record(took);
            selects += counted;
        }
        let s = lat.summary();
        let per_page = selects as f64 / PAGES as f64;
        let name = if batched {
            "batched (one query)"
        } else {
            "N+1"
        };
        figure(
            Kind::Measured,
            format!(
                "{name:<20} {per_page:>4.1} SELECTs a page (counted by MariaDB)  p50 {:>8}  p99 {:>8}",
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ),
        );
        demo.measured(
            cmp,
            &format!("{name}: queries"),
            per_page,
            "SELECTs a page",
            "counted by MariaDB's Com_select on the connection that ran them",
        );
        demo.measured(
            cmp,
            &format!("{name}: p50"),
            s.p50_us as f64,
            "µs",
            "latency of one page's comments",
        );
    }
    Ok(())
}
