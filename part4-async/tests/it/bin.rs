//! The `part4-worker` binary as `./lab` will run it: configured by
//! environment variables, doing a job, exiting 0 on SIGTERM, and the
//! drill of a worker killed mid-job.

use std::process::Stdio;

use part4_async::job::{Envelope, JobKind, JobStatus};
use part4_async::queue::{Backend, JobQueue, QueueConfig};

use crate::support::{self, DEADLINE, Db};

/// A `part4-worker` process on the test's database and queue.
fn spawn_worker(
    db: &Db,
    config: &QueueConfig,
    name: &str,
    job_min_ms: u64,
) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_part4-worker"))
        .env("MARIADB_PRIMARY_URL", &db.db.url)
        .env("QUEUE", config.backend.as_str())
        .env("QUEUE_NAME", &config.queue_name)
        .env("CONSUMER_TTL_MS", config.consumer_ttl_ms.to_string())
        .env("JOB_MIN_MS", job_min_ms.to_string())
        .env("WORKER_NAME", name)
        // Jobs only: the changes queue would be left behind on the broker.
        .env("CHANGES", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the part4-worker binary runs")
}

async fn worker_process_does_a_job_and_stops_on_sigterm<Q: JobQueue>(
    config: QueueConfig,
    queue: Q,
) {
    let db = Db::new().await;
    let mut child = spawn_worker(&db, &config, "bin-test", 0);
    let (job, _) = db
        .store
        .create(1, JobKind::Export, &serde_json::json!({}), None)
        .await
        .unwrap();
    queue
        .enqueue(&Envelope::new(job.id.clone(), "export", job.params.clone()))
        .await
        .unwrap();
    support::eventually("the worker process finished the job", || async {
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        (row.status == JobStatus::Done).then_some(())
    })
    .await;
    let stopped = common::signal::stop(&mut child, DEADLINE).await.unwrap();
    assert!(
        stopped.cleanly(),
        "the worker exits 0 on SIGTERM: {stopped:?}"
    );
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_worker_process_does_a_job_and_exits_0_on_sigterm() {
    let config = support::config(Backend::RabbitMq);
    let queue = support::rabbit_with(config.clone()).await;
    worker_process_does_a_job_and_stops_on_sigterm(config, queue).await;
}

#[tokio::test]
async fn redis_worker_process_does_a_job_and_exits_0_on_sigterm() {
    let config = support::config(Backend::Redis);
    let queue = support::redis_with(config.clone()).await;
    worker_process_does_a_job_and_stops_on_sigterm(config, queue).await;
}

/// The drill: a worker SIGKILLed in the middle of a job. Nothing is lost
/// and nothing is done twice: the job is redone by another worker.
async fn a_killed_workers_job_is_redone_by_another<Q: JobQueue>(config: QueueConfig, queue: Q) {
    let db = Db::new().await;
    // A job that takes a minute, so the kill lands in the middle of it.
    let mut doomed = spawn_worker(&db, &config, "doomed", 60_000);
    let (job, _) = db
        .store
        .create(1, JobKind::Export, &serde_json::json!({}), None)
        .await
        .unwrap();
    queue
        .enqueue(&Envelope::new(job.id.clone(), "export", job.params.clone()))
        .await
        .unwrap();
    support::eventually("the doomed worker started the job", || async {
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        (row.status == JobStatus::Running).then_some(())
    })
    .await;
    doomed.start_kill().unwrap(); // SIGKILL: no ack, no close, no goodbye
    doomed.wait().await.unwrap();
    let mut heir = spawn_worker(&db, &config, "heir", 0);
    support::eventually("another worker finished the job", || async {
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        (row.status == JobStatus::Done).then_some(())
    })
    .await;
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.attempts, 2, "started twice");
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1, "done once");
    let by: String = sqlx::query_scalar("SELECT worker FROM job_effects WHERE job_id = ?")
        .bind(job.id.as_str())
        .fetch_one(&db.db.pool)
        .await
        .unwrap();
    assert_eq!(by, "heir");
    support::depth_becomes(&queue, 0, 0).await;
    heir.start_kill().unwrap();
    heir.wait().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_a_killed_workers_job_is_redone_by_another() {
    let config = support::config(Backend::RabbitMq);
    let queue = support::rabbit_with(config.clone()).await;
    a_killed_workers_job_is_redone_by_another(config, queue).await;
}

#[tokio::test]
async fn redis_a_killed_workers_job_is_redone_by_another() {
    let mut config = support::config(Backend::Redis);
    config.consumer_ttl_ms = 500; // how soon a dead worker's jobs come back
    let queue = support::redis_with(config.clone()).await;
    a_killed_workers_job_is_redone_by_another(config, queue).await;
}
