//! The migration to documents, and the feed three ways: SQL JOIN, app-side
//! join, $lookup, all equal.

use part2_database::{articles, mongo};

use crate::support::loaded;

#[tokio::test]
async fn migration_keeps_every_count_and_all_three_feeds_agree() {
    let l = loaded().await;
    let stack = common::testing::stack();
    let name = common::testing::unique_name("t");
    let (db, commands) = mongo::connect_monitored(&stack.mongo_url, &name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let m = mongo::migrate(&l.db.pool, &db).await.unwrap();
    assert_eq!(m.articles, l.spec.sizes.articles);
    assert_eq!(
        mongo::counts_mongo(&db).await.unwrap(),
        mongo::counts_sql(&l.db.pool).await.unwrap()
    );

    for user in [1u64, l.spec.user_popularity().id_of_rank(1), 150] {
        let sql: Vec<i64> = articles::feed_join(&l.db.pool, user, 20)
            .await
            .unwrap()
            .iter()
            .map(|a| a.id as i64)
            .collect();
        // Round trips as the driver's command monitoring counted them.
        let (app, trips_app) = commands.count(mongo::feed_app_join(&db, user, 20)).await;
        let (lookup, trips_lookup) = commands.count(mongo::feed_lookup(&db, user, 20)).await;
        let (app, lookup) = (app.unwrap(), lookup.unwrap());
        assert_eq!(trips_app, 2, "user {user}: friend ids, then one $in query");
        assert_eq!(trips_lookup, 1, "user {user}: one aggregate");
        let app: Vec<i64> = app.iter().map(|l| l.0).collect();
        let lookup: Vec<i64> = lookup.iter().map(|l| l.0).collect();
        assert!(!sql.is_empty(), "user {user} has a feed");
        assert_eq!(app, sql, "user {user}");
        assert_eq!(lookup, sql, "user {user}");
    }
    db.drop().await.unwrap();
    l.db.drop_database().await;
}
