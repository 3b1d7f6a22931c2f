//! RabbitMQ only: mandatory publishing, and surviving a cut connection.

use common::testing::{self, ChaosProxy};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use part4_async::queue::rabbitmq::RabbitQueue;
use part4_async::queue::{Backend, JobConsumer, JobQueue, QueueError};

use crate::support::{self, DEADLINE};

/// `host:port` of an AMQP URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    host.rsplit_once('@').map_or(host, |(_, h)| h).to_owned()
}

#[tokio::test]
async fn a_publish_to_a_missing_queue_is_an_error_not_a_silent_ack() {
    let queue = support::rabbit().await;
    // Someone deletes the queue (or the producer has a typo in its name).
    queue.destroy().await.unwrap();
    let err = queue
        .enqueue(&support::envelope("export"))
        .await
        .unwrap_err();
    assert!(matches!(err, QueueError::Unroutable { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("NO_ROUTE") && text.contains("nothing was enqueued"),
        "{text}"
    );

    // The anti-pattern beside it: confirms on, but not mandatory. The
    // broker acks the message it dropped, and the publisher believes it.
    let conn = Connection::connect(
        &testing::stack().rabbitmq_url,
        ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = channel
        .basic_publish(
            "".into(),
            testing::unique_name("p4_missing").as_str().into(),
            BasicPublishOptions::default(),
            b"{}",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(confirm, Confirmation::Ack(None), "acked, and gone");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn a_second_declaration_with_another_limit_is_explained() {
    let mut config = support::config(Backend::RabbitMq);
    let queue = support::rabbit_with(config.clone()).await;
    config.max_deliveries = 5;
    let err = match RabbitQueue::connect(&testing::stack().rabbitmq_url, config).await {
        Ok(_) => panic!("the broker took another delivery limit for the same queue"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        matches!(err, QueueError::Mismatch { .. }) && text.contains("QUEUE_NAME"),
        "{text}"
    );
    queue.destroy().await.unwrap();
}

#[tokio::test]
async fn the_consumer_and_the_publisher_reconnect_after_the_connection_is_cut() {
    let url = testing::stack().rabbitmq_url;
    let proxy = ChaosProxy::start(&authority(&url)).await.unwrap();
    let config = support::config(Backend::RabbitMq);
    // The worker's side goes through the proxy; the test's own publisher
    // goes straight to the broker.
    let through_proxy = RabbitQueue::connect(&proxy.url_for(&url), config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let direct = support::rabbit_with(config).await;

    let first = support::envelope("export");
    direct.enqueue(&first).await.unwrap();
    let mut consumer = through_proxy.consume("cut").await.unwrap();
    let held = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(held.attempt, 1);

    proxy.cut(); // both ends dropped, as by a broker restart or a network cut
    proxy.restore();

    // What we held went back to the broker with the connection: our ack
    // is refused, and the job comes again, on the new connection.
    let again = consumer
        .next(DEADLINE)
        .await
        .unwrap()
        .expect("the held job, redelivered after reconnecting");
    assert!(
        matches!(consumer.ack(&held).await, Err(QueueError::Stale)),
        "a delivery from the dead connection cannot be acked"
    );
    assert_eq!(again.envelope.as_ref().unwrap(), &first);
    assert_eq!(again.attempt, 2);
    consumer.ack(&again).await.unwrap();
    assert!(consumer.reconnects() >= 1);

    // New jobs flow to the reconnected consumer.
    let second = support::envelope("export");
    direct.enqueue(&second).await.unwrap();
    let d = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(d.envelope.as_ref().unwrap(), &second);
    consumer.ack(&d).await.unwrap();

    // The publisher through the proxy lost its connection too: a publish
    // may fail once (it is reported, never retried blindly), then the next
    // one reconnects.
    let third = support::envelope("export");
    support::eventually("the publisher back", || async {
        through_proxy.enqueue(&third).await.ok()
    })
    .await;
    let d = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(d.envelope.as_ref().unwrap(), &third);
    consumer.ack(&d).await.unwrap();

    support::depth_becomes(&direct, 0, 0).await;
    consumer.close().await.unwrap();
    direct.destroy().await.unwrap();
}

#[tokio::test]
async fn a_missing_broker_fails_at_once_with_the_fix() {
    let err = match RabbitQueue::connect(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        support::config(Backend::RabbitMq),
    )
    .await
    {
        Ok(_) => panic!("connected to nothing"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.starts_with(
            "RabbitMQ is not reachable at amqp://guest:***@127.0.0.1:1/%2f: run ./lab up"
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_publish_while_the_broker_is_down_fails_fast_and_clearly() {
    let url = testing::stack().rabbitmq_url;
    let proxy = ChaosProxy::start(&authority(&url)).await.unwrap();
    let config = support::config(Backend::RabbitMq);
    let queue = RabbitQueue::connect(&proxy.url_for(&url), config.clone())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    proxy.refuse(); // as a stopped broker: connects are refused
    let job = support::envelope("export");
    // The first publish may still find the old connection open and fail
    // on it; either way it fails, and the next one cannot connect.
    let mut errors = Vec::new();
    for _ in 0..2 {
        errors.push(queue.enqueue(&job).await.unwrap_err());
    }
    let last = errors.last().unwrap().to_string();
    assert!(
        matches!(errors.last(), Some(QueueError::Unreachable { .. }))
            && last.contains("run ./lab up"),
        "{errors:?}"
    );
    proxy.restore();
    support::eventually("publishing again", || async {
        queue.enqueue(&job).await.ok()
    })
    .await;
    let direct = support::rabbit_with(config).await;
    // The failed publishes stored nothing; the one that succeeded, once.
    support::depth_becomes(&direct, 1, 0).await;
    direct.destroy().await.unwrap();
}

/// With `PREFETCH` above 1, acks are kept and sent (as one `multiple`
/// ack) before the consumer waits for a delivery. A consumer that waited
/// after its acks holds nothing, so a cut connection gives nothing back;
/// one whose connection dies while it keeps an ack has that job delivered
/// again (the price the module docs state: it finds its claim). Settled
/// out of order, acks go at once: a kept `multiple` ack would settle the
/// delivery still in hand.
#[tokio::test]
async fn a_prefetching_consumer_keeps_its_acks_until_it_waits() {
    use std::time::Duration;
    let url = testing::stack().rabbitmq_url;
    let proxy = ChaosProxy::start(&authority(&url)).await.unwrap();
    let mut config = support::config(Backend::RabbitMq);
    config.prefetch = 10;
    let direct = support::rabbit_with(config.clone()).await;
    let through_proxy = RabbitQueue::connect(&proxy.url_for(&url), config)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut consumer = through_proxy.consume("kept").await.unwrap();

    for _ in 0..3 {
        direct.enqueue(&support::envelope("export")).await.unwrap();
    }
    for _ in 0..3 {
        let d = consumer.next(DEADLINE).await.unwrap().unwrap();
        assert_eq!(d.attempt, 1);
        consumer.ack(&d).await.unwrap();
    }
    // Nothing waiting: the three acks go, as one, before it waits.
    let none = consumer.next(Duration::from_millis(200)).await.unwrap();
    assert!(none.is_none());
    // (Time for the proxy to pass the ack on.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.cut();
    proxy.restore();
    let none = consumer.next(Duration::from_secs(2)).await.unwrap();
    assert!(none.is_none(), "its acks were sent: nothing came back");

    // Acked (kept), and the connection dies before the consumer waits:
    // the broker never had the ack, and delivers the job again.
    let job = support::envelope("export");
    direct.enqueue(&job).await.unwrap();
    let d = consumer.next(DEADLINE).await.unwrap().unwrap();
    consumer.ack(&d).await.unwrap();
    proxy.cut();
    // (Time for the consumer's connection to see the cut, so that its
    // next call finds it gone instead of sending the kept ack into it.)
    tokio::time::sleep(Duration::from_millis(200)).await;
    proxy.restore();
    let again = consumer
        .next(DEADLINE)
        .await
        .unwrap()
        .expect("a kept ack dies with its connection");
    assert_eq!(again.envelope.as_ref().unwrap(), &job);
    assert_eq!(again.attempt, 2);
    consumer.ack(&again).await.unwrap();

    // Two in hand, the later one acked first: its ack goes at once (kept,
    // then sent as `multiple`, it would settle the earlier one too). The
    // earlier one is then requeued, and comes back.
    let (first, second) = (support::envelope("export"), support::envelope("export"));
    direct.enqueue(&first).await.unwrap();
    direct.enqueue(&second).await.unwrap();
    let d1 = consumer.next(DEADLINE).await.unwrap().unwrap();
    let d2 = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(d1.envelope.as_ref().unwrap(), &first);
    consumer.ack(&d2).await.unwrap();
    consumer.requeue(&d1).await.unwrap();
    let back = consumer.next(DEADLINE).await.unwrap().unwrap();
    assert_eq!(
        back.envelope.as_ref().unwrap(),
        &first,
        "requeued, not acked"
    );
    assert_eq!(back.attempt, 2);
    consumer.ack(&back).await.unwrap();

    // A graceful close sends what it keeps.
    consumer.close().await.unwrap();
    support::depth_becomes(&direct, 0, 0).await;
    direct.destroy().await.unwrap();
}
