//! Part 4's queue sweep: see `benches::sweep` for what it measures and why
//! it is a binary.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    benches::sweep::run(benches::sweep::SweepArgs::parse()).await
}
