//! Queue throughput: how many jobs a second go through part 4's queue,
//! published with confirms and consumed with acks, end to end.
//!
//! Shared by the criterion bench (`benches/benches/part4.rs`, group
//! `throughput`, a few settings) and the sweep (`part4-sweep`, every
//! setting, charted in the lab report). Both drive the project's own
//! [`JobQueue`] and [`JobConsumer`], the code the frontend and the
//! workers run, not a stripped-down client:
//!
//! - **publish**: [`JobQueue::enqueue`], with at most `window` enqueues in
//!   flight at once. On RabbitMQ each enqueue is a persistent, mandatory
//!   publish awaiting its confirm, so `window` is the number of
//!   outstanding confirms (1 = publish, wait, publish: a round trip per
//!   job). On Redis it is the number of `LPUSH` replies awaited at once
//!   (redis-rs pipelines them on its one multiplexed connection).
//! - **consume**: `consumers` consumers, each taking a job
//!   ([`JobConsumer::next`]) and acknowledging it ([`JobConsumer::ack`])
//!   before the next, as a worker does. On RabbitMQ the broker pushes up
//!   to `prefetch` unacknowledged jobs ahead to each consumer (basic.qos):
//!   with 1, every job waits for the previous one's ack to reach the broker;
//!   above 1, the consumer keeps its acks and sends them as one (`multiple`)
//!   every `prefetch / 2` jobs or before it waits. On Redis, `prefetch` is
//!   how many jobs a consumer moves into its processing list per round
//!   trip (one Lua call) when the queue has them, and its acks go with the
//!   next one.
//!
//! The clock runs from the first publish to the last ack: one figure for
//! the whole pipe, producer and consumers running at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::config::StackConfig;
use futures::{StreamExt, TryStreamExt};
use part4_async::job::{Envelope, JobId};
use part4_async::queue::rabbitmq::RabbitQueue;
use part4_async::queue::redis::RedisQueue;
use part4_async::queue::{Backend, JobConsumer, JobQueue, QueueConfig};

/// A run that has not finished in this long has lost jobs (or the broker
/// is stuck): an error, not a slow figure.
const PUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a consumer waits for a job before it checks whether the run is
/// over.
const POLL: Duration = Duration::from_millis(20);

/// A queue of its own (a unique name), with its consumers open: set up
/// once, then [`Rig::pump`] as often as needed, then [`Rig::close`].
pub struct Rig<Q: JobQueue> {
    queue: Arc<Q>,
    consumers: Vec<Q::Consumer>,
    window: usize,
    label: String,
}

/// Connects to RabbitMQ and opens a queue named `<prefix>_<unique>` with
/// one consumer of `prefetch`, publishing with `window` confirms
/// outstanding.
pub async fn rabbitmq(
    stack: &StackConfig,
    prefix: &str,
    prefetch: u16,
    window: usize,
) -> anyhow::Result<Rig<RabbitQueue>> {
    let mut config = QueueConfig::new(Backend::RabbitMq, common::testing::unique_name(prefix));
    config.prefetch = prefetch;
    let queue = RabbitQueue::connect(&stack.rabbitmq_url, config)
        .await
        .context("RabbitMQ for the queue bench")?;
    Rig::open(
        queue,
        1,
        window,
        format!("rabbitmq prefetch {prefetch}, window {window}"),
    )
    .await
}

/// Connects to Redis and opens a reliable queue under the key prefix
/// `<prefix>_<unique>` with `consumers` consumers, each taking up to
/// `prefetch` jobs per round trip, publishing with `window` replies
/// outstanding.
pub async fn redis(
    stack: &StackConfig,
    prefix: &str,
    consumers: usize,
    prefetch: u16,
    window: usize,
) -> anyhow::Result<Rig<RedisQueue>> {
    let mut config = QueueConfig::new(Backend::Redis, common::testing::unique_name(prefix));
    config.prefetch = prefetch;
    let queue = RedisQueue::connect(&stack.redis_url, config)
        .await
        .context("Redis for the queue bench")?;
    Rig::open(
        queue,
        consumers,
        window,
        format!("redis {consumers} consumers, prefetch {prefetch}, window {window}"),
    )
    .await
}

impl<Q: JobQueue> Rig<Q> {
    /// Opens `consumers` consumers on `queue`.
    pub async fn open(
        queue: Q,
        consumers: usize,
        window: usize,
        label: String,
    ) -> anyhow::Result<Self> {
        let mut opened = Vec::with_capacity(consumers.max(1));
        for i in 0..consumers.max(1) {
            opened.push(
                queue
                    .consume(&format!("bench-consumer-{i}"))
                    .await
                    .with_context(|| format!("opening consumer {i}"))?,
            );
        }
        Ok(Rig {
            queue: Arc::new(queue),
            consumers: opened,
            window: window.max(1),
            label,
        })
    }

    /// What this rig runs, e.g. `rabbitmq prefetch 50, window 128`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Publishes `n` jobs while the consumers take and ack them; returns
    /// the time from the first publish to the `n`th ack.
    pub async fn pump(&mut self, n: u64) -> anyhow::Result<Duration> {
        let jobs: Vec<Envelope> = (0..n)
            .map(|_| Envelope::new(JobId::generate(), "export", serde_json::json!({})))
            .collect();
        let acked = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let mut tasks = Vec::with_capacity(self.consumers.len());
        for mut consumer in self.consumers.drain(..) {
            let acked = acked.clone();
            tasks.push(tokio::spawn(async move {
                let outcome = consume(&mut consumer, &acked, n).await;
                (consumer, outcome)
            }));
        }
        let label = self.label.clone();
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        let queue = self.queue.clone();
        let window = self.window;
        let publish = async move {
            futures::stream::iter(jobs.iter())
                .map(|job| queue.enqueue(job))
                .buffer_unordered(window)
                .try_for_each(|()| async { Ok(()) })
                .await
        };
        let run = async {
            publish.await.context("publishing")?;
            // The last consumer's acks reaching the queue ends the run.
            let mut finished: Option<Instant> = None;
            let mut failure = None;
            for task in tasks {
                let (consumer, outcome) = task.await.context("a consumer task panicked")?;
                self.consumers.push(consumer);
                match outcome {
                    Ok(at) => finished = finished.max(Some(at)),
                    Err(e) => failure = Some(e),
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
            finished.context("no consumer ran")
        };
        let finished = tokio::time::timeout(PUMP_TIMEOUT, run)
            .await
            .map_err(|_| {
                // Their consumers go with them: this rig is done for.
                aborts.iter().for_each(tokio::task::AbortHandle::abort);
                anyhow::anyhow!(
                    "{label}: only {} of {n} jobs were acked in {PUMP_TIMEOUT:?}",
                    acked.load(Ordering::Relaxed)
                )
            })??;
        Ok(finished - start)
    }

    /// Closes the consumers and deletes the queue and everything beside it.
    pub async fn close(mut self) -> anyhow::Result<()> {
        for consumer in self.consumers.drain(..) {
            consumer.close().await.context("closing a consumer")?;
        }
        self.queue.destroy().await.context("deleting the queue")?;
        Ok(())
    }
}

/// One consumer's loop: take, ack, count, until `n` jobs are acked by all
/// consumers together. Returns when its acks had all reached the queue: a
/// consumer with prefetch above 1 keeps its acks and sends them with its
/// next call for jobs (Redis) or before it waits for one (RabbitMQ). A
/// poll that came back empty sent them as it started; a consumer whose
/// last step was an ack makes one more call (the queue is empty by then:
/// it answers nothing at once) before the clock reads.
async fn consume<C: JobConsumer>(
    consumer: &mut C,
    acked: &AtomicU64,
    n: u64,
) -> anyhow::Result<Instant> {
    let mut sent_at = None;
    while acked.load(Ordering::Relaxed) < n {
        let polled = Instant::now();
        let Some(delivery) = consumer.next(POLL).await? else {
            sent_at = Some(polled);
            continue;
        };
        consumer.ack(&delivery).await?;
        acked.fetch_add(1, Ordering::Relaxed);
        sent_at = None;
    }
    if let Some(at) = sent_at {
        return Ok(at);
    }
    anyhow::ensure!(
        consumer.next(Duration::ZERO).await?.is_none(),
        "a job beyond the {n} published"
    );
    Ok(Instant::now())
}

/// Jobs per second: `n` jobs in `elapsed` (computed from the two).
pub fn rate(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE)
}
