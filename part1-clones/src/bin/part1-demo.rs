//! Part 1's demo: `./lab tour part1`, or
//! `cargo run --release -p part1-clones --bin part1-demo` with the stack up.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part1_clones::demo::main()
}
