//! Builds `target/lab/report/{report.md,index.html}` from the results files
//! the demos wrote, with the live page's screenshot if `./lab test` left
//! one. `./lab tour` runs it last, `./lab test` too; run it alone with
//! `cargo run -p common --bin lab-report`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use common::report::LiveShot;
use common::results::PartResults;

/// Builds the lab report from `target/lab/results/*.json`.
#[derive(Parser)]
struct Args {
    /// Where the demos wrote their results.
    #[arg(long, env = "LAB_RESULTS_DIR", default_value = common::config::defaults::LAB_RESULTS_DIR)]
    results_dir: PathBuf,
    /// Where to write the report.
    #[arg(long, env = "LAB_REPORT_DIR", default_value = "target/lab/report")]
    report_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = Args::parse();
    let results = PartResults::read_all(&args.results_dir)?;
    std::fs::create_dir_all(&args.report_dir)
        .with_context(|| format!("creating {}", args.report_dir.display()))?;
    let md = args.report_dir.join("report.md");
    let html = args.report_dir.join("index.html");
    // The live page's screenshot, if its browser test (`./lab test`) left
    // one beside the report.
    let live = LiveShot::read(&args.report_dir);
    std::fs::write(&md, common::report::markdown(&results, live.as_ref()))
        .with_context(|| format!("writing {}", md.display()))?;
    std::fs::write(&html, common::report::html(&results, live.as_ref()))
        .with_context(|| format!("writing {}", html.display()))?;
    println!("report: {} and {}", md.display(), html.display());
    Ok(())
}
