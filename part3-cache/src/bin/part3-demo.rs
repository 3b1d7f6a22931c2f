//! Part 3's demo: `./lab tour part3`, or
//! `cargo run --release -p part3-cache --bin part3-demo` with the stack up.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    part3_cache::demo::run(clap::Parser::parse()).await
}
