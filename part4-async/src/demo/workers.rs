//! Experiment 2: throughput against the number of workers.
//!
//! A queue of export jobs, each taking at least `JOB_MIN_MS` = 500 ms
//! (the stated minimum, see [`crate::export`]), done by 1, 2, 4 and 8
//! workers (tasks of the demo, the worker's own code, each with its own
//! RabbitMQ consumer, prefetch 1). For each count the jobs (a few rounds'
//! worth: `rounds x workers`) are queued first, then the workers start,
//! and the clock stops when the jobs table says every job is done.
//!
//! Beside each measured throughput, the modelled line: `workers /
//! duration`, what the workers could do if the queue, the database and
//! the machine cost nothing. The gap between the two is what they do
//! cost here.
//!
//! Run it alone: `DEMO_ONLY=2 cargo run -p part4-async --bin part4-demo`.

use std::time::{Duration, Instant};

use common::demo::{figure, line};
use common::results::{Axis, Curve, Kind, Series};

use super::{Demo, Workers, all_finished, effects};
use crate::queue::Backend;

/// The stated minimum duration of every job here, in ms.
pub const JOB_MIN_MS: u64 = 500;
/// The worker counts.
pub const COUNTS: [usize; 4] = [1, 2, 4, 8];

/// One worker count's run.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    /// Workers.
    pub workers: usize,
    /// Jobs done.
    pub jobs: u64,
    /// Measured jobs per second.
    pub throughput: f64,
    /// Modelled: workers / duration.
    pub modelled: f64,
    /// Effects committed (one per job).
    pub effects: u64,
    /// Jobs with more than one effect.
    pub doubled: u64,
}

/// Runs every count, prints and records them.
pub async fn run(demo: &mut Demo) -> anyhow::Result<Vec<Point>> {
    // Rounds of jobs per worker: DEMO_SECONDS, between 2 and 4.
    let rounds = demo.args.demo.seconds.clamp(2, 4) as usize;
    let owner = demo.users_with_articles(2).await?[1].0;
    let job_min = Duration::from_millis(JOB_MIN_MS);
    line(format!(
        "each job takes at least JOB_MIN_MS={JOB_MIN_MS} ms (stated); {rounds} jobs per worker, queued first; workers: tasks of the demo, one RabbitMQ consumer each, prefetch 1"
    ));
    let store = demo.store();
    let mut points = Vec::new();
    for workers in COUNTS {
        let config = demo.queue_config(Backend::RabbitMq);
        let queue = demo.queue(&config).await?;
        let jobs = demo
            .enqueue_exports(&queue, owner, workers * rounds)
            .await?;
        let t = Instant::now();
        let w = Workers::start(&store, &queue, &config, workers, job_min).await?;
        let finished = all_finished(&demo.primary, &jobs, Duration::from_secs(120)).await;
        let elapsed = t.elapsed();
        w.stop().await;
        demo.forget_queues(&config).await;
        finished?;
        let (effects, doubled) = effects(&store, &jobs).await?;
        let throughput = jobs.len() as f64 / elapsed.as_secs_f64();
        let modelled = workers as f64 / job_min.as_secs_f64();
        figure(
            Kind::Measured,
            format!(
                "{workers} worker(s): {} jobs in {:.2} s = {throughput:.1} jobs/s ({effects} effects, {doubled} doubled)",
                jobs.len(),
                elapsed.as_secs_f64()
            ),
        );
        figure(
            Kind::Modelled,
            format!(
                "{workers} worker(s): {modelled:.1} jobs/s ({workers} / {JOB_MIN_MS} ms); measured {:.0} % of it",
                throughput / modelled * 100.0
            ),
        );
        let cmp = "throughput against workers, each job 500 ms";
        demo.results.measured(
            cmp,
            &format!("{workers} worker(s): throughput"),
            throughput,
            "jobs/s",
            "jobs done per second, queued first, timed until the jobs table says done",
        );
        demo.results.modelled(
            cmp,
            &format!("{workers} worker(s): modelled"),
            modelled,
            "jobs/s",
            "workers / job duration: what they would do if nothing but the stated duration cost time",
        );
        points.push(Point {
            workers,
            jobs: jobs.len() as u64,
            throughput,
            modelled,
            effects,
            doubled,
        });
    }
    demo.results.curve(Curve {
        title: "throughput against workers".into(),
        shows: format!(
            "jobs of a stated {JOB_MIN_MS} ms each: the modelled line (workers / duration) and what the machine did, side by side"
        ),
        kind: Kind::Modelled,
        x: Axis::new("workers", "workers"),
        y: Axis::new("throughput", "jobs/s"),
        series: vec![
            Series {
                name: "measured".into(),
                points: points
                    .iter()
                    .map(|p| (p.workers as f64, p.throughput))
                    .collect(),
            },
            Series {
                name: "modelled: workers / duration".into(),
                points: points
                    .iter()
                    .map(|p| (p.workers as f64, p.modelled))
                    .collect(),
            },
        ],
    });
    demo.results.notes.push(format!(
        "Experiment 2's jobs take a stated minimum of {JOB_MIN_MS} ms (a sleep standing in for slow work, see export.rs); its workers are tasks of the demo process, each with its own RabbitMQ consumer."
    ));
    Ok(points)
}
