//! Part 1 benchmarks: what a session store costs a request.
//!
//! `./lab bench part1` (the stack must be up). Groups and functions use the
//! words of the guide:
//!
//! - `sessions/load`: one session read (with its sliding expiry), per store,
//!   next to the baseline `redis GET` (one raw round trip). The goal: the
//!   Redis store costs one round trip and little else (p50 within 1.5x of
//!   the raw GET).
//! - `request`: a whole HTTP request to one in-process clone, with no
//!   session (`GET /health`) and with one (`GET /me`, Redis sessions): the
//!   difference is what the session layer adds to a request.
//!
//! Setup (connections, a logged-in session, the server) is outside the timed
//! loop; each iteration is one operation.

use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use part1_clones::app::{Application, connect_database, connect_redis};
use part1_clones::config::ServerConfig;
use part1_clones::session::{Expiry, MariadbSessions, MemorySessions, RedisSessions, SessionStore};

const EXPIRY: Expiry = Expiry {
    idle: Duration::from_secs(600),
    absolute: Duration::from_secs(3600),
};

fn sessions(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = common::testing::stack();
    let prefix = common::testing::unique_name("bench1");
    let (mut raw, redis, pool) = rt.block_on(async {
        let raw = common::testing::redis_at(&stack.redis_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let redis = connect_redis(&stack.redis_url).await.unwrap();
        let pool = connect_database(
            &stack.mariadb_primary_url,
            std::time::Duration::from_secs(5),
        )
        .await
        .unwrap();
        (raw, redis, pool)
    });
    let memory = MemorySessions::new(EXPIRY);
    let redis_store = RedisSessions::new(redis, &prefix, EXPIRY);
    let mariadb = MariadbSessions::new(pool, EXPIRY);
    let key = format!("{prefix}:baseline");
    rt.block_on(async {
        redis::cmd("SET")
            .arg(&key)
            .arg("x")
            .query_async::<()>(&mut raw)
            .await
            .unwrap()
    });

    let mut group = c.benchmark_group("sessions/load");
    group.bench_function("redis GET (baseline)", |b| {
        b.to_async(&rt).iter(|| {
            let mut conn = raw.clone();
            let key = key.clone();
            async move {
                redis::cmd("GET")
                    .arg(&key)
                    .query_async::<String>(&mut conn)
                    .await
                    .unwrap()
            }
        })
    });
    bench_store(&mut group, &rt, &memory);
    bench_store(&mut group, &rt, &redis_store);
    bench_store(&mut group, &rt, &mariadb);
    group.finish();
}

fn bench_store<S: SessionStore>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &tokio::runtime::Runtime,
    store: &S,
) {
    let id = rt.block_on(store.create(1, "bench_user")).unwrap();
    group.bench_function(store.name(), |b| {
        b.to_async(rt)
            .iter(|| async { assert!(store.load(&id).await.unwrap().is_some()) })
    });
    rt.block_on(store.delete(&id)).unwrap();
}

fn request(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (base, user) = rt.block_on(async {
        let mut config = ServerConfig::from_env().unwrap();
        config.port = 0;
        config.key_prefix = common::testing::unique_name("bench1r");
        let app = Application::build(config).await.unwrap();
        let base = format!("http://127.0.0.1:{}", app.port());
        tokio::spawn(app.run_until(std::future::pending()));
        let user = part1_clones::client::UserClient::new(part1_clones::client::http(), &base);
        let name = format!("b{}", common::testing::unique_name("").replace('_', ""))
            .chars()
            .take(30)
            .collect::<String>();
        assert_eq!(user.signup(&name, "bench-password").await.unwrap(), 201);
        user.login(&name, "bench-password").await.unwrap();
        (base, user)
    });
    let http = part1_clones::client::http();
    let mut group = c.benchmark_group("request");
    group.bench_function("health (no session)", |b| {
        b.to_async(&rt).iter(|| async {
            assert!(
                http.get(format!("{base}/health"))
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .is_success()
            )
        })
    });
    group.bench_function("me (redis session)", |b| {
        b.to_async(&rt)
            .iter(|| async { assert!(user.me().await.unwrap().is_some()) })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = sessions, request
}
criterion_main!(benches);
