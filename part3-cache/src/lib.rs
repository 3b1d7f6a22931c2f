//! # Part 3: Cache
//!
//! > Put an in-memory cache between the application and the database. Cache assembled objects, not hashed queries, because an object can be invalidated when it changes: sessions, fully rendered articles, activity streams, friend graphs.
//!
//! The query cache and the object cache as two implementations of one trait, with hit rates, invalidation and the database load they save.
//!
//! **Not built yet.** This crate holds the lesson's text and a placeholder
//! demo that says so; its issue is not filed yet. The demo writes
//! `target/lab/results/part3.json` marked "not built", so the report lists
//! this part without inventing a single number.

/// The part's number.
pub const PART: u8 = 3;
/// The part's title.
pub const TITLE: &str = "Cache";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "Put an in-memory cache between the application and the database. Cache assembled objects, not hashed queries, because an object can be invalidated when it changes: sessions, fully rendered articles, activity streams, friend graphs.";

/// Says plainly that this part is not built, and records that for the report.
pub fn placeholder_demo() -> anyhow::Result<()> {
    println!("Part {PART} ({TITLE}) is not built yet: there is nothing to run or measure.");
    let path = common::results::PartResults::not_built(PART, TITLE, CLAIM)
        .write(&common::results::results_dir())?;
    println!("recorded as not built in {}", path.display());
    Ok(())
}
