//! Copies the social blog from MariaDB into MongoDB documents, denormalizing
//! as it goes, then checks that every count matches (exit 1 if not).
//!
//! ```text
//! cargo run --release -p part2-database --bin part2-migrate -- --mongo-database lab
//! ```
//!
//! Source: `MARIADB_PRIMARY_URL` (the `lab` database `./lab up part2` loads);
//! target: `MONGO_URL`, database `--mongo-database`, emptied first.
//!
//! The work is in the library ([`common::entry`] says why).

fn main() -> anyhow::Result<()> {
    part2_database::mongo::migrate_main()
}
