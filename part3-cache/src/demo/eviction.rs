//! Not written yet (see the table in [`super`]).

use super::Demo;

/// Runs the experiment.
pub async fn run(_demo: &mut Demo) -> anyhow::Result<()> {
    common::demo::line("not measured yet");
    Ok(())
}
