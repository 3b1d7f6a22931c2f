//! Experiment 12: Path 2, MongoDB: the social blog migrated into documents (checked
//! count by count and article by article), then the friends' feed three
//! ways: SQL JOIN in MariaDB, a join in application code (friend ids, then
//! one `$in`), and the server-side `$lookup`. Round trips are counted: by
//! MariaDB's `Com_select` for SQL, by the MongoDB driver's command
//! monitoring for documents.
//!
//! The MongoDB-wire server is SecantusDB (Python): its latencies are not a
//! real mongod's, its round trips are.

use std::collections::HashMap;
use std::time::Instant;

use common::dataset::DatasetSpec;
use common::demo::figure;
use common::measure::{Latencies, fmt_us};
use common::results::Kind;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sqlx::MySqlPool;

use super::{Demo, fresh_database};
use crate::{articles, mongo, schema, tuning};

/// Articles whose embedded comments do not match MariaDB's comment rows
/// (by count), plus articles present on one side only.
async fn articles_that_differ(sql: &MySqlPool, db: &mongodb::Database) -> anyhow::Result<u64> {
    let rows: Vec<(u64, i64)> = sqlx::query_as(
        "SELECT a.id, (SELECT COUNT(*) FROM comments c WHERE c.article_id = a.id) FROM articles a",
    )
    .fetch_all(sql)
    .await?;
    let mut sql_side: HashMap<i64, i64> = rows.into_iter().map(|(id, n)| (id as i64, n)).collect();
    let mut cursor = db
        .collection::<Document>("articles")
        .aggregate([doc! { "$project": { "n": { "$size": "$comments" } } }])
        .await?;
    let mut differ = 0;
    while let Some(d) = cursor.try_next().await? {
        let id = d.get_i64("_id").unwrap_or(-1);
        let n = d
            .get_i64("n")
            .or_else(|_| d.get_i32("n").map(i64::from))
            .unwrap_or(-1);
        if sql_side.remove(&id) != Some(n) {
            differ += 1;
        }
    }
    Ok(differ + sql_side.len() as u64)
}

/// The migration, then the feed three ways.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let spec = DatasetSpec::new(demo.spec.seed, demo.args.mongo_scale);
    let stack = demo.stack().clone();
    let source = if spec == demo.spec {
        demo.primary.clone()
    } else {
        let db = format!("{}_mongo_source", demo.args.database);
        let pool = fresh_database("MariaDB primary", &stack.mariadb_primary_url, &db).await?;
        schema::migrate(&pool).await?;
        schema::load(&pool, &spec).await?;
        pool
    };
    let (mdb, commands) = mongo::connect_monitored(&stack.mongo_url, &demo.args.database).await?;
    mdb.drop().await?;
    let m = mongo::migrate(&source, &mdb).await?;
    let (sql_counts, mongo_counts) = (
        mongo::counts_sql(&source).await?,
        mongo::counts_mongo(&mdb).await?,
    );
    let totals_differ = [
        (sql_counts.users, mongo_counts.users),
        (sql_counts.articles, mongo_counts.articles),
        (sql_counts.comments, mongo_counts.comments),
        (sql_counts.friendships, mongo_counts.friendships),
    ]
    .iter()
    .filter(|(a, b)| a != b)
    .count();
    let articles_differ = articles_that_differ(&source, &mdb).await?;
    figure(
        Kind::Measured,
        format!(
            "migrated {} users, {} articles with {} comments embedded in {:.1} s: {:.0} rows/s",
            m.users,
            m.articles,
            m.comments,
            m.seconds,
            m.rate()
        ),
    );
    figure(
        Kind::Measured,
        format!(
            "compared after the copy: {totals_differ} of 4 totals differ, {articles_differ} articles' comments differ"
        ),
    );
    let cmp = "migrating MariaDB to MongoDB (SecantusDB)";
    demo.measured(
        cmp,
        "migration rate",
        m.rate(),
        "rows/s",
        "source rows turned into documents per second",
    );
    demo.measured(
        cmp,
        "totals that differ",
        totals_differ as f64,
        "of 4",
        "users, articles, comments, friendships counted on both sides after the copy",
    );
    demo.measured(
        cmp,
        "articles whose comments differ",
        articles_differ as f64,
        "articles",
        "each article's comment rows in MariaDB against its embedded comments",
    );
    // Recorded first, then checked: the figure is what the comparison
    // found, and a migration that lost data stops the demo.
    anyhow::ensure!(
        totals_differ == 0 && articles_differ == 0,
        "the migration lost data: MariaDB {sql_counts:?}, MongoDB {mongo_counts:?}"
    );

    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let users: Vec<u64> = (0..100)
        .map(|_| rng.random_range(1..=spec.sizes.users))
        .collect();
    let feed_users = users.clone();
    let (sql_lat, sql_selects) = tuning::count_selects(&source, |pool| async move {
        let mut lat = Latencies::new();
        for u in &feed_users {
            let t = Instant::now();
            articles::feed_join(&pool, *u, 20).await?;
            lat.record(t.elapsed());
        }
        Ok(lat)
    })
    .await?;
    let (mut app_lat, mut lookup_lat) = (Latencies::new(), Latencies::new());
    let (mut app_trips, mut lookup_trips) = (0, 0);
    for u in &users {
        let t = Instant::now();
        let (feed, trips) = commands.count(mongo::feed_app_join(&mdb, *u, 20)).await;
        app_lat.record(t.elapsed());
        feed?;
        app_trips += trips;
        let t = Instant::now();
        let (feed, trips) = commands.count(mongo::feed_lookup(&mdb, *u, 20)).await;
        lookup_lat.record(t.elapsed());
        feed?;
        lookup_trips += trips;
    }
    let n = users.len() as f64;
    let cmp = "the friends' feed: SQL JOIN, app-side join, $lookup (MongoDB = SecantusDB, Python)";
    for (name, trips, lat, counter) in [
        (
            "SQL JOIN (MariaDB)",
            sql_selects,
            sql_lat,
            "MariaDB's Com_select",
        ),
        (
            "app-side join: ids, then $in",
            app_trips,
            app_lat,
            "the driver's command events",
        ),
        (
            "$lookup",
            lookup_trips,
            lookup_lat,
            "the driver's command events",
        ),
    ] {
        let s = lat.summary();
        let per_feed = trips as f64 / n;
        figure(
            Kind::Measured,
            format!(
                "{name:<30} {per_feed:.1} round trip(s)  p50 {:>8}  p99 {:>8}",
                fmt_us(s.p50_us),
                fmt_us(s.p99_us)
            ),
        );
        demo.measured(
            cmp,
            &format!("{name}: round trips"),
            per_feed,
            "round trips",
            &format!("requests to the database per feed, counted by {counter}"),
        );
        demo.measured(
            cmp,
            &format!("{name}: p50"),
            s.p50_us as f64,
            "µs",
            "latency of one feed",
        );
    }
    demo.results.notes.push(format!(
        "MongoDB figures come from SecantusDB 0.7 (a MongoDB-wire server in Python), at the {:?} scale; compare round trips, not its latencies, with a real mongod.",
        demo.args.mongo_scale
    ));
    Ok(())
}
