//! Part 1's demo: `./lab tour part1`, or
//! `cargo run --release -p part1-clones --bin part1-demo` with the stack up.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    part1_clones::demo::run(clap::Parser::parse()).await
}
