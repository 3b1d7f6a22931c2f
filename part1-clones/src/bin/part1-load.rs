//! Migrates part 1's tables and loads the dataset's users (`user1`..),
//! so they log in with the dataset password. Idempotent: users already
//! there are kept. `./lab up part1` runs it before starting the clones;
//! configuration: `part1-load --help` (`LOAD_DATASET`, `DATASET_SEED`).
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part1_clones::users::load_main()
}
