//! One clone of part 3's server: part 2's server plus the cache.
//! `part3-server --help` lists the flags; defaults fit `./lab up part3`
//! (the object cache on Memcached, stampede protection by lease).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = part3_cache::server::Part3Config::parse();
    part3_cache::server::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
