//! What every part's demo shares: its arguments and the way it prints.
//!
//! A demo (`partN-demo`, run by `./lab tour`) is a lesson with numbers:
//! for each experiment it prints the article's claim ([`lesson`]), then
//! what it measured, one indented line each ([`line()`], [`figure()`]), and
//! records every figure, with its kind, in `target/lab/results/partN.json`.
//!
//! Each part's own `clap::Parser` flattens [`DemoArgs`]:
//!
//! | flag | variable | default | what |
//! |---|---|---|---|
//! | `--seconds` | `DEMO_SECONDS` | 3 | length of each load run |
//! | `--repeat` | `DEMO_REPEAT` | 1 | how many times the headline figures are measured; with more than 1 the results keep min / median / max |
//! | `--results-dir` | `LAB_RESULTS_DIR` | `target/lab/results` | where `partN.json` goes |
//!
//! plus every URL of [`StackConfig`].

use std::path::PathBuf;
use std::time::Duration;

use crate::config::StackConfig;
use crate::measure::{Load, LoadReport};
use crate::results::{Kind, PartResults};

/// The arguments every demo takes; flatten them with `#[command(flatten)]`.
#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Length of each load run, in seconds.
    #[arg(long, env = "DEMO_SECONDS", default_value_t = 3)]
    pub seconds: u64,
    /// How many times to measure the headline figures; the results keep
    /// their min / median / max. 1 keeps the tour brisk.
    #[arg(long, env = "DEMO_REPEAT", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=20))]
    pub repeat: u32,
    /// Where to write `partN.json`.
    #[arg(long, env = "LAB_RESULTS_DIR", default_value = crate::config::defaults::LAB_RESULTS_DIR)]
    pub results_dir: PathBuf,
    /// The stack's URLs.
    #[command(flatten)]
    pub stack: StackConfig,
}

impl DemoArgs {
    /// `--seconds` as a duration.
    pub fn load_time(&self) -> Duration {
        Duration::from_secs(self.seconds)
    }
}

/// Prints an experiment's heading and the claim it tests.
pub fn lesson(n: u32, title: &str, text: &str) {
    println!("\n── {n}. {title}\n   {text}");
}

/// Prints one indented line of what an experiment saw.
pub fn line(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

/// Prints one figure with its kind, the way the report shows it:
/// `[measured] failed requests: 0 requests`.
pub fn figure(kind: Kind, text: impl AsRef<str>) {
    println!("   [{kind}] {}", text.as_ref());
}

/// Now, in Unix seconds.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A headline load run, measured `repeat` times: prints each run with its
/// kind and records the median with its spread in `results` (what each
/// part's `Demo::load_runs` does).
pub async fn load_runs<F, Fut>(
    results: &mut PartResults,
    repeat: u32,
    kind: Kind,
    comparison: &str,
    name: &str,
    load: Load,
    request: F,
) -> Vec<LoadReport>
where
    F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut runs = Vec::new();
    for _ in 0..repeat.max(1) {
        let report = crate::measure::run_load(name, load, request.clone()).await;
        figure(kind, report.line());
        runs.push(report);
    }
    results.load_runs(kind, comparison, &runs);
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        demo: DemoArgs,
    }

    #[test]
    fn a_repeat_of_zero_is_refused_with_the_flag_named() {
        let err = Cli::try_parse_from(["demo", "--repeat", "0"])
            .err()
            .expect("0 repetitions is not a run");
        assert!(err.to_string().contains("--repeat"), "{err}");
        let ok = Cli::try_parse_from(["demo", "--repeat", "3", "--seconds", "2"]).unwrap();
        assert_eq!((ok.demo.repeat, ok.demo.seconds), (3, 2));
    }
}
