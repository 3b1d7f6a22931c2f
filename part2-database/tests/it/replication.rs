//! Read/write splitting, fallback, lag and read-your-writes, for real.

use std::time::Duration;

use common::testing::ChaosProxy;
use part2_database::articles::{self, Shape};
use part2_database::drill;
use part2_database::replication::{
    self, HealthPolicy, LastWrite, ReadFrom, ReadYourWrites, SplitPool, is_connection_error,
    lazy_pool,
};

use crate::support::{REPLICA, loaded, replica_admin, replica_of};

async fn count_comments(pool: sqlx::MySqlPool, article: u64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COUNT(*) FROM comments WHERE article_id = ?")
        .bind(article)
        .fetch_one(&pool)
        .await
}

#[tokio::test]
async fn reads_go_to_the_replica_and_fall_back_when_it_dies() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let proxy = ChaosProxy::start("127.0.0.1:13307").await.unwrap();
    let replica = lazy_pool(&proxy.url_for(&l.replica_url), 4).unwrap();
    let split = SplitPool::new(l.db.pool.clone(), vec![replica]);
    let hot = l.spec.article_popularity().id_of_rank(1);

    let (_, from) = split.read(|p| count_comments(p, hot)).await.unwrap();
    assert_eq!(from, ReadFrom::Replica(0));

    proxy.cut();
    let mut on_primary = 0;
    for _ in 0..50 {
        let (n, from) = split
            .read(|p| count_comments(p, hot))
            .await
            .expect("no read fails while the replica is down");
        assert!(n > 0);
        if from == ReadFrom::Primary {
            on_primary += 1;
        }
    }
    assert_eq!(on_primary, 50, "every read fell back to the primary");
    assert_eq!(split.healthy_replicas(), 0);

    proxy.restore();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        split.check_replicas().await;
        if split.read(|p| count_comments(p, hot)).await.unwrap().1 == ReadFrom::Replica(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "reads never returned to the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    l.db.drop_database().await;
}

#[tokio::test]
async fn with_the_primary_down_writes_fail_clearly_and_reads_go_on() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    let replica = replica_of(&l).await;
    let proxy = ChaosProxy::start("127.0.0.1:13306").await.unwrap();
    let primary_url = l.db.url.clone();
    let primary = lazy_pool(&proxy.url_for(&primary_url), 4).unwrap();
    let split = SplitPool::new(primary, vec![replica]);
    let hot = l.spec.article_popularity().id_of_rank(1);
    proxy.cut();
    let err = articles::add_comment(split.primary(), Shape::Denormalized, hot, 1, "x", 0)
        .await
        .unwrap_err();
    assert!(
        is_connection_error(&err),
        "a connection error, which the server maps to 503: {err}"
    );
    let (n, from) = split
        .read(|p| count_comments(p, hot))
        .await
        .expect("reads go on from the replica");
    assert!(n > 0);
    assert_eq!(from, ReadFrom::Replica(0));
    l.db.drop_database().await;
}

#[tokio::test]
async fn read_your_writes_under_injected_lag() {
    let _guard = REPLICA.write().await;
    let l = loaded().await;
    let replica = replica_of(&l).await;
    let lag = replication::measure_lag(&l.db.pool, &replica, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(lag.is_some(), "replication runs");
    let split = SplitPool::new(l.db.pool.clone(), vec![replica]);
    let article = l.spec.article_popularity().id_of_rank(2);
    let mut stale = std::collections::HashMap::new();
    // The replica's SQL thread stopped: it lags until the guard restarts it,
    // on every path out of the closure.
    drill::with_sql_thread_stopped(&replica_admin().await, || async {
        for policy in [
            ReadYourWrites::Naive,
            ReadYourWrites::PinToPrimary {
                window: Duration::from_secs(5),
            },
            ReadYourWrites::WaitForGtid {
                timeout: Duration::from_millis(200),
            },
        ] {
            let mut last = LastWrite::default();
            let before = count_comments(l.db.pool.clone(), article).await?;
            replication::write_tracked(&split, &mut last, |mut conn| async move {
                articles::add_comment(&mut *conn, Shape::Denormalized, article, 1, "mine", 0)
                    .await?;
                Ok(((), conn))
            })
            .await?;
            anyhow::ensure!(last.gtid.is_some());
            let (seen, _) =
                replication::read_own(&split, policy, &last, |p| count_comments(p, article))
                    .await?;
            stale.insert(policy.name(), seen == before);
        }
        Ok(())
    })
    .await
    .unwrap();
    assert!(
        stale["naive"],
        "the naive read is stale while the replica lags"
    );
    assert!(!stale["pin to primary"]);
    assert!(
        !stale["wait for GTID"],
        "waited, timed out, fell back to the primary"
    );
    l.db.drop_database().await;
}

/// The health check reads `SHOW SLAVE STATUS`: a replica whose SQL thread
/// is stopped leaves rotation (reads go to the primary), and comes back
/// once it runs and has caught up.
#[tokio::test]
async fn a_replica_that_stops_applying_leaves_rotation_and_comes_back() {
    let _guard = REPLICA.write().await;
    let l = loaded().await;
    let replica = replica_of(&l).await;
    let policy = HealthPolicy {
        max_lag: Duration::from_millis(1000),
        interval: Duration::from_millis(50),
    };
    let split = SplitPool::with_policy(l.db.pool.clone(), vec![replica], policy);
    let hot = l.spec.article_popularity().id_of_rank(1);
    let reads_from = |want: ReadFrom| {
        let split = split.clone();
        async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let (_, from) = split.read(|p| count_comments(p, hot)).await?;
                if from == want {
                    return Ok::<_, anyhow::Error>(());
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "reads never went to {want:?}: {:?}",
                    split.replica_health(0)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    reads_from(ReadFrom::Replica(0)).await.unwrap();
    drill::with_sql_thread_stopped(&replica_admin().await, || async {
        articles::add_comment(&l.db.pool, Shape::Denormalized, hot, 1, "unapplied", 0).await?;
        reads_from(ReadFrom::Primary).await?;
        let health = split.replica_health(0).unwrap();
        anyhow::ensure!(health.alive && !health.in_rotation, "{health:?}");
        anyhow::ensure!(
            health
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("SQL thread")),
            "{health:?}"
        );
        Ok(())
    })
    .await
    .unwrap();
    reads_from(ReadFrom::Replica(0)).await.unwrap();
    l.db.drop_database().await;
}

/// The health task holds only a weak reference: dropping the last clone
/// of the pool ends it.
#[tokio::test]
async fn the_health_task_ends_with_its_pool() {
    let l = loaded().await;
    let replica = lazy_pool(&l.replica_url, 2).unwrap();
    let policy = HealthPolicy {
        max_lag: Duration::from_millis(1000),
        interval: Duration::from_millis(20),
    };
    let split = SplitPool::with_policy(l.db.pool.clone(), vec![replica], policy);
    let ended = split.health_task_ended();
    let other = split.clone();
    drop(split);
    // Still running: a clone of the pool lives.
    let ended = match futures::FutureExt::now_or_never(Box::pin(ended)) {
        None => other.health_task_ended(),
        Some(()) => panic!("the task ended while a clone of its pool lived"),
    };
    drop(other);
    tokio::time::timeout(Duration::from_secs(30), ended)
        .await
        .expect("the health task ended once the pool was dropped");
    l.db.drop_database().await;
}
