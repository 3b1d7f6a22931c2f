//! Part 3 benchmarks: what a cache read costs, by backend and by shape.
//!
//! `./lab bench part3` (Memcached and Redis must be up: `./lab up`). Setup
//! (connections, a prefix of the bench's own, the stored values) happens
//! before the timed loops. Groups and functions use the guide's words:
//!
//! - `backend_get`: one cached article (a few KB of JSON) read through the
//!   project's clients, `memcached` (the memcache crate's async meta
//!   client) against `redis` (redis-rs `ConnectionManager`), with the
//!   server's no-op round trip (`memcached mn`, `redis PING`) as each
//!   one's baseline. The issue asks for Memcached's p50 within 1.3x of
//!   Redis's: compare the medians criterion prints.
//! - `multi_get`: the feed's read of 20 per-author objects, as one
//!   `get_many` (one round trip) against 20 `get`s in turn, on both.
//! - `backend_set`: storing the same article, `memcached` against `redis`.
//! - `serialize`: the cached article object (`ArticlePage`) to and from
//!   JSON, the cost every hit pays on top of the round trip.
//! - `hit_vs_assembly`: the object cache's point: a hit (get plus decode)
//!   on each backend against assembling the same article from MariaDB
//!   (`articles::page`, two queries), on a database of the bench's own
//!   (the tiny dataset). The issue asks for a hit at least 10x faster.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use common::testing;
use criterion::{Criterion, criterion_group, criterion_main};
use part2_database::articles::{ArticlePage, ArticleSummary, CommentView};
use part3_cache::backend::{CacheBackend, Memcached, RedisCache};
use part3_cache::key::Key;

/// Generous: a bench must measure, not turn a slow round trip into a miss.
const BENCH_TIMEOUT: Duration = Duration::from_secs(2);
const TTL: Duration = Duration::from_secs(600);

/// An article page as the object cache stores it: 20 comments, a body of
/// a few paragraphs. Fixed content, so every run serializes the same bytes.
fn article() -> ArticlePage {
    ArticlePage {
        summary: ArticleSummary {
            id: 4242,
            author_id: 17,
            author_name: "Ada Lovelace".into(),
            title: "Notes on the analytical engine".into(),
            published_at: 1_763_000_000,
            comment_count: 20,
            like_count: 311,
        },
        body: "The engine weaves algebraic patterns just as the loom weaves flowers and leaves. "
            .repeat(20),
        comments: (0..20)
            .map(|i| CommentView {
                id: 10_000 + i,
                article_id: 4242,
                author_id: 100 + i,
                body: format!("Comment {i}: a thoughtful reply of a sentence or two."),
                created_at: 1_763_000_000 + i as i64,
            })
            .collect(),
    }
}

/// `host:port` of `memcache://host:port?...` (the first server).
fn memcached_addr(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['?', '/', ',']).next().unwrap_or(rest)
}

fn cache(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let prefix = format!("{}:", testing::unique_name("bench3"));
    let value = serde_json::to_vec(&article()).unwrap();
    let (memcached_cache, redis_cache, keys) = rt.block_on(async {
        testing::tcp("Memcached", memcached_addr(&stack.memcached_url))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        testing::redis_at(&stack.redis_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mc = Memcached::connect(&stack.memcached_url, &prefix, BENCH_TIMEOUT)
            .await
            .unwrap();
        let rd = RedisCache::connect(&stack.redis_url, &prefix, BENCH_TIMEOUT)
            .await
            .unwrap();
        let keys: Vec<Key> = (0..20)
            .map(|i| Key::new("author_recent", &[&i.to_string()]))
            .collect();
        for backend in [&mc as &dyn CacheBackend, &rd] {
            for key in &keys {
                backend.set(key, &value, TTL).await.unwrap();
            }
        }
        (Arc::new(mc), Arc::new(rd), keys)
    });
    let backends: [(&str, Arc<dyn CacheBackend>); 2] =
        [("memcached", memcached_cache), ("redis", redis_cache)];
    let one = &keys[0];

    let mut g = c.benchmark_group("backend_get");
    let noop = rt.block_on(async {
        memcache::exp::AsyncMetaClient::builder()
            .connect_async(memcached_addr(&stack.memcached_url))
            .await
            .unwrap()
    });
    g.bench_function("memcached mn (baseline)", |b| {
        b.to_async(&rt)
            .iter(|| async { noop.noop().await.unwrap() })
    });
    let ping = rt.block_on(testing::redis_at(&stack.redis_url)).unwrap();
    g.bench_function("redis PING (baseline)", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = ping.clone();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        })
    });
    for (name, backend) in &backends {
        g.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| async { backend.get(one).await.unwrap().unwrap() })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("backend_set");
    for (name, backend) in &backends {
        g.bench_function(*name, |b| {
            b.to_async(&rt)
                .iter(|| async { backend.set(one, &value, TTL).await.unwrap() })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("multi_get");
    for (name, backend) in &backends {
        g.bench_function(format!("{name} get_many(20)"), |b| {
            b.to_async(&rt)
                .iter(|| async { backend.get_many(&keys).await.unwrap() })
        });
        g.bench_function(format!("{name} 20 gets"), |b| {
            b.to_async(&rt).iter(|| async {
                let mut out = Vec::with_capacity(keys.len());
                for key in &keys {
                    out.push(backend.get(key).await.unwrap());
                }
                out
            })
        });
    }
    g.finish();

    rt.block_on(async {
        for (_, backend) in &backends {
            backend.delete_many(&keys).await.unwrap();
        }
    });
}

fn hit_vs_assembly(c: &mut Criterion) {
    use common::dataset::{DatasetSpec, Scale};
    use part2_database::articles::{self, Shape};
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let spec = DatasetSpec::new(7, Scale::Tiny);
    let hot = spec.article_popularity().id_of_rank(1);
    let prefix = format!("{}:", testing::unique_name("bench3h"));
    let key = Key::new("article", &[&hot.to_string()]);
    let (db, backends) = rt.block_on(async {
        let db = testing::TestDatabase::create("MariaDB primary", &stack.mariadb_primary_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        part2_database::schema::migrate(&db.pool).await.unwrap();
        part2_database::schema::load(&db.pool, &spec).await.unwrap();
        let page = articles::page(&db.pool, Shape::Denormalized, hot)
            .await
            .unwrap()
            .expect("the hot article");
        let bytes = serde_json::to_vec(&page).unwrap();
        let mc = Memcached::connect(&stack.memcached_url, &prefix, BENCH_TIMEOUT)
            .await
            .unwrap();
        let rd = RedisCache::connect(&stack.redis_url, &prefix, BENCH_TIMEOUT)
            .await
            .unwrap();
        mc.set(&key, &bytes, TTL).await.unwrap();
        rd.set(&key, &bytes, TTL).await.unwrap();
        let backends: [(&str, Arc<dyn CacheBackend>); 2] =
            [("memcached", Arc::new(mc)), ("redis", Arc::new(rd))];
        (db, backends)
    });
    let mut g = c.benchmark_group("hit_vs_assembly");
    g.bench_function("assemble from MariaDB", |b| {
        b.to_async(&rt).iter(|| async {
            articles::page(&db.pool, Shape::Denormalized, hot)
                .await
                .unwrap()
                .unwrap()
        })
    });
    for (name, backend) in &backends {
        g.bench_function(format!("{name} hit"), |b| {
            b.to_async(&rt).iter(|| async {
                let bytes = backend.get(&key).await.unwrap().unwrap();
                serde_json::from_slice::<ArticlePage>(&bytes).unwrap()
            })
        });
    }
    g.finish();
    rt.block_on(async {
        for (_, backend) in &backends {
            backend.delete(&key).await.unwrap();
        }
        db.drop_database().await;
    });
}

fn serialize(c: &mut Criterion) {
    let page = article();
    let bytes = serde_json::to_vec(&page).unwrap();
    let mut g = c.benchmark_group("serialize");
    g.bench_function("serde_json encode", |b| {
        b.iter(|| serde_json::to_vec(black_box(&page)).unwrap())
    });
    g.bench_function("serde_json decode", |b| {
        b.iter(|| serde_json::from_slice::<ArticlePage>(black_box(&bytes)).unwrap())
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = cache, serialize, hit_vs_assembly
}
criterion_main!(benches);
