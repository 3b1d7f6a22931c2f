//! The worker against a real queue and a real database: the export done
//! with progress and a result, effects once under redelivery, poison jobs,
//! garbage, and a graceful stop. Each on both backends.

use std::time::Duration;

use part4_async::job::{Completed, Effect, Envelope, JobKind, JobStatus};
use part4_async::queue::{Backend, JobConsumer, JobQueue};
use part4_async::worker::{Outcome, Swept, Worker, WorkerConfig};

use crate::support::{self, DEADLINE, Db};

fn worker(db: &Db, name: &str) -> Worker {
    Worker::new(
        db.store.clone(),
        &WorkerConfig::new(name, Duration::ZERO),
        3,
    )
}

async fn new_job(db: &Db, kind: JobKind) -> Envelope {
    let (job, created) = db
        .store
        .create(1, kind, &serde_json::json!({}), None)
        .await
        .unwrap();
    assert!(created);
    assert_eq!(job.status, JobStatus::Queued);
    Envelope::new(job.id, kind.as_str(), job.params)
}

async fn export_is_done_with_its_result<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    queue.enqueue(&job).await.unwrap();
    let mut consumer = queue.consume("w").await.unwrap();
    let w = worker(&db, "w1");
    let p = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    assert_eq!(p.outcome, Outcome::Done);
    assert!(p.settled);
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Done);
    assert_eq!(row.progress, 100);
    assert_eq!(row.attempts, 1);
    let (content_type, body) = db.store.result(&job.id).await.unwrap().unwrap();
    assert_eq!(content_type, "application/json");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["user_id"], 1);
    assert_eq!(doc["counts"]["articles"], 3);
    assert_eq!(doc["counts"]["comments"], 5);
    assert_eq!(doc["articles"][0]["comments"].as_array().unwrap().len(), 2);
    assert_eq!(doc["articles"][0]["body"], "text 😀");
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
    support::depth_becomes(&queue, 0, 0).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_export_is_done_with_its_result() {
    export_is_done_with_its_result(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_export_is_done_with_its_result() {
    export_is_done_with_its_result(support::redis().await).await;
}

/// The same job delivered twice (a publisher that lost its confirm and
/// published again, or a worker that died after its commit): one effect.
async fn effect_once_under_redelivery<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    queue.enqueue(&job).await.unwrap();
    queue.enqueue(&job).await.unwrap();
    let mut consumer = queue.consume("w").await.unwrap();
    let w = worker(&db, "w1");
    let first = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    let second = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    assert_eq!(first.outcome, Outcome::Done);
    assert_eq!(second.outcome, Outcome::AlreadyDone);
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1, "one effect");
    assert_eq!(w.stats().done.load(std::sync::atomic::Ordering::Relaxed), 1);
    support::depth_becomes(&queue, 0, 0).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_effect_happens_once_under_redelivery() {
    effect_once_under_redelivery(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_effect_happens_once_under_redelivery() {
    effect_once_under_redelivery(support::redis().await).await;
}

/// Two attempts committing at the same moment (two workers holding the
/// same job): the claim lets exactly one write.
#[tokio::test]
async fn concurrent_commits_of_one_job_write_one_effect() {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    let effect = Effect {
        content_type: "application/json".into(),
        body: "{}".into(),
    };
    let attempts = (0..4).map(|i| {
        let (store, id, effect) = (db.store.clone(), job.id.clone(), effect.clone());
        tokio::spawn(async move { store.complete(&id, &format!("w{i}"), &effect).await })
    });
    let mut committed = 0;
    for a in attempts {
        if a.await.unwrap().unwrap() == Completed::Committed {
            committed += 1;
        }
    }
    assert_eq!(committed, 1);
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
    db.drop().await;
}

/// A job that always fails: retried to the limit, then dead-lettered and
/// marked failed with its reason; the jobs behind it are done meanwhile.
async fn poison_job<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let poison = new_job(&db, JobKind::Fail).await;
    queue.enqueue(&poison).await.unwrap();
    let mut good = Vec::new();
    for _ in 0..3 {
        let g = new_job(&db, JobKind::Export).await;
        queue.enqueue(&g).await.unwrap();
        good.push(g);
    }
    let mut consumer = queue.consume("w").await.unwrap();
    let w = worker(&db, "w1");
    let mut outcomes = Vec::new();
    while let Some(p) = w.step(&mut consumer, Duration::from_secs(2)).await.unwrap() {
        outcomes.push(p);
        assert!(outcomes.len() < 20, "looping: {outcomes:?}");
    }
    let of_poison: Vec<_> = outcomes
        .iter()
        .filter(|p| p.job_id.as_ref() == Some(&poison.id))
        .collect();
    assert_eq!(of_poison.len(), 3, "{outcomes:?}");
    assert!(matches!(of_poison[0].outcome, Outcome::Retried { .. }));
    assert!(matches!(of_poison[1].outcome, Outcome::Retried { .. }));
    assert!(matches!(of_poison[2].outcome, Outcome::DeadLettered { .. }));
    let row = db.store.get(&poison.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.attempts, 3);
    let reason = row.error.unwrap();
    assert!(
        reason.contains("gave up after 3 deliveries") && reason.contains("always fails"),
        "{reason}"
    );
    for g in &good {
        let row = db.store.get(&g.id).await.unwrap().unwrap();
        assert_eq!(row.status, JobStatus::Done, "not held up by the poison job");
    }
    support::depth_becomes(&queue, 0, 1).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_poison_job_is_dead_lettered_after_the_limit() {
    poison_job(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_poison_job_is_dead_lettered_after_the_limit() {
    poison_job(support::redis().await).await;
}

/// Bytes that are not a job, and a job with no row: both dead-lettered at
/// once, and the worker carries on with the next job.
async fn garbage<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    queue
        .enqueue_raw("garbage", b"\xff not json")
        .await
        .unwrap();
    queue
        .enqueue_raw("half", br#"{"kind":"export"}"#)
        .await
        .unwrap();
    queue.enqueue(&support::envelope("export")).await.unwrap(); // no row
    let job = new_job(&db, JobKind::Export).await;
    queue.enqueue(&job).await.unwrap();
    let mut consumer = queue.consume("w").await.unwrap();
    let w = worker(&db, "w1");
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(w.step(&mut consumer, DEADLINE).await.unwrap().unwrap());
    }
    let dead = outcomes
        .iter()
        .filter(|p| matches!(p.outcome, Outcome::DeadLettered { .. }) && p.attempt == 1)
        .count();
    assert_eq!(dead, 3, "{outcomes:?}");
    assert_eq!(outcomes[3].outcome, Outcome::Done);
    assert_eq!(outcomes[3].job_id.as_ref(), Some(&job.id));
    support::depth_becomes(&queue, 0, 3).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_garbage_is_dead_lettered_and_the_worker_carries_on() {
    garbage(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_garbage_is_dead_lettered_and_the_worker_carries_on() {
    garbage(support::redis().await).await;
}

/// Stopping with a job in hand: with no grace it goes back to the queue
/// (and the row back to `queued`); with enough, it is finished first.
async fn graceful_stop<Q: JobQueue>(queue: Q, grace: Duration, job_min: Duration) {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    queue.enqueue(&job).await.unwrap();
    let consumer = queue.consume("w").await.unwrap();
    let mut config = WorkerConfig::new("stopping", job_min);
    config.shutdown_grace_ms = grace.as_millis() as u64;
    let w = Worker::new(db.store.clone(), &config, 3);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        w.run_until_stopped(consumer, async {
            let _ = stopped.await;
        })
        .await
    });
    support::eventually("the job running", || async {
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        (row.status == JobStatus::Running).then_some(())
    })
    .await;
    stop.send(()).unwrap();
    let handled = tokio::time::timeout(DEADLINE + grace, run)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    assert_eq!(handled, 1);
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    if grace.is_zero() {
        assert_eq!(row.status, JobStatus::Queued);
        assert_eq!(db.store.effects(&job.id).await.unwrap(), 0);
        support::depth_becomes(&queue, 1, 0).await;
    } else {
        assert_eq!(row.status, JobStatus::Done);
        assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
        support::depth_becomes(&queue, 0, 0).await;
    }
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_stopping_returns_the_job_in_hand_without_grace() {
    graceful_stop(
        support::rabbit().await,
        Duration::ZERO,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn redis_stopping_returns_the_job_in_hand_without_grace() {
    graceful_stop(
        support::redis().await,
        Duration::ZERO,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test]
async fn rabbitmq_stopping_finishes_the_job_in_hand_within_grace() {
    graceful_stop(
        support::rabbit().await,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
}

#[tokio::test]
async fn redis_stopping_finishes_the_job_in_hand_within_grace() {
    graceful_stop(
        support::redis().await,
        Duration::from_secs(30),
        Duration::from_millis(500),
    )
    .await;
}

// ---------------------------------------------------------------------
// Housekeeping: the dead-letter watcher and the sweeper.

/// A job whose last delivery dies with its worker: each of its
/// `MAX_DELIVERIES` deliveries is taken, the row marked `running` (the
/// worker started it), and the consumer dropped without an ack (as a
/// `kill -9`). The queue dead-letters it with no one to say so; the
/// watcher marks it `failed` with the reason, parks the message, and the
/// job's event stream ends with that `failed`.
async fn died_on_its_last_delivery<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    queue.enqueue(&job).await.unwrap();
    for attempt in 1..=3 {
        let mut doomed = queue.consume(&format!("doomed{attempt}")).await.unwrap();
        let d = doomed
            .next(DEADLINE)
            .await
            .unwrap()
            .expect("delivered again");
        assert_eq!(d.attempt, attempt);
        db.store.start(&job.id).await.unwrap();
        drop(d);
        drop(doomed); // no ack, no close, no row update: a killed worker
    }
    // Nothing more to deliver: RabbitMQ dead-lettered it when the third
    // consumer died; our Redis queue does when it would hand it out a
    // fourth time (the reaper gives it back first).
    let mut last = queue.consume("last").await.unwrap();
    assert!(last.next(Duration::from_secs(2)).await.unwrap().is_none());
    support::depth_becomes(&queue, 0, 1).await;
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Running, "nobody told the row");

    // The user watching the job.
    let events = part4_async::server::events::stream(
        db.store.clone(),
        row,
        Duration::from_millis(50),
        DEADLINE,
    );
    let events = tokio::spawn(async move {
        let body = events.into_body();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap()
    });

    let w = worker(&db, "watcher");
    let mut letters = queue.dead_letters("watcher").await.unwrap();
    let watched = w
        .watch_dead_letters(&mut letters, DEADLINE)
        .await
        .unwrap()
        .expect("the dead letter");
    assert_eq!(watched.job_id.as_ref(), Some(&job.id));
    let expected = "dead-lettered after 3 deliveries: the worker holding it died";
    assert_eq!(watched.marked.as_deref(), Some(expected));
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(row.error.as_deref(), Some(expected));
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 0);
    let stats = w.stats();
    assert_eq!(
        stats.dead_marked.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // Parked: still there for a person, and not read again.
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead, depth.parked), (0, 1, 1));
    assert!(
        w.watch_dead_letters(&mut letters, Duration::from_millis(500))
            .await
            .unwrap()
            .is_none()
    );

    let stream = tokio::time::timeout(DEADLINE, events)
        .await
        .expect("the stream ends after `failed`")
        .unwrap();
    let last_event = stream
        .split("\n\n")
        .filter(|e| e.contains("event:"))
        .last()
        .unwrap_or_default();
    assert!(
        last_event.contains("event: failed") && last_event.contains(expected),
        "{stream}"
    );
    last.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_a_job_whose_last_worker_died_is_marked_failed() {
    died_on_its_last_delivery(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_a_job_whose_last_worker_died_is_marked_failed() {
    let mut config = support::config(Backend::Redis);
    config.consumer_ttl_ms = 300;
    died_on_its_last_delivery(support::redis_with(config).await).await;
}

/// Dead letters a worker already explained (a poison job, `failed` with
/// its own reason) and garbage: parked, nothing re-marked.
async fn explained_dead_letters_are_only_parked<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let poison = new_job(&db, JobKind::Fail).await;
    queue.enqueue(&poison).await.unwrap();
    queue
        .enqueue_raw("garbage", b"\x00 not a job")
        .await
        .unwrap();
    let mut consumer = queue.consume("w").await.unwrap();
    let w = worker(&db, "w1");
    while w
        .step(&mut consumer, Duration::from_secs(2))
        .await
        .unwrap()
        .is_some()
    {}
    support::depth_becomes(&queue, 0, 2).await;
    let mut letters = queue.dead_letters("w1").await.unwrap();
    for _ in 0..2 {
        let watched = w
            .watch_dead_letters(&mut letters, DEADLINE)
            .await
            .unwrap()
            .expect("a dead letter");
        assert_eq!(watched.marked, None, "{watched:?}");
    }
    let row = db.store.get(&poison.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert!(row.error.unwrap().contains("always fails"));
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead, depth.parked), (0, 2, 2));
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_explained_dead_letters_are_only_parked() {
    explained_dead_letters_are_only_parked(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_explained_dead_letters_are_only_parked() {
    explained_dead_letters_are_only_parked(support::redis().await).await;
}

/// Makes a `queued` row look untouched for two minutes.
async fn backdate(db: &Db, job: &Envelope) {
    sqlx::query("UPDATE jobs SET created_at = created_at - 120000, updated_at = updated_at - 120000 WHERE id = ?")
        .bind(job.id.as_str())
        .execute(&db.db.pool)
        .await
        .unwrap();
}

/// A clone died between the insert and the publish: the row is `queued`,
/// the queue empty. Two workers sweep at once: one publishes it, once;
/// the job is done once; the next pass finds nothing.
async fn the_sweeper_publishes_a_stale_job_once<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let lost = new_job(&db, JobKind::Export).await; // never published
    let fresh = new_job(&db, JobKind::Export).await; // its publish may be under way
    backdate(&db, &lost).await;
    let (a, b) = (worker(&db, "sweeper-a"), worker(&db, "sweeper-b"));
    let (sa, sb) = tokio::join!(a.sweep(&queue), b.sweep(&queue));
    let (sa, sb) = (sa.unwrap(), sb.unwrap());
    assert_eq!(sa.republished + sb.republished, 1, "{sa:?} {sb:?}");
    assert_eq!(sa.failed + sb.failed, 0);
    support::depth_becomes(&queue, 1, 0).await;
    assert!(
        db.store.published_at(&lost.id).await.unwrap().is_some(),
        "the sweeper recorded its confirmed publish"
    );
    let again = a.sweep(&queue).await.unwrap();
    assert_eq!(again.stale, 0, "fresh for another window: {again:?}");
    // And for good: published now, however long it waits in the queue.
    backdate(&db, &lost).await;
    let later = b.sweep(&queue).await.unwrap();
    assert_eq!(later, Swept::default(), "published: never sent again");
    support::depth_becomes(&queue, 1, 0).await;

    let mut consumer = queue.consume("w").await.unwrap();
    let p = a.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    assert_eq!(p.job_id.as_ref(), Some(&lost.id));
    assert_eq!(p.outcome, Outcome::Done);
    assert_eq!(db.store.effects(&lost.id).await.unwrap(), 1);
    let fresh_row = db.store.get(&fresh.id).await.unwrap().unwrap();
    assert_eq!(fresh_row.status, JobStatus::Queued, "not stale: left alone");
    support::depth_becomes(&queue, 0, 0).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_the_sweeper_publishes_a_stale_job_once() {
    the_sweeper_publishes_a_stale_job_once(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_the_sweeper_publishes_a_stale_job_once() {
    the_sweeper_publishes_a_stale_job_once(support::redis().await).await;
}

/// A job waiting behind a backlog: published (the clone recorded the
/// broker's confirm), never consumed, and older than the window. The
/// sweeper leaves it alone: no copy, so no second run of the export
/// beside the first and no growth of the backlog.
async fn a_job_waiting_in_a_backlog_is_not_sent_again<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let job = new_job(&db, JobKind::Export).await;
        queue.enqueue(&job).await.unwrap();
        assert!(db.store.mark_published(&job.id).await.unwrap());
        backdate(&db, &job).await;
        waiting.push(job);
    }
    let w = worker(&db, "sweeper");
    let swept = w.sweep(&queue).await.unwrap();
    assert_eq!(swept, Swept::default(), "nothing to sweep: {swept:?}");
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(w.stats().swept.load(Relaxed), 0);
    support::depth_becomes(&queue, 3, 0).await;

    // The workers catch up: each job done once, with one delivery each.
    let mut consumer = queue.consume("w").await.unwrap();
    for _ in 0..3 {
        let p = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
        assert_eq!(p.outcome, Outcome::Done);
        assert_eq!(p.attempt, 1);
    }
    for job in &waiting {
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        assert_eq!((row.status, row.attempts), (JobStatus::Done, 1));
        assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
    }
    support::depth_becomes(&queue, 0, 0).await;
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_a_job_waiting_in_a_backlog_is_not_sent_again() {
    a_job_waiting_in_a_backlog_is_not_sent_again(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_a_job_waiting_in_a_backlog_is_not_sent_again() {
    a_job_waiting_in_a_backlog_is_not_sent_again(support::redis().await).await;
}

/// The clone died after the broker's confirm but before it recorded it:
/// the row says nothing about the publish. The first worker to start the
/// job records it, so once it has been delivered (and put back, here: a
/// failed attempt) the sweeper leaves it alone.
#[tokio::test]
async fn a_delivered_job_counts_as_published() {
    let queue = support::redis().await;
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    assert_eq!(db.store.published_at(&job.id).await.unwrap(), None);
    db.store.start(&job.id).await.unwrap();
    assert!(db.store.published_at(&job.id).await.unwrap().is_some());
    db.store
        .retrying(&job.id, "attempt 1 failed")
        .await
        .unwrap();
    backdate(&db, &job).await;
    let swept = worker(&db, "sweeper").sweep(&queue).await.unwrap();
    assert_eq!(swept, Swept::default());
    assert_eq!(queue.depth().await.unwrap().ready, 0);
    queue.destroy().await.unwrap();
    db.drop().await;
}

/// A copy still running when the dead-letter watcher marked its job
/// `failed` (the user saw "failed"): its late commit writes nothing, and
/// the row stays `failed`.
#[tokio::test]
async fn a_failed_job_stays_failed_when_a_late_attempt_completes() {
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    db.store.start(&job.id).await.unwrap();
    assert!(
        db.store
            .fail_unfinished(&job.id, "dead-lettered after 3 deliveries")
            .await
            .unwrap()
    );
    let effect = Effect {
        content_type: "application/json".into(),
        body: "{}".into(),
    };
    let late = db.store.complete(&job.id, "late", &effect).await.unwrap();
    assert_eq!(late, Completed::Failed);
    let row = db.store.get(&job.id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Failed);
    assert_eq!(
        row.error.as_deref(),
        Some("dead-lettered after 3 deliveries")
    );
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 0, "no claim");
    assert_eq!(db.store.result(&job.id).await.unwrap(), None, "no result");
    db.drop().await;
}

/// The same race many times over, both orders at once: a commit and the
/// watcher's `failed` on one job. Whichever wins, the row agrees with
/// the claim: `done` with one effect, or `failed` with none, never a
/// `failed` turned `done`.
#[tokio::test]
async fn a_commit_racing_the_watchers_failed_never_contradicts_it() {
    let db = Db::new().await;
    let effect = Effect {
        content_type: "application/json".into(),
        body: "{}".into(),
    };
    let (mut done, mut failed) = (0, 0);
    for _ in 0..20 {
        let job = new_job(&db, JobKind::Export).await;
        db.store.start(&job.id).await.unwrap();
        let (store, id, e) = (db.store.clone(), job.id.clone(), effect.clone());
        let commit = tokio::spawn(async move { store.complete(&id, "w", &e).await });
        let (store, id) = (db.store.clone(), job.id.clone());
        let fail = tokio::spawn(async move { store.fail_unfinished(&id, "dead").await });
        let committed = commit.await.unwrap().unwrap();
        let marked = fail.await.unwrap().unwrap();
        let row = db.store.get(&job.id).await.unwrap().unwrap();
        let effects = db.store.effects(&job.id).await.unwrap();
        match row.status {
            JobStatus::Done => {
                assert_eq!(
                    (committed, marked, effects),
                    (Completed::Committed, false, 1)
                );
                done += 1;
            }
            JobStatus::Failed => {
                assert_eq!((committed, marked, effects), (Completed::Failed, true, 0));
                failed += 1;
            }
            other => panic!("job left {other:?}"),
        }
    }
    assert_eq!(done + failed, 20);
    db.drop().await;
}

/// The sweeper's copy arrives after the job was done (the original
/// publish did happen, late): acked without work, one effect.
#[tokio::test]
async fn a_swept_copy_of_a_finished_job_is_acked_without_work() {
    let queue = support::redis().await;
    let db = Db::new().await;
    let job = new_job(&db, JobKind::Export).await;
    backdate(&db, &job).await;
    let w = worker(&db, "w1");
    assert_eq!(w.sweep(&queue).await.unwrap().republished, 1);
    queue.enqueue(&job).await.unwrap(); // the original, late
    let mut consumer = queue.consume("w").await.unwrap();
    let first = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    let second = w.step(&mut consumer, DEADLINE).await.unwrap().unwrap();
    assert_eq!(first.outcome, Outcome::Done);
    assert_eq!(second.outcome, Outcome::AlreadyDone);
    assert_eq!(db.store.effects(&job.id).await.unwrap(), 1);
    consumer.close().await.unwrap();
    queue.destroy().await.unwrap();
    db.drop().await;
}

/// The real loop: a worker run as `part4-worker` runs it sweeps and
/// watches by itself, with no test stepping it.
async fn the_running_worker_sweeps_and_watches<Q: JobQueue>(queue: Q) {
    let db = Db::new().await;
    // A lost publish...
    let lost = new_job(&db, JobKind::Export).await;
    backdate(&db, &lost).await;
    // ... and a job dead-lettered with its row still `running` (rejected
    // by a worker that could not write its reason).
    let orphan = new_job(&db, JobKind::Export).await;
    queue.enqueue(&orphan).await.unwrap();
    let mut c = queue.consume("orphaner").await.unwrap();
    let d = c.next(DEADLINE).await.unwrap().unwrap();
    db.store.start(&orphan.id).await.unwrap();
    c.dead_letter(&d).await.unwrap();
    c.close().await.unwrap();

    let consumer = queue.consume("runner").await.unwrap();
    let mut config = WorkerConfig::new("runner", Duration::ZERO);
    config.stale_queued_secs = 1; // a pass every second
    let w = Worker::new(db.store.clone(), &config, 3);
    let stats = w.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        w.run_until_stopped(consumer, async {
            let _ = stopped.await;
        })
        .await
    });
    support::eventually("the lost job done", || async {
        let row = db.store.get(&lost.id).await.unwrap().unwrap();
        (row.status == JobStatus::Done).then_some(())
    })
    .await;
    let row = support::eventually("the orphan failed", || async {
        let row = db.store.get(&orphan.id).await.unwrap().unwrap();
        (row.status == JobStatus::Failed).then_some(row)
    })
    .await;
    assert!(row.error.unwrap().starts_with("dead-lettered"));
    stop.send(()).unwrap();
    tokio::time::timeout(DEADLINE, run)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
    use std::sync::atomic::Ordering::Relaxed;
    assert!(stats.swept.load(Relaxed) >= 1);
    assert_eq!(stats.dead_marked.load(Relaxed), 1);
    assert_eq!(db.store.effects(&lost.id).await.unwrap(), 1);
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.ready, depth.dead, depth.parked), (0, 1, 1));
    queue.destroy().await.unwrap();
    db.drop().await;
}

#[tokio::test]
async fn rabbitmq_the_running_worker_sweeps_and_watches() {
    the_running_worker_sweeps_and_watches(support::rabbit().await).await;
}

#[tokio::test]
async fn redis_the_running_worker_sweeps_and_watches() {
    the_running_worker_sweeps_and_watches(support::redis().await).await;
}
