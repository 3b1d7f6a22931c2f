//! Part 4's demo. Not built yet: it says so and exits.

fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    part4_async::placeholder_demo()
}
