//! Experiment 6: a poison job.
//!
//! A `part4-server` inside the demo with `DRILL_JOBS=true` (it accepts the
//! `fail` kind, a job that always fails) and one worker (`MAX_DELIVERIES`
//! = 3, the default; each export taking `JOB_MIN_MS` = 100 ms). Through
//! `POST /jobs`: one `fail` job first, then [`EXPORTS`] exports behind
//! it. Counted: the poison job's attempts (the jobs table), its status and
//! reason (`GET /jobs/{id}` as its owner), the dead letters (the broker's
//! own count), and the exports done; timed: how long the exports took,
//! beside their stated minimum, to show they were not held up.
//!
//! Both backends, each on a queue and a server of its own, at the same
//! time.
//!
//! Run it alone: `DEMO_ONLY=6 cargo run -p part4-async --bin part4-demo`.

use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;

use super::{Demo, Workers, all_finished, login, post_job, statuses};
use crate::job::JobId;
use crate::queue::{Backend, JobQueue};

/// Exports queued behind the poison job.
pub const EXPORTS: usize = 5;
/// Each export's stated minimum, in ms.
pub const JOB_MIN_MS: u64 = 100;

/// What one backend's drill counted.
#[derive(Debug, Clone)]
pub struct Poison {
    /// The backend.
    pub backend: Backend,
    /// Attempts of the poison job.
    pub attempts: u32,
    /// Its status, as `GET /jobs/{id}` says.
    pub status: String,
    /// Its reason.
    pub reason: String,
    /// Dead letters in the queue (the broker's count).
    pub dead_letters: u64,
    /// Exports done (of [`EXPORTS`]).
    pub exports_done: u64,
    /// Time until every export was done.
    pub exports_took: Duration,
    /// The delivery limit.
    pub limit: u32,
}

/// Both backends, at once.
pub async fn run(demo: &mut Demo) -> anyhow::Result<Vec<Poison>> {
    let user = demo.users_with_articles(4).await?[3].clone();
    let (rabbit, redis) = tokio::join!(
        drill(demo, Backend::RabbitMq, &user.1),
        drill(demo, Backend::Redis, &user.1)
    );
    let drills = vec![rabbit?, redis?];
    let cmp = "a poison job: retried to the limit, then dead-lettered";
    for d in &drills {
        let b = d.backend.as_str();
        figure(
            Kind::Measured,
            format!(
                "{b}: the fail job: {} attempts (limit {}), {} with \"{}\"; {} dead letter(s) in the queue",
                d.attempts,
                d.limit,
                d.status,
                d.reason.chars().take(90).collect::<String>(),
                d.dead_letters
            ),
        );
        figure(
            Kind::Measured,
            format!(
                "{b}: the {EXPORTS} exports behind it: {} done in {:.2} s (their stated minimum: {EXPORTS} x {JOB_MIN_MS} ms on one worker = {:.1} s)",
                d.exports_done,
                d.exports_took.as_secs_f64(),
                (EXPORTS as u64 * JOB_MIN_MS) as f64 / 1000.0
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{b}: poison job attempts"),
            f64::from(d.attempts),
            &format!("limit {}", d.limit),
            "attempts of a job that always fails, from the jobs table",
        );
        demo.results.measured(
            cmp,
            &format!("{b}: dead letters"),
            d.dead_letters as f64,
            "jobs",
            "the dead-letter queue's count, by the broker",
        );
        demo.results.measured(
            cmp,
            &format!("{b}: exports done behind it"),
            d.exports_done as f64,
            &format!("of {EXPORTS}"),
            "jobs queued after the poison job and done anyway",
        );
        demo.results.measured(
            cmp,
            &format!("{b}: time for the exports behind it"),
            d.exports_took.as_secs_f64() * 1e6,
            "µs",
            "from the first POST to the last export done",
        );
    }
    Ok(drills)
}

async fn drill(demo: &Demo, backend: Backend, username: &str) -> anyhow::Result<Poison> {
    let config = demo.queue_config(backend);
    let queue = demo.queue(&config).await?;
    let store = demo.store();
    let server = demo
        .server(&config, None, &[("DRILL_JOBS", "true")])
        .await?;
    let workers = Workers::start(
        &store,
        &queue,
        &config,
        1,
        Duration::from_millis(JOB_MIN_MS),
    )
    .await?;
    let out = async {
        let cookie = login(&server.url, username).await?;
        let http = part1_clones::client::http();
        let t = Instant::now();
        let mut ids = Vec::new();
        for kind in std::iter::once("fail").chain(std::iter::repeat_n("export", EXPORTS)) {
            let (status, _, body) = post_job(&http, &server.url, &cookie, kind)
                .await
                .map_err(anyhow::Error::msg)?;
            anyhow::ensure!(
                status == 202,
                "POST /jobs ({kind}) answered {status}: {body}"
            );
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let id: JobId = v["id"]
                .as_str()
                .context("the 202 has no id")?
                .parse()
                .map_err(anyhow::Error::msg)?;
            ids.push(id);
        }
        let exports = &ids[1..];
        all_finished(&demo.primary, exports, Duration::from_secs(60)).await?;
        let exports_took = t.elapsed();
        all_finished(&demo.primary, &ids[..1], Duration::from_secs(60)).await?;
        let [_, _, exports_done, _] = statuses(&demo.primary, exports).await?;
        let job = http
            .get(format!("{}/jobs/{}", server.url, ids[0]))
            .header("cookie", &cookie)
            .send()
            .await?
            .json::<serde_json::Value>()
            .await?;
        let row = store.get(&ids[0]).await?.context("the poison job's row")?;
        // The dead letter may reach its queue a moment after the row says failed.
        let mut dead = 0;
        for _ in 0..100 {
            dead = queue.depth().await?.dead;
            if dead > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Poison {
            backend,
            attempts: row.attempts,
            status: job["status"].as_str().unwrap_or("?").to_owned(),
            reason: job["error"].as_str().unwrap_or("").to_owned(),
            dead_letters: dead,
            exports_done,
            exports_took,
            limit: config.max_deliveries,
        })
    }
    .await;
    workers.stop().await;
    server.stop().await;
    demo.forget_queues(&config).await;
    out
}
