//! Experiment 8: way 1, bake every page ahead of time.
//!
//! 1. **Bake everything**: [`Baker::all`] renders every article page and
//!    every author page of the demo's database (with a gzip copy of each)
//!    into a directory of this run's own. Measured: pages, bytes, seconds.
//! 2. **Serve it**: a private nginx (`nginx -p <dir> -c <dir>/nginx.conf`
//!    on a free port, the lab's one site template
//!    `lab.d/nginx-site.conf.in` with `root` the bake directory and `@app`
//!    the dynamic cluster below; stopped on every path) serves
//!    `GET /articles/{id}` from disk. The same Zipf sequence of article
//!    pages (`Accept: text/html`), at the same concurrency, through three
//!    paths: the baked page through nginx; the dynamic render through two
//!    `part4-server` clones with `CACHE=none` (three queries and a render
//!    each); part 3's cached page through two clones with `CACHE=object`
//!    (Memcached, warmed by a first pass). The load is wrk's ([`Wrk`]:
//!    the demo's own client could not ask as fast as nginx answers, see
//!    [`super::wrk`]), the same for all three. Measured: throughput and
//!    p99 of each, and, in a sample asked by the demo's client, the
//!    answers nginx marked `X-Baked: true`; computed: the ratios.
//! 3. **Staleness**: a change worker (the workers' own code,
//!    [`ChangeWorker`], inside the demo) consumes the cached cluster's
//!    changes queue and re-bakes into the same directory. [`WRITES`]
//!    comments are posted through the clones, one at a time; after each
//!    `201`, the baked file is read every 2 ms until it shows the comment.
//!    Measured: that window, p50 and the slowest (p99 of a handful is its
//!    maximum).
//!
//! Run it alone: `DEMO_ONLY=8 cargo run -p part4-async --bin part4-demo`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::{figure, line};
use common::measure::{self, Latencies, Load, LoadReport};
use common::results::Kind;
use futures::future::BoxFuture;
use part3_cache::demo::no_cache::zipf_article;
use tokio::process::{Child, Command};

use super::wrk::Wrk;
use super::{Demo, login, server_argv};
use crate::bake::{BakeStats, Baker};
use crate::changes::ChangeWorker;
use crate::fanout::Timelines;
use crate::queue::{AnyQueue, Backend, JobQueue};

/// Simultaneous clients of each load run (wrk's connections).
pub const CONCURRENCY: usize = 16;
/// wrk's threads. One: on 2 cores, wrk's second thread takes a core from
/// nginx's two workers. Measured here on the baked pages (nginx with two
/// workers, three 5 s runs each): one thread 42k to 44k req/s, two 37k
/// to 39k.
const WRK_THREADS: usize = 1;
/// Length of the Zipf sequence of paths every run walks (more than a run
/// of the default 3 s asks for, so none repeats it).
const PATHS: u64 = 200_000;
/// Pages asked through nginx by the demo's own client to count the
/// answers marked `X-Baked: true` (wrk does not read headers).
pub const SAMPLE: u64 = 2_000;
/// Comments whose staleness is measured.
pub const WRITES: usize = 10;
/// How long a comment is given to show on the baked page. One that never
/// shows counts in the staleness sample as this bound (a lower bound of
/// its true staleness), and the figures then say "≥".
pub const SHOW_BOUND: Duration = Duration::from_secs(10);
/// The goal: the baked page's throughput over the dynamic render's.
pub const GOAL_RATIO: f64 = 20.0;
/// The comparison the three page runs belong to.
const PAGES: &str = "the article page three ways (16 clients, Zipf)";
/// The lab's one nginx site template (rendered by `./lab` too).
const SITE: &str = include_str!("../../../lab.d/nginx-site.conf.in");

/// What the experiment saw.
#[derive(Debug, Clone)]
pub struct BakedRun {
    /// The full bake.
    pub bake: BakeStats,
    /// Baked pages through nginx.
    pub baked: LoadReport,
    /// Successful answers nginx gave in the sample ([`SAMPLE`] pages).
    pub answers: u64,
    /// Of those, with `X-Baked: true`.
    pub from_disk: u64,
    /// The dynamic render.
    pub dynamic: LoadReport,
    /// Part 3's cached page.
    pub cached: LoadReport,
    /// The staleness window of each write; a write that never showed
    /// counts as [`SHOW_BOUND`] (at least that stale).
    pub staleness: Vec<Duration>,
    /// Writes whose page never showed the comment within the limit.
    pub never_shown: u64,
}

/// Where the bake goes: `/dev/shm` (memory) when there is one, else the
/// temporary directory. A baked tree served by nginx is read from the
/// page cache either way; in memory, writing and removing a couple of
/// hundred thousand files does not wait for a disk (this machine's is
/// mounted with `discard`, where removing them takes minutes).
fn bake_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A private nginx serving `root`, falling through to `app`; stopped
/// (SIGTERM: the master stops its workers) when dropped.
pub struct PrivateNginx {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl PrivateNginx {
    /// Renders the lab's site template around `root` and `app` (a
    /// `host:port`), starts nginx on a free port and waits for `/health`.
    pub async fn start(root: &Path, app: &str) -> anyhow::Result<PrivateNginx> {
        let port = part1_clones::cluster::free_port()?;
        let dir = std::env::temp_dir().join(common::testing::unique_name("d4nginx"));
        std::fs::create_dir_all(dir.join("tmp"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let site = SITE
            .replace(
                "@UPSTREAM@",
                &format!("upstream app {{\n    server {app};\n    keepalive 16;\n}}"),
            )
            .replace("@LISTEN@", &format!("127.0.0.1:{port}"))
            .replace("@ROOT@", &root.display().to_string())
            .replace("@RESOLVER@", "")
            .replace("@APP@", "http://app");
        let d = dir.display();
        // A worker per core (`auto`), as nginx is run in production: one
        // worker is one core, and the load generator shares the machine.
        // The master stops its workers on SIGTERM (`terminate`, also on
        // drop).
        let conf = format!(
            "daemon off;\nworker_processes auto;\npid {d}/nginx.pid;\nerror_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 1024; }}\nhttp {{\n    access_log off;\n\
             client_body_temp_path {d}/tmp/body;\n    proxy_temp_path {d}/tmp/proxy;\n\
             fastcgi_temp_path {d}/tmp/fastcgi;\n    uwsgi_temp_path {d}/tmp/uwsgi;\n\
             scgi_temp_path {d}/tmp/scgi;\n\
             types {{ text/html html; text/css css; application/javascript js; application/json json; }}\n\
             default_type application/octet-stream;\n    sendfile on;\n{site}\n}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (installed by ./lab up)")?;
        let nginx = PrivateNginx {
            child: Some(child),
            port,
            dir,
        };
        part1_clones::cluster::wait_healthy(
            &part1_clones::client::http(),
            &format!("{}/health", nginx.url()),
            Duration::from_secs(10),
        )
        .await
        .with_context(|| {
            format!(
                "the private nginx did not start: see {}",
                nginx.dir.join("logs/error.log").display()
            )
        })?;
        Ok(nginx)
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn terminate(&mut self) {
        if let Some(pid) = self.child.as_ref().and_then(Child::id) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Stops it and waits (SIGKILL after 5 s).
    pub async fn stop(mut self) {
        self.terminate();
        if let Some(mut child) = self.child.take()
            && tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

impl Drop for PrivateNginx {
    fn drop(&mut self) {
        self.terminate();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs it, prints and records it.
pub async fn run(demo: &mut Demo) -> anyhow::Result<BakedRun> {
    let dir = bake_root().join(common::testing::unique_name("d4baked"));
    let out = bake_and_serve(demo, &dir).await;
    // On blocking threads: 220 000 files.
    let removing = dir.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(removing)).await;
    let r = out?;

    let cmp = "bake ahead: the whole site";
    let b = &r.bake;
    figure(
        Kind::Measured,
        format!(
            "baked {} pages ({} articles, {} authors): {:.1} MB of HTML, {:.1} MB gzipped, in {:.1} s ({:.0} pages/s)",
            b.pages,
            b.articles,
            b.authors,
            b.bytes as f64 / 1e6,
            b.gzip_bytes as f64 / 1e6,
            b.elapsed.as_secs_f64(),
            b.pages as f64 / b.elapsed.as_secs_f64().max(1e-9)
        ),
    );
    for (name, value, unit, shows) in [
        (
            "pages baked",
            b.pages as f64,
            "pages",
            "every article and author page",
        ),
        (
            "bytes baked",
            b.bytes as f64,
            "bytes",
            "HTML written, uncompressed",
        ),
        (
            "gzip bytes",
            b.gzip_bytes as f64,
            "bytes",
            "their .gz copies (gzip_static)",
        ),
        (
            "time to bake everything",
            b.elapsed.as_secs_f64() * 1e6,
            "µs",
            "one full bake: batched reads, render, gzip, atomic writes",
        ),
    ] {
        demo.results.measured(cmp, name, value, unit, shows);
    }

    let cmp = PAGES;
    figure(
        Kind::Measured,
        format!(
            "nginx answered {} of {} sampled pages with X-Baked: true (from disk, no clone)",
            r.from_disk, r.answers
        ),
    );
    let ratio = r.baked.throughput / r.dynamic.throughput.max(1e-9);
    let ratio_cached = r.baked.throughput / r.cached.throughput.max(1e-9);
    figure(
        Kind::Computed,
        format!(
            "baked / dynamic throughput: {ratio:.2}x (the goal, 20x or more: {}); baked / part 3's cached page: {ratio_cached:.1}x",
            if ratio >= GOAL_RATIO { "met" } else { "MISSED" }
        ),
    );
    demo.results.computed(
        cmp,
        "baked / dynamic render: throughput",
        ratio,
        "x",
        "the baked page through nginx against the render through the clones (no cache)",
    );
    demo.results.computed(
        cmp,
        "baked / part 3's cached page: throughput",
        ratio_cached,
        "x",
        "the baked page through nginx against part 3's object cache through the clones",
    );

    let cmp = "staleness of a baked page after a comment";
    let mut lat = Latencies::new();
    for d in &r.staleness {
        lat.record(*d);
    }
    let s = lat.summary();
    // Writes that never showed are in the sample as the bound: a figure
    // they reach is a lower bound, and says so.
    // (A little under the bound: the summary may round.)
    let bound_us = SHOW_BOUND.as_micros() as u64 * 99 / 100;
    let at_least = |us: u64| {
        let t = measure::fmt_us(us);
        if r.never_shown > 0 && us >= bound_us {
            format!("≥ {t}")
        } else {
            t
        }
    };
    figure(
        Kind::Measured,
        format!(
            "{} comments: the baked page showed each {} after the 201 at the median, {} at the slowest ({} never within {} s, counted as {} s); a change worker re-baked it",
            r.staleness.len(),
            at_least(s.p50_us),
            at_least(s.max_us),
            r.never_shown,
            SHOW_BOUND.as_secs(),
            SHOW_BOUND.as_secs(),
        ),
    );
    demo.results.measured(
        cmp,
        "staleness p50",
        s.p50_us as f64,
        "µs",
        if r.never_shown > 0 && s.p50_us >= bound_us {
            "a lower bound (≥): from the comment's 201 to the baked file showing it, a write that never showed counted as the bound"
        } else {
            "from the comment's 201 to the baked file showing it"
        },
    );
    demo.results.measured(
        cmp,
        "staleness p99 (the slowest of a handful)",
        s.max_us as f64,
        "µs",
        if r.never_shown > 0 {
            "a lower bound (≥): the slowest of the writes, a write that never showed counted as the bound; with 10, p99 is the maximum"
        } else {
            "the slowest of the writes: with 10, p99 is the maximum"
        },
    );
    demo.results.measured(
        cmp,
        "writes never shown",
        r.never_shown as f64,
        "writes",
        "comments the baked page did not show within the bound (in the staleness sample as the bound)",
    );
    Ok(r)
}

async fn bake_and_serve(demo: &mut Demo, dir: &Path) -> anyhow::Result<BakedRun> {
    let baker = Baker::new(demo.primary.clone(), dir);
    line(format!(
        "baking every article and author page into {} (a directory of this run's own, removed afterwards)",
        dir.display()
    ));
    let bake = baker.all().await?;

    let queue_config = demo.queue_config(Backend::RabbitMq);
    let prefix = common::testing::unique_name("d4bk");
    let cached_env = [("CACHE", "object"), ("KEY_PREFIX", prefix.as_str())];
    let (dynamic, cached) = tokio::join!(
        demo.cluster(2, &queue_config, &[("CACHE", "none")]),
        demo.cluster(2, &queue_config, &cached_env),
    );
    let (dynamic, cached) = (dynamic?, cached?);
    let out = async {
        let app = dynamic.lb_url();
        let nginx = PrivateNginx::start(dir, app.trim_start_matches("http://")).await?;
        let secs = demo.seconds();
        line(format!(
            "a private nginx (the lab's site template, root = the bake) and two clusters of 2 part4-server clones (CACHE=none; CACHE=object); wrk, {CONCURRENCY} connections on {WRK_THREADS} thread{}, {:.0} s per run, the same Zipf sequence of article pages",
            if WRK_THREADS == 1 { "" } else { "s" },
            secs.as_secs_f64()
        ));
        let pop = demo.spec.article_popularity();
        let paths: Vec<String> = (0..PATHS)
            .map(|i| format!("/articles/{}", zipf_article(&pop, i)))
            .collect();
        let tally = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let sample = Load::Closed {
            concurrency: CONCURRENCY,
            duration: secs,
            max_requests: Some(SAMPLE),
        };
        measure::run_load(
            "(the X-Baked sample)",
            sample,
            request(&nginx.url(), pop.clone(), Some(tally.clone())),
        )
        .await;
        let baked = pages(demo, "baked, nginx", &nginx.url(), &paths, secs).await?;
        let dynamic_run = pages(demo, "dynamic render, no cache", &dynamic.lb_url(), &paths, secs).await?;
        // One pass to warm part 3's cache (not recorded), then the measured run.
        let warm = request(&cached.lb_url(), pop.clone(), None);
        measure::run_load("(warming part 3's cache)", Load::closed(CONCURRENCY, secs / 2), warm)
            .await;
        let cached_run = pages(demo, "part 3's cached page", &cached.lb_url(), &paths, secs).await?;
        let (staleness, never_shown) = staleness(demo, dir, &queue_config, &prefix, &cached.lb_url()).await?;
        nginx.stop().await;
        Ok::<_, anyhow::Error>(BakedRun {
            bake,
            baked,
            answers: tally[0].load(Ordering::Relaxed),
            from_disk: tally[1].load(Ordering::Relaxed),
            dynamic: dynamic_run,
            cached: cached_run,
            staleness,
            never_shown,
        })
    }
    .await;
    dynamic.stop().await;
    cached.stop().await;
    demo.forget_queues(&queue_config).await;
    out
}

/// `paths` (article pages, `Accept: text/html`) through `base` by wrk,
/// [`CONCURRENCY`] connections for `secs`, measured `--repeat` times and
/// recorded; the median run.
async fn pages(
    demo: &mut Demo,
    name: &str,
    base: &str,
    paths: &[String],
    secs: Duration,
) -> anyhow::Result<LoadReport> {
    let wrk = Wrk {
        threads: WRK_THREADS,
        connections: CONCURRENCY,
        duration: secs,
    };
    let mut runs = Vec::new();
    for _ in 0..demo.args.demo.repeat.max(1) {
        let run = wrk.run(name, base, paths, "text/html").await?;
        figure(Kind::Measured, run.line());
        super::print_errors(&run);
        runs.push(run);
    }
    demo.results.load_runs(Kind::Measured, PAGES, &runs);
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let mid = runs.len() / 2;
    Ok(runs.swap_remove(mid))
}

/// One Zipf article page (`Accept: text/html`) through `base`; counts
/// `X-Baked: true` answers in `baked` when given.
fn request(
    base: &str,
    pop: common::dataset::Popularity,
    baked: Option<Arc<[AtomicU64; 2]>>,
) -> impl Fn(u64) -> BoxFuture<'static, Result<(), String>> + Clone + Send + Sync + 'static {
    let http = part1_clones::client::http();
    let base = base.to_owned();
    move |i: u64| -> BoxFuture<'static, Result<(), String>> {
        let id = zipf_article(&pop, i);
        let req = http
            .get(format!("{base}/articles/{id}"))
            .header("accept", "text/html");
        let baked = baked.clone();
        Box::pin(async move {
            let res = req.send().await.map_err(|e| e.to_string())?;
            let status = res.status();
            let from_disk = res.headers().get("x-baked").is_some_and(|v| v == "true");
            let body = res.bytes().await.map_err(|e| e.to_string())?;
            if !status.is_success() {
                return Err(format!("{status}: {} bytes", body.len()));
            }
            if let Some(b) = &baked {
                b[0].fetch_add(1, Ordering::Relaxed);
                b[1].fetch_add(u64::from(from_disk), Ordering::Relaxed);
            }
            Ok(())
        })
    }
}

/// Comments posted through `lb` (clones publishing their changes), a
/// change worker re-baking into `dir`: how long after each `201` the
/// baked file showed the comment.
async fn staleness(
    demo: &Demo,
    dir: &Path,
    queue_config: &crate::queue::QueueConfig,
    prefix: &str,
    lb: &str,
) -> anyhow::Result<(Vec<Duration>, u64)> {
    // The worker's part 3 layer: configured as the clones are (their key
    // prefix, so its re-fill lands in their cache).
    let stack = demo.stack();
    let argv = server_argv(&[
        ("CACHE", "object"),
        ("KEY_PREFIX", prefix),
        ("REDIS_URL", &stack.redis_url),
        ("MEMCACHED_URL", &stack.memcached_url),
        ("MARIADB_PRIMARY_URL", &demo.primary_url),
        ("MARIADB_REPLICA_URL", &demo.replica_url),
    ])?;
    let config = <crate::server::Part4Config as clap::Parser>::try_parse_from(&argv)?;
    let layer = part3_cache::server::cache_layer(&config.part3).await?;
    let timelines = Timelines::new(layer.data.redis.clone(), prefix, &config.fanout);
    let baker = Baker::new(demo.primary.clone(), dir);
    let worker = ChangeWorker::new(
        layer,
        baker.clone(),
        timelines,
        "demo-changes",
        queue_config.max_deliveries,
        Duration::from_secs(5),
    );
    let changes = AnyQueue::connect(&crate::changes::queue_config(queue_config), stack).await?;
    let consumer = changes.consume("demo-changes").await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run_until_stopped(consumer, async {
                let _ = stopped.await;
            })
            .await
    });
    let out = async {
        let (_, name, _) = part3_cache::demo::no_cache::median_user(&demo.primary).await?;
        let cookie = login(lb, &name).await?;
        let http = part1_clones::client::http();
        let pop = demo.spec.article_popularity();
        let marker = common::testing::unique_name("baked");
        let mut windows = Vec::new();
        let mut never = 0;
        for rank in 41..41 + WRITES as u64 {
            let id = pop.id_of_rank(rank);
            let body = format!("{marker} {id}");
            let res = http
                .post(format!("{lb}/articles/{id}/comments"))
                .header("cookie", &cookie)
                .json(&serde_json::json!({ "body": body }))
                .send()
                .await?;
            anyhow::ensure!(
                res.status().is_success(),
                "commenting on article {id}: {}",
                res.status()
            );
            let acked = Instant::now();
            let path = baker.article_path(id);
            loop {
                let page = tokio::fs::read_to_string(&path).await.unwrap_or_default();
                if page.contains(&body) {
                    windows.push(acked.elapsed());
                    break;
                }
                if acked.elapsed() > SHOW_BOUND {
                    // At least this stale: in the sample as the bound, so
                    // the figures never read better than the truth.
                    windows.push(SHOW_BOUND);
                    never += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        Ok::<_, anyhow::Error>((windows, never))
    }
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
    out
}
