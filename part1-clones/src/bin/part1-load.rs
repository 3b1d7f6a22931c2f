//! Migrates part 1's tables and loads the dataset's users (`user1`..),
//! so they log in with the dataset password. Idempotent: users already
//! there are kept. `./lab up part1` runs it before starting the clones;
//! configuration: `part1-load --help` (`LOAD_DATASET`, `DATASET_SEED`).

use anyhow::Context;
use clap::Parser;
use part1_clones::config::LoadConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = LoadConfig::parse();
    let pool = part1_clones::app::connect_database(
        &config.stack.mariadb_primary_url,
        std::time::Duration::from_secs(30),
    )
    .await?;
    let spec = common::dataset::DatasetSpec::new(config.dataset_seed, config.scale);
    let new = part1_clones::users::Users::new(pool)
        .load_dataset(&spec)
        .await
        .context("loading the dataset's users")?;
    tracing::info!(new, users = spec.sizes.users, "dataset users loaded");
    println!("part1-load: {new} new users of {}", spec.sizes.users);
    Ok(())
}
