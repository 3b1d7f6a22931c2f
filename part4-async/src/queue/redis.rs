//! The same promises from Redis lists, built by hand: the "reliable queue"
//! pattern.
//!
//! A plain `BRPOP` takes the job *out* of Redis: a worker that dies before
//! it finishes loses the job for good. Instead each consumer moves the job
//! atomically into a list of its own, and removes it from there only when
//! it is done:
//!
//! ```text
//! producer:  LPUSH  <q>:queue job
//! consumer:  BLMOVE <q>:queue <q>:processing:<consumer> RIGHT LEFT <timeout>
//!            ... work, commit the effect ...
//!            LREM   <q>:processing:<consumer> -1 job         (the ack)
//! ```
//!
//! With `PREFETCH` above 1 a consumer takes up to that many jobs in one
//! round trip when the queue has them (a Lua loop of `LMOVE`, the `TAKE` script),
//! and hands them out one at a time; `BLMOVE` is only for an empty queue.
//! Like RabbitMQ's prefetch, it trades fairness for throughput: jobs taken
//! are held by this consumer (and given back if it dies) while another
//! may sit idle, so the workers keep 1 for long jobs. A delivery is counted
//! when a job is taken: a graceful stop takes back the counts of jobs it
//! never handed out, but a crash charges every job the consumer held (at
//! most `PREFETCH`, capped at 1,000 per take).
//!
//! With `PREFETCH` above 1 the acks are batched too: an ack is kept, and
//! the acks kept go to Redis in one call (`ACK`) before the consumer's
//! next round trip for jobs, when `PREFETCH` of them are waiting, and
//! before a graceful stop gives back what it holds. A batch of 100 jobs
//! then costs two round trips instead of 101 (RabbitMQ's `multiple` ack
//! is the same idea). The price: a consumer that dies holding kept acks
//! has those jobs done again by another. Each finds its claim (the
//! effect happens once), but the work is repeated, so the workers, with
//! `PREFETCH` 1, ack each job at once.
//!
//! What the broker does for RabbitMQ, we do here:
//!
//! - **Death is noticed by a heartbeat.** Each consumer refreshes
//!   `<q>:alive:<consumer>` (a key with a time to live, `CONSUMER_TTL_MS`)
//!   from a task of its own while it lives. The **reaper** (a Lua script,
//!   atomic, run by every consumer's heartbeat and by [`RedisQueue::reap`])
//!   moves the processing list of every registered consumer whose key has
//!   expired back to the head of the queue.
//! - **Deliveries are counted** in the hash `<q>:deliveries` (job id →
//!   count). Past `MAX_DELIVERIES` the consumer moves the job to
//!   `<q>:dead` instead of handing it out, as RabbitMQ's delivery limit
//!   does.
//! - **Dead letters** are the list `<q>:dead`; the workers' watchers move
//!   each one they have handled to `<q>:parked`, the shelf for people
//!   (see [`crate::queue`]).
//! - **Strays.** A connection cut right after the server did a `BLMOVE`
//!   loses its answer: the job sits in our processing list and we do not
//!   know it. After any error, once the consumer holds nothing, it moves
//!   its processing list back to the queue. (A test found this one: cut
//!   the connection, and the next job vanished into the consumer's own
//!   list until it stopped.)
//!
//! Two redis-rs pitfalls, both reproduced on this machine:
//!
//! 1. `ConnectionManager` times out every command after **500 ms** by
//!    default. A `BLMOVE` that blocks longer "times out" on the client
//!    while the server keeps it open, and the next job pushed is moved by
//!    that abandoned call into a list nobody reads (with a plain `BRPOP`,
//!    it is simply lost). So the blocking pop gets its own connection with
//!    `set_response_timeout(None)`.
//! 2. A multiplexed connection carries everyone's commands in one stream:
//!    a blocking pop on a *shared* connection stalls every other command
//!    behind it. Hence one blocking connection per consumer, and a shared
//!    one for the rest.
//!
//! Why lists and not a stream with a consumer group: streams do most of
//! this for you (`XREADGROUP`, `XACK`, a pending list with delivery
//! counts, `XAUTOCLAIM`). But `XAUTOCLAIM` reclaims a job by *idle time*,
//! not by the death of its consumer: a job that runs longer than the idle
//! threshold is handed to a second worker while the first still works on
//! it, so the threshold must exceed the longest job, and a crashed worker's
//! job then waits that long. The heartbeat here reclaims as soon as the
//! consumer is known dead, whatever the job's length. Lists are also what
//! the article names. Streams win when a job must be read by several
//! groups, or replayed: a list forgets what was acked.
//!
//! What Redis does not promise: `LPUSH`'s reply means "in memory". The
//! lab's Redis appends to its file every second (`appendonly yes`,
//! `appendfsync everysec`): a killed *process* loses nothing the kernel
//! already has, but a crash of the machine can lose the last second of
//! jobs; RabbitMQ's confirm comes after the disk. A Redis with no
//! persistence at all (`appendonly no`, `save ""`) forgets every queued
//! job when it restarts; `appendfsync always` makes each `LPUSH` wait for
//! the disk. [`super::redis_restart`] counts each case on a private
//! redis-server. The keys are built inside Lua, which Redis Cluster
//! would refuse (every key must be passed in): one Redis here.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{
    AnyQueue, Backend, DeadHandle, DeadLetter, DeadLetters, Delivery, Depth, Handle, JobConsumer,
    JobQueue, QueueConfig, QueueError,
};
use crate::job::Envelope;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Every key of one queue, under its prefix.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
    queue: String,
    dead: String,
    parked: String,
    deliveries: String,
    consumers: String,
}

impl Keys {
    fn of(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
            queue: format!("{prefix}:queue"),
            dead: format!("{prefix}:dead"),
            parked: format!("{prefix}:parked"),
            deliveries: format!("{prefix}:deliveries"),
            consumers: format!("{prefix}:consumers"),
        }
    }
    fn processing(&self, consumer: &str) -> String {
        format!("{}:processing:{consumer}", self.prefix)
    }
    fn alive(&self, consumer: &str) -> String {
        format!("{}:alive:{consumer}", self.prefix)
    }
}

/// The reaper: every registered consumer whose heartbeat key has expired
/// gets its processing list moved back to the head of the queue (the
/// oldest job first), and is unregistered. Returns how many jobs moved.
const REAP: &str = r"
local moved = 0
for _, c in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':alive:' .. c) == 0 then
    local p = ARGV[1] .. ':processing:' .. c
    while redis.call('LMOVE', p, KEYS[2], 'LEFT', 'RIGHT') do
      moved = moved + 1
    end
    redis.call('SREM', KEYS[1], c)
  end
end
return moved
";

/// A graceful stop: this consumer's jobs back to the head of the queue,
/// its heartbeat and registration gone.
const RETURN_ALL: &str = r"
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
redis.call('DEL', KEYS[3])
redis.call('SREM', KEYS[4], ARGV[1])
return moved
";

/// Strays: jobs in our own processing list that we do not hold (a BLMOVE
/// done by the server whose answer the cut connection lost). Back to the
/// head of the queue, where they would have been.
const RETURN_STRAYS: &str = r"
local moved = 0
while redis.call('LMOVE', KEYS[1], KEYS[2], 'LEFT', 'RIGHT') do
  moved = moved + 1
end
return moved
";

/// How Redis reads a job's id (shared by [`TAKE`] and [`COUNT`]: one
/// parser decides which id a delivery is counted under, and the Rust side
/// reuses the id these scripts return). `''` when the body has none.
macro_rules! lua_job_id {
    () => {
        r"
local function job_id(job)
  local ok, decoded = pcall(cjson.decode, job)
  if ok and type(decoded) == 'table' and type(decoded.id) == 'string' then
    return decoded.id
  end
  return ''
end
"
    };
}

/// A batch: move up to `ARGV[1]` jobs from the queue into our processing
/// list in one round trip, oldest first, and count a delivery of each in
/// `<q>:deliveries` by its id (what `prefetch` buys on Redis: one trip for
/// many jobs instead of one each). Answers `body, count, id` triples; a
/// body with no id counts as a first delivery, under "". Never blocks:
/// an empty queue answers an empty list and the consumer falls back to
/// `BLMOVE`.
const TAKE: &str = concat!(
    lua_job_id!(),
    r"
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local job = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not job then break end
  local id = job_id(job)
  local n = 1
  if id ~= '' then n = redis.call('HINCRBY', KEYS[3], id, 1) end
  taken[#taken + 1] = job
  taken[#taken + 1] = n
  taken[#taken + 1] = id
end
return taken
"
);

/// Counts the delivery of one job a `BLMOVE` just moved: answers `count,
/// id`, as [`TAKE`] does for each of its jobs.
const COUNT: &str = concat!(
    lua_job_id!(),
    r"
local id = job_id(ARGV[1])
local n = 1
if id ~= '' then n = redis.call('HINCRBY', KEYS[1], id, 1) end
return {n, id}
"
);

/// A graceful stop's accounting: jobs we took but never handed out were
/// not delivered to anyone, so their counts go back down (`ARGV` holds
/// their ids) before [`RETURN_ALL`] gives them back.
const UNCOUNT: &str = r"
for _, id in ipairs(ARGV) do
  if id ~= '' and redis.call('HINCRBY', KEYS[1], id, -1) <= 0 then
    redis.call('HDEL', KEYS[1], id)
  end
end
return #ARGV
";

/// The most jobs one [`TAKE`] moves, whatever `PREFETCH` says: a Lua call
/// holds Redis (and the lab's cache on it) for its whole length.
const TAKE_MAX: usize = 1000;

/// The ack, of one job or many: ARGV holds (body, counted id) pairs. Each
/// job is taken out of our processing list (searching from the tail,
/// where the oldest job we hold sits) and its delivery count forgotten.
/// If the reaper already gave a job back, nothing is removed and its count
/// kept: the redelivery must still be counted (it will be done again, and
/// find its claim). Returns how many were still ours.
const ACK: &str = r"
local removed = 0
for i = 1, #ARGV, 2 do
  if redis.call('LREM', KEYS[1], -1, ARGV[i]) > 0 then
    removed = removed + 1
    if ARGV[i + 1] ~= '' then
      redis.call('HDEL', KEYS[2], ARGV[i + 1])
    end
  end
end
return removed
";

/// [`TAKE`], [`COUNT`] and [`ACK`], hashed once (each call sends only the hash).
static TAKE_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(TAKE));
static COUNT_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(COUNT));
static ACK_SCRIPT: std::sync::LazyLock<Script> = std::sync::LazyLock::new(|| Script::new(ACK));

/// Acks `acks` (body, counted id) in one call of [`ACK`] on `processing`;
/// how many were still there.
async fn ack_all<'a>(
    conn: &mut ConnectionManager,
    keys: (&str, &str),
    acks: impl Iterator<Item = (&'a [u8], &'a str)>,
) -> Result<usize, QueueError> {
    let mut invocation = ACK_SCRIPT.prepare_invoke();
    invocation.key(keys.0).key(keys.1);
    for (body, id) in acks {
        invocation.arg(body).arg(id);
    }
    retry_once(conn, |mut conn| {
        let invocation = &invocation;
        async move { invocation.invoke_async(&mut conn).await }
    })
    .await
}

/// Requeue or dead-letter: take the job out of our processing list and, if
/// it was still there, push it to the back of `KEYS[2]`. If the reaper
/// already gave it back (we were thought dead), do nothing: pushing it
/// again would make two copies.
const MOVE: &str = r"
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
if ARGV[3] == '1' and ARGV[2] ~= '' then
  redis.call('HDEL', KEYS[3], ARGV[2])
end
return 1
";

fn unreachable(url: &str, e: impl std::fmt::Display) -> QueueError {
    QueueError::Unreachable {
        backend: "Redis",
        url: common::config::redact(url),
        reason: e.to_string(),
    }
}

fn other(e: impl std::fmt::Display) -> QueueError {
    QueueError::Other {
        backend: "Redis",
        reason: e.to_string(),
    }
}

/// The id `delivery`'s deliveries are counted under ("" for none, or for
/// a delivery of another backend).
fn counted(delivery: &Delivery) -> &str {
    match &delivery.handle {
        Handle::Redis { counted } => counted,
        Handle::RabbitMq { .. } => "",
    }
}

/// A connection manager; `blocking` ones have no response timeout.
async fn manager(
    client: &redis::Client,
    url: &str,
    blocking: bool,
) -> Result<ConnectionManager, QueueError> {
    let mut config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_number_of_retries(1);
    if blocking {
        // Pitfall 1 in the module docs: the default 500 ms would abandon
        // every BLMOVE that waits longer, and the server would not know.
        config = config.set_response_timeout(None);
    }
    let mut conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| unreachable(url, "timed out"))?
    .map_err(|e| unreachable(url, e))?;
    let _: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .map_err(|e| unreachable(url, e))?;
    Ok(conn)
}

/// Runs `command`, and once more if the connection had dropped: the
/// connection manager reconnects meanwhile. Safe for the settling commands
/// only because each is harmless twice (a second LREM finds nothing).
async fn retry_once<T, F, Fut>(
    conn: &mut ConnectionManager,
    mut command: F,
) -> Result<T, QueueError>
where
    F: FnMut(ConnectionManager) -> Fut,
    Fut: Future<Output = redis::RedisResult<T>>,
{
    match command(conn.clone()).await {
        Err(e) if e.is_io_error() || e.is_connection_dropped() => {
            tracing::info!(error = %e, "the Redis connection dropped: once more");
            command(conn.clone()).await.map_err(other)
        }
        result => result.map_err(other),
    }
}

/// The queue's producing side, and the door to consumers.
pub struct RedisQueue {
    url: String,
    client: redis::Client,
    conn: ConnectionManager,
    config: QueueConfig,
    keys: Keys,
    reaped: Arc<AtomicU64>,
}

impl RedisQueue {
    /// Connects to Redis at `url`; the keys start with `config.queue_name`.
    pub async fn connect(url: &str, config: QueueConfig) -> Result<Self, QueueError> {
        let client = redis::Client::open(url).map_err(|e| unreachable(url, e))?;
        let conn = manager(&client, url, false).await?;
        Ok(RedisQueue {
            url: url.to_owned(),
            client,
            conn,
            keys: Keys::of(&config.queue_name),
            config,
            reaped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Runs the reaper once: returns how many jobs it gave back to the
    /// queue from consumers whose heartbeat has expired.
    pub async fn reap(&self) -> Result<u64, QueueError> {
        let moved = reap(&mut self.conn.clone(), &self.keys).await?;
        self.reaped.fetch_add(moved, Ordering::Relaxed);
        Ok(moved)
    }

    /// Jobs given back by the reaper, through this queue handle and its
    /// consumers' heartbeats, since it was opened.
    pub fn reaped(&self) -> u64 {
        self.reaped.load(Ordering::Relaxed)
    }
}

async fn reap(conn: &mut ConnectionManager, keys: &Keys) -> Result<u64, QueueError> {
    Script::new(REAP)
        .key(&keys.consumers)
        .key(&keys.queue)
        .arg(&keys.prefix)
        .invoke_async(conn)
        .await
        .map_err(other)
}

impl JobQueue for RedisQueue {
    type Consumer = RedisConsumer;

    fn backend(&self) -> Backend {
        Backend::Redis
    }

    async fn enqueue(&self, job: &Envelope) -> Result<(), QueueError> {
        self.enqueue_raw(job.id.as_str(), &job.encode()).await
    }

    /// The message id is not stored: a Redis list holds only the bytes.
    async fn enqueue_raw(&self, _message_id: &str, body: &[u8]) -> Result<(), QueueError> {
        let _: u64 = self
            .conn
            .clone()
            .lpush(&self.keys.queue, body)
            .await
            .map_err(|e| unreachable(&self.url, e))?;
        Ok(())
    }

    async fn depth(&self) -> Result<Depth, QueueError> {
        let (ready, dead, parked): (u64, u64, u64) = redis::pipe()
            .llen(&self.keys.queue)
            .llen(&self.keys.dead)
            .llen(&self.keys.parked)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(other)?;
        Ok(Depth {
            ready,
            dead: dead + parked,
            parked,
        })
    }

    async fn ready(&self) -> Result<u64, QueueError> {
        self.conn
            .clone()
            .llen(&self.keys.queue)
            .await
            .map_err(other)
    }

    async fn dead_letters(&self, _name: &str) -> Result<DeadLetters, QueueError> {
        Ok(DeadLetters::Redis(RedisDeadLetters {
            conn: self.conn.clone(),
            keys: self.keys.clone(),
        }))
    }

    async fn consume(&self, name: &str) -> Result<RedisConsumer, QueueError> {
        // A fresh id per consumer: a worker restarted under the same name
        // must not adopt (and never finish) the jobs of its dead self; the
        // reaper gives those back.
        let token: u32 = rand::random();
        let id = format!("{name}-{token:08x}");
        let ttl = self.config.consumer_ttl();
        let mut conn = self.conn.clone();
        beat(&mut conn, &self.keys, &id, ttl).await?;
        let blocking = manager(&self.client, &self.url, true).await?;
        let heartbeat = tokio::spawn(heartbeat(
            conn.clone(),
            self.keys.clone(),
            id.clone(),
            ttl,
            self.reaped.clone(),
        ));
        Ok(RedisConsumer {
            origin: Arc::new((self.url.clone(), self.config.clone())),
            processing: self.keys.processing(&id),
            id,
            keys: self.keys.clone(),
            max_deliveries: self.config.max_deliveries.max(1),
            prefetch: usize::from(self.config.prefetch.max(1)).min(TAKE_MAX),
            taken: std::collections::VecDeque::new(),
            acked: Vec::new(),
            conn,
            blocking,
            heartbeat,
            outstanding: 0,
            suspect: false,
        })
    }

    async fn destroy(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let consumers: Vec<String> = conn.smembers(&self.keys.consumers).await.map_err(other)?;
        let mut keys = vec![
            self.keys.queue.clone(),
            self.keys.dead.clone(),
            self.keys.parked.clone(),
            self.keys.deliveries.clone(),
            self.keys.consumers.clone(),
        ];
        for c in &consumers {
            keys.push(self.keys.processing(c));
            keys.push(self.keys.alive(c));
        }
        let _: u64 = conn.del(keys).await.map_err(other)?;
        Ok(())
    }
}

/// "I am alive": the heartbeat key, and the registration the reaper reads.
async fn beat(
    conn: &mut ConnectionManager,
    keys: &Keys,
    id: &str,
    ttl: Duration,
) -> Result<(), QueueError> {
    let () = redis::pipe()
        .cmd("SET")
        .arg(keys.alive(id))
        .arg(1)
        .arg("PX")
        .arg(ttl.as_millis() as u64)
        .ignore()
        .sadd(&keys.consumers, id)
        .ignore()
        .query_async(conn)
        .await
        .map_err(other)?;
    Ok(())
}

/// The consumer's background task: beat three times per time to live,
/// and reap the dead. Ends when the consumer is dropped (aborted).
async fn heartbeat(
    mut conn: ConnectionManager,
    keys: Keys,
    id: String,
    ttl: Duration,
    reaped: Arc<AtomicU64>,
) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        if let Err(e) = beat(&mut conn, &keys, &id, ttl).await {
            // If this goes on past the TTL, another consumer's reaper will
            // give our jobs away while we work on them: the idempotent
            // effect makes that harmless, only wasteful.
            tracing::warn!(consumer = %id, error = %e, "heartbeat failed");
            continue;
        }
        match reap(&mut conn, &keys).await {
            Ok(0) => {}
            Ok(n) => {
                reaped.fetch_add(n, Ordering::Relaxed);
                tracing::info!(consumer = %id, jobs = n, "reaped the jobs of dead consumers");
            }
            Err(e) => tracing::warn!(consumer = %id, error = %e, "reaper failed"),
        }
    }
}

/// One consumer: its processing list, its blocking connection, its
/// heartbeat.
pub struct RedisConsumer {
    /// The URL and settings, for [`JobConsumer::reopen`] (shared: the
    /// consumer stays small).
    origin: Arc<(String, QueueConfig)>,
    id: String,
    keys: Keys,
    processing: String,
    max_deliveries: u32,
    /// Jobs taken per round trip when the queue has them (`PREFETCH`).
    prefetch: usize,
    /// Taken (in our processing list, counted) and not handed out yet.
    taken: std::collections::VecDeque<Delivery>,
    /// Acked and not yet told to Redis (`PREFETCH` above 1: see the
    /// module docs): each job's body and counted id.
    acked: Vec<(Vec<u8>, String)>,
    conn: ConnectionManager,
    /// For the consumer's side alone: BLMOVE, and the take and count
    /// scripts beside it (see the module docs' pitfalls).
    blocking: ConnectionManager,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Deliveries handed out and not yet settled.
    outstanding: usize,
    /// A command failed since the last check: our processing list may
    /// hold a stray (a BLMOVE the server did but whose answer we lost).
    suspect: bool,
}

impl Drop for RedisConsumer {
    fn drop(&mut self) {
        // A dropped consumer stops beating, as a dead process does: its
        // jobs come back when its key expires and a reaper runs.
        self.heartbeat.abort();
    }
}

impl RedisConsumer {
    /// This consumer's id (its processing list is `<q>:processing:<id>`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives back the strays of our processing list (see [`RETURN_STRAYS`]):
    /// only when we hold nothing, so everything there is a stray.
    async fn return_strays(&mut self) -> Result<(), QueueError> {
        let moved: u64 = Script::new(RETURN_STRAYS)
            .key(&self.processing)
            .key(&self.keys.queue)
            .invoke_async(&mut self.blocking)
            .await
            .map_err(other)?;
        if moved > 0 {
            tracing::warn!(consumer = %self.id, jobs = moved, "returned jobs whose delivery a lost connection cut short");
        }
        self.suspect = false;
        Ok(())
    }

    /// Waits for one job. From what we took earlier if we hold any;
    /// otherwise a batch of up to `prefetch` in one round trip ([`TAKE`]),
    /// or, with the queue empty, a `BLMOVE` of one. Every job taken has its
    /// delivery counted; one past the limit is dead-lettered instead.
    async fn take(&mut self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(delivery) = self.taken.pop_front() {
                if delivery.attempt > self.max_deliveries {
                    // Delivered too often (its consumers kept dying): the
                    // queue gives up on it, as RabbitMQ's delivery limit
                    // does.
                    tracing::warn!(consumer = %self.id, attempt = delivery.attempt, "delivery limit passed: dead-lettering");
                    let dead = self.keys.dead.clone();
                    self.move_to(&delivery, &dead, true).await?;
                    continue;
                }
                return Ok(Some(delivery));
            }
            // Going to Redis for jobs: the kept acks first.
            self.flush_acks().await?;
            // A batch of one is what BLMOVE below does anyway (it answers
            // at once when the queue has a job): with PREFETCH 1, the
            // workers' setting, an idle poll stays one round trip.
            let taken: Vec<(Vec<u8>, u64, String)> = if self.prefetch > 1 {
                TAKE_SCRIPT
                    .key(&self.keys.queue)
                    .key(&self.processing)
                    .key(&self.keys.deliveries)
                    .arg(self.prefetch)
                    .invoke_async(&mut self.blocking)
                    .await
                    .map_err(other)?
            } else {
                Vec::new()
            };
            if taken.is_empty() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(None);
                }
                // BLMOVE's timeout 0 would mean "forever": never below 10 ms.
                let seconds = left.as_secs_f64().max(0.01);
                let moved: Option<Vec<u8>> = redis::cmd("BLMOVE")
                    .arg(&self.keys.queue)
                    .arg(&self.processing)
                    .arg("RIGHT")
                    .arg("LEFT")
                    .arg(seconds)
                    .query_async(&mut self.blocking)
                    .await
                    .map_err(other)?;
                let Some(body) = moved else {
                    return Ok(None);
                };
                // On the connection that just answered: the job is in our
                // processing list now, and an error here would strand it
                // there until the stray check.
                let (attempt, id): (u64, String) = COUNT_SCRIPT
                    .key(&self.keys.deliveries)
                    .arg(&body[..])
                    .invoke_async(&mut self.blocking)
                    .await
                    .map_err(other)?;
                self.keep(vec![(body, attempt, id)]);
            } else {
                self.keep(taken);
            }
        }
    }

    /// Sends the kept acks in one call ([`ACK`]). On an error they
    /// stay kept for the next call, and the consumer is suspect (the
    /// stray check waits until they are sent: it would give those jobs
    /// back).
    async fn flush_acks(&mut self) -> Result<(), QueueError> {
        if self.acked.is_empty() {
            return Ok(());
        }
        let result = ack_all(
            &mut self.conn,
            (&self.processing, &self.keys.deliveries),
            self.acked.iter().map(|(b, id)| (&b[..], id.as_str())),
        )
        .await;
        match result {
            Ok(removed) => {
                let stale = self.acked.len().saturating_sub(removed);
                if stale > 0 {
                    tracing::warn!(consumer = %self.id, jobs = stale, "acked jobs the reaper had given back (our heartbeat lapsed): they will be done again, and find their claims");
                }
                self.acked.clear();
                Ok(())
            }
            Err(e) => {
                self.suspect = true;
                Err(e)
            }
        }
    }

    /// Keeps jobs taken (now in our processing list, counted), oldest
    /// first, to hand out one at a time.
    fn keep(&mut self, taken: Vec<(Vec<u8>, u64, String)>) {
        for (body, count, counted) in taken {
            self.taken.push_back(Delivery {
                envelope: Envelope::decode(&body),
                attempt: u32::try_from(count).unwrap_or(u32::MAX),
                body,
                handle: Handle::Redis { counted },
            });
        }
    }

    /// A delivery was settled (or the attempt failed: either way the
    /// caller has let go of it; a failure leaves it for the stray check).
    fn let_go<T>(&mut self, result: Result<T, QueueError>) -> Result<T, QueueError> {
        self.outstanding = self.outstanding.saturating_sub(1);
        if matches!(result, Err(QueueError::Other { .. })) {
            self.suspect = true;
        }
        result
    }

    /// Moves `delivery` from our processing list to `to` (the back of the
    /// line); `forget` also clears its delivery count.
    async fn move_to(
        &mut self,
        delivery: &Delivery,
        to: &str,
        forget: bool,
    ) -> Result<(), QueueError> {
        let id = counted(delivery);
        let script = Script::new(MOVE);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.processing)
            .key(to)
            .key(&self.keys.deliveries)
            .arg(&delivery.body[..])
            .arg(id)
            .arg(if forget { "1" } else { "0" });
        let moved: u32 = retry_once(&mut self.conn, |mut conn| {
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
        if moved == 0 {
            return Err(QueueError::Stale);
        }
        Ok(())
    }
}

impl JobConsumer for RedisConsumer {
    async fn next(&mut self, wait: Duration) -> Result<Option<Delivery>, QueueError> {
        if self.suspect && self.outstanding == 0 && self.taken.is_empty() {
            // Kept acks first: the strays' return would give their jobs
            // back to be done again.
            self.flush_acks().await?;
            self.return_strays().await?;
        }
        let result = self.take(wait).await;
        match &result {
            Ok(Some(_)) => self.outstanding += 1,
            Ok(None) => {}
            Err(_) => self.suspect = true,
        }
        result
    }

    async fn ack(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        if self.prefetch > 1 {
            // Kept, and sent with the next round trip (module docs).
            self.acked
                .push((delivery.body.clone(), counted(delivery).to_owned()));
            self.outstanding = self.outstanding.saturating_sub(1);
            if self.acked.len() >= self.prefetch {
                self.flush_acks().await?;
            }
            return Ok(());
        }
        let result = ack_all(
            &mut self.conn,
            (&self.processing, &self.keys.deliveries),
            std::iter::once((&delivery.body[..], counted(delivery))),
        )
        .await;
        match self.let_go(result)? {
            // The reaper gave it back while we worked (our heartbeat
            // lapsed): someone will do it again, and find the claim.
            0 => Err(QueueError::Stale),
            _ => Ok(()),
        }
    }

    async fn requeue(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        let queue = self.keys.queue.clone();
        let result = self.move_to(delivery, &queue, false).await;
        self.let_go(result)
    }

    async fn dead_letter(&mut self, delivery: &Delivery) -> Result<(), QueueError> {
        let dead = self.keys.dead.clone();
        let result = self.move_to(delivery, &dead, true).await;
        self.let_go(result)
    }

    fn reopen(&self) -> impl Future<Output = Result<AnyQueue, QueueError>> + Send + 'static {
        let origin = self.origin.clone();
        async move {
            let (url, config) = &*origin;
            Ok(AnyQueue::Redis(
                RedisQueue::connect(url, config.clone()).await?,
            ))
        }
    }

    async fn close(mut self) -> Result<(), QueueError> {
        self.heartbeat.abort();
        // Before anything is given back: an acked job given back would be
        // done again.
        self.flush_acks().await?;
        if !self.taken.is_empty() {
            let ids: Vec<&str> = self.taken.iter().map(counted).collect();
            let _: u64 = Script::new(UNCOUNT)
                .key(&self.keys.deliveries)
                .arg(ids)
                .invoke_async(&mut self.conn)
                .await
                .map_err(other)?;
        }
        let moved: u64 = Script::new(RETURN_ALL)
            .key(&self.processing)
            .key(&self.keys.queue)
            .key(self.keys.alive(&self.id))
            .key(&self.keys.consumers)
            .arg(&self.id)
            .invoke_async(&mut self.conn)
            .await
            .map_err(other)?;
        if moved > 0 {
            tracing::info!(consumer = %self.id, jobs = moved, "gave unfinished jobs back to the queue");
        }
        Ok(())
    }
}

/// Park: take the letter out of the dead list and onto the shelf. If it is
/// no longer there (another watcher parked it first), do nothing.
const PARK: &str = r"
if redis.call('LREM', KEYS[1], -1, ARGV[1]) == 0 then
  return 0
end
redis.call('LPUSH', KEYS[2], ARGV[1])
return 1
";

/// How often the dead-letter reader looks at an empty dead list.
const DEAD_POLL: Duration = Duration::from_millis(250);

/// The watcher's reader of `<q>:dead`. It *looks* at the oldest entry
/// (`LINDEX <q>:dead -1`) rather than popping it: the letter stays dead
/// until it is parked, so a watcher that dies in between loses nothing.
/// Several watchers may look at the same letter; marking its job failed
/// is idempotent, and only one of them parks it.
pub struct RedisDeadLetters {
    conn: ConnectionManager,
    keys: Keys,
}

impl RedisDeadLetters {
    pub(crate) async fn next(&mut self, wait: Duration) -> Result<Option<DeadLetter>, QueueError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let oldest: Option<Vec<u8>> =
                self.conn.lindex(&self.keys.dead, -1).await.map_err(other)?;
            if let Some(body) = oldest {
                return Ok(Some(DeadLetter {
                    envelope: Envelope::decode(&body),
                    body,
                    reason: None,
                    handle: DeadHandle::Redis,
                }));
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            tokio::time::sleep(DEAD_POLL.min(deadline - now)).await;
        }
    }

    pub(crate) async fn park(&mut self, letter: &DeadLetter) -> Result<(), QueueError> {
        let script = Script::new(PARK);
        let mut invocation = script.prepare_invoke();
        invocation
            .key(&self.keys.dead)
            .key(&self.keys.parked)
            .arg(&letter.body[..]);
        let _moved: u32 = retry_once(&mut self.conn, |mut conn| {
            let invocation = &invocation;
            async move { invocation.invoke_async(&mut conn).await }
        })
        .await?;
        Ok(())
    }
}
