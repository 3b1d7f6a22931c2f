//! Part 4's demo. Not built yet: it says so and exits.

fn main() -> anyhow::Result<()> {
    part4_async::placeholder_demo()
}
