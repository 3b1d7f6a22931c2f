//! Migrates parts 1 and 2 and loads the whole dataset (users, friendships,
//! articles, comments, likes) into the `lab` database. Idempotent: a scale
//! already loaded is skipped. `./lab up part2` runs it before starting the
//! clones; configuration: `part2-load --help` (`LOAD_DATASET`, default
//! `default`; `DATASET_SEED`; `MARIADB_PRIMARY_URL`).
//!
//! ```text
//! cargo run -p part2-database --bin part2-load -- --scale tiny
//! ```
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part2_database::schema::load_main()
}
