//! One clone of part 2's server: part 1's routes plus the data layer.
//! `part2-server --help` lists the flags; defaults fit `./lab up`.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part2_database::server::main()
}
