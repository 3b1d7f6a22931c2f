//! Experiment 3: a worker SIGKILLed in the middle of a job.
//!
//! Two real `part4-worker` processes per queue backend. The first
//! ("doomed", each job taking 60 s) takes a job; once its row says
//! `running`, it is SIGKILLed: no ack, no goodbye. The second ("heir",
//! `JOB_MIN_MS` = 100 ms) is started, and takes that job and the others
//! queued behind it. Counted from the jobs table: jobs lost (not done),
//! effects doubled (more than one claim row), who committed the killed
//! job, and how many attempts it took; timed: from the kill to the job
//! running again (RabbitMQ notices the closed connection at once; the
//! Redis queue's reaper waits for the consumer's heartbeat to expire,
//! `CONSUMER_TTL_MS`, set to 1000 ms here).
//!
//! Both backends run at the same time, each on a queue of its own.
//!
//! Run it alone: `DEMO_ONLY=3 cargo run -p part4-async --bin part4-demo`.

use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;

use super::{Demo, all_finished, effects, spawn_worker, statuses};
use crate::job::{JobId, JobStatus};
use crate::queue::Backend;

/// Jobs queued in each drill.
pub const JOBS: usize = 5;

/// What one backend's drill counted.
#[derive(Debug, Clone)]
pub struct KillDrill {
    /// The backend.
    pub backend: Backend,
    /// Jobs queued.
    pub jobs: u64,
    /// Jobs not done at the end.
    pub lost: u64,
    /// Effects committed.
    pub effects: u64,
    /// Jobs with more than one effect.
    pub doubled: u64,
    /// Attempts of the killed job.
    pub attempts: u32,
    /// Who committed the killed job.
    pub finished_by: String,
    /// From the kill to the job running again.
    pub redelivered_after: Duration,
}

/// Both backends, at once.
pub async fn run(demo: &mut Demo) -> anyhow::Result<Vec<KillDrill>> {
    let users = demo.users_with_articles(3).await?;
    let owner = users[2].0;
    let (rabbit, redis) = tokio::join!(
        drill(demo, Backend::RabbitMq, owner),
        drill(demo, Backend::Redis, owner)
    );
    let drills = vec![rabbit?, redis?];
    let cmp = "a worker SIGKILLed mid-job";
    for d in &drills {
        let b = d.backend.as_str();
        figure(
            Kind::Measured,
            format!(
                "{b}: {} jobs, {} lost, {} effects, {} doubled; the killed job took {} attempts and was finished by {}; running again {} ms after the kill",
                d.jobs,
                d.lost,
                d.effects,
                d.doubled,
                d.attempts,
                d.finished_by,
                d.redelivered_after.as_millis()
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{b}: jobs lost"),
            d.lost as f64,
            &format!("of {}", d.jobs),
            "queued jobs not done after a worker was killed holding one (the jobs table)",
        );
        demo.results.measured(
            cmp,
            &format!("{b}: effects doubled"),
            d.doubled as f64,
            "jobs",
            "jobs with more than one claim row in job_effects",
        );
        demo.results.measured(
            cmp,
            &format!("{b}: kill to redelivery"),
            d.redelivered_after.as_secs_f64() * 1e6,
            "µs",
            "from SIGKILL to the killed job running on the other worker",
        );
    }
    Ok(drills)
}

async fn drill(demo: &Demo, backend: Backend, owner: u64) -> anyhow::Result<KillDrill> {
    let mut config = demo.queue_config(backend);
    config.consumer_ttl_ms = 1000;
    let queue = demo.queue(&config).await?;
    let store = demo.store();
    let out = async {
        let ids = demo.enqueue_exports(&queue, owner, JOBS).await?;
        let mut doomed = spawn_worker(
            demo,
            &config,
            &format!("{}-doomed", backend.as_str()),
            60_000,
        )?;
        // The job the doomed worker takes (prefetch 1: exactly one).
        let victim = wait_for_running(&store, &ids).await?;
        doomed.start_kill()?; // SIGKILL
        doomed.wait().await?;
        let killed = Instant::now();
        let heir_name = format!("{}-heir", backend.as_str());
        let mut heir = spawn_worker(demo, &config, &heir_name, 100)?;
        let mut redelivered_after = None;
        while redelivered_after.is_none() {
            let job = store.get(&victim).await?.context("the killed job's row")?;
            if job.attempts >= 2 {
                redelivered_after = Some(killed.elapsed());
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "the killed worker's job was not redelivered within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let waited = all_finished(&demo.primary, &ids, Duration::from_secs(60)).await;
        let _ = heir.start_kill();
        let _ = heir.wait().await;
        waited?;
        let [_, _, done, _] = statuses(&demo.primary, &ids).await?;
        let (effects, doubled) = effects(&store, &ids).await?;
        let job = store.get(&victim).await?.context("the killed job's row")?;
        let finished_by: String =
            sqlx::query_scalar("SELECT worker FROM job_effects WHERE job_id = ?")
                .bind(victim.as_str())
                .fetch_optional(&demo.primary)
                .await?
                .unwrap_or_else(|| "nobody".into());
        Ok(KillDrill {
            backend,
            jobs: ids.len() as u64,
            lost: ids.len() as u64 - done,
            effects,
            doubled,
            attempts: job.attempts,
            finished_by,
            redelivered_after: redelivered_after.unwrap_or_default(),
        })
    }
    .await;
    drop(queue);
    demo.forget_queues(&config).await;
    out
}

/// Waits until one of `ids` is running; its id.
async fn wait_for_running(store: &crate::job::JobStore, ids: &[JobId]) -> anyhow::Result<JobId> {
    let t = Instant::now();
    loop {
        for id in ids {
            if store.get(id).await?.map(|j| j.status) == Some(JobStatus::Running) {
                return Ok(id.clone());
            }
        }
        anyhow::ensure!(
            t.elapsed() < Duration::from_secs(30),
            "no worker started a job within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
