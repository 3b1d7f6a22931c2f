//! Part 3's demo: `./lab tour part3`, or
//! `cargo run --release -p part3-cache --bin part3-demo` with the stack up.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part3_cache::demo::main()
}
