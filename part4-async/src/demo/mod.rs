//! The experiments of part 4, in the order (`./lab tour part4`,
//! or `cargo run --release -p part4-async --bin part4-demo`).
//!
//! One file per experiment; this file holds what they share: the
//! arguments, the demo's own database (loaded afresh with the default
//! dataset, as part 3's demo does), clusters of real `part4-server` clones
//! behind a private HAProxy ([`Demo::cluster`], every server setting at
//! its default whatever the caller's `.env` says, plus each experiment's
//! own), workers run as tasks of the demo ([`Workers`]: one consumer
//! connection each, the worker's own code), a queue name of its own for
//! every run ([`Demo::queue_config`]), and the results, every figure with
//! its kind (measured, computed or modelled: see `docs/glossary.md`).
//!
//! | # | file | the lesson |
//! |---|---|---|
//! | 1 | [`answer_at_once`] | `POST /jobs` answers at once while each job takes 1 s; `--jobs sync` beside it: the request lasts the job |
//! | 2 | [`workers`] | throughput against 1, 2, 4, 8 workers: workers ÷ job duration (modelled) beside what the machine does |
//! | 3 | [`kill_worker`] | a worker SIGKILLed mid-job: 0 lost, 0 doubled, another worker finishes it |
//! | 4 | [`broker_down`] | a private RabbitMQ stopped and started with jobs queued: 0 lost, a fast 503 meanwhile, both sides reconnect |
//! | 5 | [`redis_restart`] | the Redis queue across a restart: what the lab's persistence keeps, and what keeps more |
//! | 6 | [`poison`] | a job that always fails: retried to the limit, dead-lettered, the others not held up |
//! | 7 | [`backpressure`] | past `MAX_QUEUE_DEPTH`, `503` + `Retry-After` instead of a queue without bound |
//! | 8 | [`baked`] | way 1: bake every page ahead; nginx serving it against the dynamic render and part 3's cached page; the staleness window |
//! | 9 | [`fan_out`] | timelines fanned out on write: write amplification against the read it saves; the hybrid |
//!
//! Variables, besides [`common::demo::DemoArgs`]'s (`DEMO_SECONDS`,
//! `DEMO_REPEAT`, `LAB_RESULTS_DIR`, the stack's URLs): `DEMO_SCALE`
//! (`default`), `PART4_DEMO_DATABASE` (`demo_part4`), `DEMO_ONLY` (all),
//! `DEMO_REUSE` (`false`), `PART4_SERVER_BIN` (`part4-server` next to the
//! demo).
//!
//! The demo never stops or reconfigures the stack's RabbitMQ or Redis:
//! the drills that stop a broker start a private one (a RabbitMQ node, a
//! redis-server) on free ports and kill it on every path.

pub mod answer_at_once;
pub mod backpressure;
pub mod baked;
pub mod broker_down;
pub mod fan_out;
pub mod kill_worker;
pub mod poison;
pub mod redis_restart;
pub mod workers;
pub mod wrk;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use common::config::with_database;
use common::dataset::{DatasetSpec, Scale};
use common::demo::lesson;
use common::results::PartResults;
use part1_clones::cluster::{Cluster, ClusterSpec};
use part2_database::demo::{DemoData, open_dataset};
use sqlx::MySqlPool;

use crate::job::{JobId, JobStore};
use crate::queue::{AnyQueue, Backend, JobQueue, QueueConfig};
use crate::worker::{Worker, WorkerConfig, WorkerStats};

/// Part 4's demo.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "part4-demo",
    about = "Part 4: asynchronism, measured: pages baked ahead, jobs queued and done by workers"
)]
pub struct Args {
    /// Dataset scale: tiny, default (10k users, 100k articles, 500k comments) or large.
    #[arg(long, env = "DEMO_SCALE", default_value = "default")]
    pub scale: Scale,
    /// The database the demo creates on the primary (it replicates).
    #[arg(long, env = "PART4_DEMO_DATABASE", default_value = "demo_part4")]
    pub database: String,
    /// The clone binary; default: `part4-server` next to this demo.
    #[arg(long, env = "PART4_SERVER_BIN")]
    pub server_bin: Option<PathBuf>,
    /// Run only these experiments (numbers from the table above, comma
    /// separated), e.g. `--only 3,4`; all of them by default.
    #[arg(long, env = "DEMO_ONLY", value_delimiter = ',')]
    pub only: Vec<u32>,
    /// Keep the demo's database if it already holds the dataset, instead
    /// of loading it afresh (quicker while working on one experiment; the
    /// tour always loads afresh).
    #[arg(long, env = "DEMO_REUSE", default_value_t = false)]
    pub reuse: bool,
    /// What every demo takes: seconds, repeat, results dir, the stack's URLs.
    #[command(flatten)]
    pub demo: common::demo::DemoArgs,
}

/// What the experiments share.
pub struct Demo {
    /// The arguments.
    pub args: Args,
    /// The dataset, the same for every experiment.
    pub spec: DatasetSpec,
    /// The demo's database on the primary.
    pub primary: MySqlPool,
    /// The primary's URL with the demo's database.
    pub primary_url: String,
    /// The replica's URL with the demo's database.
    pub replica_url: String,
    /// The `part4-server` binary.
    pub bin: PathBuf,
    /// Figures so far.
    pub results: PartResults,
}

/// Variables the demo sets itself on every clone (or the cluster does),
/// never taken from the defaults.
pub const SET_BY_THE_DEMO: &[&str] = &["KEY_PREFIX", "CLONE_ID", "PORT", "LAB_BUILD", "QUEUE_NAME"];

/// Every setting of `part4-server` (parts 1 to 4) that has a default, at
/// that default, as `(variable, value)`, read from the server's own
/// command line definition (so the list cannot drift from it). Left out:
/// the URLs and what [`SET_BY_THE_DEMO`] lists.
pub fn server_defaults() -> Vec<(String, String)> {
    use clap::CommandFactory;
    crate::server::Part4Config::command()
        .get_arguments()
        .filter_map(|a| {
            let env = a.get_env()?.to_str()?;
            let values = a.get_default_values();
            if values.is_empty() || env.ends_with("_URL") || SET_BY_THE_DEMO.contains(&env) {
                return None;
            }
            let value = values
                .iter()
                .map(|v| v.to_string_lossy())
                .collect::<Vec<_>>()
                .join(",");
            Some((env.to_owned(), value))
        })
        .collect()
}

impl Demo {
    /// Connects to (or loads) the demo's database, waits for the replica,
    /// and finds the server binary. Prints the dataset line.
    pub async fn open(args: Args) -> anyhow::Result<Demo> {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => default_server_bin()?,
        };
        let stack = args.demo.stack.clone();
        let spec = DatasetSpec::new(42, args.scale);
        let t = Instant::now();
        let primary_url = with_database(&stack.mariadb_primary_url, &args.database);
        let replica_url = with_database(&stack.mariadb_replica_url, &args.database);
        let DemoData {
            primary,
            replica,
            how,
        } = open_dataset(&stack, &args.database, &spec, args.reuse).await?;
        replica.close().await;
        JobStore::migrate(&primary).await?;
        let mut results = PartResults::new(crate::PART, crate::TITLE, crate::CLAIM);
        results.set_repeat(args.demo.repeat);
        let s = spec.sizes;
        common::demo::line(format!(
            "dataset: {} users, {} articles, {} comments, {how} in {}, replicated, in {:.1} s",
            s.users,
            s.articles,
            s.comments,
            args.database,
            t.elapsed().as_secs_f64()
        ));
        Ok(Demo {
            args,
            spec,
            primary,
            primary_url,
            replica_url,
            bin,
            results,
        })
    }

    /// Length of each load run.
    pub fn seconds(&self) -> Duration {
        self.args.demo.load_time()
    }

    /// The stack's URLs.
    pub fn stack(&self) -> &common::config::StackConfig {
        &self.args.demo.stack
    }

    /// Whether `--only` asks for experiment `n` (or is empty).
    pub fn wants(&self, n: u32) -> bool {
        self.args.only.is_empty() || self.args.only.contains(&n)
    }

    /// The jobs table of the demo's database.
    pub fn store(&self) -> JobStore {
        JobStore::new(self.primary.clone())
    }

    /// A queue configuration with a name no other run uses.
    pub fn queue_config(&self, backend: Backend) -> QueueConfig {
        QueueConfig::new(backend, common::testing::unique_name("demo4"))
    }

    /// The stack's queue for `config` (declared).
    pub async fn queue(&self, config: &QueueConfig) -> anyhow::Result<AnyQueue> {
        Ok(AnyQueue::connect(config, self.stack()).await?)
    }

    /// A headline load run, measured `--repeat` times: prints each run and
    /// records the median with its spread; returns the median run (by
    /// throughput), for the figures computed from it.
    pub async fn load_runs<F, Fut>(
        &mut self,
        comparison: &str,
        name: &str,
        load: common::measure::Load,
        request: F,
    ) -> common::measure::LoadReport
    where
        F: Fn(u64) -> Fut + Clone + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let repeat = self.args.demo.repeat;
        let mut runs = common::demo::load_runs(
            &mut self.results,
            repeat,
            common::results::Kind::Measured,
            comparison,
            name,
            load,
            request,
        )
        .await;
        for r in &runs {
            print_errors(r);
        }
        runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
        let mid = runs.len() / 2;
        runs.swap_remove(mid)
    }

    /// Deletes the queue `config` names and its changes queue
    /// (`<name>.changes`, declared by every async clone), on the stack's
    /// broker; a failure is logged, never the demo's error.
    pub async fn forget_queues(&self, config: &QueueConfig) {
        for c in [config.clone(), crate::changes::queue_config(config)] {
            match AnyQueue::connect(&c, self.stack()).await {
                Ok(q) => {
                    if let Err(e) = q.destroy().await {
                        tracing::warn!(queue = %c.queue_name, error = %e, "could not delete a demo queue");
                    }
                }
                Err(e) => {
                    tracing::warn!(queue = %c.queue_name, error = %e, "could not delete a demo queue")
                }
            }
        }
    }

    /// A cluster of `clones` `part4-server` clones behind a private
    /// HAProxy, on the demo's database and on the queue `queue`, with a
    /// key prefix of its own, every server setting at its default
    /// ([`server_defaults`]), plus `extra` (which overrides the rest).
    /// The clones are killed when the cluster is dropped.
    pub async fn cluster(
        &self,
        clones: usize,
        queue: &QueueConfig,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Cluster> {
        let prefix = common::testing::unique_name("d4");
        let stack = self.stack();
        let defaults = server_defaults();
        let mut env: Vec<(&str, &str)> = defaults
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        env.extend([
            ("KEY_PREFIX", prefix.as_str()),
            ("QUEUE", queue.backend.as_str()),
            ("QUEUE_NAME", queue.queue_name.as_str()),
            ("REDIS_URL", stack.redis_url.as_str()),
            ("MEMCACHED_URL", stack.memcached_url.as_str()),
            ("RABBITMQ_URL", stack.rabbitmq_url.as_str()),
            ("MARIADB_PRIMARY_URL", self.primary_url.as_str()),
            ("MARIADB_REPLICA_URL", self.replica_url.as_str()),
            ("RUST_LOG", "warn"),
        ]);
        for (k, v) in extra {
            env.retain(|(key, _)| key != k);
            env.push((k, v));
        }
        Cluster::start(ClusterSpec::new(&self.bin, clones, &env)).await
    }

    /// `n` users of the dataset with a typical number of articles (1 to
    /// 30: their exports hold something, and none is the busiest author's
    /// ten thousand), as `(id, username)`, the same ones on every run.
    pub async fn users_with_articles(&self, n: u32) -> anyhow::Result<Vec<(u64, String)>> {
        let rows: Vec<(u64, String)> = sqlx::query_as(
            "SELECT u.id, u.username FROM users u JOIN \
             (SELECT author_id, COUNT(*) AS n FROM articles GROUP BY author_id HAVING n BETWEEN 1 AND 30) a \
             ON a.author_id = u.id ORDER BY u.id LIMIT ?",
        )
        .bind(n)
        .fetch_all(&self.primary)
        .await?;
        anyhow::ensure!(
            rows.len() == n as usize,
            "the dataset has fewer than {n} users with 1 to 30 articles: is it loaded?"
        );
        Ok(rows)
    }

    /// Creates `n` export jobs for `owner` and puts them on `queue`; their ids.
    pub async fn enqueue_exports(
        &self,
        queue: &AnyQueue,
        owner: u64,
        n: usize,
    ) -> anyhow::Result<Vec<JobId>> {
        enqueue_jobs(&self.store(), queue, owner, crate::job::JobKind::Export, n).await
    }
}

/// Creates `n` jobs of `kind` for `owner` and puts them on `queue`; their ids.
pub async fn enqueue_jobs(
    store: &JobStore,
    queue: &AnyQueue,
    owner: u64,
    kind: crate::job::JobKind,
    n: usize,
) -> anyhow::Result<Vec<JobId>> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        let (job, _) = store
            .create(owner, kind, &serde_json::json!({}), None)
            .await?;
        queue
            .enqueue(&crate::job::Envelope::new(
                job.id.clone(),
                kind.as_str(),
                serde_json::json!({}),
            ))
            .await?;
        ids.push(job.id);
    }
    Ok(ids)
}

/// How many of `ids` are in each status: `(queued, running, done, failed)`,
/// in one query.
pub async fn statuses(pool: &MySqlPool, ids: &[JobId]) -> anyhow::Result<[u64; 4]> {
    let mut out = [0u64; 4];
    for chunk in ids.chunks(1000) {
        let mut q = sqlx::QueryBuilder::new("SELECT status, COUNT(*) FROM jobs WHERE id IN (");
        let mut list = q.separated(", ");
        for id in chunk {
            list.push_bind(id.as_str());
        }
        q.push(") GROUP BY status");
        let rows: Vec<(String, i64)> = q.build_query_as().fetch_all(pool).await?;
        for (status, n) in rows {
            let i = match status.as_str() {
                "queued" => 0,
                "running" => 1,
                "done" => 2,
                _ => 3,
            };
            out[i] += n as u64;
        }
    }
    Ok(out)
}

/// Waits until every job of `ids` is finished (done or failed), up to
/// `limit`; returns how long it took, or an error naming what is left.
pub async fn all_finished(
    pool: &MySqlPool,
    ids: &[JobId],
    limit: Duration,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    loop {
        let [queued, running, done, failed] = statuses(pool, ids).await?;
        if done + failed == ids.len() as u64 {
            return Ok(t.elapsed());
        }
        anyhow::ensure!(
            t.elapsed() < limit,
            "{} of {} jobs not finished within {limit:?} ({queued} queued, {running} running)",
            queued + running,
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Effects (claim rows) and results committed for `ids`: `(effects, jobs
/// with more than one)`. The claim's primary key makes the second number
/// 0 by construction; it is counted anyway, from the table.
pub async fn effects(store: &JobStore, ids: &[JobId]) -> anyhow::Result<(u64, u64)> {
    let mut total = 0;
    let mut doubled = 0;
    for id in ids {
        let n = store.effects(id).await?;
        total += n;
        doubled += u64::from(n > 1);
    }
    Ok((total, doubled))
}

/// Workers run as tasks of the demo: the worker's own code
/// ([`Worker::run_until_stopped`]), each with its own consumer (its own
/// connection to the broker), stopped gracefully by [`Workers::stop`].
pub struct Workers {
    stops: Vec<tokio::sync::oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<u64>>>,
    stats: Vec<Arc<WorkerStats>>,
}

impl Workers {
    /// Starts `n` workers on `queue` (already connected), each job taking
    /// at least `job_min`; returns once every consumer is open.
    pub async fn start(
        store: &JobStore,
        queue: &AnyQueue,
        config: &QueueConfig,
        n: usize,
        job_min: Duration,
    ) -> anyhow::Result<Workers> {
        let mut w = Workers {
            stops: Vec::new(),
            tasks: Vec::new(),
            stats: Vec::new(),
        };
        let names: Vec<String> = (0..n)
            .map(|i| format!("{}-w{}", config.queue_name, i + 1))
            .collect();
        // Every consumer opens at once: a timed run starts with all of them.
        let consumers =
            futures::future::try_join_all(names.iter().map(|name| queue.consume(name))).await?;
        for (name, consumer) in names.iter().zip(consumers) {
            let mut wc = WorkerConfig::new(name, job_min);
            wc.shutdown_grace_ms = 0;
            let worker = Worker::new(store.clone(), &wc, config.max_deliveries);
            w.stats.push(worker.stats());
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            w.stops.push(tx);
            w.tasks.push(tokio::spawn(async move {
                Ok(worker
                    .run_until_stopped(consumer, async {
                        let _ = rx.await;
                    })
                    .await?)
            }));
        }
        Ok(w)
    }

    /// Effects committed by these workers so far.
    pub fn done(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.stats
            .iter()
            .map(|s| s.done.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops every worker (a job in hand goes back to the queue) and waits.
    pub async fn stop(self) {
        for s in self.stops {
            let _ = s.send(());
        }
        for t in self.tasks {
            match tokio::time::timeout(Duration::from_secs(15), t).await {
                Ok(Ok(Ok(_))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "a demo worker stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "a demo worker panicked"),
                Err(_) => tracing::warn!("a demo worker did not stop within 15 s"),
            }
        }
    }
}

/// A `part4-worker` process on `config`'s queue and the demo's database
/// (its `SHUTDOWN_GRACE_MS` 0: on SIGTERM, [`stop_worker`], it puts the
/// job in hand back at once), killed if dropped.
pub fn spawn_worker(
    demo: &Demo,
    config: &QueueConfig,
    name: &str,
    job_min_ms: u64,
) -> anyhow::Result<tokio::process::Child> {
    let bin = demo.bin.with_file_name("part4-worker");
    tokio::process::Command::new(&bin)
        .env("MARIADB_PRIMARY_URL", &demo.primary_url)
        .env("RABBITMQ_URL", &demo.stack().rabbitmq_url)
        .env("REDIS_URL", &demo.stack().redis_url)
        .env("QUEUE", config.backend.as_str())
        .env("QUEUE_NAME", &config.queue_name)
        .env("CONSUMER_TTL_MS", config.consumer_ttl_ms.to_string())
        .env("JOB_MIN_MS", job_min_ms.to_string())
        .env("WORKER_NAME", name)
        .env("SHUTDOWN_GRACE_MS", "0")
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "starting {} (build it: cargo build -p part4-async --bins)",
                bin.display()
            )
        })
}

/// The queue's ready count once it stops moving: with `ANSWER=after-insert`
/// the last `202`s' publishes may still be on their way when the load
/// ends. Read every 100 ms until two readings agree (at most 5 s).
pub async fn settled_ready(queue: &AnyQueue) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = queue.depth().await?.ready;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = queue.depth().await?.ready;
        if now == last || Instant::now() >= deadline {
            return Ok(now);
        }
        last = now;
    }
}

/// Stops a [`spawn_worker`] process gracefully (SIGTERM: the job in hand
/// goes back to the queue) and waits for it; SIGKILL after 15 s.
pub async fn stop_worker(mut child: tokio::process::Child) {
    if let Ok(common::signal::Stopped::Killed) =
        common::signal::stop(&mut child, Duration::from_secs(15)).await
    {
        tracing::warn!("a demo worker did not stop within 15 s of SIGTERM: killed");
    }
}

/// A `part4-server` running inside the demo (for the drills that point
/// it at a private broker), stopped when dropped or by [`Server::stop`].
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Stops it and waits for it to end.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The command line of a `part4-server` with every setting given
/// explicitly ([`server_defaults`], then `extra`, by variable name), so
/// nothing is read from the caller's environment or `.env`.
pub fn server_argv(extra: &[(&str, &str)]) -> anyhow::Result<Vec<String>> {
    use clap::CommandFactory;
    let cmd = crate::server::Part4Config::command();
    let mut settings = server_defaults();
    for (k, v) in extra {
        settings.retain(|(key, _)| key != k);
        settings.push(((*k).to_owned(), (*v).to_owned()));
    }
    let mut argv = vec!["part4-server".to_owned()];
    for (k, v) in &settings {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(k.as_str()))
            .with_context(|| format!("part4-server has no setting {k}"))?;
        let long = arg
            .get_long()
            .with_context(|| format!("{k} has no long flag"))?;
        if arg.get_action().takes_values() {
            argv.push(format!("--{long}={v}"));
        } else if v == "true" {
            argv.push(format!("--{long}"));
        }
    }
    Ok(argv)
}

impl Demo {
    /// A `part4-server` inside the demo on a free port, on the demo's
    /// database and the queue `queue` (at `rabbitmq_url`, the stack's
    /// unless given), every setting at its default plus `extra`.
    pub async fn server(
        &self,
        queue: &QueueConfig,
        rabbitmq_url: Option<&str>,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let stack = self.stack();
        let prefix = common::testing::unique_name("d4s");
        let clone = common::testing::unique_name("clone");
        let rabbit = rabbitmq_url.unwrap_or(&stack.rabbitmq_url);
        let mut all: Vec<(&str, &str)> = vec![
            ("PORT", "0"),
            ("CLONE_ID", &clone),
            ("KEY_PREFIX", &prefix),
            ("QUEUE", queue.backend.as_str()),
            ("QUEUE_NAME", &queue.queue_name),
            ("REDIS_URL", &stack.redis_url),
            ("MEMCACHED_URL", &stack.memcached_url),
            ("RABBITMQ_URL", rabbit),
            ("MARIADB_PRIMARY_URL", &self.primary_url),
            ("MARIADB_REPLICA_URL", &self.replica_url),
        ];
        all.extend_from_slice(extra);
        let argv = server_argv(&all)?;
        let config = crate::server::Part4Config::try_parse_from(&argv)
            .with_context(|| format!("the demo's server settings: {argv:?}"))?;
        let app = crate::server::build(config).await?;
        let url = format!("http://127.0.0.1:{}", app.port());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = app
                .run_until(async move {
                    let _ = rx.await;
                })
                .await;
        });
        Ok(Server {
            url,
            stop: Some(tx),
            task: Some(task),
        })
    }
}

/// Prints a load run's first errors, when it had any (what failed, not
/// just how many).
pub fn print_errors(report: &common::measure::LoadReport) {
    if report.errors > 0 {
        for e in report.first_errors.iter().take(2) {
            common::demo::line(format!("  {}: e.g. {e}", report.name));
        }
    }
}

/// Logs `username` in through `base` with the dataset's password: the
/// `Cookie` header value to send.
pub async fn login(base: &str, username: &str) -> anyhow::Result<String> {
    part3_cache::demo::no_cache::login(base, username).await
}

/// `POST {base}/jobs` with `{"kind": kind}` as `cookie`: the status, the
/// `Retry-After` header, and the body.
pub async fn post_job(
    http: &reqwest::Client,
    base: &str,
    cookie: &str,
    kind: &str,
) -> Result<(u16, Option<String>, String), String> {
    let res = http
        .post(format!("{base}/jobs"))
        .header("cookie", cookie)
        .json(&serde_json::json!({ "kind": kind }))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let retry_after = res
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = res.text().await.map_err(|e| e.to_string())?;
    Ok((status, retry_after, body))
}

/// The `part4-server` beside the running demo binary.
fn default_server_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("part4-server");
    anyhow::ensure!(
        bin.exists(),
        "{} not found: build it (cargo build --release -p part4-async) or pass --server-bin",
        bin.display()
    );
    Ok(bin)
}

/// `part4-demo`'s whole `main` (the binary only calls it; [`common::entry`]
/// says why): `.env`, logging, the flags, then [`run`].
pub fn main() -> anyhow::Result<()> {
    common::entry::run(|| async { run(clap::Parser::parse()).await })
}

/// Runs every experiment in the order, prints it, and writes `part4.json`.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("Part 4: Asynchronism. {}", crate::CLAIM);
    // The private RabbitMQ of experiment 4 boots while the dataset loads.
    let rabbit = if args.only.is_empty() || args.only.contains(&4) {
        Some(tokio::spawn(broker_down::PrivateRabbit::start()))
    } else {
        None
    };
    let mut demo = Demo::open(args).await?;
    let settings = format!(
        "every clone runs with part4-server's defaults unless its experiment names others (the caller's environment is not used): {}",
        server_defaults()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    common::demo::line(&settings);
    demo.results.notes.push(settings);
    if demo.wants(1) {
        lesson(
            1,
            "Answer at once",
            "POST /jobs puts the job on the queue and answers 202 while each job takes 1 s; the same job done inside the request (--jobs sync) beside it.",
        );
        answer_at_once::run(&mut demo).await?;
    }
    if demo.wants(2) {
        lesson(
            2,
            "Workers",
            "Jobs of a stated duration done by 1, 2, 4 and 8 workers: the modelled line (workers / duration) beside what the machine does.",
        );
        workers::run(&mut demo).await?;
    }
    if demo.wants(3) {
        lesson(
            3,
            "A worker killed mid-job",
            "SIGKILL, no goodbye: the broker gives the job to another worker, and the claim keeps its effect single.",
        );
        kill_worker::run(&mut demo).await?;
    }
    if let Some(rabbit) = rabbit {
        lesson(
            4,
            "The broker stopped and started",
            "A private RabbitMQ node stopped with jobs queued: POST /jobs answers a fast 503 meanwhile; started again: nothing lost, the clone and the worker reconnect by themselves.",
        );
        let rabbit = rabbit
            .await
            .context("the private RabbitMQ's start task")??;
        broker_down::run(&mut demo, rabbit).await?;
    }
    if demo.wants(5) {
        lesson(
            5,
            "The Redis queue across a restart",
            "Jobs queued in Redis, the server killed and started again: what the lab's persistence keeps, and the setting that keeps more.",
        );
        redis_restart::run(&mut demo).await?;
    }
    if demo.wants(6) {
        lesson(
            6,
            "A poison job",
            "A job that always fails: retried up to the limit, dead-lettered and marked failed with its reason; the jobs behind it go through.",
        );
        poison::run(&mut demo).await?;
    }
    if demo.wants(7) {
        lesson(
            7,
            "Backpressure",
            "Past MAX_QUEUE_DEPTH waiting jobs, POST /jobs answers 503 with Retry-After and enqueues nothing.",
        );
        backpressure::run(&mut demo).await?;
    }
    if demo.wants(8) {
        lesson(
            8,
            "Baked pages",
            "Every article and author page rendered ahead of time and served by nginx, against the dynamic render and part 3's cached page; how stale a baked page gets after a comment.",
        );
        baked::run(&mut demo).await?;
    }
    if demo.wants(9) {
        lesson(
            9,
            "Timelines fanned out on write",
            "Each new article pushed into the friends' timelines: the writes one post costs, the read it saves, and the hybrid for authors with thousands of friends.",
        );
        fan_out::run(&mut demo).await?;
    }
    let path = demo.results.write(&demo.args.demo.results_dir)?;
    println!(
        "\nresults: {} (the demo took {:.0} s)",
        path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory;
        Args::command().debug_assert();
        let args =
            Args::try_parse_from(["part4-demo", "--scale", "tiny", "--only", "1,3"]).unwrap();
        assert_eq!(args.scale, Scale::Tiny);
        assert_eq!(args.only, vec![1, 3]);
    }

    #[test]
    fn the_clones_get_the_jobs_settings_at_their_defaults() {
        let d = server_defaults();
        let get = |k: &str| d.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("JOBS"), Some("async"));
        assert_eq!(get("QUEUE"), Some("rabbitmq"));
        assert_eq!(get("MAX_QUEUE_DEPTH"), Some("1000"));
        assert_eq!(get("CACHE"), Some("object"));
        for k in ["QUEUE_NAME", "KEY_PREFIX", "PORT", "MARIADB_PRIMARY_URL"] {
            assert_eq!(get(k), None, "{k} is the demo's to set");
        }
    }
}
