//! Coalescing: concurrent single-key calls served as one batch.
//!
//! **Why Redis's client wins under concurrency.** redis-rs multiplexes every
//! caller over ONE connection: sixteen concurrent `GET`s are written one
//! after the other into the same socket, often in one `write`, and their
//! answers come back in one `read`. The memcache crate's async client gives
//! each call a connection of its own from a pool: sixteen concurrent gets
//! are sixteen request/response exchanges, sixteen `write` and sixteen
//! `read` system calls on each side, sixteen wake-ups of the server's
//! threads. On one caller the two shapes cost the same; at 16 and 64
//! callers on a two-core machine the system calls and wake-ups are the
//! cost, and Memcached's get p50 was 2.4x and 4.2x Redis's (experiment 6).
//!
//! **How coalescing gives Memcached the same shape** (Facebook's
//! DataLoader pattern). A call does not talk to the server: it hands its
//! key and a reply slot to one of a few *lanes* (a task each, round
//! robin). A lane takes one request, then everything else already queued
//! (never waiting for more: no timer, so one caller alone is served at
//! once), serves them with ONE pipelined multi-get (memcached's meta
//! commands, one write, one read, answers matched by opaque tokens) and
//! answers each caller. While that exchange is in flight new calls queue
//! up, and form the next batch: the batch size follows the load by
//! itself, 1 when idle, tens under a burst. The relay of experiment 6
//! counts it on the wire: 200 concurrent gets, a handful of round trips.
//! Nothing here is about gets: `backend/memcached.rs` runs sets through
//! lanes of their own the same way (pipelined `ms` commands).
//!
//! **What it costs.** Two hops between tasks (the request through a
//! channel, the answer through a oneshot): a few microseconds, paid by
//! every call, including the lone caller who had nothing to share. And a
//! failed batch fails every call in it, with the same error, which the
//! server turns into a bypass like any other cache error.
//!
//! Each caller keeps its own deadline ([`super::Limits`]): a caller who
//! gives up leaves a closed reply slot, which the lane skips. The lanes
//! end when the last handle to the [`Coalescer`] is dropped (their
//! channels close), so a dropped client leaks no task.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot};

use super::{BoxFuture, CacheError};

/// One answer of a batch.
pub(crate) type Answer<V> = Result<V, CacheError>;

/// What serves a batch: the keys, in the order of the callers; one answer
/// per key in the same order, or one error for the whole batch.
pub(crate) type BatchFn<K, V> =
    Arc<dyn Fn(Vec<K>) -> BoxFuture<'static, Result<Vec<Answer<V>>, CacheError>> + Send + Sync>;

struct Waiter<K, V> {
    key: K,
    reply: oneshot::Sender<Answer<V>>,
}

/// Lanes of batching tasks, fed round robin.
pub(crate) struct Coalescer<K, V> {
    lanes: Vec<mpsc::UnboundedSender<Waiter<K, V>>>,
    next: AtomicUsize,
}

impl<K: Send + 'static, V: Send + 'static> Coalescer<K, V> {
    /// Spawns `lanes` tasks (at least one) on the current tokio runtime,
    /// each serving up to `max_batch` keys per call of `batch`.
    ///
    /// The queues are unbounded, yet bounded in practice: a caller has one
    /// call in flight at a time, so a queue holds at most as many waiters
    /// as there are concurrent callers.
    pub fn spawn(lanes: usize, max_batch: usize, batch: BatchFn<K, V>) -> Self {
        let max_batch = max_batch.max(1);
        let lanes = (0..lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(lane(rx, max_batch, batch.clone()));
                tx
            })
            .collect();
        Coalescer {
            lanes,
            next: AtomicUsize::new(0),
        }
    }

    /// Queues `key` on the next lane and waits for its answer.
    ///
    /// `Err(key)` when the lane is gone (its runtime shut down: a client
    /// used from another runtime than the one that built it): the caller
    /// serves the key itself.
    pub async fn call(&self, key: K) -> Result<Answer<V>, K> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        let (reply, answer) = oneshot::channel();
        if let Err(mpsc::error::SendError(w)) = self.lanes[i].send(Waiter { key, reply }) {
            return Err(w.key);
        }
        Ok(answer.await.unwrap_or_else(|_| {
            Err(CacheError::Unavailable(
                "the batch serving this get ended without an answer (its task stopped)".to_owned(),
            ))
        }))
    }
}

/// One lane: take a request, drain what is already queued, serve the lot
/// in one batch, answer everyone; until every sender is dropped.
async fn lane<K, V>(
    mut rx: mpsc::UnboundedReceiver<Waiter<K, V>>,
    max_batch: usize,
    batch: BatchFn<K, V>,
) {
    let mut waiters = Vec::with_capacity(max_batch);
    while let Some(first) = rx.recv().await {
        waiters.push(first);
        while waiters.len() < max_batch {
            match rx.try_recv() {
                Ok(w) => waiters.push(w),
                Err(_) => break,
            }
        }
        // Callers past their deadline are gone: don't ask for their keys.
        waiters.retain(|w| !w.reply.is_closed());
        if waiters.is_empty() {
            continue;
        }
        let (keys, replies): (Vec<K>, Vec<_>) = waiters.drain(..).map(|w| (w.key, w.reply)).unzip();
        let n = keys.len();
        match batch(keys).await {
            Ok(answers) if answers.len() == n => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    // A caller who left meanwhile: nothing to do.
                    let _ = reply.send(answer);
                }
            }
            Ok(answers) => {
                let e = CacheError::Unavailable(format!(
                    "a batch of {n} keys came back with {} answers",
                    answers.len()
                ));
                answer_all(replies, &e);
            }
            Err(e) => answer_all(replies, &e),
        }
    }
}

/// The batch's error, to each of its callers.
fn answer_all<V>(replies: Vec<oneshot::Sender<Answer<V>>>, e: &CacheError) {
    for reply in replies {
        let _ = reply.send(Err(same(e)));
    }
}

/// A copy of `e` (`CacheError` is not `Clone`: it need not be elsewhere).
pub(crate) fn same(e: &CacheError) -> CacheError {
    match e {
        CacheError::Unavailable(s) => CacheError::Unavailable(s.clone()),
        CacheError::Timeout(d) => CacheError::Timeout(*d),
        CacheError::TooLarge { size, max } => CacheError::TooLarge {
            size: *size,
            max: *max,
        },
        CacheError::Config(s) => CacheError::Config(s.clone()),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    /// A batch function that records the size of each batch and answers
    /// each key with itself doubled, or fails every batch.
    fn recording(fail: bool) -> (BatchFn<u32, u32>, Arc<Mutex<Vec<usize>>>) {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let s = sizes.clone();
        let f: BatchFn<u32, u32> = Arc::new(move |keys: Vec<u32>| {
            s.lock().unwrap().push(keys.len());
            Box::pin(async move {
                // A turn of the runtime, as a real exchange would yield.
                tokio::task::yield_now().await;
                if fail {
                    Err(CacheError::Unavailable("down".to_owned()))
                } else {
                    Ok(keys.into_iter().map(|k| Ok(k * 2)).collect())
                }
            })
        });
        (f, sizes)
    }

    #[tokio::test]
    async fn one_caller_at_a_time_is_a_batch_of_one_each() {
        let (f, sizes) = recording(false);
        let c = Coalescer::spawn(2, 64, f);
        for k in 0..10 {
            assert_eq!(c.call(k).await.ok().unwrap().unwrap(), k * 2);
        }
        assert_eq!(*sizes.lock().unwrap(), vec![1; 10]);
    }

    #[tokio::test]
    async fn concurrent_callers_share_batches_and_each_gets_its_own_answer() {
        let (f, sizes) = recording(false);
        let c = Coalescer::spawn(2, 64, f);
        let answers = futures::future::join_all((0..200u32).map(|k| c.call(k % 150))).await;
        for (k, a) in (0..200u32).zip(answers) {
            assert_eq!(a.ok().unwrap().unwrap(), (k % 150) * 2);
        }
        let sizes = sizes.lock().unwrap();
        assert_eq!(sizes.iter().sum::<usize>(), 200, "every key asked once");
        assert!(sizes.len() < 200, "fewer batches than calls: {sizes:?}");
        assert!(sizes.iter().all(|&n| n <= 64), "the cap holds: {sizes:?}");
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_caller_in_it() {
        let (f, _) = recording(true);
        let c = Coalescer::spawn(2, 64, f);
        let answers = futures::future::join_all((0..50u32).map(|k| c.call(k))).await;
        assert!(
            answers
                .into_iter()
                .all(|a| matches!(a, Ok(Err(CacheError::Unavailable(_)))))
        );
    }

    #[tokio::test]
    async fn a_wrong_number_of_answers_is_an_error_for_all() {
        let f: BatchFn<u32, u32> = Arc::new(|_keys| Box::pin(async { Ok(vec![Ok(1)]) }));
        let c = Coalescer::spawn(1, 64, f);
        // Two queued before the lane runs: one batch of two, one answer.
        let answers = futures::future::join_all([c.call(1), c.call(2)]).await;
        assert!(
            answers
                .into_iter()
                .all(|a| matches!(a, Ok(Err(CacheError::Unavailable(_)))))
        );
    }

    #[tokio::test]
    async fn callers_who_left_are_skipped() {
        let (f, sizes) = recording(false);
        let c = Coalescer::spawn(1, 64, f);
        // Ten calls queued then abandoned before the lane runs.
        for k in 0..10 {
            let call = std::pin::pin!(c.call(k));
            assert!(futures::poll!(call).is_pending());
        }
        assert_eq!(c.call(99).await.ok().unwrap().unwrap(), 198);
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1],
            "only the caller who stayed"
        );
    }

    /// Dropped with the lanes: tells the test the lanes ended.
    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn the_lanes_end_when_the_coalescer_is_dropped() {
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(ended.clone());
        let f: BatchFn<u32, u32> = Arc::new(move |keys: Vec<u32>| {
            let _held = &flag;
            Box::pin(async move { Ok(keys.into_iter().map(Ok).collect()) })
        });
        let c = Coalescer::spawn(3, 64, f);
        assert_eq!(c.call(7).await.ok().unwrap().unwrap(), 7);
        drop(c);
        for _ in 0..1000 {
            if ended.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("the lanes still hold the batch function after the coalescer was dropped");
    }

    #[test]
    fn a_lane_of_another_runtime_hands_the_key_back() {
        let (f, _) = recording(false);
        let c = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(async { Coalescer::spawn(1, 64, f) });
        // That runtime is gone, and its lanes with it.
        let rt = tokio::runtime::Runtime::new().unwrap();
        assert_eq!(rt.block_on(c.call(5)).err(), Some(5));
    }
}
