//! Part 2's demo: `./lab tour part2`, or
//! `cargo run --release -p part2-database --bin part2-demo` with the stack up.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    part2_database::demo::run(clap::Parser::parse()).await
}
