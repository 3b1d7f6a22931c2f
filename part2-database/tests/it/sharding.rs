//! Two real shards: placement, ids, scatter-gather, and one shard down.

use std::collections::HashMap;

use common::testing::{self, ChaosProxy, TestDatabase};
use part2_database::replication::lazy_pool;
use part2_database::schema;
use part2_database::sharding::{IdGenerator, Modulo, Placement, ShardedStore};

async fn shard_db(service: &str, url: &str) -> TestDatabase {
    let db = TestDatabase::create(service, url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    schema::migrate(&db.pool).await.unwrap();
    db
}

#[tokio::test]
async fn the_feed_gathers_friends_from_both_shards_and_survives_nothing_else() {
    let stack = testing::stack();
    let s0 = shard_db("MariaDB shard 0", &stack.mariadb_shard0_url).await;
    let s1 = shard_db("MariaDB shard 1", &stack.mariadb_shard1_url).await;
    // Shard 1 is reached through a proxy we can cut.
    let proxy = ChaosProxy::start("127.0.0.1:13317").await.unwrap();
    let s1_url = s1.url.clone();
    let s1_cuttable = lazy_pool(&proxy.url_for(&s1_url), 4).unwrap();
    let store = ShardedStore::new(vec![s0.pool.clone(), s1_cuttable], Modulo(2));

    // 12 users, user 1 befriends all others; each writes 3 articles.
    let mut expected: Vec<(i64, u64)> = Vec::new();
    let mut ids = Vec::new();
    for u in 1..=12u64 {
        store
            .put_user(u, &format!("user{u}"), &format!("User {u}"))
            .await
            .unwrap();
        for k in 0..3 {
            let at = (u * 10 + k) as i64;
            let id = store.post(u, &format!("User {u}"), "t", at).await.unwrap();
            ids.push(id);
            if u != 1 {
                expected.push((at, id));
            }
        }
    }
    for f in 2..=12u64 {
        store.put_friend(1, f).await.unwrap();
        store.put_friend(f, 1).await.unwrap();
    }
    let on: HashMap<usize, usize> = (2..=12u64).fold(HashMap::new(), |mut m, f| {
        *m.entry(store.placement.shard_of(f)).or_default() += 1;
        m
    });
    assert_eq!(on.len(), 2, "friends live on both shards: {on:?}");
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "ids are unique across shards");
    assert!(
        ids.iter().any(|id| IdGenerator::node_of(*id) == 0)
            && ids.iter().any(|id| IdGenerator::node_of(*id) == 1)
    );

    let (feed, asked) = store.feed(1, 10).await.unwrap();
    assert_eq!(asked, 2);
    expected.sort_by(|a, b| b.cmp(a));
    let want: Vec<u64> = expected.iter().take(10).map(|(_, id)| *id).collect();
    assert_eq!(feed.iter().map(|a| a.id).collect::<Vec<_>>(), want);

    // Shard 1 down: its users get a clear error naming it; shard 0's are served.
    proxy.cut();
    let on_0 = (1..=12u64)
        .find(|u| store.placement.shard_of(*u) == 0)
        .unwrap();
    let on_1 = (1..=12u64)
        .find(|u| store.placement.shard_of(*u) == 1)
        .unwrap();
    assert!(store.friends(on_0).await.is_ok());
    let err = store.friends(on_1).await.unwrap_err();
    assert_eq!(err.shard, 1);
    assert!(
        err.to_string().starts_with("shard 1 is unavailable"),
        "{err}"
    );
    proxy.restore();
    s0.drop_database().await;
    s1.drop_database().await;
}
