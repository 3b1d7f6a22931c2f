//! A queue's depth, bounded: the gate behind `POST /jobs`'s
//! backpressure (`MAX_QUEUE_DEPTH`, answered with `503` and
//! `Retry-After`) and the changes queue's bound (`CHANGES_MAX_WAITING`).
//! One mechanism for both, so both count the same way: the broker's
//! count, read now and then, plus what this process has admitted since.

use std::time::Duration;

use crate::queue::{JobQueue, QueueError};

/// A bound on a queue's waiting messages, as one process keeps it: the
/// broker's count ([`JobQueue::ready`]), read every `every`, plus what
/// this process enqueued since, so that a caller rarely waits for the
/// broker to count. Two users: `POST /jobs` against `MAX_QUEUE_DEPTH`
/// (a task of the clone renews the reading, `crate::server`), and the
/// after-commit hook against `CHANGES_MAX_WAITING` (no task: a publish
/// reads the broker when the reading is stale, [`crate::changes`]).
///
/// (For `POST /jobs`: when the first request of a reading refreshed it
/// inline, one `POST` in three paid a broker round trip at 32 jobs/s.)
/// A failed read is a reading too: admissions are refused at once until
/// a read succeeds. A caller asks the broker itself only when there is no
/// usable reading: none yet, dropped after a failed publish
/// ([`DepthGate::forget`]), older than `stale` (for the jobs: the task is
/// stuck on a broker that does not answer), or `every` is 0.
///
/// A caller that finds room counts its message at once
/// ([`DepthGate::admit`], `sending`), until its publish is settled:
/// callers checking at the same moment see each other's messages. A
/// message the broker already has counts twice until its confirm arrives
/// (a few milliseconds): the gate errs towards refusing. One gap is left:
/// a message confirmed while a read is on its way, but after the broker
/// counted, is missed until the next read (so a single process can still
/// overshoot by the confirms of one read's round trip). (Counted only
/// from its `202`, 16 requests at a time passed the check together and
/// went 13 to 27 over a limit of 20.)
pub(crate) struct DepthGate {
    pub(crate) max: u64,
    pub(crate) every: Duration,
    stale: Duration,
    last: std::sync::Mutex<Gauge>,
    /// One read of its own at a time: the requests that find no usable
    /// reading wait for the first one's instead of all asking the broker.
    reading: tokio::sync::Mutex<()>,
    /// Jobs admitted whose publish has not settled yet.
    sending: std::sync::atomic::AtomicU64,
    /// Woken when `sending` comes down to 0 ([`DepthGate::settled`]).
    none_sending: tokio::sync::Notify,
}

/// A job counted by [`DepthGate::admit`]. Given back when dropped (the
/// request ended before any publish: an error, a replayed key), unless
/// [`Slot::keep`] handed it to the publish, which settles it with
/// [`DepthGate::sent`].
pub(crate) struct Slot<'a> {
    gate: &'a DepthGate,
    kept: bool,
    /// Waiting with this one, as the gate counted when it admitted it.
    waiting: u64,
}

impl Slot<'_> {
    /// Waiting with this one, when it was admitted.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting
    }

    /// The publish settles it from now on.
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.gate.release();
        }
    }
}

/// What the gate knows.
#[derive(Default)]
struct Gauge {
    reading: Option<Reading>,
    /// When the last reading was dropped ([`DepthGate::forget`]): a read
    /// started before that is not kept.
    forgot: Option<tokio::time::Instant>,
}

/// One depth read: when it started, and the waiting jobs or why they
/// could not be counted.
struct Reading {
    at: tokio::time::Instant,
    depth: Result<u64, String>,
}

impl DepthGate {
    /// A gate of `max` waiting jobs, whose reading is meant to be renewed
    /// every `every` (0: every admission reads the broker) and is not used
    /// once older than `stale` (a request then reads the broker itself).
    pub(crate) fn new(max: u64, every: Duration, stale: Duration) -> Self {
        DepthGate {
            max,
            every,
            stale,
            last: std::sync::Mutex::new(Gauge::default()),
            reading: tokio::sync::Mutex::new(()),
            sending: std::sync::atomic::AtomicU64::new(0),
            none_sending: tokio::sync::Notify::new(),
        }
    }

    /// The latest reading if it is usable (not older than `stale`, nor
    /// than `since`).
    pub(crate) fn usable(
        &self,
        queue: &impl JobQueue,
        since: Option<tokio::time::Instant>,
    ) -> Option<Result<u64, QueueError>> {
        let gauge = self.lock();
        let r = gauge.reading.as_ref()?;
        (r.at.elapsed() < self.stale && since.is_none_or(|t| r.at >= t)).then(|| {
            r.depth.clone().map_err(|reason| QueueError::Other {
                backend: queue.backend().as_str(),
                reason,
            })
        })
    }

    /// Room for one more job? The latest reading (or a read of its own)
    /// plus the jobs admitted and not yet published; if that is under the
    /// limit, this job is counted with them, in the same step (no `await`
    /// between the count and the check), so requests checking at once see
    /// each other. `Err(waiting)`: full.
    pub(crate) async fn admit(
        &self,
        queue: &impl JobQueue,
    ) -> Result<Result<Slot<'_>, u64>, QueueError> {
        let n = self.read(queue).await?;
        use std::sync::atomic::Ordering::Relaxed;
        match self
            .sending
            .fetch_update(Relaxed, Relaxed, |s| (n + s < self.max).then_some(s + 1))
        {
            Ok(s) => Ok(Ok(Slot {
                gate: self,
                kept: false,
                waiting: n + s + 1,
            })),
            Err(s) => Ok(Err(n + s)),
        }
    }

    /// The latest reading, or a read of its own.
    pub(crate) async fn read(&self, queue: &impl JobQueue) -> Result<u64, QueueError> {
        if !self.every.is_zero()
            && let Some(got) = self.usable(queue, None)
        {
            return got;
        }
        let asked = tokio::time::Instant::now();
        let _one = self.reading.lock().await;
        // Another request read while this one waited: its reading will do.
        if !self.every.is_zero()
            && let Some(got) = self.usable(queue, Some(asked))
        {
            return got;
        }
        let started = tokio::time::Instant::now();
        let got = queue.ready().await;
        self.record(&got, started);
        got
    }

    /// Keeps `got`, read from `started` on, as the latest reading, unless
    /// the reading was dropped after that.
    pub(crate) fn record(&self, got: &Result<u64, QueueError>, started: tokio::time::Instant) {
        let mut gauge = self.lock();
        if gauge.forgot.is_some_and(|f| started < f) {
            return;
        }
        gauge.reading = Some(Reading {
            at: started,
            depth: got.as_ref().map(|n| *n).map_err(ToString::to_string),
        });
    }

    /// That publish settled: confirmed (one more job enqueued) or not.
    pub(crate) fn sent(&self, confirmed: bool) {
        if confirmed {
            self.enqueued();
        }
        self.release();
    }

    /// One admitted job less; wakes [`DepthGate::settled`] at 0.
    pub(crate) fn release(&self) {
        if self
            .sending
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst)
            == 1
        {
            self.none_sending.notify_waiters();
        }
    }

    /// Jobs admitted whose publish has not settled.
    pub(crate) fn in_flight(&self) -> u64 {
        self.sending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once no admitted job's publish is unsettled (a stopping
    /// clone's [`Jobs::drain`]: its requests are done, so these are the
    /// publishes after their `202`).
    pub(crate) async fn settled(&self) {
        loop {
            let notified = self.none_sending.notified();
            tokio::pin!(notified);
            // Registered before the count is read: a last release between
            // the two still wakes this.
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// One more job enqueued by this clone.
    pub(crate) fn enqueued(&self) {
        if let Some(Reading { depth: Ok(n), .. }) = self.lock().reading.as_mut() {
            *n += 1;
        }
    }

    /// Drops the reading: a publish just failed, so the next `POST` asks
    /// the broker (and answers 503 if it is still unreachable) instead of
    /// trusting a depth read while it was up.
    pub(crate) fn forget(&self) {
        let mut gauge = self.lock();
        gauge.reading = None;
        gauge.forgot = Some(tokio::time::Instant::now());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gauge> {
        // A panic while holding it cannot leave a half-written reading.
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::job::{Envelope, JobId};
    use crate::queue::{AnyQueue, QueueConfig};

    #[tokio::test]
    async fn a_stopping_clone_waits_for_every_publish_it_owes() {
        let queue = redis_queue().await;
        let gate = Arc::new(DepthGate::new(
            10,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
        ));
        // None in flight: at once.
        tokio::time::timeout(Duration::from_secs(5), gate.settled())
            .await
            .unwrap();
        // Two answered, their publishes on their way (kept slots).
        gate.admit(&queue).await.unwrap().unwrap().keep();
        gate.admit(&queue).await.unwrap().unwrap().keep();
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.settled().await }
        });
        tokio::task::yield_now().await;
        gate.sent(true);
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "one publish is still on its way");
        assert_eq!(gate.in_flight(), 1);
        gate.sent(false);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken by the last publish settling")
            .unwrap();
        assert_eq!(gate.in_flight(), 0);
        queue.destroy().await.unwrap();
    }

    /// A queue of its own on the lab's Redis (the gate only reads its
    /// depth), deleted by the caller.
    async fn redis_queue() -> AnyQueue {
        let config = QueueConfig::new(
            crate::queue::Backend::Redis,
            common::testing::unique_name("gate"),
        );
        AnyQueue::connect(&config, &common::testing::stack())
            .await
            .expect("Redis for the depth gate's tests: run ./lab up")
    }

    fn envelope() -> Envelope {
        Envelope::new(JobId::generate(), "export", serde_json::json!({}))
    }

    #[tokio::test]
    async fn a_job_counts_from_its_admission_until_its_publish_settles() {
        let queue = redis_queue().await;
        queue.enqueue(&envelope()).await.unwrap();
        // Read once, then trusted for an hour: the broker holds 1.
        let gate = DepthGate::new(3, Duration::from_secs(3600), Duration::from_secs(3600));
        let a = gate
            .admit(&queue)
            .await
            .unwrap()
            .expect("1 waiting + 0 sending < 3");
        a.keep();
        let b = gate.admit(&queue).await.unwrap().expect("1 + 1 < 3");
        assert_eq!(
            gate.admit(&queue).await.unwrap().err(),
            Some(3),
            "full: 1 waiting, 2 admitted"
        );
        // A request that ends before publishing gives its slot back.
        drop(b);
        let c = gate.admit(&queue).await.unwrap().expect("room again");
        c.keep();
        // A confirmed publish moves from sending to the reading.
        gate.sent(true);
        assert_eq!(gate.usable(&queue, None).unwrap().unwrap(), 2);
        assert_eq!(gate.admit(&queue).await.unwrap().err(), Some(3));
        // A publish that failed for good is simply no longer counted.
        gate.sent(false);
        assert!(gate.admit(&queue).await.unwrap().is_ok());
        queue.destroy().await.unwrap();
    }

    #[tokio::test]
    async fn a_forgotten_reading_is_read_again_and_an_older_read_is_not_kept() {
        let queue = redis_queue().await;
        let gate = DepthGate::new(10, Duration::from_secs(3600), Duration::from_secs(3600));
        let before = tokio::time::Instant::now();
        gate.record(&Ok(4), before);
        assert_eq!(gate.usable(&queue, None).unwrap().unwrap(), 4);
        // (So that the forget is strictly later than `before`.)
        tokio::time::sleep(Duration::from_millis(2)).await;
        gate.forget();
        assert!(gate.usable(&queue, None).is_none(), "forgotten");
        // A read that started before the forget (the broker was up then)
        // is not trusted.
        gate.record(&Ok(5), before);
        assert!(gate.usable(&queue, None).is_none());
        // The next request reads the broker itself: its queue is empty.
        assert_eq!(gate.read(&queue).await.unwrap(), 0);
        assert_eq!(gate.usable(&queue, None).unwrap().unwrap(), 0);
        queue.destroy().await.unwrap();
    }

    #[tokio::test]
    async fn a_failed_read_refuses_until_a_read_succeeds() {
        let queue = redis_queue().await;
        let gate = DepthGate::new(10, Duration::from_secs(3600), Duration::from_secs(3600));
        let down = QueueError::Other {
            backend: "redis",
            reason: "connection refused".into(),
        };
        gate.record(&Err(down), tokio::time::Instant::now());
        let e = gate
            .admit(&queue)
            .await
            .err()
            .expect("a failed reading refuses");
        assert!(e.to_string().contains("connection refused"), "{e}");
        gate.record(&Ok(0), tokio::time::Instant::now());
        assert!(gate.admit(&queue).await.unwrap().is_ok());
        queue.destroy().await.unwrap();
    }

    #[tokio::test]
    async fn a_stale_reading_is_not_used() {
        let queue = redis_queue().await;
        // Readings last 100 ms here.
        let gate = DepthGate::new(10, Duration::ZERO, Duration::from_millis(100));
        gate.record(
            &Ok(9),
            tokio::time::Instant::now() - Duration::from_millis(200),
        );
        assert!(gate.usable(&queue, None).is_none());
        // every = 0: each request reads the broker (0 waiting).
        assert_eq!(gate.read(&queue).await.unwrap(), 0);
        queue.destroy().await.unwrap();
    }
}
