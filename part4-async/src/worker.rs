//! The worker: takes jobs off the queue, does them, tells the user.
//!
//! For each delivery, in this order:
//!
//! 1. **Decode.** Bytes that are not a job envelope go to the dead
//!    letters with the reason logged; the worker carries on.
//! 2. **Start.** The `jobs` row becomes `running` at 0 % (a job already
//!    `done` or `failed` was delivered again: ack it and move on; a job
//!    with no row at all is dead-lettered).
//! 3. **Work**, writing progress to the row as it goes.
//! 4. **Commit** the effect, the claim and `done` in one transaction
//!    ([`crate::job::JobStore::complete`]).
//! 5. **Ack.** Only now: a worker that dies between 4 and 5 gets its job
//!    redelivered, and the claim makes the second attempt write nothing.
//!
//! A failed attempt is put back (requeue) with its reason in the row,
//! until the delivery limit: the last attempt marks the job `failed` with
//! its reason and dead-letters it, so a poison job stops and the others
//! keep flowing.
//!
//! **Stopping.** On SIGTERM ([`Worker::run_until_stopped`]'s `shutdown`)
//! the worker stops taking jobs, gives the one in hand `SHUTDOWN_GRACE_MS`
//! to finish, and otherwise puts it back (its uncommitted transaction
//! rolls back), then closes its consumer (which returns whatever else it
//! held) and exits 0. `kill -9` skips all that, and the queue still loses
//! nothing: that is what acks and redelivery are for. (A job put back
//! counts as a delivery, like any other return: a job whose workers are
//! stopped mid-job `MAX_DELIVERIES` times is dead-lettered. Production
//! gives the grace period the length of its longest job.)
//!
//! ## Housekeeping: two gaps no single delivery can close
//!
//! [`Worker::run_until_stopped`] also starts, beside the loop above, one
//! background task (on a handle of its own on the same queue,
//! [`JobConsumer::reopen`]) that closes two gaps between the queue and the
//! `jobs` rows:
//!
//! - **The dead-letter watcher.** A job whose *last* delivery dies with
//!   its worker (killed mid-job on its final attempt) is dead-lettered by
//!   the queue itself (RabbitMQ's `x-delivery-limit`, our Redis queue's
//!   delivery count), and no worker lives to mark it: its row would say
//!   `running` for ever, and the user's page would spin for ever. The
//!   watcher reads the dead letters ([`crate::queue::DeadLetters`]), marks
//!   each job that is not finished `failed` with the reason
//!   (`dead-lettered after N deliveries: the worker holding it died`),
//!   and parks the message, where it stays for a person. A job that a
//!   worker gave up on is `failed` already and only parked.
//! - **The sweeper.** A clone that dies between inserting a job's row and
//!   publishing it leaves the row `queued` with nothing on the queue. The
//!   row says whether a publish was ever confirmed: `published_at`, set by
//!   the clone once the broker confirmed, by the sweeper after its own
//!   confirm, or by the first worker that starts the job. Every few
//!   seconds the sweeper publishes the `queued` rows whose `published_at`
//!   is still NULL after `STALE_QUEUED_SECS`, at most `SWEEP_LIMIT` a
//!   pass, and then sets it. A job merely *waiting* behind a long backlog
//!   was published, so it is never sent twice, however long it waits (a
//!   copy would run the whole export again beside the first and reset the
//!   user's progress bar, and a backlog would grow faster the longer it
//!   is). The sweeper also cannot overrun `MAX_QUEUE_DEPTH`: it only sends
//!   rows the frontend accepted under that limit and never got onto the
//!   queue. Which sweeper sends a row is decided by one conditional
//!   `UPDATE` per row ([`crate::job::JobStore::take_stale`]), which also
//!   makes it fresh for another window: with any number of workers, an
//!   unpublished row is sent at most once per window until one publish is
//!   confirmed. A copy is still possible, and harmless: a clone that died
//!   after the broker's confirm but before writing `published_at` (the
//!   write is off the request's path), or a sweeper that died after its
//!   publish. The effect happens once whatever the copies (the claim), and
//!   a copy that finds its row finished is acked without work. (The row
//!   written before any publish makes the jobs table an outbox: with the
//!   server's default `ANSWER=after-insert` the clone answers after the
//!   insert and publishes right after, and this sweeper is what publishes
//!   a row whose publish failed or never happened.)
//!
//! Tests run one pass of each ([`Worker::watch_dead_letters`],
//! [`Worker::sweep`]).
//!
//! What is simplified: a failed attempt is retried at once (RabbitMQ and
//! our Redis queue have no delay); production retries with a growing
//! delay (a delayed-retry queue with a message TTL, or a sorted set by due
//! time), so a database outage does not burn every job's delivery limit in
//! a second.
//!
//! Tests step the worker one delivery at a time ([`Worker::step`]) instead
//! of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::export;
use crate::job::{Completed, Effect, Envelope, JobId, JobKind, JobStore};
use crate::queue::{
    AnyQueue, DeadLetter, DeadLetters, Delivery, Handler, JobConsumer, JobQueue, POLL, QueueError,
    consume_until_stopped,
};

/// The worker's own settings (the queue's are [`crate::queue::QueueConfig`]).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerConfig {
    /// This worker's name: in logs, in the claim rows, in the queue's
    /// consumer names. Default: `worker-<pid>`.
    #[arg(long, env = "WORKER_NAME")]
    pub worker_name: Option<String>,
    /// The stated minimum duration of a job, in milliseconds (see
    /// [`crate::export`]): it stands for the slow part of real work, so
    /// the lesson shows on a fast machine. 0 for the bare work.
    #[arg(long, env = "JOB_MIN_MS", default_value_t = 1000)]
    pub job_min_ms: u64,
    /// On SIGTERM, how long the job in hand may take to finish before it is
    /// put back in the queue.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// The sweeper publishes `queued` rows whose publish was never
    /// confirmed after this long (a clone died between the insert and the
    /// publish); jobs waiting in the queue are left alone. 0 turns it off.
    #[arg(long, env = "STALE_QUEUED_SECS", default_value_t = 60)]
    pub stale_queued_secs: u64,
    /// At most this many rows published per sweep pass.
    #[arg(long, env = "SWEEP_LIMIT", default_value_t = 100)]
    pub sweep_limit: u32,
}

impl WorkerConfig {
    /// A configuration for tests and demos: the given name and minimum
    /// duration, a 10 s grace.
    pub fn new(name: &str, job_min: Duration) -> Self {
        WorkerConfig {
            worker_name: Some(name.to_owned()),
            job_min_ms: job_min.as_millis() as u64,
            shutdown_grace_ms: 10_000,
            stale_queued_secs: 60,
            sweep_limit: 100,
        }
    }

    /// The worker's name.
    pub fn name(&self) -> String {
        self.worker_name
            .clone()
            .unwrap_or_else(|| format!("worker-{}", std::process::id()))
    }
}

/// What the worker did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The effect was committed by this attempt, and the job acked.
    Done,
    /// The job was finished before (a redelivery, or a duplicate message),
    /// or marked `failed` while this attempt ran (the user was told so):
    /// nothing was written, the message acked.
    AlreadyDone,
    /// The attempt failed and the job went back to the queue.
    Retried {
        /// Why the attempt failed.
        reason: String,
    },
    /// Given up: dead-lettered (and the job, if it has a row, `failed`).
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Stopping: the job was put back unfinished.
    Returned,
}

/// One delivery handled by [`Worker::step`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Processed {
    /// The job, if the message could be decoded.
    pub job_id: Option<JobId>,
    /// Which delivery of the message it was.
    pub attempt: u32,
    /// What happened.
    pub outcome: Outcome,
    /// Whether the queue took our ack/requeue/dead-letter (false: the
    /// connection was lost first, and the queue will deliver it again).
    pub settled: bool,
}

/// Counts since the worker started, for logs and the demo.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Effects committed.
    pub done: AtomicU64,
    /// Redeliveries of finished jobs, acked without writing.
    pub already_done: AtomicU64,
    /// Attempts that failed and were put back.
    pub retried: AtomicU64,
    /// Messages dead-lettered (poison jobs, garbage).
    pub dead_lettered: AtomicU64,
    /// Jobs the dead-letter watcher marked `failed` (the queue gave up on
    /// them, and no worker had said so).
    pub dead_marked: AtomicU64,
    /// Dead letters the watcher parked.
    pub parked: AtomicU64,
    /// Unpublished `queued` jobs the sweeper published.
    pub swept: AtomicU64,
    /// Deliveries being handled now (a gauge, not a count).
    pub running: AtomicU64,
}

/// Holds one [`WorkerStats::running`] while a delivery is handled, and
/// gives it back however the handling ends (a stop drops it half way).
struct Running<'a>(&'a AtomicU64);

impl<'a> Running<'a> {
    fn start(n: &'a AtomicU64) -> Self {
        n.fetch_add(1, Ordering::Relaxed);
        Running(n)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What one dead letter came to ([`Worker::watch_dead_letters`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watched {
    /// The job, if the message could be decoded.
    pub job_id: Option<JobId>,
    /// The reason its row was marked `failed` with; `None` if the row was
    /// finished already (a worker gave up on it and said why), absent, or
    /// the message was not a job.
    pub marked: Option<String>,
}

/// What one sweep pass did ([`Worker::sweep`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Stale unpublished `queued` rows found (at most the limit).
    pub stale: u64,
    /// Of those, published (and marked published) by this pass.
    pub republished: u64,
    /// Taken by another sweeper first, or no longer queued.
    pub skipped: u64,
    /// Taken, but the publish failed (the row waits for another window).
    pub failed: u64,
}

/// What a job attempt decided, before it is told to the queue.
pub(crate) enum Decision {
    Ack(Outcome),
    Requeue(Outcome),
    DeadLetter(Outcome),
}

/// A worker: the job store, its settings, its counts.
pub struct Worker {
    store: JobStore,
    name: String,
    job_min: Duration,
    grace: Duration,
    max_deliveries: u32,
    stale: Duration,
    sweep_limit: u32,
    stats: Arc<WorkerStats>,
}

/// How long housekeeping may take to stop once the worker has.
const HOUSEKEEPING_STOP: Duration = Duration::from_secs(2);

impl Worker {
    /// A worker over `store`, dead-lettering after `max_deliveries`
    /// (the queue's [`crate::queue::QueueConfig::max_deliveries`]).
    pub fn new(store: JobStore, config: &WorkerConfig, max_deliveries: u32) -> Self {
        Worker {
            store,
            name: config.name(),
            job_min: Duration::from_millis(config.job_min_ms),
            grace: Duration::from_millis(config.shutdown_grace_ms),
            max_deliveries: max_deliveries.max(1),
            stale: Duration::from_secs(config.stale_queued_secs),
            sweep_limit: config.sweep_limit,
            stats: Arc::new(WorkerStats::default()),
        }
    }

    /// A copy for the housekeeping task (same store, name, settings and
    /// counters).
    fn twin(&self) -> Worker {
        Worker {
            store: self.store.clone(),
            name: self.name.clone(),
            job_min: self.job_min,
            grace: self.grace,
            max_deliveries: self.max_deliveries,
            stale: self.stale,
            sweep_limit: self.sweep_limit,
            stats: self.stats.clone(),
        }
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The worker's counts.
    pub fn stats(&self) -> Arc<WorkerStats> {
        self.stats.clone()
    }

    /// Waits up to `wait` for one delivery and handles it; `None` if none
    /// came. For tests and the demo: the worker, one step at a time.
    pub async fn step<C: JobConsumer>(
        &self,
        consumer: &mut C,
        wait: Duration,
    ) -> Result<Option<Processed>, QueueError> {
        let Some(delivery) = consumer.next(wait).await? else {
            return Ok(None);
        };
        let decision = self.process(&delivery).await;
        Ok(Some(self.settle(consumer, &delivery, decision).await))
    }

    /// Does the job of `envelope` here and now, without a queue: what
    /// `--jobs sync` (the anti-pattern) runs inside the request. The same
    /// steps as a delivery (start, work, commit with the claim); a failure
    /// marks the job `failed` with its reason at once (no retries: the
    /// user is waiting).
    pub async fn perform(&self, envelope: &Envelope) -> Outcome {
        let outcome = match self.attempt(envelope).await {
            Ok(Decision::Ack(o) | Decision::Requeue(o) | Decision::DeadLetter(o)) => o,
            Err(e) => {
                let reason = format!("{e:#}");
                if let Err(e) = self.store.fail(&envelope.id, &reason).await {
                    tracing::warn!(worker = %self.name, job = %envelope.id, error = %e, "could not mark the job failed");
                }
                Outcome::DeadLettered { reason }
            }
        };
        let counter = match &outcome {
            Outcome::Done => &self.stats.done,
            Outcome::AlreadyDone => &self.stats.already_done,
            _ => &self.stats.dead_lettered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    /// Consumes until `shutdown` resolves, then stops gracefully (see the
    /// module docs). Returns the number of deliveries handled.
    pub async fn run_until_stopped<C: JobConsumer>(
        &self,
        mut consumer: C,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<u64, QueueError> {
        let housekeeping = self.start_housekeeping(consumer.reopen()).await;
        let handled = consume_until_stopped(
            self,
            &mut consumer,
            shutdown,
            self.grace,
            &self.name,
            "jobs",
        )
        .await;
        if let Some((stop, task)) = housekeeping {
            let _ = stop.send(true);
            let abort = task.abort_handle();
            if tokio::time::timeout(HOUSEKEEPING_STOP, task).await.is_err() {
                // Whatever it held is safe: a dead letter not parked stays
                // dead, a sweep not finished leaves rows queued.
                abort.abort();
            }
        }
        consumer.close().await?;
        tracing::debug!(worker = %self.name, handled, "stopped");
        Ok(handled)
    }

    /// Opens a handle on the consumer's queue (`reopen`, from
    /// [`JobConsumer::reopen`]) and spawns the housekeeping task on it
    /// (see the module docs). Without a handle the worker still works, and
    /// says what it is missing.
    async fn start_housekeeping(
        &self,
        reopen: impl Future<Output = Result<AnyQueue, QueueError>> + Send,
    ) -> Option<(
        tokio::sync::watch::Sender<bool>,
        tokio::task::JoinHandle<()>,
    )> {
        let queue = match reopen.await {
            Ok(q) => q,
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "no dead-letter watcher or sweeper in this worker: jobs the queue gives up on may stay `running`, unpublished ones `queued`");
                return None;
            }
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(self.twin().housekeeping(queue, stopped));
        Some((stop, task))
    }

    /// The housekeeping loop: read dead letters as they come, sweep every
    /// [`Worker::sweep_every`], until `stop` turns true.
    async fn housekeeping(self, queue: AnyQueue, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut letters: Option<DeadLetters> = None;
        let mut backoff = Duration::from_millis(200);
        let sweep_every = self.sweep_every();
        let mut next_sweep = tokio::time::Instant::now() + sweep_every.unwrap_or_default();
        // Stop when told, or when the worker's loop is gone without
        // telling (its future dropped: the sender with it).
        while !*stop.borrow() && stop.has_changed().is_ok() {
            if let Some(every) = sweep_every
                && tokio::time::Instant::now() >= next_sweep
            {
                match self.sweep(&queue).await {
                    Ok(s) if s.stale > 0 => {
                        tracing::info!(worker = %self.name, stale = s.stale, republished = s.republished, skipped = s.skipped, failed = s.failed, "swept stale queued jobs");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(worker = %self.name, error = %e, "the sweep failed"),
                }
                next_sweep = tokio::time::Instant::now() + every;
            }
            let reader = match letters.as_mut() {
                Some(r) => r,
                None => match queue.dead_letters(&self.name).await {
                    Ok(r) => {
                        backoff = Duration::from_millis(200);
                        letters.insert(r)
                    }
                    Err(e) => {
                        tracing::warn!(worker = %self.name, error = %e, retry_in = ?backoff, "cannot read the dead letters");
                        tokio::select! {
                            _ = stop.changed() => {}
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let watched = tokio::select! {
                _ = stop.changed() => break,
                w = self.watch_dead_letters(reader, POLL) => w,
            };
            if let Err(e) = watched {
                tracing::warn!(worker = %self.name, error = %e, "the dead-letter reader failed: opening another");
                letters = None;
                tokio::select! {
                    _ = stop.changed() => {}
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }

    /// How often the sweeper runs: a quarter of the window, between 1 and
    /// 15 s; `None` when it is off (`STALE_QUEUED_SECS=0`).
    pub fn sweep_every(&self) -> Option<Duration> {
        (!self.stale.is_zero())
            .then(|| (self.stale / 4).clamp(Duration::from_secs(1), Duration::from_secs(15)))
    }

    /// The dead-letter watcher, one step: waits up to `wait` for a dead
    /// letter and handles it (marks its job `failed` if it is not
    /// finished, then parks it); `None` if none came. A database error
    /// leaves the letter dead (not parked) for the next step.
    pub async fn watch_dead_letters(
        &self,
        letters: &mut DeadLetters,
        wait: Duration,
    ) -> Result<Option<Watched>, QueueError> {
        let Some(letter) = letters.next(wait).await? else {
            return Ok(None);
        };
        let marked = match self.mark_dead_letter(&letter).await {
            Ok(m) => m,
            Err(e) => {
                // Not parked: it stays a dead letter, and comes back.
                return Err(QueueError::Other {
                    backend: "the job store",
                    reason: format!(
                        "could not mark a dead-lettered job failed, left it dead for another try: {e:#}"
                    ),
                });
            }
        };
        letters.park(&letter).await?;
        self.stats.parked.fetch_add(1, Ordering::Relaxed);
        let job_id = letter.envelope.as_ref().ok().map(|e| e.id.clone());
        if let Some(reason) = &marked {
            self.stats.dead_marked.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(worker = %self.name, job = ?job_id.as_ref().map(|i| i.to_string()), %reason, "marked a dead-lettered job failed");
        }
        Ok(Some(Watched { job_id, marked }))
    }

    /// Marks the job of a dead letter `failed` unless it is finished;
    /// returns the reason written, if any.
    async fn mark_dead_letter(&self, letter: &DeadLetter) -> anyhow::Result<Option<String>> {
        let Ok(envelope) = &letter.envelope else {
            // Garbage has no job to mark: parked as it is.
            return Ok(None);
        };
        let n = self.max_deliveries;
        let reason = match letter.reason.as_deref() {
            // Redis records no reason; a worker marks its own dead letters
            // before sending them, so an unfinished row means the limit.
            None | Some("delivery_limit") => {
                format!("dead-lettered after {n} deliveries: the worker holding it died")
            }
            Some("rejected") => "dead-lettered by a worker that could not record why (was the database reachable?): see the worker's log".to_owned(),
            Some(other) => format!("dead-lettered by the queue ({other})"),
        };
        let changed = self.store.fail_unfinished(&envelope.id, &reason).await?;
        Ok(changed.then_some(reason))
    }

    /// One sweep pass: publishes, on `queue`, the `queued` rows whose
    /// publish was never confirmed (`published_at` NULL) and that are
    /// untouched for `STALE_QUEUED_SECS` (at most `SWEEP_LIMIT`), each
    /// taken first by a conditional update so that no other sweeper sends
    /// it too, and marked published once the queue confirmed (see the
    /// module docs). Stops at the first failed publish: the queue is down,
    /// and the rows wait for the next window.
    pub async fn sweep<Q: JobQueue>(&self, queue: &Q) -> anyhow::Result<Swept> {
        let mut swept = Swept::default();
        if self.stale.is_zero() {
            return Ok(swept);
        }
        let stale_ms = self.stale.as_millis() as i64;
        let ids = self.store.stale_queued(stale_ms, self.sweep_limit).await?;
        swept.stale = ids.len() as u64;
        for id in ids {
            if !self.store.take_stale(&id, stale_ms).await? {
                swept.skipped += 1;
                continue;
            }
            let Some(job) = self.store.get(&id).await? else {
                swept.skipped += 1;
                continue;
            };
            let envelope = Envelope::new(job.id, job.kind, job.params);
            if let Err(e) = queue.enqueue(&envelope).await {
                swept.failed += 1;
                tracing::warn!(worker = %self.name, job = %id, error = %e, "the sweeper could not publish a stale job: it waits for the next window");
                break;
            }
            swept.republished += 1;
            self.stats.swept.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.store.mark_published(&id).await {
                // The next window sends another copy: a wasted delivery,
                // never a second effect.
                tracing::warn!(worker = %self.name, job = %id, error = %e, "published a stale job but could not record it");
            }
        }
        Ok(swept)
    }

    /// Tells the queue what `process` decided, and counts it.
    async fn settle<C: JobConsumer>(
        &self,
        consumer: &mut C,
        delivery: &Delivery,
        decision: Decision,
    ) -> Processed {
        let (result, outcome) = match decision {
            Decision::Ack(o) => (consumer.ack(delivery).await, o),
            Decision::Requeue(o) => (consumer.requeue(delivery).await, o),
            Decision::DeadLetter(o) => (consumer.dead_letter(delivery).await, o),
        };
        let counter = match &outcome {
            Outcome::Done => Some(&self.stats.done),
            Outcome::AlreadyDone => Some(&self.stats.already_done),
            Outcome::Retried { .. } => Some(&self.stats.retried),
            Outcome::DeadLettered { .. } => Some(&self.stats.dead_lettered),
            Outcome::Returned => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            // Harmless by design: the queue delivers it again, and the
            // claim (or the finished status) makes that attempt a no-op.
            tracing::warn!(worker = %self.name, error = %e, "could not settle a delivery");
        }
        Processed {
            job_id: delivery.envelope.as_ref().ok().map(|e| e.id.clone()),
            attempt: delivery.attempt,
            outcome,
            settled: result.is_ok(),
        }
    }

    /// Does the job a delivery carries and decides what to tell the queue.
    /// Never panics on what the message holds.
    async fn process(&self, delivery: &Delivery) -> Decision {
        let _running = Running::start(&self.stats.running);
        let envelope = match &delivery.envelope {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(worker = %self.name, error = %e, "dead-lettering a message that is not a job");
                return Decision::DeadLetter(Outcome::DeadLettered {
                    reason: e.to_string(),
                });
            }
        };
        match self.attempt(envelope).await {
            Ok(decision) => decision,
            Err(e) => {
                let reason = format!("{e:#}");
                self.failed(&envelope.id, delivery.attempt, reason).await
            }
        }
    }

    /// One attempt at the job: `Err` is a failure that may be retried.
    async fn attempt(&self, envelope: &Envelope) -> anyhow::Result<Decision> {
        let id = &envelope.id;
        let Some(job) = self.store.start(id).await? else {
            return Ok(Decision::DeadLetter(Outcome::DeadLettered {
                reason: format!("no job {id} in the jobs table"),
            }));
        };
        if job.status.is_finished() {
            return Ok(Decision::Ack(Outcome::AlreadyDone));
        }
        let kind: JobKind = match job.kind.parse() {
            Ok(k) => k,
            Err(e) => {
                let reason = e.to_string();
                self.store.fail(id, &reason).await?;
                return Ok(Decision::DeadLetter(Outcome::DeadLettered { reason }));
            }
        };
        let effect = match kind {
            JobKind::Export => {
                let store = &self.store;
                let document = export::export(store.pool(), job.owner_id, self.job_min, |p| {
                    store.progress(id, p)
                })
                .await?;
                Effect {
                    content_type: "application/json".into(),
                    body: serde_json::to_string(&document)?,
                }
            }
            JobKind::Fail => {
                anyhow::bail!("the fail job always fails (the poison-job drill)")
            }
        };
        Ok(match self.store.complete(id, &self.name, &effect).await? {
            Completed::Committed => Decision::Ack(Outcome::Done),
            Completed::AlreadyDone => Decision::Ack(Outcome::AlreadyDone),
            Completed::Failed => {
                // Finished, as far as the user knows: they were told
                // `failed`. The work is dropped, the message acked.
                tracing::info!(worker = %self.name, job = %id, "finished a job already marked failed: nothing written");
                Decision::Ack(Outcome::AlreadyDone)
            }
        })
    }

    /// An attempt failed: retry it, or, on the last delivery, give up.
    async fn failed(&self, id: &JobId, attempt: u32, reason: String) -> Decision {
        if attempt >= self.max_deliveries {
            let reason = format!(
                "gave up after {attempt} deliveries (the limit is {}): {reason}",
                self.max_deliveries
            );
            if let Err(e) = self.store.fail(id, &reason).await {
                tracing::warn!(worker = %self.name, job = %id, error = %e, "could not mark the job failed");
            }
            tracing::warn!(worker = %self.name, job = %id, %reason, "dead-lettering");
            Decision::DeadLetter(Outcome::DeadLettered { reason })
        } else {
            let note = format!("attempt {attempt} failed, retrying: {reason}");
            if let Err(e) = self.store.retrying(id, &note).await {
                tracing::warn!(worker = %self.name, job = %id, error = %e, "could not record the failed attempt");
            }
            tracing::info!(worker = %self.name, job = %id, %reason, attempt, "retrying");
            Decision::Requeue(Outcome::Retried { reason })
        }
    }
}

/// The job worker's step in the consume loop.
impl<C: JobConsumer> Handler<C> for Worker {
    type Decision = Decision;

    fn work(&self, delivery: &Delivery) -> impl Future<Output = Decision> + Send {
        Worker::process(self, delivery)
    }

    fn returned(&self) -> Decision {
        Decision::Requeue(Outcome::Returned)
    }

    async fn finish(&self, consumer: &mut C, delivery: &Delivery, decision: Decision) {
        if let (Decision::Requeue(Outcome::Returned), Ok(envelope)) =
            (&decision, &delivery.envelope)
        {
            let note = "the worker stopped before finishing it: back in the queue";
            if let Err(e) = self.store.retrying(&envelope.id, note).await {
                tracing::warn!(worker = %self.name, error = %e, "could not record the returned job");
            }
        }
        let processed = Worker::settle(self, consumer, delivery, decision).await;
        // DEBUG: a demo runs workers through hundreds of jobs; retries and
        // dead letters are logged where they happen.
        tracing::debug!(worker = %self.name, job = ?processed.job_id.as_ref().map(|i| i.to_string()), attempt = processed.attempt, outcome = ?processed.outcome, "handled");
    }
}
