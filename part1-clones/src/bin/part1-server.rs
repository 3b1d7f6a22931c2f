//! One clone of the part 1 app server. Configuration: `part1-server --help`
//! (every flag has an environment variable; defaults fit `./lab up`).

use clap::Parser;
use part1_clones::app::Application;
use part1_clones::config::ServerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = ServerConfig::parse();
    Application::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
