//! Part 2's demo. Not built yet: it says so and exits.

fn main() -> anyhow::Result<()> {
    part2_database::placeholder_demo()
}
