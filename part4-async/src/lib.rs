//! # Part 4: Asynchronism
//!
//! > Do heavy work ahead of time (precompute static pages) or, when it is asked for, put it on a queue, answer at once, let workers do it and tell the user when it is done.
//!
//! Precomputed HTML served by nginx, and jobs on RabbitMQ and Redis lists with workers, acknowledgements and redelivery, measured against doing the work in the request.
//!
//! **Not built yet.** This crate holds the lesson's text and a placeholder
//! demo that says so; its issue is not filed yet. The demo writes
//! `target/lab/results/part4.json` marked "not built", so the report lists
//! this part without inventing a single number.

/// The part's number.
pub const PART: u8 = 4;
/// The part's title.
pub const TITLE: &str = "Asynchronism";
/// The article's claim, as the report quotes it.
pub const CLAIM: &str = "Do heavy work ahead of time (precompute static pages) or, when it is asked for, put it on a queue, answer at once, let workers do it and tell the user when it is done.";

/// Says plainly that this part is not built, and records that for the report.
pub fn placeholder_demo() -> anyhow::Result<()> {
    println!("Part {PART} ({TITLE}) is not built yet: there is nothing to run or measure.");
    let path = common::results::PartResults::not_built(PART, TITLE, CLAIM)
        .write(&common::results::results_dir())?;
    println!("recorded as not built in {}", path.display());
    Ok(())
}
