//! Part 4's queue sweep: see `benches::sweep` for what it measures and why
//! it is a binary.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    benches::sweep::main()
}
