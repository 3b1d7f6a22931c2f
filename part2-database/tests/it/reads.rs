//! Read-your-writes across clones, with lag injected for real: the
//! replica's SQL thread is stopped (a drill that always restarts it), a
//! user writes through clone A and reads through clone B, which shares
//! only Redis with A.
//!
//! These servers check the replica's health once an hour, so the stale
//! replica stays in rotation: the read-your-writes policy alone decides
//! where a read goes, as it does in production for a lag below the bound
//! (`REPLICA_MAX_LAG_MS`) or before the next check notices.

use part2_database::drill;
use part2_database::server::Reads;
use reqwest::Method;

use crate::support::{
    App, Loaded, REPLICA, call, comments_on, config, loaded, replica_admin, replica_of,
    session_for, spawn,
};

/// Two clones of one part 2 tier (one key prefix), with `reads`.
async fn two_clones(l: &Loaded, reads: Reads, prefix: &str) -> (App, App) {
    let mut c = config(l);
    c.reads = reads;
    c.server.key_prefix = prefix.to_owned();
    c.replica_check_ms = 3_600_000;
    c.gtid_wait_ms = 300;
    c.pin_window_ms = 60_000;
    let a = spawn(c.clone()).await;
    c.server.clone_id = Some(common::testing::unique_name("clone"));
    let b = spawn(c).await;
    (a, b)
}

#[tokio::test]
async fn a_write_on_one_clone_is_read_on_another_except_under_naive() {
    let _guard = REPLICA.write().await;
    let l = loaded().await;
    replica_of(&l).await;
    let article = l.spec.article_popularity().id_of_rank(3);
    let http = part1_clones::client::http();
    let mut seen = Vec::new();
    drill::with_sql_thread_stopped(&replica_admin().await, || async {
        for reads in [Reads::Naive, Reads::Pin, Reads::GtidWait] {
            let prefix = common::testing::unique_name("p2");
            let (a, b) = two_clones(&l, reads, &prefix).await;
            let cookie = format!("sid={}", session_for(&prefix, 8, "user8").await);
            let before = comments_on(&l, article).await;
            let (status, _, _) = call(
                http.post(format!("{}/articles/{article}/comments", a.url))
                    .header("cookie", &cookie)
                    .json(&serde_json::json!({"body": "read me back"})),
            )
            .await;
            anyhow::ensure!(status == 201, "{reads:?}: the write answered {status}");
            anyhow::ensure!(comments_on(&l, article).await == before + 1);
            let (status, from, page) = call(
                http.get(format!("{}/articles/{article}", b.url))
                    .header("cookie", &cookie),
            )
            .await;
            anyhow::ensure!(status == 200, "{reads:?}: the read answered {status}");
            seen.push((
                reads,
                page["comment_count"].as_i64() == Some(before + 1),
                from,
            ));
            let _ = a.stop.send(());
            let _ = b.stop.send(());
        }
        Ok(())
    })
    .await
    .unwrap();
    for (reads, fresh, from) in &seen {
        match reads {
            // The lag was real: the naive read missed the write.
            Reads::Naive => assert!(!fresh, "naive read its write from {from:?}: no lag?"),
            _ => assert!(fresh, "{reads:?} missed its own write (read from {from:?})"),
        }
    }
    assert_eq!(seen[0].2.as_deref(), Some("replica-0"));
    assert_eq!(
        seen[2].2.as_deref(),
        Some("primary"),
        "gtid-wait timed out on the stopped replica and read the primary"
    );
    l.db.drop_database().await;
}

/// A signup is a write: the new user's reads are pinned to the primary,
/// so their profile is there on any clone, while an anonymous read of the
/// stale replica shows the lag was real.
#[tokio::test]
async fn a_new_user_is_visible_at_once_on_another_clone() {
    let _guard = REPLICA.write().await;
    let l = loaded().await;
    replica_of(&l).await;
    let prefix = common::testing::unique_name("p2");
    let (a, b) = two_clones(&l, Reads::Pin, &prefix).await;
    let http = part1_clones::client::http();
    let name = common::testing::unique_name("n");
    drill::with_sql_thread_stopped(&replica_admin().await, || async {
        let (status, _, created) = call(
            http.post(format!("{}/signup", a.url))
                .json(&serde_json::json!({"username": name, "password": "correct horse battery"})),
        )
        .await;
        anyhow::ensure!(status == 201, "signup: {status} {created}");
        let id = created["id"].as_u64().unwrap();
        let cookie = format!("sid={}", session_for(&prefix, id, &name).await);
        let (status, from, _) = call(
            http.get(format!("{}/users/{name}", b.url))
                .header("cookie", &cookie),
        )
        .await;
        anyhow::ensure!(
            status == 200,
            "the new user's own read: {status} from {from:?}"
        );
        let (status, _, _) = call(http.get(format!("{}/users/{name}", b.url))).await;
        anyhow::ensure!(
            status == 404,
            "an anonymous read of the stale replica: {status}"
        );
        Ok(())
    })
    .await
    .unwrap();
    let _ = a.stop.send(());
    let _ = b.stop.send(());
    l.db.drop_database().await;
}

/// With Redis refusing, the pin cannot be stored: the write is refused
/// (503) before anything is written, rather than succeeding without its
/// read-your-writes guarantee.
#[tokio::test]
async fn when_the_pin_cannot_be_stored_the_write_is_refused() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let stack = common::testing::stack();
    let redis_addr = stack
        .redis_url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned();
    let proxy = common::testing::ChaosProxy::start(&redis_addr)
        .await
        .unwrap();
    let mut c = config(&l);
    c.server.stack.redis_url = proxy.url_for(&stack.redis_url);
    // Sessions in MariaDB, so the user is still known with Redis gone.
    c.server.sessions = part1_clones::config::SessionKind::Mariadb;
    let app = spawn(c).await;
    let u = part1_clones::client::UserClient::new(part1_clones::client::http(), &app.url);
    u.login("user9", common::dataset::DATASET_PASSWORD)
        .await
        .unwrap();
    let article = l.spec.article_popularity().id_of_rank(4);
    let before = comments_on(&l, article).await;
    proxy.refuse();
    let (status, _, body) = call(
        u.raw(Method::POST, &format!("/articles/{article}/comments"))
            .json(&serde_json::json!({"body": "unpinned"})),
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(comments_on(&l, article).await, before, "nothing written");
    proxy.restore();
    let _ = app.stop.send(());
    l.db.drop_database().await;
}
