//! What both backends promise, tested on each: the same test body, run
//! against RabbitMQ and against Redis.

use std::collections::HashMap;
use std::time::Duration;

use part4_async::queue::{Backend, JobConsumer, JobQueue};

use crate::support::{self, DEADLINE};

async fn enqueue_consume_ack<Q: JobQueue>(queue: Q) {
    let jobs: Vec<_> = (0..3).map(|_| support::envelope("export")).collect();
    for j in &jobs {
        queue.enqueue(j).await.unwrap();
    }
    support::depth_becomes(&queue, 3, 0).await;
    let mut consumer = queue.consume("t").await.unwrap();
    let mut got = Vec::new();
    while got.len() < jobs.len() {
        let d = consumer
            .next(DEADLINE)
            .await
            .unwrap()
            .expect("a job within the deadline");
        assert_eq!(d.attempt, 1, "first delivery");
        consumer.ack(&d).await.unwrap();
        got.push(d.envelope.unwrap());
    }
    got.sort_by(|a, b| a.id.cmp(&b.id));
    let mut sent = jobs.clone();
    sent.sort_by(|a, b| a.id.cmp(&b.id));
    assert_eq!(got, sent, "every job arrives once, as sent");
    assert!(
        consumer
            .next(Duration::from_millis(300))
            .await
            .unwrap()
            .is_none()
    );
    support::depth_becomes(&queue, 0, 0).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_enqueue_consume_ack() {
    enqueue_consume_ack(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_enqueue_consume_ack() {
    enqueue_consume_ack(support::redis().await).await;
}

/// A poison message requeued at every delivery: the queue itself
/// dead-letters it after `max_deliveries`, and the jobs behind it are
/// delivered meanwhile.
async fn delivery_limit<Q: JobQueue>(queue: Q) {
    let poison = support::envelope("fail");
    queue.enqueue(&poison).await.unwrap();
    let good: Vec<_> = (0..2).map(|_| support::envelope("export")).collect();
    for g in &good {
        queue.enqueue(g).await.unwrap();
    }
    let mut consumer = queue.consume("t").await.unwrap();
    let mut deliveries: HashMap<String, Vec<u32>> = HashMap::new();
    // Until nothing comes for a while: the poison is gone to the dead letters.
    while let Some(d) = consumer.next(Duration::from_secs(2)).await.unwrap() {
        let e = d.envelope.as_ref().unwrap();
        deliveries
            .entry(e.id.to_string())
            .or_default()
            .push(d.attempt);
        if e.kind == "fail" {
            consumer.requeue(&d).await.unwrap();
        } else {
            consumer.ack(&d).await.unwrap();
        }
        assert!(
            deliveries.values().map(Vec::len).sum::<usize>() < 20,
            "the poison job loops: {deliveries:?}"
        );
    }
    assert_eq!(
        deliveries[poison.id.as_str()],
        vec![1, 2, 3],
        "delivered 3 times, counted"
    );
    for g in &good {
        assert_eq!(deliveries[g.id.as_str()], vec![1], "not held up");
    }
    support::depth_becomes(&queue, 0, 1).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_delivery_limit_dead_letters_the_poison_job() {
    delivery_limit(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_delivery_limit_dead_letters_the_poison_job() {
    delivery_limit(support::redis().await).await;
}

/// A consumer dies holding a job: another consumer gets it, counted as a
/// second delivery. Redis notices the death by the heartbeat's expiry, so
/// its time to live is short here.
async fn redelivered_after_death<Q: JobQueue>(queue: Q) {
    let job = support::envelope("export");
    queue.enqueue(&job).await.unwrap();
    let mut doomed = queue.consume("doomed").await.unwrap();
    let d = doomed.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(d.attempt, 1);
    drop(d);
    drop(doomed); // no ack, no close: as a killed process
    let mut heir = queue.consume("heir").await.unwrap();
    // RabbitMQ has it back as soon as the connection closes; Redis once
    // the heartbeat expires and a reaper (the heir's heartbeat) runs.
    let again = heir
        .next(DEADLINE)
        .await
        .unwrap()
        .expect("the job redelivered");
    assert_eq!(again.envelope.as_ref().unwrap(), &job);
    assert_eq!(again.attempt, 2, "counted as the second delivery");
    heir.ack(&again).await.unwrap();
    support::depth_becomes(&queue, 0, 0).await;
    heir.close().await.unwrap();
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_unacked_job_is_redelivered_after_the_consumer_dies() {
    redelivered_after_death(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_unacked_job_is_redelivered_after_the_consumer_dies() {
    let mut config = support::config(Backend::Redis);
    config.consumer_ttl_ms = 300;
    redelivered_after_death(support::redis_with(config).await).await;
}

/// A graceful close gives back what the consumer held, at once.
async fn close_returns_jobs<Q: JobQueue>(queue: Q) {
    queue.enqueue(&support::envelope("export")).await.unwrap();
    let mut c = queue.consume("t").await.unwrap();
    let _held = c.next(DEADLINE).await.unwrap().unwrap();
    c.close().await.unwrap();
    support::depth_becomes(&queue, 1, 0).await;
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn rabbitmq_close_returns_held_jobs() {
    close_returns_jobs(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_close_returns_held_jobs() {
    close_returns_jobs(support::redis().await).await;
}
