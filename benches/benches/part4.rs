//! Part 4 benchmarks: what it costs to hand a job to a queue, how many jobs
//! a second the queue carries, and what a baked page saves over rendering.
//!
//! `./lab bench part4` (RabbitMQ, Redis and nginx must be installed and up:
//! `./lab up`). Every queue here is a new one with a unique name
//! (`common::testing::unique_name`), deleted at the end, so parallel runs
//! and the lab's workers never share one. Setup (connections, queues,
//! consumers, files, a private nginx) happens outside the timed loops.
//! Groups and functions:
//!
//! - `enqueue`: one [`JobQueue::enqueue`], the call `POST /jobs` makes
//!   before it answers 202, on each backend: `rabbitmq` (a persistent,
//!   mandatory publish to a quorum queue, awaiting the broker's confirm)
//!   against `redis` (one `LPUSH`), with Redis's `PING` as the round-trip
//!   baseline.
//! - `publish`: what the confirm costs, on lapin directly: the same
//!   persistent publish to a quorum queue on a channel without
//!   `confirm_select` (done when the frame is written: the broker may
//!   never have stored it) and on one with it, awaiting each confirm. The
//!   queue is capped (`x-max-length`, oldest dropped), so a fast loop
//!   cannot fill the shared broker's memory.
//! - `throughput`: jobs per second through the project's own queue code,
//!   publish and consume together, with confirms and acks
//!   (`benches::queue_load`): RabbitMQ with prefetch 1 and one confirm
//!   outstanding (the naive settings) against prefetch 1000 and 2048
//!   outstanding (its acks sent 500 at a time, `multiple`), and the Redis reliable queue with 16 consumers taking
//!   up to 100 jobs per round trip (prefetch 100). Criterion
//!   prints `thrpt` in elements (jobs) per second; the goals are 20k msg/s
//!   (RabbitMQ) and 30k jobs/s (Redis). The whole sweep over prefetch (1,
//!   10, 50, 250, 1000) and window (1, 16, 128, 512, 2048), charted in the
//!   lab report, is
//!   the `part4-sweep` binary (`benches::sweep`, which says why).
//! - `page`: way 1's point. Rendering the article page from part 3's
//!   cached object (decode the JSON, `render::article_page`), the same
//!   after a Redis hit, against reading the baked file; then over HTTP, a
//!   dynamic route (Redis hit plus render, in process) against a private
//!   nginx serving the baked file (`try_files`, as the lab's nginx does),
//!   with nginx's `return 200` as the HTTP baseline.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use benches::queue_load;
use common::testing;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use part2_database::articles::{ArticlePage, ArticleSummary, CommentView};
use part3_cache::backend::{CacheBackend, RedisCache};
use part3_cache::key::Key;
use part4_async::job::{Envelope, JobId};
use part4_async::queue::rabbitmq::RabbitQueue;
use part4_async::queue::redis::RedisQueue;
use part4_async::queue::{Backend, JobQueue, QueueConfig};

/// Generous: a bench must measure, not turn a slow round trip into a miss.
const BENCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The `publish` group's queue keeps at most this many messages.
const PUBLISH_CAP: i64 = 10_000;

/// An article page as part 3's object cache stores it (the same one as
/// part 3's bench): 20 comments, a body of a few paragraphs.
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

fn job() -> Envelope {
    Envelope::new(JobId::generate(), "export", serde_json::json!({}))
}

fn enqueue(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let (rabbit, redis, ping) = rt.block_on(async {
        let rabbit = RabbitQueue::connect(
            &stack.rabbitmq_url,
            QueueConfig::new(Backend::RabbitMq, testing::unique_name("bench4e")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let redis = RedisQueue::connect(
            &stack.redis_url,
            QueueConfig::new(Backend::Redis, testing::unique_name("bench4e")),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let ping = testing::redis_at(&stack.redis_url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (rabbit, redis, ping)
    });
    let job = job();
    let mut g = c.benchmark_group("enqueue");
    g.bench_function("redis PING (baseline)", |b| {
        b.to_async(&rt).iter(|| async {
            let mut conn = ping.clone();
            let _: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
        })
    });
    g.bench_function("redis (LPUSH)", |b| {
        b.to_async(&rt)
            .iter(|| async { redis.enqueue(&job).await.unwrap() })
    });
    g.bench_function("rabbitmq (confirm + mandatory)", |b| {
        b.to_async(&rt)
            .iter(|| async { rabbit.enqueue(&job).await.unwrap() })
    });
    g.finish();
    rt.block_on(async {
        let rabbit_depth = rabbit.depth().await.unwrap();
        let redis_depth = redis.depth().await.unwrap();
        println!(
            "enqueue: {} jobs on RabbitMQ and {} on Redis, deleted with their queues",
            rabbit_depth.ready, redis_depth.ready
        );
        rabbit.destroy().await.unwrap();
        redis.destroy().await.unwrap();
    });
}

fn publish(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let queue = testing::unique_name("bench4p");
    let (connection, plain, confirmed) = rt.block_on(async {
        let connection = Connection::connect(
            &stack.rabbitmq_url,
            ConnectionProperties::default().with_connection_name("part4 bench publish".into()),
        )
        .await
        .unwrap_or_else(|e| {
            panic!(
                "RabbitMQ is not reachable at {}: run ./lab up ({e})",
                common::config::redact(&stack.rabbitmq_url)
            )
        });
        let plain = connection.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-max-length".into(), AMQPValue::LongLongInt(PUBLISH_CAP));
        plain
            .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
            .await
            .unwrap();
        let confirmed = connection.create_channel().await.unwrap();
        confirmed
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        (connection, plain, confirmed)
    });
    let body = job().encode();
    let properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    let mut g = c.benchmark_group("publish");
    g.bench_function("rabbitmq without confirms", |b| {
        b.to_async(&rt).iter(|| async {
            let confirm = publish_one(&plain, &queue, &body, &properties).await;
            // Nothing to wait for: lapin says so.
            assert!(matches!(confirm.await, Ok(Confirmation::NotRequested)));
        })
    });
    g.bench_function("rabbitmq with confirms", |b| {
        b.to_async(&rt).iter(|| async {
            let confirm = publish_one(&confirmed, &queue, &body, &properties).await;
            assert!(matches!(confirm.await, Ok(Confirmation::Ack(None))));
        })
    });
    g.finish();
    rt.block_on(async {
        confirmed
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
        let _ = connection.close(200, "bench done".into()).await;
    });
}

/// One persistent publish of `body` to `queue` through the default
/// exchange; the confirm to await (or not).
async fn publish_one(
    channel: &lapin::Channel,
    queue: &str,
    body: &[u8],
    properties: &BasicProperties,
) -> lapin::PublisherConfirm {
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            properties.clone(),
        )
        .await
        .unwrap()
}

fn throughput(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let mut g = c.benchmark_group("throughput");
    // Each iteration is thousands of jobs: few, equal samples.
    g.sample_size(10);
    g.sampling_mode(SamplingMode::Flat);

    let naive = 500;
    g.throughput(Throughput::Elements(naive));
    let mut rig = rt
        .block_on(queue_load::rabbitmq(&stack, "bench4t", 1, 1))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.bench_function(rig.label().to_owned(), |b| {
        b.iter_custom(|iters| rt.block_on(pump_many(&mut rig, iters, naive)))
    });
    rt.block_on(rig.close()).unwrap();

    let many = 5000;
    g.throughput(Throughput::Elements(many));
    let mut rig = rt
        .block_on(queue_load::rabbitmq(&stack, "bench4t", 1000, 2048))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.bench_function(rig.label().to_owned(), |b| {
        b.iter_custom(|iters| rt.block_on(pump_many(&mut rig, iters, many)))
    });
    rt.block_on(rig.close()).unwrap();

    let mut rig = rt
        .block_on(queue_load::redis(&stack, "bench4t", 16, 100, 128))
        .unwrap_or_else(|e| panic!("{e:#}"));
    g.bench_function(rig.label().to_owned(), |b| {
        b.iter_custom(|iters| rt.block_on(pump_many(&mut rig, iters, many)))
    });
    rt.block_on(rig.close()).unwrap();
    g.finish();
}

/// `iters` runs of `n` jobs each: their total time.
async fn pump_many<Q: JobQueue>(rig: &mut queue_load::Rig<Q>, iters: u64, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        total += rig.pump(n).await.unwrap_or_else(|e| panic!("{e:#}"));
    }
    total
}

/// A private nginx serving `root` on a free port, as the lab's does
/// (`try_files $uri.html`), killed when dropped.
struct Nginx {
    child: std::process::Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let d = dir.display();
        // One process (`master_process off`): killed on drop, nginx leaves no
        // orphaned worker behind, as a master killed with SIGKILL would.
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n  scgi_temp_path {d}/tmp/scgi;\n\
             types {{ text/html html; }}\n  default_type application/octet-stream;\n\
             server {{\n    listen 127.0.0.1:{port};\n    root {d}/html;\n\
             location = /health {{ return 200 \"ok\\n\"; }}\n\
             location /articles/ {{ add_header X-Baked true; try_files $uri.html =404; }}\n  }}\n}}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let child = std::process::Command::new("nginx")
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("nginx could not start ({e}): ./lab up installs it (Debian's nginx package)")
            });
        let mut nginx = Nginx { child, port };
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                panic!("the bench's nginx exited ({status}): {log}");
            }
            assert!(
                Instant::now() < deadline,
                "the bench's nginx did not listen on {port} within 5 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nginx
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn page(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stack = testing::stack();
    let page = article();
    let json = serde_json::to_vec(&page).unwrap();
    let html = part3_cache::render::article_page(&page);

    // The baked tree, laid out as the baker writes it: articles/<id>.html.
    let dir = TempDir(std::env::temp_dir().join(testing::unique_name("bench4bake")));
    let baked = dir.0.join("html/articles/4242.html");
    std::fs::create_dir_all(baked.parent().unwrap()).unwrap();
    std::fs::write(&baked, &html).unwrap();
    let nginx = Nginx::start(&dir.0);

    // Part 3's cached object in Redis, under a prefix of the bench's own.
    let prefix = format!("{}:", testing::unique_name("bench4r"));
    let key = Key::new("article", &["4242"]);
    let (cache, dynamic) = rt.block_on(async {
        let cache = RedisCache::connect(&stack.redis_url, &prefix, BENCH_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("Redis: run ./lab up ({e})"));
        cache
            .set(&key, &json, Duration::from_secs(600))
            .await
            .unwrap();
        let cache = Arc::new(cache);
        (cache.clone(), dynamic_server(cache, key.clone()).await)
    });

    let mut g = c.benchmark_group("page");
    g.bench_function("render (decode + article_page)", |b| {
        b.iter(|| {
            let page: ArticlePage = serde_json::from_slice(black_box(&json)).unwrap();
            part3_cache::render::article_page(&page)
        })
    });
    g.bench_function("redis hit + render", |b| {
        b.to_async(&rt).iter(|| async {
            let bytes = cache.get(&key).await.unwrap().unwrap();
            let page: ArticlePage = serde_json::from_slice(&bytes).unwrap();
            part3_cache::render::article_page(&page)
        })
    });
    g.bench_function("read the baked file", |b| {
        b.iter(|| std::fs::read(black_box(&baked)).unwrap())
    });
    let http = part1_clones::client::http();
    let get = |url: String| {
        let http = &http;
        async move {
            let response = http.get(url).send().await.unwrap();
            assert!(response.status().is_success(), "{}", response.status());
            response.bytes().await.unwrap()
        }
    };
    let base = format!("http://127.0.0.1:{}", nginx.port);
    g.bench_function("GET nginx return 200 (baseline)", |b| {
        b.to_async(&rt).iter(|| get(format!("{base}/health")))
    });
    g.bench_function("GET baked page (nginx)", |b| {
        b.to_async(&rt)
            .iter(|| get(format!("{base}/articles/4242")))
    });
    g.bench_function("GET dynamic page (redis hit + render)", |b| {
        b.to_async(&rt)
            .iter(|| get(format!("http://{dynamic}/articles/4242")))
    });
    g.finish();
    rt.block_on(async { cache.delete(&key).await.unwrap() });
    drop(nginx);
}

/// An in-process HTTP server rendering the article on every request from
/// part 3's cached object: the dynamic path minus sessions and the
/// database (a cache hit every time, the best case for it).
async fn dynamic_server(cache: Arc<RedisCache>, key: Key) -> std::net::SocketAddr {
    use axum::response::Html;
    let app = axum::Router::new().route(
        "/articles/{id}",
        axum::routing::get(move || {
            let cache = cache.clone();
            let key = key.clone();
            async move {
                let bytes = cache.get(&key).await.unwrap().unwrap();
                let page: ArticlePage = serde_json::from_slice(&bytes).unwrap();
                Html(part3_cache::render::article_page(&page))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = enqueue, publish, throughput, page
}
criterion_main!(benches);
