//! One clone of the part 1 app server. Configuration: `part1-server --help`
//! (every flag has an environment variable; defaults fit `./lab up`).
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part1_clones::app::main()
}
