//! What a committed write changed, queued for the workers: the async
//! fill, the re-bake, the fan-out.
//!
//! Way 1 of the article, "do it in advance", needs someone to know *when*
//! to do it again. Part 2's server tells a hook after every committed
//! write what it changed ([`Committed`]: a post, a comment or a like on
//! an article, a new friendship); part 3 deletes the cached objects it
//! changed there. Part 4 adds one step after that invalidation: it
//! hands a [`Change`] to a task that publishes it on the queue
//! `<QUEUE_NAME>.changes` (the same [`JobQueue`] backends as the jobs),
//! and the user's write is answered at once, without waiting for it.
//! A worker ([`ChangeWorker`], in `part4-worker` beside the job consumer)
//! takes the change and does the slow part:
//!
//! | change | the worker |
//! |---|---|
//! | `article {id}` (a comment, a like) | re-fills part 3's `article:{id}` through its read-through ([`CacheLayer::fill_article`]), re-bakes `articles/<id>.html` and its author's page (which shows each article's likes and comments) |
//! | `post {author}` | fans the new articles out into the friends' timelines ([`crate::fanout`]), re-bakes the author's page and their newest article |
//! | `friends {a, b}` | pushes each one's newest articles into the other's timeline; nothing is baked (no baked page shows friendships), and part 3's invalidation already removed the friend objects: they are small and the next read fills them |
//!
//! **The async fill: the app mostly reads finished work.** Part 3 fills
//! its cache on a miss: after every write, the *next reader* pays for
//! re-assembling the article (a miss, three queries). Here the worker
//! pays, right after the write: it reads the object back through part 3's
//! own read-through, so the stale-set guard still applies (a second write
//! landing during the fill keeps it out of the cache), and the next
//! reader hits. The same for the baked page: nginx serves the re-baked
//! file, and no clone renders anything.
//!
//! Only `article:{id}` is re-filled. The write also deleted part 3's
//! `page:{id}` (the rendered HTML, which nginx's baked file replaces in
//! part 4) and `summary:{id}` (an article as the feed lists it, which the
//! feed fills for all its missing articles with one batched query on its
//! next read): both are derived on the next read, cheaply.
//!
//! **Freshness.** The write is visible at once through the clones (part
//! 3's invalidation, read-your-writes); the baked page and the timelines
//! catch up when the worker has done the change: a delay of one queue
//! hop plus the work, which the demo measures (the staleness window).
//! Two changes of one article may be done by two workers and finish out
//! of order; the baker keeps a page that comes from a later read of the
//! database ([`Baker::article`]), so the older re-bake never wins.
//!
//! **Best effort, never in the user's way.** The publish runs in a task
//! of its own and the write does not wait for it: with the broker slow
//! or down, writes cost what they cost in part 3. At most
//! [`MAX_IN_FLIGHT`] publishes wait at once; past that, a change is
//! dropped and counted ([`PublishStats::dropped`]). A change that fails,
//! times out or is dropped is logged, the user's write still succeeds,
//! and the scheduled full re-bake (`part4-bake --interval-secs`) catches
//! up what events missed. Every change's fate is counted on the clone's
//! `/metrics` too: `lab_changes_total{result}`, `published`, `failed`,
//! `dropped` or `over_bound`. A transactional outbox (the change written in
//! the write's transaction, published from the table) would close that
//! gap.
//!
//! **Bounded.** With every worker stopped, the changes queue would grow
//! with every write, though its messages are worth little once the next
//! full re-bake has run. So each clone's hook stops publishing while
//! `CHANGES_MAX_WAITING` changes (default [`MAX_WAITING`]) wait on the
//! queue, and counts what it skipped ([`PublishStats::over_bound`]). What
//! a skipped change would have done is caught up as a lost change's is:
//! the pages by the scheduled re-bake, a post's fan-out by the author's
//! next post ([`crate::fanout`]); a new friendship's timeline push is
//! not (each timeline shows the other's articles from their next post on).
//! The hook counts with the gate `POST /jobs` uses for `MAX_QUEUE_DEPTH`
//! (`DepthGate`, in `gate.rs`): the broker's own count
//! ([`JobQueue::ready`], asked at most every [`WAITING_READ_EVERY`], by a
//! publishing task, never by the write), plus this clone's publishes
//! since, each counted from before it is sent. So the bound holds to
//! within what the other clones publish in one second, on both backends,
//! with nothing to configure on the broker.
//! (The broker's own bound, RabbitMQ's `x-max-length` with `drop-head`,
//! was not used: a queue declared without it cannot be re-declared with
//! it, `PRECONDITION_FAILED`, so every lab broker would need the queue
//! deleted first; and a quorum queue with `drop-head` falls back from
//! at-least-once to at-most-once dead-lettering. Production sets such a
//! bound by policy.)
//!
//! **Idempotent by nature.** Every effect of a change converges: a
//! re-fill stores what the database says now, a re-bake writes the page
//! as it is now, a `ZADD` of a member already there changes nothing. A
//! change delivered twice does the same work twice and leaves the same
//! state, so, unlike a job, no claim row is needed. The worker acks a
//! change only after its work is done; a failure is retried up to the
//! delivery limit, then dead-lettered; a message that is not a change
//! (a poison message) is dead-lettered at once, and the worker carries
//! on.
//!
//! A change travels as a job [`Envelope`] of kind [`CHANGE_KIND`] (a fresh
//! id, the change in `params`), so both backends count its deliveries
//! like a job's.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use futures::future::BoxFuture;
use part1_clones::error::ApiError;
use part2_database::server::{AfterCommit, Committed};
use part3_cache::server::CacheLayer;
use part3_cache::stampede::Outcome as CacheOutcome;
use serde::{Deserialize, Serialize};
use sqlx::MySqlPool;

use crate::bake::{Baked, Baker, UnsafeUsername};
use crate::fanout::{Fanout, Timelines};
use crate::gate::DepthGate;
use crate::job::{Envelope, JobId, now_ms};
use crate::queue::{
    Delivery, Handler, JobConsumer, JobQueue, QueueConfig, QueueError, consume_until_stopped,
};

/// The suffix of the changes queue's name: `<QUEUE_NAME>.changes`.
pub const SUFFIX: &str = ".changes";

/// The envelope kind of a change.
pub const CHANGE_KIND: &str = "change";

/// The changes queue's configuration: the jobs queue's, its name suffixed.
pub fn queue_config(jobs: &QueueConfig) -> QueueConfig {
    let mut c = jobs.clone();
    c.queue_name = format!("{}{SUFFIX}", jobs.queue_name);
    c
}

/// What a committed write changed, as the workers get it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "lowercase", deny_unknown_fields)]
pub enum Change {
    /// An article got a comment or a like.
    Article {
        /// The article.
        id: u64,
    },
    /// An author posted.
    Post {
        /// The author.
        author: u64,
    },
    /// Two users became friends.
    Friends {
        /// One.
        a: u64,
        /// The other.
        b: u64,
    },
}

impl From<&Committed> for Change {
    fn from(what: &Committed) -> Self {
        match what {
            Committed::Article { id } => Change::Article { id: *id },
            Committed::Post { author } => Change::Post { author: *author },
            Committed::Friends { a, b } => Change::Friends { a: a.0, b: b.0 },
        }
    }
}

/// A change with when it was published (ms since the epoch), so a reader
/// of the baked page can tell how long it took to show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangeMessage {
    /// What changed.
    pub change: Change,
    /// When it was published.
    pub at: i64,
}

impl ChangeMessage {
    /// The envelope that carries it: kind [`CHANGE_KIND`], a fresh id.
    pub fn envelope(&self) -> Envelope {
        Envelope::new(
            JobId::generate(),
            CHANGE_KIND,
            serde_json::to_value(self).unwrap_or_default(),
        )
    }

    /// The change an envelope carries, or why it is not one.
    pub fn from_envelope(e: &Envelope) -> Result<Self, String> {
        if e.kind != CHANGE_KIND {
            let kind: String = e.kind.chars().take(40).collect();
            return Err(format!(
                "a message of kind {kind:?} on the changes queue (changes are of kind {CHANGE_KIND:?})"
            ));
        }
        serde_json::from_value(e.params.clone()).map_err(|err| {
            format!(
                "not a change ({err}): expected {{\"change\":{{\"change\":\"article\",\"id\":42}},\"at\":<ms>}}"
            )
        })
    }
}

/// Publishes `change` on the changes queue; returns once the queue has it.
pub async fn publish<Q: JobQueue>(queue: &Q, change: Change) -> Result<(), QueueError> {
    let message = ChangeMessage {
        change,
        at: now_ms(),
    };
    queue.enqueue(&message.envelope()).await
}

/// Publishes the hook may have in flight at once: past it, a change is
/// dropped (counted, logged), not queued in memory behind a slow broker.
pub const MAX_IN_FLIGHT: usize = 256;

/// Changes waiting on the changes queue past which a clone publishes no
/// more (`CHANGES_MAX_WAITING`'s default): the changes queue's bound.
pub const MAX_WAITING: u64 = 10_000;

/// How old a clone's count of waiting changes may grow before a publish
/// asks the broker again.
pub const WAITING_READ_EVERY: Duration = Duration::from_secs(1);

/// Whether the bound's warning was given for the current spell of skips:
/// set by the first skip, cleared once a publish is admitted with the
/// queue at or under half the bound (the rest of a spell logs at debug).
#[derive(Default)]
struct Full(AtomicBool);

/// Publishes, failures and drops counted by the hook (each also in the
/// process's `lab_changes_total{result}`, which `/metrics` shows).
#[derive(Debug, Default)]
pub struct PublishStats {
    /// Changes the queue took.
    pub published: AtomicU64,
    /// Changes lost: the queue refused or did not answer in time (logged;
    /// caught up as the module's **Bounded** says).
    pub failed: AtomicU64,
    /// Changes not even tried: [`MAX_IN_FLIGHT`] publishes were already
    /// waiting on the queue (logged; caught up as the module's **Bounded**
    /// says).
    pub dropped: AtomicU64,
    /// Changes not published because the changes queue already held its
    /// bound (`max_waiting`; caught up as the module's **Bounded** says).
    pub over_bound: AtomicU64,
}

impl PublishStats {
    /// Counts one change's fate: in `n` (one of this struct's fields) and
    /// in the process's `lab_changes_total{result}` (what `/metrics`
    /// shows). Returns `n`'s new value.
    fn count(n: &AtomicU64, result: &'static str) -> u64 {
        metrics::counter!(common::metrics::CHANGES, "result" => result).increment(1);
        n.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// Part 2's after-commit hook, extended: `previous` first (part 3's
/// invalidation, so the worker never re-fills before the delete), then
/// the change handed to a task of its own that publishes it on `queue`
/// (waiting at most `limit`, its count of waiting changes included), and
/// the hook returns at once: **the user's write never waits for the
/// broker**. With the broker down, a write costs what it cost in part 3,
/// and the publishes time out in the background.
///
/// At most [`MAX_IN_FLIGHT`] publishes are in flight; a change that
/// finds them all taken is dropped and counted in
/// [`PublishStats::dropped`] (a slow broker must not pile up tasks and
/// memory in every clone). While `max_waiting` changes wait on the queue
/// (see the module's **Bounded**), a change is not published and is
/// counted in [`PublishStats::over_bound`]. Best effort throughout: a
/// failed, timed-out, dropped or skipped change is logged and counted,
/// never the user's error; the pages it missed are caught up by the
/// scheduled full re-bake, a post's fan-out by the author's next post.
pub fn after_commit<Q: JobQueue>(
    previous: Option<AfterCommit>,
    queue: Arc<Q>,
    limit: Duration,
    stats: Arc<PublishStats>,
    max_waiting: u64,
) -> AfterCommit {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    // The jobs' gate, read inline: no task renews its reading, a publish
    // reads the broker once the reading is WAITING_READ_EVERY old.
    let gate = Arc::new(DepthGate::new(
        max_waiting,
        WAITING_READ_EVERY,
        WAITING_READ_EVERY,
    ));
    let full = Arc::new(Full::default());
    Arc::new(move |what: Committed| -> BoxFuture<'static, ()> {
        let (previous, queue, stats, slots, gate, full) = (
            previous.clone(),
            queue.clone(),
            stats.clone(),
            slots.clone(),
            gate.clone(),
            full.clone(),
        );
        Box::pin(async move {
            if let Some(hook) = &previous {
                hook(what.clone()).await;
            }
            let change = Change::from(&what);
            let Ok(slot) = slots.try_acquire_owned() else {
                let dropped = PublishStats::count(&stats.dropped, "dropped");
                tracing::warn!(
                    ?change,
                    in_flight = MAX_IN_FLIGHT,
                    dropped,
                    "too many changes waiting on the queue: dropped; the scheduled re-bake will catch up the pages"
                );
                return;
            };
            // Not awaited: the write is answered while this publishes.
            tokio::spawn(async move {
                let _slot = slot;
                // One deadline for the count and the publish.
                let deadline = tokio::time::Instant::now() + limit;
                let admitted = match tokio::time::timeout_at(deadline, gate.admit(&*queue)).await {
                    Ok(Ok(Ok(admitted))) => admitted,
                    Ok(Ok(Err(waiting))) => {
                        let skipped = PublishStats::count(&stats.over_bound, "over_bound");
                        if full.0.swap(true, Ordering::Relaxed) {
                            tracing::debug!(
                                ?change,
                                waiting,
                                skipped,
                                "the changes queue is full: not published"
                            );
                        } else {
                            tracing::warn!(
                                ?change,
                                waiting,
                                max_waiting = gate.max,
                                skipped,
                                "the changes queue holds its bound (are the workers running, and keeping up?): changes are not published until it drains; the scheduled re-bake will catch up the pages"
                            );
                        }
                        return;
                    }
                    Ok(Err(e)) => {
                        PublishStats::count(&stats.failed, "failed");
                        tracing::warn!(?change, error = %e, "could not count the changes waiting, so not published: the scheduled re-bake will catch up the pages");
                        return;
                    }
                    Err(_) => {
                        PublishStats::count(&stats.failed, "failed");
                        tracing::warn!(?change, limit = ?limit, "counting the changes waiting timed out: the scheduled re-bake will catch up the pages");
                        return;
                    }
                };
                if admitted.waiting() - 1 <= gate.max / 2 {
                    full.0.store(false, Ordering::Relaxed);
                }
                admitted.keep();
                match tokio::time::timeout_at(deadline, publish(&*queue, change.clone())).await {
                    Ok(Ok(())) => {
                        gate.sent(true);
                        PublishStats::count(&stats.published, "published");
                    }
                    Ok(Err(e)) => {
                        gate.sent(false);
                        PublishStats::count(&stats.failed, "failed");
                        tracing::warn!(?change, error = %e, "could not publish a change: the scheduled re-bake will catch up the pages");
                    }
                    Err(_) => {
                        gate.sent(false);
                        PublishStats::count(&stats.failed, "failed");
                        tracing::warn!(?change, limit = ?limit, "publishing a change timed out: the scheduled re-bake will catch up the pages");
                    }
                }
            });
        })
    })
}

/// What the worker did for one change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    /// The cached article's re-fill: `Miss` (loaded and stored), `Hit`
    /// (someone filled it first), `Bypass` (no object cache, or it did not
    /// answer); `None` if the change has no article.
    pub filled: Option<CacheOutcome>,
    /// Pages baked (or removed).
    pub baked: u64,
    /// Pages left as they were: the page on disk already came from a
    /// later read (another worker's re-bake of a newer change finished
    /// first), or it was this page already.
    pub kept: u64,
    /// The fan-out of a post.
    pub fanout: Option<Fanout>,
    /// Timelines written (the fan-out's, or a new friendship's).
    pub timelines: u64,
}

impl Effects {
    fn count(&mut self, b: &Baked) {
        if b.kept_fresher || b.unchanged {
            self.kept += 1;
        } else {
            self.baked += 1;
        }
    }
}

/// What happened to one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeOutcome {
    /// Done, then acked.
    Done(Effects),
    /// The work failed; back in the queue.
    Retried {
        /// Why.
        reason: String,
    },
    /// Given up (the limit), or not a change: dead-lettered.
    DeadLettered {
        /// Why.
        reason: String,
    },
    /// Stopping: put back unfinished.
    Returned,
}

/// One delivery handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeProcessed {
    /// The change, if it decoded.
    pub change: Option<Change>,
    /// Which delivery it was.
    pub attempt: u32,
    /// What happened.
    pub outcome: ChangeOutcome,
    /// Whether the queue took the ack, requeue or dead-letter.
    pub settled: bool,
}

/// Counts since the worker started.
#[derive(Debug, Default)]
pub struct ChangeStats {
    /// Changes done and acked.
    pub done: AtomicU64,
    /// Attempts that failed and were put back.
    pub retried: AtomicU64,
    /// Dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Article objects loaded and stored by the worker (the async fill).
    pub filled: AtomicU64,
    /// Pages baked or removed.
    pub baked: AtomicU64,
    /// Timelines written.
    pub timelines: AtomicU64,
}

pub(crate) enum Decision {
    Ack(ChangeOutcome),
    Requeue(ChangeOutcome),
    DeadLetter(ChangeOutcome),
}

/// Takes changes and does them.
pub struct ChangeWorker {
    layer: CacheLayer,
    baker: Baker,
    timelines: Timelines,
    name: String,
    max_deliveries: u32,
    grace: Duration,
    stats: Arc<ChangeStats>,
}

impl ChangeWorker {
    /// A worker filling `layer`'s cache (part 3's, configured as the
    /// clones' are), baking with `baker`, fanning out into `timelines`.
    pub fn new(
        layer: CacheLayer,
        baker: Baker,
        timelines: Timelines,
        name: &str,
        max_deliveries: u32,
        grace: Duration,
    ) -> Self {
        ChangeWorker {
            layer,
            baker,
            timelines,
            name: name.to_owned(),
            max_deliveries: max_deliveries.max(1),
            grace,
            stats: Arc::new(ChangeStats::default()),
        }
    }

    /// The counts.
    pub fn stats(&self) -> Arc<ChangeStats> {
        self.stats.clone()
    }

    /// The timelines it writes.
    pub fn timelines(&self) -> &Timelines {
        &self.timelines
    }

    fn pool(&self) -> &MySqlPool {
        self.layer.data.db.primary()
    }

    /// Does `change` now (tests and the demo call it without a queue).
    pub async fn apply(&self, change: &Change) -> anyhow::Result<Effects> {
        let mut fx = Effects::default();
        match *change {
            Change::Article { id } => {
                fx.filled = match self.layer.fill_article(id).await {
                    Ok(x) => Some(x),
                    // Gone: nothing to fill; the bake removes its page.
                    Err(ApiError::NotFound(_)) => None,
                    Err(e) => anyhow::bail!("re-filling article {id}: {e}"),
                };
                fx.count(&self.baker.article(id).await?);
                // The author page shows each article's likes and comments.
                let author: Option<u64> =
                    sqlx::query_scalar("SELECT author_id FROM articles WHERE id = ?")
                        .bind(id)
                        .fetch_optional(self.pool())
                        .await?;
                if let Some(author) = author {
                    self.bake_author(author, &mut fx).await?;
                }
            }
            Change::Post { author } => {
                let fanout = self.timelines.fan_out(self.pool(), author).await?;
                fx.timelines = fanout.timelines;
                fx.fanout = Some(fanout);
                self.bake_author(author, &mut fx).await?;
                let newest: Option<u64> = sqlx::query_scalar(
                    "SELECT id FROM articles WHERE author_id = ? ORDER BY id DESC LIMIT 1",
                )
                .bind(author)
                .fetch_optional(self.pool())
                .await?;
                if let Some(id) = newest {
                    fx.count(&self.baker.article(id).await?);
                }
            }
            Change::Friends { a, b } => {
                fx.timelines = self.timelines.befriended(self.pool(), a, b).await?;
            }
        }
        let s = &self.stats;
        if fx.filled == Some(CacheOutcome::Miss) {
            s.filled.fetch_add(1, Ordering::Relaxed);
        }
        s.baked.fetch_add(fx.baked, Ordering::Relaxed);
        s.timelines.fetch_add(fx.timelines, Ordering::Relaxed);
        Ok(fx)
    }

    /// Re-bakes `author`'s page; a username that can never be a file name
    /// is logged, not retried.
    async fn bake_author(&self, author: u64, fx: &mut Effects) -> anyhow::Result<()> {
        match self.baker.author(author).await {
            Ok(b) => fx.count(&b),
            Err(e) if e.downcast_ref::<UnsafeUsername>().is_some() => {
                // Never bakeable: retrying would not help.
                tracing::warn!(worker = %self.name, error = %e, "author page not baked");
            }
            Err(e) => return Err(e),
        }
        Ok(())
    }

    async fn process(&self, delivery: &Delivery) -> (Option<Change>, Decision) {
        let message = match &delivery.envelope {
            Ok(e) => ChangeMessage::from_envelope(e),
            Err(e) => Err(e.to_string()),
        };
        let message = match message {
            Ok(m) => m,
            Err(reason) => {
                tracing::warn!(worker = %self.name, %reason, "dead-lettering a message that is not a change");
                return (
                    None,
                    Decision::DeadLetter(ChangeOutcome::DeadLettered { reason }),
                );
            }
        };
        let change = message.change;
        let decision = match self.apply(&change).await {
            Ok(fx) => Decision::Ack(ChangeOutcome::Done(fx)),
            Err(e) if delivery.attempt >= self.max_deliveries => {
                let reason = format!(
                    "gave up after {} deliveries (the limit is {}): {e:#}",
                    delivery.attempt, self.max_deliveries
                );
                tracing::warn!(worker = %self.name, ?change, %reason, "dead-lettering a change");
                Decision::DeadLetter(ChangeOutcome::DeadLettered { reason })
            }
            Err(e) => {
                let reason = format!("{e:#}");
                tracing::info!(worker = %self.name, ?change, %reason, attempt = delivery.attempt, "retrying a change");
                Decision::Requeue(ChangeOutcome::Retried { reason })
            }
        };
        (Some(change), decision)
    }

    async fn settle<C: JobConsumer>(
        &self,
        consumer: &mut C,
        delivery: &Delivery,
        change: Option<Change>,
        decision: Decision,
    ) -> ChangeProcessed {
        let (result, outcome) = match decision {
            Decision::Ack(o) => (consumer.ack(delivery).await, o),
            Decision::Requeue(o) => (consumer.requeue(delivery).await, o),
            Decision::DeadLetter(o) => (consumer.dead_letter(delivery).await, o),
        };
        let counter = match &outcome {
            ChangeOutcome::Done(_) => Some(&self.stats.done),
            ChangeOutcome::Retried { .. } => Some(&self.stats.retried),
            ChangeOutcome::DeadLettered { .. } => Some(&self.stats.dead_lettered),
            ChangeOutcome::Returned => None,
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        if let Err(e) = &result {
            // Harmless: the queue delivers it again, and a change done
            // twice leaves the same state.
            tracing::warn!(worker = %self.name, error = %e, "could not settle a change");
        }
        ChangeProcessed {
            change,
            attempt: delivery.attempt,
            outcome,
            settled: result.is_ok(),
        }
    }

    /// Waits up to `wait` for one change and handles it; `None` if none
    /// came (tests step the worker instead of sleeping).
    pub async fn step<C: JobConsumer>(
        &self,
        consumer: &mut C,
        wait: Duration,
    ) -> Result<Option<ChangeProcessed>, QueueError> {
        let Some(delivery) = consumer.next(wait).await? else {
            return Ok(None);
        };
        let (change, decision) = self.process(&delivery).await;
        Ok(Some(
            self.settle(consumer, &delivery, change, decision).await,
        ))
    }

    /// Consumes until `shutdown` resolves; then finishes the change in
    /// hand (or puts it back after the grace period) and closes the
    /// consumer. Returns the deliveries handled.
    pub async fn run_until_stopped<C: JobConsumer>(
        &self,
        mut consumer: C,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<u64, QueueError> {
        let handled = consume_until_stopped(
            self,
            &mut consumer,
            shutdown,
            self.grace,
            &self.name,
            "changes",
        )
        .await;
        consumer.close().await?;
        tracing::info!(worker = %self.name, handled, "changes: stopped");
        Ok(handled)
    }
}

/// The change worker's step in the consume loop.
impl<C: JobConsumer> Handler<C> for ChangeWorker {
    type Decision = (Option<Change>, Decision);

    fn work(&self, delivery: &Delivery) -> impl Future<Output = (Option<Change>, Decision)> + Send {
        ChangeWorker::process(self, delivery)
    }

    fn returned(&self) -> (Option<Change>, Decision) {
        (None, Decision::Requeue(ChangeOutcome::Returned))
    }

    async fn finish(
        &self,
        consumer: &mut C,
        delivery: &Delivery,
        (change, decision): (Option<Change>, Decision),
    ) {
        let processed = ChangeWorker::settle(self, consumer, delivery, change, decision).await;
        tracing::debug!(worker = %self.name, change = ?processed.change, attempt = processed.attempt, outcome = ?processed.outcome, "change handled");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_round_trips_through_an_envelope() {
        for change in [
            Change::Article { id: 42 },
            Change::Post { author: 7 },
            Change::Friends { a: 1, b: 2 },
        ] {
            let m = ChangeMessage { change, at: 5 };
            let e = Envelope::decode(&m.envelope().encode()).unwrap();
            assert_eq!(ChangeMessage::from_envelope(&e).unwrap(), m);
        }
    }

    #[test]
    fn what_is_not_a_change_says_why() {
        let job = Envelope::new(JobId::generate(), "export", serde_json::json!({}));
        assert!(
            ChangeMessage::from_envelope(&job)
                .unwrap_err()
                .contains("export")
        );
        let bad = Envelope::new(
            JobId::generate(),
            CHANGE_KIND,
            serde_json::json!({"change": {"change": "delete", "id": 1}, "at": 0}),
        );
        assert!(
            ChangeMessage::from_envelope(&bad)
                .unwrap_err()
                .contains("not a change")
        );
    }

    #[test]
    fn the_changes_queue_is_the_jobs_queue_suffixed() {
        let jobs = QueueConfig::new(crate::queue::Backend::Redis, "part4.jobs");
        assert_eq!(queue_config(&jobs).queue_name, "part4.jobs.changes");
    }
}
