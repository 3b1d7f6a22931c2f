//! Migrates parts 1 and 2 and loads the whole dataset (users, friendships,
//! articles, comments, likes) into the `lab` database. Idempotent: a scale
//! already loaded is skipped. `./lab up part2` runs it before starting the
//! clones; configuration: `part2-load --help` (`LOAD_DATASET`, default
//! `default`; `DATASET_SEED`; `MARIADB_PRIMARY_URL`).
//!
//! ```text
//! cargo run -p part2-database --bin part2-load -- --scale tiny
//! ```

use clap::Parser;
use part1_clones::config::LoadConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    // The same flags as part1-load: one dataset, one way to ask for it.
    let config = LoadConfig::parse();
    let spec = common::dataset::DatasetSpec::new(config.dataset_seed, config.scale);
    match part2_database::schema::prepare(&config.stack.mariadb_primary_url, &spec).await? {
        Some(stats) => println!(
            "part2-load: {} rows in {:.1} s ({:.0} rows/s)",
            stats.rows,
            stats.seconds,
            stats.rate()
        ),
        None => println!("part2-load: the dataset is already loaded"),
    }
    Ok(())
}
