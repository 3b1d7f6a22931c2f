//! The demo's experiments in a quick mode (the tiny dataset in a database
//! of each test's own, 1 s runs): each test asserts what they count (jobs
//! lost, effects doubled, pages served from disk, timelines written),
//! never how fast anything was.

use common::testing;
use part4_async::demo::{
    Args, Demo, answer_at_once, backpressure, baked, broker_down, fan_out, kill_worker, poison,
    redis_restart, workers,
};
use part4_async::fanout::amplification;
use part4_async::queue::redis_restart::Persistence;

/// A demo on the tiny dataset, in a database of this test's own.
async fn demo() -> Demo {
    let database = testing::unique_name("d4test");
    let results = std::env::temp_dir().join(testing::unique_name("d4results"));
    let args: Args = clap::Parser::try_parse_from([
        "part4-demo",
        "--scale",
        "tiny",
        "--database",
        &database,
        "--server-bin",
        env!("CARGO_BIN_EXE_part4-server"),
        "--seconds",
        "1",
        "--results-dir",
        &results.to_string_lossy(),
    ])
    .unwrap();
    Demo::open(args).await.unwrap_or_else(|e| panic!("{e:#}"))
}

/// Drops the demo's database.
async fn done(demo: Demo) {
    let admin = testing::mariadb_at("MariaDB primary", &testing::stack().mariadb_primary_url)
        .await
        .unwrap();
    demo.primary.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS `{}`",
        demo.args.database
    )))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn answer_at_once_accepts_every_job() {
    let mut d = demo().await;
    let r = answer_at_once::run(&mut d).await.unwrap();
    assert!(r.async_run.requests > 0);
    assert_eq!(r.async_run.errors, 0, "{:?}", r.async_run.first_errors);
    assert!(r.async_steady.requests > 0);
    assert_eq!(
        r.async_steady.errors, 0,
        "{:?}",
        r.async_steady.first_errors
    );
    assert!(r.sync_run.requests > 0 && r.sync_steady.requests > 0);
    // Every accepted job is either still waiting or was done.
    assert_eq!(
        r.confirm_steady.errors, 0,
        "{:?}",
        r.confirm_steady.first_errors
    );
    assert!(
        r.backlog + r.done_meanwhile
            <= r.async_run.requests + r.async_steady.requests + r.confirm_steady.requests
    );
    done(d).await;
}

#[tokio::test]
async fn every_worker_count_does_each_job_once() {
    let mut d = demo().await;
    let points = workers::run(&mut d).await.unwrap();
    assert_eq!(points.len(), workers::COUNTS.len());
    for p in &points {
        assert_eq!(p.effects, p.jobs, "{p:?}");
        assert_eq!(p.doubled, 0, "{p:?}");
    }
    assert_eq!(d.results.curves.len(), 1);
    done(d).await;
}

#[tokio::test]
async fn a_killed_worker_loses_nothing_and_doubles_nothing() {
    let mut d = demo().await;
    let drills = kill_worker::run(&mut d).await.unwrap();
    assert_eq!(drills.len(), 2);
    for k in &drills {
        assert_eq!(k.lost, 0, "{k:?}");
        assert_eq!(k.doubled, 0, "{k:?}");
        assert_eq!(k.effects, k.jobs, "{k:?}");
        assert_eq!(k.attempts, 2, "{k:?}");
        assert!(k.finished_by.ends_with("-heir"), "{k:?}");
    }
    done(d).await;
}

#[tokio::test]
async fn a_stopped_broker_loses_no_persistent_job() {
    let mut d = demo().await;
    let rabbit = broker_down::PrivateRabbit::start().await.unwrap();
    let r = broker_down::run(&mut d, rabbit).await.unwrap();
    assert_eq!(r.lost, 0, "{r:?}");
    assert_eq!(r.doubled, 0, "{r:?}");
    assert_eq!(r.refused, broker_down::WHILE_DOWN as u64, "{r:?}");
    assert_eq!(r.left_queued, 0, "{r:?}");
    done(d).await;
}

#[tokio::test]
async fn redis_keeps_its_queue_with_the_append_only_file_only() {
    let mut d = demo().await;
    let counts = redis_restart::run(&mut d).await.unwrap();
    for c in &counts {
        let expected = match c.persistence {
            Persistence::None => c.queued,
            Persistence::EverySec | Persistence::Always => 0,
        };
        assert_eq!(c.lost, expected, "{c:?}");
    }
    done(d).await;
}

#[tokio::test]
async fn a_poison_job_is_dead_lettered_and_holds_nothing_up() {
    let mut d = demo().await;
    for p in poison::run(&mut d).await.unwrap() {
        assert_eq!(p.attempts, p.limit, "{p:?}");
        assert_eq!(p.status, "failed", "{p:?}");
        assert_eq!(p.dead_letters, 1, "{p:?}");
        assert_eq!(p.exports_done, poison::EXPORTS as u64, "{p:?}");
    }
    done(d).await;
}

#[tokio::test]
async fn backpressure_refuses_with_retry_after_and_writes_nothing() {
    let mut d = demo().await;
    let b = backpressure::run(&mut d).await.unwrap();
    assert_eq!(
        b.accepted + b.refused + b.other,
        backpressure::POSTS,
        "{b:?}"
    );
    assert_eq!(b.other, 0, "{b:?}");
    assert_eq!(b.with_retry_after, b.refused, "{b:?}");
    assert!(b.refused > 0, "{b:?}");
    assert_eq!(b.depth, b.accepted, "{b:?}");
    assert_eq!(b.extra_rows, 0, "{b:?}");
    done(d).await;
}

#[tokio::test]
async fn baked_pages_come_from_disk_and_show_every_comment() {
    let mut d = demo().await;
    let r = baked::run(&mut d).await.unwrap();
    let s = d.spec.sizes;
    assert_eq!(r.bake.articles, s.articles, "{:?}", r.bake);
    assert_eq!(r.bake.authors, s.users, "{:?}", r.bake);
    assert!(r.answers > 0);
    assert_eq!(r.from_disk, r.answers);
    assert_eq!(r.baked.errors, 0, "{:?}", r.baked.first_errors);
    assert_eq!(r.staleness.len(), baked::WRITES);
    assert_eq!(r.never_shown, 0);
    done(d).await;
}

#[tokio::test]
async fn a_post_writes_one_timeline_per_friend_below_the_threshold() {
    let mut d = demo().await;
    let r = fan_out::run(&mut d).await.unwrap();
    assert_eq!(r.posts.len(), 4);
    for p in &r.posts {
        assert_eq!(
            p.timelines,
            amplification(p.friends, p.max_friends),
            "{p:?}"
        );
        assert_eq!(p.zadds, p.timelines, "{p:?}");
    }
    for read in &r.reads {
        assert_eq!(read.errors, 0, "{:?}", read.first_errors);
    }
    done(d).await;
}
