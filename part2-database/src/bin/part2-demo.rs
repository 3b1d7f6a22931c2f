//! Part 2's demo: `./lab tour part2`, or
//! `cargo run --release -p part2-database --bin part2-demo` with the stack up.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part2_database::demo::main()
}
