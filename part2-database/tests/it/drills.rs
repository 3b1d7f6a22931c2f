//! The drill guards put the shared servers back on every path: the
//! closure's `Ok`, its `Err`, and its panic.

use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use part2_database::{drill, tuning};

use crate::support::{REPLICA, loaded, replica_admin};

/// How each drill's closure ends.
#[derive(Debug, Clone, Copy)]
enum Ending {
    Ok,
    Err,
    Panic,
}

const ENDINGS: [Ending; 3] = [Ending::Ok, Ending::Err, Ending::Panic];

/// Ends as told; `seen` is what the closure saw while the drill was on.
async fn end(ending: Ending, seen: bool) -> anyhow::Result<bool> {
    match ending {
        Ending::Ok => Ok(seen),
        Ending::Err => anyhow::bail!("the closure failed"),
        Ending::Panic => panic!("the closure panicked (on purpose, in a test)"),
    }
}

/// Runs a drill to its end, a panic caught: `Some(result)`, or `None` if it panicked.
async fn outcome<T>(drill: impl Future<Output = anyhow::Result<T>>) -> Option<anyhow::Result<T>> {
    AssertUnwindSafe(drill).catch_unwind().await.ok()
}

fn check<T: std::fmt::Debug>(ending: Ending, out: &Option<anyhow::Result<T>>) {
    match ending {
        Ending::Ok => assert!(matches!(out, Some(Ok(_))), "{out:?}"),
        Ending::Err => assert!(matches!(out, Some(Err(_))), "{out:?}"),
        Ending::Panic => assert!(out.is_none(), "the panic goes on after the undo"),
    }
}

#[tokio::test]
async fn the_replica_sql_thread_runs_again_after_ok_err_and_panic() {
    // No test of this process reads the replica meanwhile; other processes
    // are kept out by the guard's named lock.
    let _only_drill = REPLICA.write().await;
    let admin = replica_admin().await;
    assert!(
        drill::sql_thread_running(&admin).await.unwrap(),
        "the replica's SQL thread runs before the drill: ./lab status"
    );
    for ending in ENDINGS {
        let a = admin.clone();
        let out = outcome(drill::with_sql_thread_stopped(&admin, || async move {
            let running = drill::sql_thread_running(&a).await?;
            end(ending, running).await
        }))
        .await;
        check(ending, &out);
        if let Some(Ok(running_during)) = out {
            assert!(
                !running_during,
                "the SQL thread was stopped during the drill"
            );
        }
        assert!(
            drill::sql_thread_running(&admin).await.unwrap(),
            "the SQL thread runs again after {ending:?}"
        );
    }
}

#[tokio::test]
async fn the_buffer_pool_gets_its_size_back_after_ok_err_and_panic() {
    let url = std::env::var("MARIADB_PRIMARY_ADMIN_URL")
        .unwrap_or_else(|_| "mysql://labadmin:labadmin@127.0.0.1:13306/lab".into());
    let admin = common::testing::mariadb_at("MariaDB primary (admin)", &url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let before = drill::buffer_pool_size(&admin).await.unwrap();
    // Grown, not shrunk: the other tests on the primary keep their pages.
    let asked = before + (64 << 20);
    for ending in ENDINGS {
        let a = admin.clone();
        let out = outcome(drill::with_buffer_pool(&admin, asked, || async move {
            let during = drill::buffer_pool_size(&a).await?;
            end(ending, during != before).await
        }))
        .await;
        check(ending, &out);
        if let Some(Ok(changed)) = out {
            assert!(changed, "the size changed during the drill");
        }
        assert_eq!(
            drill::buffer_pool_size(&admin).await.unwrap(),
            before,
            "the size found is back after {ending:?}"
        );
    }
}

#[tokio::test]
async fn the_index_is_back_as_it_was_after_ok_err_and_panic() {
    let l = loaded().await;
    let pool = &l.db.pool;
    let (table, index) = ("comments", tuning::COMMENTS_INDEX);
    let definition = drill::index_definition(pool, table, index).await.unwrap();
    for ending in ENDINGS {
        let p = pool.clone();
        let out = outcome(drill::with_index_dropped(
            pool,
            table,
            index,
            || async move {
                let there = tuning::has_index(&p).await?;
                end(ending, there).await
            },
        ))
        .await;
        check(ending, &out);
        if let Some(Ok(there_during)) = out {
            assert!(!there_during, "the index was gone during the drill");
        }
        assert_eq!(
            drill::index_definition(pool, table, index).await.unwrap(),
            definition,
            "the same index is back after {ending:?}"
        );
    }
    // Bad names are refused before any SQL runs.
    assert!(
        drill::with_index_dropped(pool, "comments`; DROP TABLE users; --", index, || async {
            Ok(())
        })
        .await
        .is_err()
    );
    assert!(
        drill::with_index_dropped(pool, table, "no_such_index", || async { Ok(()) })
            .await
            .is_err()
    );
    l.db.drop_database().await;
}

#[tokio::test]
async fn the_heartbeat_sees_the_row_within_its_resolution_and_never_while_the_replica_is_stopped() {
    use part2_database::demo::replication_lag;
    use std::time::Duration;

    let _only_drill = REPLICA.write().await;
    let l = loaded().await;
    let replica = crate::support::replica_of(&l).await;
    let mut conn = replica.acquire().await.unwrap();
    let beat = common::demo::now() as u64;
    let s = replication_lag::sample(&l.db.pool, &mut conn, beat, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(
        s.resolution <= s.lag,
        "the poll before the one that saw it came after the write: {s:?}"
    );
    let admin = replica_admin().await;
    let stopped = drill::with_sql_thread_stopped(&admin, || async {
        let mut conn = replica.acquire().await?;
        replication_lag::sample(&l.db.pool, &mut conn, beat + 1, Duration::from_millis(300)).await
    })
    .await;
    assert!(
        stopped.is_err(),
        "no heartbeat is applied while the SQL thread is stopped: {stopped:?}"
    );
    drop(conn);
    replica.close().await;
    l.db.drop_database().await;
}
