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
//! DataLoader pattern). A call that finds other calls under way does not
//! talk to the server: it hands its key and a reply slot to one of a few
//! *lanes* (a task each, round robin). A lane takes one request, then
//! everything else already queued (never waiting for more: no timer),
//! serves them with ONE pipelined multi-get (memcached's meta commands,
//! one write, one read, answers matched by opaque tokens) and answers each
//! caller. While that exchange is in flight new calls queue up, and form
//! the next batch: the batch size follows the load by itself, tens under a
//! burst. The relay of experiment 6 counts it on the wire: 200 concurrent
//! gets, a handful of round trips. Nothing here is about gets:
//! `backend/memcached.rs` runs sets through lanes of their own the same way
//! (pipelined `ms` commands).
//!
//! **The lone caller skips the lanes.** A call that finds no other call
//! under way (the counter of calls in progress was 0) has nothing to share
//! a batch with: it serves its key itself, as a batch of one, in its own
//! task. A lane would have cost it two hops between tasks (the request
//! through a channel, the answer through a oneshot), and on an idle
//! machine each hop is a wake-up of a parked thread: tens of microseconds
//! on a get that takes about thirty. That is the case of experiment 3's
//! "a hit against an assembly": one reader, one get after another.
//! Concurrent callers still meet in the lanes: while the lone call is in
//! flight, the next ones see it counted and queue up.
//!
//! **What it costs.** The hops, for every call that does share (a few
//! microseconds on a busy machine, repaid many times by the shared
//! exchange). And a failed batch fails every call in it, with the same
//! error, which the server turns into a bypass like any other cache error.
//!
//! Each caller keeps its own deadline ([`super::Limits`]): a caller who
//! gives up leaves a closed reply slot, which the lane skips, and is no
//! longer counted as under way. The lanes end when the last handle to the
//! [`Coalescer`] is dropped (their channels close), so a dropped client
//! leaks no task.

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

/// Lanes of batching tasks, fed round robin, and the short way round them
/// for a caller alone.
pub(crate) struct Coalescer<K, V> {
    lanes: Vec<mpsc::UnboundedSender<Waiter<K, V>>>,
    next: AtomicUsize,
    /// Calls under way (served alone or queued on a lane): 0 when a new
    /// call finds nobody to share a batch with.
    under_way: AtomicUsize,
    /// The lanes' batch function, for the caller alone.
    batch: BatchFn<K, V>,
}

/// Counts a call as under way until it ends or is dropped (a caller past
/// its deadline drops its call mid-way: it must not stay counted, or no
/// later call would be served alone again).
struct UnderWay<'a>(&'a AtomicUsize);

impl<'a> UnderWay<'a> {
    /// Counts one more call; also says whether it is the only one.
    fn enter(counter: &'a AtomicUsize) -> (Self, bool) {
        let before = counter.fetch_add(1, Ordering::AcqRel);
        (UnderWay(counter), before == 0)
    }
}

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
            under_way: AtomicUsize::new(0),
            batch,
        }
    }

    /// Waits for the answer for `key`: served on the spot, in the caller's
    /// task, when no other call is under way; otherwise queued on the next
    /// lane, to share its batch.
    ///
    /// `Err(key)` when the lane is gone (its runtime shut down: a client
    /// used from another runtime than the one that built it): the caller
    /// serves the key itself.
    pub async fn call(&self, key: K) -> Result<Answer<V>, K> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.lanes.len();
        if self.lanes[i].is_closed() {
            return Err(key);
        }
        let (_counted, alone) = UnderWay::enter(&self.under_way);
        if alone {
            let mut answers = serve(&self.batch, vec![key]).await;
            return Ok(answers.pop().unwrap_or_else(|| {
                Err(CacheError::Unavailable(
                    "a batch of one came back without an answer".to_owned(),
                ))
            }));
        }
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
        for (reply, answer) in replies.into_iter().zip(serve(&batch, keys).await) {
            // A caller who left meanwhile: nothing to do.
            let _ = reply.send(answer);
        }
    }
}

/// Serves `keys` with one call of `batch`: exactly one answer per key, in
/// their order (a failed batch, or one with the wrong number of answers,
/// is the same error for each key).
async fn serve<K, V>(batch: &BatchFn<K, V>, keys: Vec<K>) -> Vec<Answer<V>> {
    let n = keys.len();
    match batch(keys).await {
        Ok(answers) if answers.len() == n => answers,
        Ok(answers) => {
            let e = CacheError::Unavailable(format!(
                "a batch of {n} keys came back with {} answers",
                answers.len()
            ));
            (0..n).map(|_| Err(same(&e))).collect()
        }
        Err(e) => (0..n).map(|_| Err(same(&e))).collect(),
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
        // No answer at all, whatever the batch: wrong for the caller alone
        // and for a shared batch alike.
        let f: BatchFn<u32, u32> = Arc::new(|_keys| Box::pin(async { Ok(Vec::new()) }));
        let c = Coalescer::spawn(1, 64, f);
        let answers = futures::future::join_all([c.call(1), c.call(2), c.call(3)]).await;
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
        // One call under way (served alone: it was first), so the next
        // ones queue on the lane.
        let mut held = std::pin::pin!(c.call(0));
        assert!(futures::poll!(held.as_mut()).is_pending());
        // Ten calls queued then abandoned before the lane runs.
        for k in 1..=10 {
            let call = std::pin::pin!(c.call(k));
            assert!(futures::poll!(call).is_pending());
        }
        assert_eq!(c.call(99).await.ok().unwrap().unwrap(), 198);
        assert_eq!(held.await.ok().unwrap().unwrap(), 0);
        assert_eq!(
            *sizes.lock().unwrap(),
            vec![1, 1],
            "the first caller alone, then the lane's batch of the only caller who stayed"
        );
    }

    /// A batch function that answers each key with the id of the task
    /// that served the batch: the caller's own, or a lane's.
    fn served_by() -> BatchFn<u32, tokio::task::Id> {
        Arc::new(|keys: Vec<u32>| {
            Box::pin(async move {
                tokio::task::yield_now().await;
                Ok(keys.iter().map(|_| Ok(tokio::task::id())).collect())
            })
        })
    }

    #[tokio::test]
    async fn a_caller_alone_is_served_in_its_own_task() {
        let c = Arc::new(Coalescer::spawn(2, 64, served_by()));
        for _ in 0..5 {
            let c = c.clone();
            let (me, served) = tokio::spawn(async move {
                let served = c.call(1).await.ok().unwrap().unwrap();
                (tokio::task::id(), served)
            })
            .await
            .unwrap();
            assert_eq!(me, served, "no hop to a lane for a caller alone");
        }
        assert_eq!(c.under_way.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_caller_who_finds_another_under_way_goes_to_a_lane() {
        let c = Coalescer::spawn(2, 64, served_by());
        // In a task of its own: the test's body is not one.
        tokio::spawn(async move {
            let me = tokio::task::id();
            let mut first = std::pin::pin!(c.call(1));
            assert!(futures::poll!(first.as_mut()).is_pending());
            let second = c.call(2).await.ok().unwrap().unwrap();
            assert_ne!(second, me, "served by a lane");
            assert_eq!(first.await.ok().unwrap().unwrap(), me, "served alone");
        })
        .await
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_in_a_closed_loop_keep_sharing_the_lanes() {
        // Sixteen callers, each calling again as soon as it is answered
        // (experiment 6's load): a caller leaves and comes back within
        // one poll of its task, so the count of calls under way never
        // falls to 0 while the others wait, and hardly any call is alone.
        let c = Arc::new(Coalescer::spawn(2, 64, served_by()));
        let callers: Vec<_> = (0..16u32)
            .map(|k| {
                let c = c.clone();
                tokio::spawn(async move {
                    let me = tokio::task::id();
                    let mut alone = 0;
                    for _ in 0..50 {
                        if c.call(k).await.ok().unwrap().unwrap() == me {
                            alone += 1;
                        }
                    }
                    alone
                })
            })
            .collect();
        let mut alone = 0;
        for caller in callers {
            alone += caller.await.unwrap();
        }
        assert!(
            alone <= 32,
            "{alone} of 800 calls in a closed loop of 16 were served alone"
        );
        assert_eq!(c.under_way.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_dropped_call_is_no_longer_counted_under_way() {
        let (f, sizes) = recording(false);
        let c = Coalescer::spawn(1, 64, f);
        for k in 0..3 {
            let call = std::pin::pin!(c.call(k));
            assert!(futures::poll!(call).is_pending());
        }
        assert_eq!(c.under_way.load(Ordering::SeqCst), 0);
        // So the next caller is alone again: a batch of one of its own.
        assert_eq!(c.call(5).await.ok().unwrap().unwrap(), 10);
        assert_eq!(sizes.lock().unwrap().len(), 4, "each call served alone");
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
