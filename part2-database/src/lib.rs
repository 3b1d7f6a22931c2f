//! # Part 2: Database
//!
//! > The database becomes the bottleneck. Either stay with MySQL and replicate (writes to the primary, reads from replicas), scale up, shard, denormalize and tune SQL, or move to NoSQL early, denormalize, and do joins in application code.
//!
//! Both paths, on the same dataset, measured side by side: read/write splitting and replication lag, read-your-writes, sharding and resharding, denormalization, indexes and N+1, and MongoDB with joins in application code.
//!
//! **Not built yet.** This crate holds the lesson's text and a placeholder
//! demo that says so; the work is tracked as issue 4. The demo writes
//! `target/lab/results/part2.json` marked "not built", so the report lists
//! this part without inventing a single number.

/// The part's number.
pub const PART: u8 = 2;
/// The part's title.
pub const TITLE: &str = "Database";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "The database becomes the bottleneck. Either stay with MySQL and replicate (writes to the primary, reads from replicas), scale up, shard, denormalize and tune SQL, or move to NoSQL early, denormalize, and do joins in application code.";

/// Says plainly that this part is not built, and records that for the report.
pub fn placeholder_demo() -> anyhow::Result<()> {
    println!("Part {PART} ({TITLE}) is not built yet: there is nothing to run or measure.");
    let path = common::results::PartResults::not_built(PART, TITLE, CLAIM)
        .write(&common::results::results_dir())?;
    println!("recorded as not built in {}", path.display());
    Ok(())
}
