//! Experiment 0: The dataset: the same social blog for every experiment, loaded
//! afresh into the demo's own database, then waited for on the replica.

use std::time::{Duration, Instant};

use common::demo::figure;
use common::results::Kind;

use super::Demo;
use crate::{replication, schema};

/// Loads the dataset into the primary and waits for the replica.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    schema::migrate(&demo.primary).await?;
    let stats = schema::load(&demo.primary, &demo.spec).await?;
    figure(
        Kind::Measured,
        format!(
            "{stats}: {:.0} rows/s (batches of 1,000 rows)",
            stats.rate()
        ),
    );
    let cmp = "loading the dataset";
    demo.measured(
        cmp,
        "rows loaded",
        stats.rows as f64,
        "rows",
        "users, friendships (both ways), articles, comments, likes",
    );
    demo.measured(
        cmp,
        "load rate",
        stats.rate(),
        "rows/s",
        "multi-row INSERTs of 1,000 rows into the primary",
    );
    let start = Instant::now();
    let lag =
        replication::measure_lag(&demo.primary, &demo.replica, Duration::from_secs(300)).await?;
    anyhow::ensure!(
        lag.is_some(),
        "the replica did not catch up with the load in 5 minutes: ./lab status"
    );
    figure(
        Kind::Measured,
        format!(
            "the replica had applied it all {:.1} s later",
            start.elapsed().as_secs_f64()
        ),
    );
    Ok(())
}
