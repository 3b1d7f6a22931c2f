//! The experiments of part 2 (`./lab tour part2`). Being written: until
//! then the demo records the part as not built.

/// Part 2's demo.
#[derive(Debug, Clone, clap::Parser)]
pub struct DemoArgs {}

/// Records the part as not built yet.
pub async fn run(_args: DemoArgs) -> anyhow::Result<()> {
    println!("Part 2's demo is not built yet: nothing to measure.");
    common::results::PartResults::not_built(crate::PART, crate::TITLE, crate::CLAIM)
        .write(&common::results::results_dir())?;
    Ok(())
}
