//! # Part 2: Database
//!
//! > The database becomes the bottleneck. Path 1: stay with MySQL,
//! > replicate (writes to the primary, reads from replicas), scale the
//! > primary up, then shard, denormalize and tune SQL; it works but gets
//! > complex. Path 2: move to NoSQL early, denormalize, no joins in the
//! > database, joins in application code.
//!
//! Both paths, on the same dataset, measured side by side.
//!
//! ## Reading order
//!
//! 1. [`schema`]: the social blog in MariaDB, migrations, a batched loader.
//! 2. [`articles`]: reads by JOIN against denormalized columns kept right in
//!    the write's transaction; N+1 queries against one batched query.
//! 3. [`tuning`]: the same query without its index and with it, and EXPLAIN.
//! 4. [`replication`]: the read/write split pool with health checks and
//!    fallback; replication lag; read-your-writes three ways.
//! 5. [`sharding`]: placement (modulo, consistent hashing, directory), ids
//!    unique across shards, scatter-gather across shards.
//! 6. [`mongo`]: documents, joins in application code, the migration.
//! 7. [`drill`]: breaking a shared server on purpose (replica SQL thread,
//!    buffer pool, an index) with guards that always put it back.
//! 8. [`demo`]: the experiments of `./lab tour part2`, one file each.
//!
//! The guide is `docs/part2-database.md`.
//!
//! ## Configuration
//!
//! `part2-server` takes every flag and variable of part 1's clone, plus
//! `PIN_WINDOW_MS` (`--pin-window-ms`, default `2000`). The demo:
//! `DEMO_SCALE` (`default`), `DEMO_MONGO_SCALE` (`tiny`), `DEMO_SECONDS`
//! (`3`), `DEMO_DATABASE` (`demo_part2`), `MARIADB_PRIMARY_ADMIN_URL` and
//! `MARIADB_REPLICA_ADMIN_URL` (the `labadmin` logins). `part2-migrate`:
//! `MONGO_DATABASE` (`lab`). And the stack's URLs, as everywhere.

pub mod articles;
pub mod demo;
pub mod drill;
pub mod mongo;
pub mod replication;
pub mod schema;
pub mod server;
pub mod sharding;
pub mod tuning;

/// The part's number.
pub const PART: u8 = 2;
/// The part's title.
pub const TITLE: &str = "Database";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "The database becomes the bottleneck. Either stay with MySQL and replicate (writes to the primary, reads from replicas), scale up, shard, denormalize and tune SQL, or move to NoSQL early, denormalize, and do joins in application code.";
