//! Part 4's demo: `./lab tour part4`, or
//! `cargo run --release -p part4-async --bin part4-demo` with the stack up
//! (`DEMO_SECONDS=1 DEMO_REUSE=true` for a quick look). The experiments
//! are listed in `part4_async::demo`.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part4_async::demo::main()
}
