//! Redis only: the reaper, the pitfall the blocking connection avoids, and
//! the restart drill (a private redis-server killed and started again).

use common::testing;
use part4_async::queue::{Backend, JobConsumer, JobQueue};

use crate::support::{self, DEADLINE};

#[tokio::test]
async fn the_reaper_leaves_a_live_consumers_jobs_alone() {
    let queue = support::redis().await; // 5 s heartbeat time to live
    queue.enqueue(&support::envelope("export")).await.unwrap();
    let mut alive = queue.consume("alive").await.unwrap();
    let d = alive.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(
        queue.reap().await.unwrap(),
        0,
        "a beating consumer keeps its job"
    );
    alive.ack(&d).await.unwrap();
    support::depth_becomes(&queue, 0, 0).await;
    alive.close().await.unwrap();
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn the_reaper_gives_a_dead_consumers_jobs_back() {
    let mut config = support::config(Backend::Redis);
    config.consumer_ttl_ms = 300;
    let queue = support::redis_with(config).await;
    for _ in 0..2 {
        queue.enqueue(&support::envelope("export")).await.unwrap();
    }
    let mut doomed = queue.consume("doomed").await.unwrap();
    let _a = doomed.next(DEADLINE).await.unwrap().unwrap();
    let _b = doomed.next(DEADLINE).await.unwrap().unwrap();
    support::depth_becomes(&queue, 0, 0).await;
    drop(doomed); // its heartbeat stops; its key expires
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut reaped = 0;
    while reaped < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reaped {reaped} of 2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        reaped += queue.reap().await.unwrap();
    }
    assert_eq!(reaped, 2);
    support::depth_becomes(&queue, 2, 0).await;
    queue.destroy().await.unwrap();
}

/// The pitfall, reproduced: redis-rs's `ConnectionManager` gives up on a
/// BLMOVE after 500 ms, but Redis keeps the command open, and the next job
/// pushed is moved by that abandoned call into a list nobody reads. And
/// while it blocks, every other command on that connection waits too.
#[tokio::test]
async fn a_blocking_pop_on_a_default_connection_manager_strands_the_next_job() {
    let prefix = testing::unique_name("p4pit");
    let (queue, processing) = (format!("{prefix}:queue"), format!("{prefix}:processing"));
    let mut conn = testing::redis().await; // the default: 500 ms response timeout
    let abandoned: Result<Option<Vec<u8>>, _> = redis::cmd("BLMOVE")
        .arg(&queue)
        .arg(&processing)
        .arg("RIGHT")
        .arg("LEFT")
        .arg(5) // the server blocks 5 s; the client gives up at 0.5 s
        .query_async(&mut conn)
        .await;
    assert!(abandoned.is_err(), "the client timed out: {abandoned:?}");
    // And the connection is still stuck behind the open BLMOVE (a
    // multiplexed connection answers in order): the second pitfall.
    let stuck: Result<u64, _> = redis::cmd("LLEN").arg(&queue).query_async(&mut conn).await;
    assert!(
        stuck.is_err(),
        "the shared connection is blocked: {stuck:?}"
    );
    let mut conn = testing::redis().await;
    let _: u64 = redis::cmd("LPUSH")
        .arg(&queue)
        .arg("job")
        .query_async(&mut conn)
        .await
        .unwrap();
    // The job went to the abandoned call's destination, not to the queue.
    let stranded = support::eventually("the abandoned BLMOVE took the job", || {
        let mut conn = conn.clone();
        let (queue, processing) = (queue.clone(), processing.clone());
        async move {
            let (q, p): (u64, u64) = redis::pipe()
                .llen(&queue)
                .llen(&processing)
                .query_async(&mut conn)
                .await
                .unwrap();
            (q + p == 1).then_some(p)
        }
    })
    .await;
    assert_eq!(stranded, 1, "taken by a call whose client had given up");
    let _: u64 = redis::cmd("DEL")
        .arg(&queue)
        .arg(&processing)
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_consumer_carries_on_after_its_redis_connection_is_cut() {
    let url = testing::stack().redis_url;
    let authority = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let authority = authority.split('/').next().unwrap_or(authority).to_owned();
    let proxy = common::testing::ChaosProxy::start(&authority)
        .await
        .unwrap();
    let config = support::config(Backend::Redis);
    let through_proxy =
        part4_async::queue::redis::RedisQueue::connect(&proxy.url_for(&url), config.clone())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    let direct = support::redis_with(config).await;
    let mut consumer = through_proxy.consume("cut").await.unwrap();
    proxy.cut(); // drops the blocking pop's connection, and the others
    proxy.restore();
    let job = support::envelope("export");
    direct.enqueue(&job).await.unwrap();
    // The next call or two may fail on the dead connection (the worker
    // backs off and calls again); then the connection manager reconnects.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let got = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no job after the cut"
        );
        if let Ok(Some(d)) = consumer.next(std::time::Duration::from_millis(500)).await {
            break d;
        }
    };
    assert_eq!(got.envelope.as_ref().unwrap(), &job);
    consumer.ack(&got).await.unwrap();
    support::depth_becomes(&direct, 0, 0).await;
    consumer.close().await.unwrap();
    direct.destroy().await.unwrap();
}

/// The Redis-restart drill on a private redis-server: jobs queued, the
/// server `kill -9`ed and started again. Without persistence every job is
/// gone.
#[tokio::test]
async fn restart_without_persistence_loses_every_queued_job() {
    use part4_async::queue::redis_restart::{Persistence, count_lost_on_restart};
    let count = count_lost_on_restart(Persistence::None, 50)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(!count.aof_enabled);
    assert_eq!(count.queued, 50);
    assert_eq!(count.after_restart, 0);
    assert_eq!(count.lost, 50);
}

/// The same with every write fsynced before its reply: nothing lost.
#[tokio::test]
async fn restart_with_appendfsync_always_loses_nothing() {
    use part4_async::queue::redis_restart::{Persistence, count_lost_on_restart};
    let count = count_lost_on_restart(Persistence::Always, 50)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(count.aof_enabled);
    assert_eq!(count.queued, 50);
    assert_eq!(count.after_restart, 50);
    assert_eq!(count.lost, 0);
}

/// With `PREFETCH` above 1, acks are kept and sent in one call before the
/// consumer's next round trip for jobs. A consumer that took again after
/// its acks leaves nothing for the reaper; one that dies holding kept acks
/// has those jobs done again (the price the module docs state: each finds
/// its claim).
#[tokio::test]
async fn a_prefetching_consumer_sends_its_acks_with_the_next_take() {
    /// Reaps for 1.5 s, five times a dead consumer's 300 ms time to live:
    /// what came back.
    async fn reaped(queue: &part4_async::queue::redis::RedisQueue) -> u64 {
        let until = tokio::time::Instant::now() + std::time::Duration::from_millis(1500);
        let mut n = 0;
        while tokio::time::Instant::now() < until {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            n += queue.reap().await.unwrap();
        }
        n
    }
    let mut config = support::config(Backend::Redis);
    config.prefetch = 10;
    config.consumer_ttl_ms = 300;
    let queue = support::redis_with(config).await;
    for _ in 0..2 {
        queue.enqueue(&support::envelope("export")).await.unwrap();
    }
    // Acks kept, then sent by the next take (the queue is empty: it
    // answers nothing).
    let mut tidy = queue.consume("tidy").await.unwrap();
    for _ in 0..2 {
        let d = tidy.next(DEADLINE).await.unwrap().unwrap();
        tidy.ack(&d).await.unwrap();
    }
    let none = tidy
        .next(std::time::Duration::from_millis(20))
        .await
        .unwrap();
    assert!(none.is_none());
    drop(tidy);
    assert_eq!(reaped(&queue).await, 0, "its acks were sent: nothing held");
    support::depth_becomes(&queue, 0, 0).await;

    // Acked, and dead before any other call to Redis: the job comes back.
    queue.enqueue(&support::envelope("export")).await.unwrap();
    let mut doomed = queue.consume("doomed").await.unwrap();
    let d = doomed.next(DEADLINE).await.unwrap().unwrap();
    doomed.ack(&d).await.unwrap();
    drop(doomed);
    assert_eq!(reaped(&queue).await, 1, "a kept ack dies with its consumer");
    support::depth_becomes(&queue, 1, 0).await;
    queue.destroy().await.unwrap();
}

/// `PREFETCH` on Redis: one round trip takes every job up to the prefetch
/// (all of them in the consumer's processing list at once, each delivery
/// counted once), they are handed out oldest first, and a graceful close
/// gives back the ones never handed out, in their order.
#[tokio::test]
async fn a_prefetching_consumer_takes_a_batch_and_gives_back_what_it_did_not_hand_out() {
    let mut config = support::config(Backend::Redis);
    config.prefetch = 10;
    let queue = support::redis_with(config).await;
    let jobs: Vec<_> = (0..5).map(|_| support::envelope("export")).collect();
    for job in &jobs {
        queue.enqueue(job).await.unwrap();
    }
    let mut consumer = queue.consume("batch").await.unwrap();
    let first = consumer.next(DEADLINE).await.unwrap().unwrap();
    // One take moved all five: none left waiting.
    assert_eq!(queue.ready().await.unwrap(), 0);
    assert_eq!(first.envelope.as_ref().unwrap().id, jobs[0].id);
    assert_eq!(first.attempt, 1);
    let second = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(second.envelope.as_ref().unwrap().id, jobs[1].id);
    consumer.ack(&first).await.unwrap();
    consumer.ack(&second).await.unwrap();
    // Three taken, never handed out: back to the queue on close, oldest
    // first, and not charged: the next consumer sees first deliveries.
    consumer.close().await.unwrap();
    assert_eq!(queue.ready().await.unwrap(), 3);
    let mut next = queue.consume("after").await.unwrap();
    for job in &jobs[2..] {
        let d = next.next(DEADLINE).await.unwrap().unwrap();
        assert_eq!(d.envelope.as_ref().unwrap().id, job.id);
        assert_eq!(d.attempt, 1, "never handed out by the closed consumer");
        next.ack(&d).await.unwrap();
    }
    support::depth_becomes(&queue, 0, 0).await;
    next.close().await.unwrap();
    queue.destroy().await.unwrap();
}
