//! The queue between the frontend and the workers: one trait, two
//! backends, chosen by `--queue rabbitmq|redis`.
//!
//! What every backend here promises, and what it does not:
//!
//! - **Durable hand-off.** [`JobQueue::enqueue`] returns only once the
//!   queue has the job: RabbitMQ's publisher confirm for a persistent
//!   message, Redis's reply to `LPUSH` (in memory, written to the
//!   append-only file within a second: see [`redis`]).
//! - **At-least-once delivery.** A job leaves the queue only when a
//!   consumer acknowledges it ([`JobConsumer::ack`]). A consumer that dies
//!   holding a job (crash, `kill -9`, a cut connection) gets it taken back
//!   and given to another. So a job can be *delivered* twice, and the
//!   worker makes its *effect* idempotent (see [`crate::job`]).
//! - **Explicit outcomes.** Besides ack, a consumer can put a job back
//!   ([`JobConsumer::requeue`]) or give up on it
//!   ([`JobConsumer::dead_letter`]): it moves to a dead-letter queue where
//!   a person can look at it, instead of being retried forever.
//! - **A delivery limit.** Every delivery is counted ([`Delivery::attempt`]);
//!   past [`QueueConfig::max_deliveries`] the queue itself dead-letters the
//!   job, even if the consumers that had it all died before they could.
//!   A poison job cannot loop forever or hold the others up.
//!
//! - **Dead letters are read, then parked.** A job the queue gave up on
//!   while no worker could say why (its last delivery died with its
//!   worker) still has a row saying `running`. Every worker therefore
//!   runs a watcher ([`crate::worker`]) that reads the dead letters
//!   ([`JobQueue::dead_letters`]), marks each unfinished job `failed` with
//!   the reason, and moves the message to the **parked** queue
//!   ([`DeadLetters::park`]), where it stays for a person to look at.
//!   Dead letters are the watcher's inbox, parked ones the shelf: a
//!   message is in one or the other, so "not handled yet" and "handled,
//!   kept for you" never mix, and a restarted watcher never reads the
//!   shelf again.
//!
//! What neither promises: order (a requeued job goes behind others), or
//! exactly-once anything.
//!
//! Reading order: this file, then [`rabbitmq`] (the recommended backend),
//! then [`redis`] (the same promises built by hand from lists).

pub mod rabbitmq;
pub mod redis;
pub mod redis_restart;

use std::time::Duration;

use crate::job::{DecodeError, Envelope};

/// Which queue backend: the `--queue` flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// RabbitMQ: a durable quorum queue, confirms, manual acks.
    #[value(name = "rabbitmq")]
    RabbitMq,
    /// Redis lists: BLMOVE into a processing list, a reaper for the dead.
    Redis,
}

impl Backend {
    /// The backend as the flag spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::RabbitMq => "rabbitmq",
            Backend::Redis => "redis",
        }
    }
}

/// The queue's settings: flags, environment variables and defaults.
#[derive(Debug, Clone, clap::Args)]
pub struct QueueConfig {
    /// The queue backend.
    #[arg(long = "queue", env = "QUEUE", value_enum, default_value = "rabbitmq")]
    pub backend: Backend,
    /// The queue's name: RabbitMQ's queue (with `<name>.dlx` and
    /// `<name>.dead` beside it) or the Redis keys' prefix.
    #[arg(long, env = "QUEUE_NAME", default_value = "part4.jobs")]
    pub queue_name: String,
    /// Deliveries a job may have before it is dead-lettered. RabbitMQ
    /// stores it in the queue's arguments: changing it needs a new
    /// `QUEUE_NAME` (or deleting the queue).
    #[arg(long, env = "MAX_DELIVERIES", default_value_t = 3)]
    pub max_deliveries: u32,
    /// Jobs a consumer holds ahead: on RabbitMQ, messages it may hold
    /// unacknowledged (basic.qos); on Redis, jobs it takes per round trip
    /// (at most 1,000). 1 for long jobs: each goes to a worker that is
    /// free ("fair dispatch"); high for many short ones (throughput).
    #[arg(long, env = "PREFETCH", default_value_t = 1)]
    pub prefetch: u16,
    /// Redis: a consumer that has not refreshed its heartbeat for this long
    /// is dead, and the reaper gives its jobs back to the queue.
    #[arg(long, env = "CONSUMER_TTL_MS", default_value_t = 5000)]
    pub consumer_ttl_ms: u64,
}

impl QueueConfig {
    /// A configuration for `backend` and `queue_name`, with the defaults
    /// for the rest (tests and demos).
    pub fn new(backend: Backend, queue_name: impl Into<String>) -> Self {
        QueueConfig {
            backend,
            queue_name: queue_name.into(),
            max_deliveries: 3,
            prefetch: 1,
            consumer_ttl_ms: 5000,
        }
    }

    /// The consumer heartbeat's time to live.
    pub fn consumer_ttl(&self) -> Duration {
        Duration::from_millis(self.consumer_ttl_ms.max(100))
    }
}

/// What went wrong with a queue. Each message says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The broker or server cannot be reached (or went away).
    #[error("{backend} is not reachable at {url}: run ./lab up ({reason})")]
    Unreachable {
        /// Which backend.
        backend: &'static str,
        /// Where (without password).
        url: String,
        /// What the client said.
        reason: String,
    },
    /// A mandatory publish that no queue took: the broker returned it.
    #[error(
        "RabbitMQ could not route the job to queue {queue:?} ({reply}): the queue does not exist; nothing was enqueued"
    )]
    Unroutable {
        /// The routing key (the queue's name).
        queue: String,
        /// The broker's reply (`312 NO_ROUTE`).
        reply: String,
    },
    /// The broker refused to take responsibility for the message.
    #[error("RabbitMQ refused the job (basic.nack): it was not stored, publish again later")]
    Nacked,
    /// The queue exists with other settings than ours.
    #[error(
        "queue {queue:?} already exists with other arguments ({reason}); delete it or set another QUEUE_NAME"
    )]
    Mismatch {
        /// The queue.
        queue: String,
        /// The broker's words.
        reason: String,
    },
    /// The delivery came on a connection that has closed since: the broker
    /// has already put it back, and it will be delivered again.
    #[error(
        "this delivery came on a connection that has since closed: the job is back in the queue and will be delivered again"
    )]
    Stale,
    /// Any other error of the client or server.
    #[error("{backend}: {reason}")]
    Other {
        /// Which backend.
        backend: &'static str,
        /// What happened.
        reason: String,
    },
}

/// How many jobs are where.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    /// Waiting to be delivered.
    pub ready: u64,
    /// Dead-lettered, in all: waiting for the watcher, plus parked.
    pub dead: u64,
    /// Of those, parked: seen by a watcher (its job marked `failed`),
    /// kept for a person.
    pub parked: u64,
}

/// A dead letter, as the watcher reads it.
#[derive(Debug)]
pub struct DeadLetter {
    /// The job, or why the bytes are not one (parked all the same).
    pub envelope: Result<Envelope, DecodeError>,
    /// The message as it came.
    pub body: Vec<u8>,
    /// Why the queue dead-lettered it, when the queue says: RabbitMQ's
    /// `x-first-death-reason` (`delivery_limit`: the broker gave up on
    /// it; `rejected`: a worker did). Redis's list records no reason.
    pub reason: Option<String>,
    pub(crate) handle: DeadHandle,
}

/// What a backend needs to park a dead letter.
#[derive(Debug)]
pub(crate) enum DeadHandle {
    RabbitMq {
        acker: lapin::Acker,
        properties: Box<lapin::BasicProperties>,
    },
    Redis,
}

/// A reader of one queue's dead letters ([`JobQueue::dead_letters`]).
pub enum DeadLetters {
    /// RabbitMQ: a consumer of `<name>.dead` (boxed: its connection).
    RabbitMq(Box<rabbitmq::RabbitDeadLetters>),
    /// Redis: the oldest entry of `<prefix>:dead`.
    Redis(redis::RedisDeadLetters),
}

impl DeadLetters {
    /// The oldest dead letter not parked yet, waiting up to `wait`. It
    /// stays a dead letter until [`DeadLetters::park`]: a watcher that
    /// dies in between leaves it for the next.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<DeadLetter>, QueueError> {
        match self {
            DeadLetters::RabbitMq(d) => d.next(wait).await,
            DeadLetters::Redis(d) => d.next(wait).await,
        }
    }

    /// Moves `letter` from the dead letters to the parked ones. Parking a
    /// letter that another watcher parked first is not an error.
    pub async fn park(&mut self, letter: &DeadLetter) -> Result<(), QueueError> {
        match self {
            DeadLetters::RabbitMq(d) => d.park(letter).await,
            DeadLetters::Redis(d) => d.park(letter).await,
        }
    }
}

/// One job as a consumer received it.
#[derive(Debug)]
pub struct Delivery {
    /// The job, or why the bytes are not one (it goes to the dead letters,
    /// and the worker carries on).
    pub envelope: Result<Envelope, DecodeError>,
    /// The message as it came.
    pub body: Vec<u8>,
    /// Which delivery of this message this is: 1 the first time, 2 after
    /// one requeue or one consumer death, and so on.
    pub attempt: u32,
    pub(crate) handle: Handle,
}

/// What a backend needs to settle a delivery.
#[derive(Debug)]
pub(crate) enum Handle {
    RabbitMq {
        acker: lapin::Acker,
        /// Which of the consumer's connections it came on.
        generation: u64,
    },
    Redis {
        /// The id its deliveries are counted under in `<q>:deliveries`,
        /// as Redis's own JSON parser read it ("" when none).
        counted: String,
    },
}

/// A queue: put jobs in, count them, open consumers.
pub trait JobQueue: Send + Sync + 'static {
    /// What [`JobQueue::consume`] opens.
    type Consumer: JobConsumer;

    /// The backend's name, as `--queue` spells it.
    fn backend(&self) -> Backend;

    /// Puts a job in the queue; returns once the queue has it (see the
    /// module docs for what "has" means per backend).
    fn enqueue(&self, job: &Envelope) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Puts any bytes in the queue, as a buggy or hostile producer would:
    /// for the drills, to show that garbage is dead-lettered and does not
    /// crash a worker.
    fn enqueue_raw(
        &self,
        message_id: &str,
        body: &[u8],
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Jobs waiting and dead-lettered.
    fn depth(&self) -> impl Future<Output = Result<Depth, QueueError>> + Send;

    /// Jobs waiting ([`Depth::ready`] alone, in one question to the
    /// broker: what the frontend's backpressure gate reads).
    fn ready(&self) -> impl Future<Output = Result<u64, QueueError>> + Send;

    /// Opens a consumer named `name` (unique per process: the worker's name).
    fn consume(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Self::Consumer, QueueError>> + Send;

    /// Opens a reader of the dead letters, named `name` (the worker's
    /// name): the watcher in every worker reads them with it.
    fn dead_letters(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<DeadLetters, QueueError>> + Send;

    /// Deletes the queue and everything beside it (tests clean up with it).
    fn destroy(&self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// A consumer: takes jobs one at a time and settles each.
pub trait JobConsumer: Send + 'static {
    /// The next job, waiting up to `wait`; `None` if none came. Survives a
    /// lost connection by reconnecting (the broker has put back what this
    /// consumer held).
    fn next(
        &mut self,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Delivery>, QueueError>> + Send;

    /// Done with it: the queue forgets the job. With `PREFETCH` above 1
    /// the ack may be kept and sent with the consumer's next call (both
    /// backends say when): an `Ok` means it will be sent, and a consumer
    /// that dies before then has the job delivered again.
    fn ack(&mut self, delivery: &Delivery) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Not now: back in the queue (counted as a delivery).
    fn requeue(
        &mut self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// Never: to the dead-letter queue.
    fn dead_letter(
        &mut self,
        delivery: &Delivery,
    ) -> impl Future<Output = Result<(), QueueError>> + Send;

    /// A new handle on the queue this consumer reads, on connections of
    /// its own: the worker's housekeeping (the dead-letter watcher and the
    /// sweeper, see [`crate::worker`]) publishes and reads through it, so
    /// a worker given only its consumer still runs them.
    ///
    /// The future owns what it needs (it does not borrow the consumer), so
    /// the worker can open it while it holds the consumer.
    fn reopen(&self) -> impl Future<Output = Result<AnyQueue, QueueError>> + Send + 'static;

    /// Stops consuming; whatever this consumer still holds goes back to
    /// the queue at once (a graceful stop, unlike a crash, does not wait
    /// for the broker or the reaper to notice).
    fn close(self) -> impl Future<Output = Result<(), QueueError>> + Send;
}

/// What a consume loop ([`consume_until_stopped`]) does with each
/// delivery: the job worker's and the change worker's one step each.
pub(crate) trait Handler<C: JobConsumer>: Sync {
    /// What doing a delivery decided (ack, requeue, dead-letter, and what
    /// the settling needs to know).
    type Decision: Send;
    /// Does the delivery's work.
    fn work(&self, delivery: &Delivery) -> impl Future<Output = Self::Decision> + Send;
    /// The decision for work cut short by a stop: it goes back.
    fn returned(&self) -> Self::Decision;
    /// Tells the queue what was decided (and logs it).
    fn finish(
        &self,
        consumer: &mut C,
        delivery: &Delivery,
        decision: Self::Decision,
    ) -> impl Future<Output = ()> + Send;
}

/// How long one wait for a delivery lasts before the loop looks around.
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// The loop every worker runs, until `shutdown` resolves: take the next
/// delivery (an unreachable queue is tried again, 100 ms apart doubling
/// to 5 s; RabbitMQ reconnects inside `next`), do it, settle it. A stop
/// while a delivery is being worked on gives it `grace` to finish, then
/// returns it ([`Handler::returned`]); either way the loop ends after
/// settling it. Returns the deliveries handled (the caller closes the
/// consumer).
pub(crate) async fn consume_until_stopped<C: JobConsumer, H: Handler<C>>(
    handler: &H,
    consumer: &mut C,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
    worker: &str,
    what: &str,
) -> u64 {
    use futures::FutureExt;
    let shutdown = shutdown.fuse();
    futures::pin_mut!(shutdown);
    let mut handled = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let next = tokio::select! {
            biased;
            () = &mut shutdown => break,
            next = consumer.next(POLL) => next,
        };
        let delivery = match next {
            Ok(Some(d)) => d,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(worker = %worker, error = %e, retry_in = ?backoff, "cannot take {what}");
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut stopping = false;
        let decision = {
            let work = handler.work(&delivery);
            futures::pin_mut!(work);
            tokio::select! {
                biased;
                d = &mut work => d,
                () = &mut shutdown => {
                    stopping = true;
                    tracing::info!(worker = %worker, ?grace, "stopping: finishing the one in hand ({what})");
                    match tokio::time::timeout(grace, &mut work).await {
                        Ok(d) => d,
                        // Dropping `work` drops what it held (a job's
                        // transaction rolls back).
                        Err(_) => handler.returned(),
                    }
                }
            }
        };
        handler.finish(consumer, &delivery, decision).await;
        handled += 1;
        if stopping {
            break;
        }
    }
    handled
}

/// Either backend, chosen at run time by `--queue`.
pub enum AnyQueue {
    /// RabbitMQ.
    RabbitMq(rabbitmq::RabbitQueue),
    /// Redis lists.
    Redis(redis::RedisQueue),
}

/// Either backend's consumer.
pub enum AnyConsumer {
    /// RabbitMQ (boxed: its connection state is large).
    RabbitMq(Box<rabbitmq::RabbitConsumer>),
    /// Redis lists (boxed too: two connection managers).
    Redis(Box<redis::RedisConsumer>),
}

impl AnyQueue {
    /// Connects to the backend `config` names, at the stack's URL for it,
    /// and declares the queue.
    pub async fn connect(
        config: &QueueConfig,
        stack: &common::config::StackConfig,
    ) -> Result<Self, QueueError> {
        Ok(match config.backend {
            Backend::RabbitMq => AnyQueue::RabbitMq(
                rabbitmq::RabbitQueue::connect(&stack.rabbitmq_url, config.clone()).await?,
            ),
            Backend::Redis => {
                AnyQueue::Redis(redis::RedisQueue::connect(&stack.redis_url, config.clone()).await?)
            }
        })
    }
}

impl JobQueue for AnyQueue {
    type Consumer = AnyConsumer;

    fn backend(&self) -> Backend {
        match self {
            AnyQueue::RabbitMq(q) => q.backend(),
            AnyQueue::Redis(q) => q.backend(),
        }
    }

    async fn enqueue(&self, job: &Envelope) -> Result<(), QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.enqueue(job).await,
            AnyQueue::Redis(q) => q.enqueue(job).await,
        }
    }

    async fn enqueue_raw(&self, message_id: &str, body: &[u8]) -> Result<(), QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.enqueue_raw(message_id, body).await,
            AnyQueue::Redis(q) => q.enqueue_raw(message_id, body).await,
        }
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.depth().await,
            AnyQueue::Redis(q) => q.depth().await,
        }
    }

    async fn ready(&self) -> Result<u64, QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.ready().await,
            AnyQueue::Redis(q) => q.ready().await,
        }
    }

    async fn consume(&self, name: &str) -> Result<AnyConsumer, QueueError> {
        Ok(match self {
            AnyQueue::RabbitMq(q) => AnyConsumer::RabbitMq(Box::new(q.consume(name).await?)),
            AnyQueue::Redis(q) => AnyConsumer::Redis(Box::new(q.consume(name).await?)),
        })
    }

    async fn dead_letters(&self, name: &str) -> Result<DeadLetters, QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.dead_letters(name).await,
            AnyQueue::Redis(q) => q.dead_letters(name).await,
        }
    }

    async fn destroy(&self) -> Result<(), QueueError> {
        match self {
            AnyQueue::RabbitMq(q) => q.destroy().await,
            AnyQueue::Redis(q) => q.destroy().await,
        }
    }
}

impl JobConsumer for AnyConsumer {
    async fn next(&mut self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        match self {
            AnyConsumer::RabbitMq(c) => c.next(wait).await,
            AnyConsumer::Redis(c) => c.next(wait).await,
        }
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        match self {
            AnyConsumer::RabbitMq(c) => c.ack(delivery).await,
            AnyConsumer::Redis(c) => c.ack(delivery).await,
        }
    }

    async fn requeue(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        match self {
            AnyConsumer::RabbitMq(c) => c.requeue(delivery).await,
            AnyConsumer::Redis(c) => c.requeue(delivery).await,
        }
    }

    async fn dead_letter(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        match self {
            AnyConsumer::RabbitMq(c) => c.dead_letter(delivery).await,
            AnyConsumer::Redis(c) => c.dead_letter(delivery).await,
        }
    }

    fn reopen(&self) -> impl Future<Output = Result<AnyQueue, QueueError>> + Send + 'static {
        match self {
            AnyConsumer::RabbitMq(c) => futures::future::Either::Left(c.reopen()),
            AnyConsumer::Redis(c) => futures::future::Either::Right(c.reopen()),
        }
    }

    async fn close(self) -> Result<(), QueueError> {
        match self {
            AnyConsumer::RabbitMq(c) => (*c).close().await,
            AnyConsumer::Redis(c) => (*c).close().await,
        }
    }
}
