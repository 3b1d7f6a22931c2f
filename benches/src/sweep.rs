//! The queue sweep (`part4-sweep`): RabbitMQ's throughput over prefetch
//! and confirm window, and the Redis reliable queue's over consumers and prefetch,
//! written into the lab report as curves.
//!
//! ```text
//! cargo run -p benches --release --bin part4-sweep            # every point
//! cargo run -p benches --bin part4-sweep -- --messages 500    # a quick look
//! ```
//!
//! Why a binary and not criterion: criterion times functions and prints
//! each one's estimate; a sweep over two parameters (5 prefetch values x 5
//! windows) is a chart, and the lab's report draws charts from
//! `target/lab/results/part4.json` only. So each point here is one run of
//! [`crate::queue_load`] (the same code as the criterion group
//! `throughput`), printed as it comes and added to that file as a
//! [`Curve`]: the curves and figures of an earlier sweep are replaced,
//! the demo's left as they are. Run it after the demo: the demo writes the
//! file afresh.
//!
//! Every point is measured: jobs counted and timed on this machine, from
//! the first publish to the last ack. The machine's two cores run the
//! broker, Redis and this client together, so the figures are what this
//! box does, not what RabbitMQ or Redis can do on a server of their own.

use std::path::PathBuf;

use anyhow::Context;
use common::demo::figure;
use common::results::{Axis, Curve, Kind, PartResults, Series};

use crate::queue_load::{self, rate};

/// The comparison the sweep's figures go under in the report.
pub const COMPARISON: &str = "queue throughput (part4-sweep)";
/// The RabbitMQ curve's title.
pub const RABBITMQ_CURVE: &str = "RabbitMQ publish+consume with confirms and acks";
/// The Redis curve's title.
pub const REDIS_CURVE: &str = "Redis reliable queue: enqueue, batched take, ack";

/// The sweep's flags.
#[derive(Debug, Clone, clap::Parser)]
#[command(about = "Part 4's queue sweep: throughput over prefetch, confirm window and consumers")]
pub struct SweepArgs {
    /// Jobs per point.
    #[arg(long, env = "SWEEP_MESSAGES", default_value_t = 5000)]
    pub messages: u64,
    /// RabbitMQ prefetch values (one line each on the chart).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 10, 50, 250, 1000])]
    pub prefetch: Vec<u16>,
    /// Confirm windows (outstanding publishes; the x axis).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 16, 128, 512, 2048])]
    pub window: Vec<usize>,
    /// Redis consumer counts (the x axis of the Redis curve).
    #[arg(long, value_delimiter = ',', default_values_t = [1usize, 4, 16, 64])]
    pub redis_consumers: Vec<usize>,
    /// Redis prefetch values: jobs a consumer takes per round trip (one
    /// line each on the Redis chart).
    #[arg(long, value_delimiter = ',', default_values_t = [1u16, 100])]
    pub redis_prefetch: Vec<u16>,
    /// The Redis producer's outstanding `LPUSH`es.
    #[arg(long, default_value_t = 128)]
    pub redis_window: usize,
    /// Skip RabbitMQ or Redis.
    #[arg(long, value_enum, default_value = "both")]
    pub only: Only,
    /// Where `part4.json` is (`LAB_RESULTS_DIR`, default `target/lab/results`).
    #[arg(long, env = "LAB_RESULTS_DIR", default_value = common::config::defaults::LAB_RESULTS_DIR)]
    pub results_dir: PathBuf,
}

/// Which backends to sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    /// RabbitMQ and Redis.
    Both,
    /// RabbitMQ only.
    Rabbitmq,
    /// Redis only.
    Redis,
}

/// A few hundred jobs before each point, not timed: connections warm, the
/// queue's first segment written.
fn warm_up(messages: u64) -> u64 {
    (messages / 10).clamp(50, 500)
}

/// `part4-sweep`'s `main`: the binary is one line ([`common::entry`]
/// says why).
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async {
        use clap::Parser;
        run(SweepArgs::parse()).await
    })
}

/// Runs the sweep, prints each point, and writes the curves.
pub async fn run(args: SweepArgs) -> anyhow::Result<()> {
    let stack = common::config::StackConfig::from_env()?;
    let n = args.messages.max(1);
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    println!(
        "Part 4 queue sweep: {n} jobs per point, {profile} build, on {}",
        common::results::Machine::detect().line()
    );
    let mut curves = Vec::new();
    let mut figures = Vec::new();

    if args.only != Only::Redis {
        let mut series = Vec::new();
        let mut best: Option<(f64, String)> = None;
        for &prefetch in &args.prefetch {
            let mut points = Vec::new();
            for &window in &args.window {
                let rig = queue_load::rabbitmq(&stack, "sweep4", prefetch, window).await?;
                let (per_second, label) = point(rig, n, "msg/s").await?;
                points.push((window as f64, per_second));
                if best.as_ref().is_none_or(|(b, _)| per_second > *b) {
                    best = Some((per_second, label));
                }
            }
            series.push(Series {
                name: format!("prefetch {prefetch}"),
                points,
            });
        }
        curves.push(Curve {
            title: RABBITMQ_CURVE.into(),
            shows: format!(
                "jobs per second through a durable quorum queue, {n} per point: persistent, mandatory publishes awaiting confirms (at most `window` outstanding) and one consumer acking each job, with `prefetch` unacked jobs pushed ahead; the goal is 20k msg/s"
            ),
            kind: Kind::Measured,
            x: Axis::new("confirm window (outstanding publishes)", ""),
            y: Axis::new("throughput", "msg/s"),
            series,
        });
        if let Some((value, label)) = best {
            figures.push((
                format!("RabbitMQ, best point ({label})"),
                value,
                "msg/s",
                "publish+consume with confirms and acks, the sweep's best setting (goal: 20k msg/s)",
            ));
        }
    }

    if args.only != Only::Rabbitmq {
        let mut series = Vec::new();
        let mut best: Option<(f64, String)> = None;
        for &prefetch in &args.redis_prefetch {
            let mut points = Vec::new();
            for &consumers in &args.redis_consumers {
                let rig =
                    queue_load::redis(&stack, "sweep4", consumers, prefetch, args.redis_window)
                        .await?;
                let (per_second, label) = point(rig, n, "jobs/s").await?;
                points.push((consumers as f64, per_second));
                if best.as_ref().is_none_or(|(b, _)| per_second > *b) {
                    best = Some((per_second, label));
                }
            }
            series.push(Series {
                name: format!("prefetch {prefetch}"),
                points,
            });
        }
        curves.push(Curve {
            title: REDIS_CURVE.into(),
            shows: format!(
                "jobs per second through the Redis reliable queue, {n} per point: LPUSH ({} outstanding), up to `prefetch` jobs moved into each consumer's processing list per round trip with their delivery counts (BLMOVE when the queue is empty), acks one at a time with prefetch 1 and batched (one Lua call before the next take) above it; the goal is 30k jobs/s",
                args.redis_window
            ),
            kind: Kind::Measured,
            x: Axis::new("consumers", ""),
            y: Axis::new("throughput", "jobs/s"),
            series,
        });
        if let Some((value, label)) = best {
            figures.push((
                format!("Redis reliable queue, best point ({label})"),
                value,
                "jobs/s",
                "enqueue, take and ack through the Redis backend, the sweep's best setting (goal: 30k jobs/s)",
            ));
        }
    }

    let path = record(&args.results_dir, curves, figures, n, profile)?;
    println!("added to {}", path.display());
    Ok(())
}

/// One point of the sweep: a warm-up, then `n` jobs through `rig`, timed;
/// the rig is closed (its queue deleted) whatever happened. Prints the
/// point and returns its rate with the rig's label.
async fn point<Q: part4_async::queue::JobQueue>(
    mut rig: queue_load::Rig<Q>,
    n: u64,
    unit: &str,
) -> anyhow::Result<(f64, String)> {
    let outcome = async {
        rig.pump(warm_up(n)).await?;
        rig.pump(n).await
    }
    .await;
    let label = rig.label().to_owned();
    rig.close().await?;
    let per_second = rate(n, outcome.with_context(|| label.clone())?);
    figure(Kind::Measured, format!("{label}: {per_second:.0} {unit}"));
    Ok((per_second, label))
}

/// Adds the sweep's curves and figures to `part4.json`, replacing those of
/// an earlier sweep and keeping everything else (the demo's).
fn record(
    dir: &std::path::Path,
    curves: Vec<Curve>,
    figures: Vec<(String, f64, &str, &str)>,
    n: u64,
    profile: &str,
) -> anyhow::Result<PathBuf> {
    let existing = PartResults::read_all(dir)?
        .into_iter()
        .find(|r| r.part == part4_async::PART && r.built);
    let mut results = existing.unwrap_or_else(|| {
        let mut r = PartResults::new(part4_async::PART, part4_async::TITLE, part4_async::CLAIM);
        r.notes.push(
            "Only the queue sweep (part4-sweep) has run: the demo's figures are not here yet."
                .into(),
        );
        r
    });
    let titles: Vec<&str> = curves.iter().map(|c| c.title.as_str()).collect();
    results
        .curves
        .retain(|c| !titles.contains(&c.title.as_str()));
    results.figures.retain(|f| f.comparison != COMPARISON);
    results
        .notes
        .retain(|note| !note.starts_with("Queue sweep:"));
    results.curves.extend(curves);
    for (name, value, unit, shows) in figures {
        results.measured(COMPARISON, &name, value, unit, shows);
    }
    results.notes.push(format!(
        "Queue sweep: {n} jobs per point, {profile} build of part4-sweep (`cargo run -p benches --release --bin part4-sweep`), broker, Redis and client sharing the machine's cores."
    ));
    Ok(results.write(dir)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(title: &str) -> Curve {
        Curve {
            title: title.into(),
            shows: String::new(),
            kind: Kind::Measured,
            x: Axis::new("x", ""),
            y: Axis::new("y", ""),
            series: Vec::new(),
        }
    }

    #[test]
    fn a_sweep_replaces_its_own_curves_and_keeps_the_demos() {
        let dir = std::env::temp_dir().join(common::testing::unique_name("sweep_record"));
        let mut demo = PartResults::new(part4_async::PART, part4_async::TITLE, part4_async::CLAIM);
        demo.measured(
            "the demo",
            "POST /jobs p99",
            4.0,
            "ms",
            "the demo's own figure",
        );
        demo.curve(curve("the demo's curve"));
        demo.write(&dir).unwrap();

        for _ in 0..2 {
            let figures = vec![("best".to_owned(), 1.0, "msg/s", "the sweep's")];
            record(&dir, vec![curve(RABBITMQ_CURVE)], figures, 10, "debug").unwrap();
        }

        let after = PartResults::read_all(&dir).unwrap().pop().unwrap();
        let titles: Vec<&str> = after.curves.iter().map(|c| c.title.as_str()).collect();
        assert_eq!(titles, ["the demo's curve", RABBITMQ_CURVE]);
        let comparisons: Vec<&str> = after
            .figures
            .iter()
            .map(|f| f.comparison.as_str())
            .collect();
        assert_eq!(comparisons, ["the demo", COMPARISON]);
        let sweep_notes = after
            .notes
            .iter()
            .filter(|n| n.starts_with("Queue sweep:"))
            .count();
        assert_eq!(sweep_notes, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
