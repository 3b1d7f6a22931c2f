//! Writes across dying clones, the drill issue 7 measured a double write
//! with: writers post comments through HAProxy while each of three part 2
//! clones is SIGKILLed and started again in turn. Every acknowledged
//! comment is in the database exactly once, counted from the database.
//!
//! Each comment carries an `Idempotency-Key`, and a writer that gets no
//! answer or a 5xx sends the same request again with the same key (as
//! HAProxy does for such requests): a write that committed on a clone that
//! died before answering is answered from the stored key, not written again.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::testing::{self, unique_name};
use part1_clones::client::{UserClient, http};
use part1_clones::cluster::{Cluster, ClusterSpec};

use crate::support::{REPLICA, loaded, replica_of};

/// What one writer saw: the bodies of its acknowledged comments, and the
/// requests it gave up on (never acknowledged).
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    failed: usize,
}

async fn writer(u: UserClient, w: usize, article: u64, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen::default();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let body = format!("{} w{w} n{n}", unique_name("kill"));
        let key = unique_name("k");
        let mut acknowledged = false;
        for _attempt in 0..50 {
            let res = u
                .raw(
                    reqwest::Method::POST,
                    &format!("/articles/{article}/comments"),
                )
                .header("idempotency-key", &key)
                .json(&serde_json::json!({ "body": body }))
                .send()
                .await;
            match res {
                Ok(r) if r.status().as_u16() == 201 => {
                    acknowledged = true;
                    break;
                }
                // No answer, or the balancer's 502/503: the same request
                // again, same key.
                Ok(r) if r.status().is_server_error() => {}
                Err(_) => {}
                Ok(r) => panic!("a comment got {}", r.status()),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if acknowledged {
            seen.acknowledged.push(body);
        } else {
            seen.failed += 1;
        }
    }
    seen
}

#[tokio::test]
async fn comments_through_clones_killed_in_turn_are_stored_exactly_once() {
    let _guard = REPLICA.read().await;
    let l = loaded().await;
    replica_of(&l).await;
    let stack = testing::stack();
    testing::redis().await;
    let prefix = unique_name("p2k");
    let spec = ClusterSpec::new(
        env!("CARGO_BIN_EXE_part2-server"),
        3,
        &[
            ("KEY_PREFIX", &prefix),
            ("REDIS_URL", &stack.redis_url),
            ("MARIADB_PRIMARY_URL", &l.db.url),
            ("MARIADB_REPLICA_URL", &l.replica_url),
            ("RUST_LOG", "warn"),
        ],
    );
    let mut cluster = Cluster::start(spec).await.expect("cluster starts");
    let article = l.spec.article_popularity().id_of_rank(3);

    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..8 {
        let u = UserClient::new(http(), &cluster.lb_url());
        u.login(
            &format!("user{}", w + 20),
            common::dataset::DATASET_PASSWORD,
        )
        .await
        .expect("a dataset user logs in");
        writers.push(tokio::spawn(writer(u, w, article, stop.clone())));
    }
    // Each clone in turn: SIGKILL under load, then started again.
    for i in 0..cluster.len() {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.kill(i).await.unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        cluster.restart(i, "v1").await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for w in writers {
        let seen = w.await.unwrap();
        acknowledged.extend(seen.acknowledged);
        failed += seen.failed;
    }
    cluster.stop().await;

    // Counted from the database: each acknowledged body, how many times.
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT body FROM comments WHERE article_id = ? AND body LIKE 'kill%'")
            .bind(article)
            .fetch_all(&l.db.pool)
            .await
            .unwrap();
    let mut stored: HashMap<&str, usize> = HashMap::new();
    for b in &rows {
        *stored.entry(b.as_str()).or_default() += 1;
    }
    let lost = acknowledged
        .iter()
        .filter(|b| !stored.contains_key(b.as_str()))
        .count();
    let doubled = stored.values().filter(|&&n| n > 1).count();
    assert!(
        acknowledged.len() > 50,
        "the writers wrote during the drill ({} acknowledged)",
        acknowledged.len()
    );
    assert_eq!(lost, 0, "acknowledged comments missing from the database");
    assert_eq!(doubled, 0, "comments stored more than once");
    // Rows nobody acknowledged can only come from requests given up on.
    assert!(rows.len() <= acknowledged.len() + failed);
    l.db.drop_database().await;
}
