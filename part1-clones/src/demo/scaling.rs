//! Performance against scalability. One user sees the latency
//! (performance); many users see whether throughput grows with clones
//! (scalability).
//!
//! Every clone here shares the same two cores, so adding clones cannot add
//! CPU: the raw run (no model) shows that honestly, and is printed first.
//! To show the law itself, each clone is then given a stated capacity
//! ([`common::capacity::Modelled`]: 4 requests at once, 20 ms each, so at
//! most 200 req/s per clone); the model's ceiling is computed, the runs
//! against it are recorded as *modelled*, and the latency–throughput curve
//! (throughput on x, p99 on y, one line per clone count) shows where each
//! cluster bends.

use std::time::Duration;

use common::capacity::Modelled;
use common::demo::{figure, line};
use common::measure::LoadReport;
use common::results::{Axis, Curve, Kind, Series, Spread};

use super::Demo;
use crate::cluster::Cluster;

/// The model: requests at once per clone, and work per request.
const SLOTS: usize = 4;
const SERVICE: Duration = Duration::from_millis(20);

/// Concurrent users of each run: from one (performance) to more than the
/// model admits (saturation).
const USERS_MODELLED: [usize; 4] = [1, 4, 12, 32];
const USERS_RAW: [usize; 3] = [1, 8, 32];
const CLONES: [usize; 2] = [1, 3];

/// The median of the runs' throughput and p99: one point of a curve.
fn point(runs: &[LoadReport]) -> (f64, f64) {
    let median = |v: Vec<f64>| Spread::of(&v).map_or(0.0, |s| s.median);
    (
        median(runs.iter().map(|r| r.throughput).collect()),
        median(runs.iter().map(|r| r.latency.p99_us as f64).collect()),
    )
}

/// Runs `users` loads on `clones` clones (with `extra` settings), records
/// them under `cmp` as `kind`, and returns the curve's line.
async fn sweep(
    demo: &mut Demo,
    clones: usize,
    users_list: &[usize],
    extra: &[(&str, &str)],
    kind: Kind,
    cmp: &str,
    ceiling: Option<f64>,
) -> anyhow::Result<Series> {
    let cluster = Cluster::start(demo.spec(clones, "redis", extra)).await?;
    let users = demo.users(&cluster.lb_url(), demo.args.users).await?;
    let mut points = Vec::new();
    for &concurrency in users_list {
        let name = format!("{clones} clone(s), {concurrency} users");
        let seconds = demo.args.demo.load_time();
        let runs = demo
            .repeated(|| demo.me_load(&name, &users, concurrency, seconds))
            .await;
        for r in &runs {
            match ceiling {
                Some(c) => figure(kind, format!("{}   (model: {c:.0} req/s max)", r.line())),
                None => figure(kind, r.line()),
            }
        }
        demo.results.load_runs(kind, cmp, &runs);
        points.push(point(&runs));
    }
    cluster.stop().await;
    Ok(Series {
        name: format!("{clones} clone{}", if clones == 1 { "" } else { "s" }),
        points,
    })
}

/// The raw run, then the modelled one, then the curve.
pub(super) async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    line("raw run, no capacity model: every clone shares the same 2 cores");
    let mut raw = Vec::new();
    for clones in CLONES {
        let cmp = format!("performance vs scalability, raw (no model): {clones} clone(s)");
        raw.push(sweep(demo, clones, &USERS_RAW, &[], Kind::Measured, &cmp, None).await?);
    }

    let per_clone = Modelled::ceiling_of(SLOTS, SERVICE).unwrap_or(0.0);
    line(format!(
        "modelled: each clone serves {SLOTS} requests at a time x {} ms each: at most {per_clone:.0} req/s per clone",
        SERVICE.as_millis()
    ));
    let ceilings = "the model's ceiling (N clones x per-clone capacity)";
    for clones in CLONES {
        let ceiling = per_clone * clones as f64;
        figure(
            Kind::Computed,
            format!("model ceiling, {clones} clone(s): {ceiling:.0} req/s"),
        );
        demo.results.computed(
            ceilings,
            &format!("{clones} clone(s): ceiling"),
            ceiling,
            "req/s",
            &format!(
                "{clones} x {SLOTS} slots / {} ms: what the model admits, not a measurement",
                SERVICE.as_millis()
            ),
        );
    }
    let (ms, sl) = (SERVICE.as_millis().to_string(), SLOTS.to_string());
    let model = [
        ("SERVICE_TIME_MS", ms.as_str()),
        ("MAX_CONCURRENCY", sl.as_str()),
    ];
    let mut modelled = Vec::new();
    for clones in CLONES {
        let cmp = format!("performance vs scalability, modelled capacity: {clones} clone(s)");
        let ceiling = Some(per_clone * clones as f64);
        modelled.push(
            sweep(
                demo,
                clones,
                &USERS_MODELLED,
                &model,
                Kind::Modelled,
                &cmp,
                ceiling,
            )
            .await?,
        );
    }
    demo.results.curve(Curve {
        title: "latency against throughput, modelled capacity".into(),
        shows: format!(
            "each point a load run ({} users); p99 stays flat until throughput nears the ceiling \
             ({per_clone:.0} req/s per clone), then climbs; with 3 clones the ceiling is three times further out",
            USERS_MODELLED.map(|u| u.to_string()).join(", ")
        ),
        kind: Kind::Modelled,
        x: Axis::new("throughput", "req/s"),
        y: Axis::new("p99", "µs"),
        series: modelled,
    });
    demo.results.curve(Curve {
        title: "latency against throughput, raw (no model)".into(),
        shows:
            "the same curve with no capacity model: on 2 shared cores, 3 clones bend where 1 does"
                .into(),
        kind: Kind::Measured,
        x: Axis::new("throughput", "req/s"),
        y: Axis::new("p99", "µs"),
        series: raw,
    });
    demo.results.notes.push(format!(
        "Modelled figures use a stated clone capacity ({SLOTS} concurrent requests x {} ms = {per_clone:.0} req/s per clone), \
         because every clone shares the same 2 cores here; the raw, unmodelled runs are recorded beside them.",
        SERVICE.as_millis()
    ));
    Ok(())
}
