//! One clone of part 2's server: part 1's routes plus the data layer.
//! `part2-server --help` lists the flags; defaults fit `./lab up`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = part2_database::server::Part2Config::parse();
    part2_database::server::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
