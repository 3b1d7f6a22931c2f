//! Part 2 benchmarks: where a read goes and what it costs.
//!
//! `./lab bench part2` (the stack must be up). Setup loads the tiny dataset
//! into a database of the bench's own (and copies it to the MongoDB-wire
//! server), outside the timed loops. Groups and functions use the guide's
//! words:
//!
//! - `point read`: one article page by id on the `primary` and on the
//!   `replica`, with `SELECT 1` as the baseline round trip;
//! - `author page`: a page of a popular author's articles, `join` against
//!   `denormalized`;
//! - `feed`: the friends' feed by `SQL JOIN`, by `app-side join` (MongoDB:
//!   ids, then `$in`) and by `$lookup` (MongoDB is SecantusDB, in Python:
//!   compare round trips, not its speed);
//! - `shard routing`: what placing a key costs: `modulo`, `consistent hash`,
//!   `directory` (no I/O: this is the router's overhead, in nanoseconds).

use std::hint::black_box;
use std::time::Duration;

use common::dataset::{DatasetSpec, Scale};
use common::testing::{self, TestDatabase};
use criterion::{Criterion, criterion_group, criterion_main};
use part2_database::articles::{self, Shape};
use part2_database::sharding::{ConsistentHash, Directory, Modulo, Placement};
use part2_database::{mongo, replication, schema};

fn database(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let spec = DatasetSpec::new(7, Scale::Tiny);
    let (db, replica, mdb) = rt.block_on(async {
        let db = TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        schema::migrate(&db.pool).await.unwrap();
        schema::load(&db.pool, &spec).await.unwrap();
        let replica = testing::mariadb_at(
            "MariaDB replica",
            &common::config::with_database(&stack.mariadb_replica_url, &db.name),
        )
        .await
        .unwrap();
        replication::measure_lag(&db.pool, &replica, Duration::from_secs(30))
            .await
            .unwrap()
            .expect("replica caught up");
        let mdb = mongo::connect(&stack.mongo_url, &db.name).await.unwrap();
        mongo::migrate(&db.pool, &mdb).await.unwrap();
        (db, replica, mdb)
    });
    let hot = spec.article_popularity().id_of_rank(1);
    let author = spec.user_popularity().id_of_rank(1);
    let user = spec.user_popularity().id_of_rank(3);

    let mut g = c.benchmark_group("point read");
    g.bench_function("SELECT 1 (baseline)", |b| {
        b.to_async(&rt)
            .iter(|| async { sqlx::query("SELECT 1").execute(&db.pool).await.unwrap() })
    });
    for (name, pool) in [("primary", &db.pool), ("replica", &replica)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                articles::page(pool, Shape::Denormalized, hot)
                    .await
                    .unwrap()
                    .unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("author page");
    for (name, shape) in [("join", Shape::Join), ("denormalized", Shape::Denormalized)] {
        g.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                articles::by_author(&db.pool, shape, author, 0)
                    .await
                    .unwrap()
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("feed");
    g.bench_function("SQL JOIN", |b| {
        b.to_async(&rt)
            .iter(|| async { articles::feed_join(&db.pool, user, 20).await.unwrap() })
    });
    g.bench_function("app-side join", |b| {
        b.to_async(&rt)
            .iter(|| async { mongo::feed_app_join(&mdb, user, 20).await.unwrap() })
    });
    g.bench_function("$lookup", |b| {
        b.to_async(&rt)
            .iter(|| async { mongo::feed_lookup(&mdb, user, 20).await.unwrap() })
    });
    g.finish();

    rt.block_on(async {
        mdb.drop().await.unwrap();
        db.drop_database().await;
    });
}

fn routing(c: &mut Criterion) {
    let modulo = Modulo(2);
    let ring = ConsistentHash::new(2, 160);
    let directory = Directory::freeze(&modulo, 1..=100_000u64, 2);
    let mut g = c.benchmark_group("shard routing");
    let mut key = 0u64;
    for (name, p) in [
        ("modulo", &modulo as &dyn Placement),
        ("consistent hash", &ring),
        ("directory", &directory),
    ] {
        g.bench_function(name, |b| {
            b.iter(|| {
                key = key.wrapping_add(7919) % 100_000 + 1;
                black_box(p.shard_of(black_box(key)))
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = database, routing
}
criterion_main!(benches);
