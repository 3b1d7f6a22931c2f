//! Part 3's demo. Not built yet: it says so and exits.

fn main() -> anyhow::Result<()> {
    part3_cache::placeholder_demo()
}
