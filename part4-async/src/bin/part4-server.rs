//! One clone of part 4's server: part 3's server plus jobs
//! (`POST /jobs`, `GET /jobs/{id}`, its result and its events).
//! `part4-server --help` lists the flags; the jobs are done by
//! `part4-worker` processes (or, with `--jobs sync`, the anti-pattern,
//! inside the request). See `part4_async::server`.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let config = part4_async::server::Part4Config::parse();
    part4_async::server::build(config)
        .await?
        .run_until_stopped()
        .await?;
    Ok(())
}
