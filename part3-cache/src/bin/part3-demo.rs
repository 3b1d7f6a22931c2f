//! Part 3's demo. Not built yet: the server is (`part3-server`), the
//! measured experiments are not; it says so and records no figures.

fn main() -> anyhow::Result<()> {
    part3_cache::placeholder_demo()
}
