//! The Redis-restart drill: jobs queued on the Redis queue, the server
//! killed (`SIGKILL`, no chance to flush) and started again, and the jobs
//! still in the queue counted. What survives is decided by one setting,
//! persistence:
//!
//! | setting | what `LPUSH`'s reply means | after a `kill -9` and a restart |
//! |---|---|---|
//! | `appendonly no`, `save ""` ([`Persistence::None`]) | in memory, nowhere else | every queued job is gone |
//! | `appendonly yes`, `appendfsync everysec` ([`Persistence::EverySec`], **the lab's**: `lab.d/services.sh`, `start_redis`) | in memory and written to the append-only file (the kernel's page cache); fsynced within a second | a killed *process* loses nothing the kernel had; a crash of the *machine* (power, kernel) can lose the last second |
//! | `appendonly yes`, `appendfsync always` ([`Persistence::Always`]) | on disk: each write is fsynced before the reply | nothing |
//!
//! The drill kills the process, not the machine, so it cannot show the
//! everysec window; it shows the two ends: no persistence loses every
//! job, `always` loses none. The price of `always` is one fsync per write
//! (the benches measure it); everysec is the usual compromise for a queue
//! whose jobs can be re-created, and a reason to prefer RabbitMQ (its
//! confirm comes after the disk) for jobs that cannot.
//!
//! Never the shared Redis: [`count_lost_on_restart`] starts a private
//! `redis-server` on a free port, in a directory of its own (part 3's
//! [`PrivateRedis`]), and kills it (and removes the directory) on every
//! path, even a panic. The demo and
//! the test call the same function:
//!
//! ```text
//! cargo test -p part4-async --test it redis::restart
//! ```

use std::time::Duration;

use part3_cache::demo::backends::PrivateRedis;

use super::redis::RedisQueue;
use super::{Backend, JobQueue, QueueConfig};
use crate::job::{Envelope, JobId};

/// Which persistence the private server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// `appendonly no`, `save ""`: memory only.
    None,
    /// `appendonly yes`, `appendfsync everysec`: the lab's setting.
    EverySec,
    /// `appendonly yes`, `appendfsync always`: every write on disk before
    /// the reply.
    Always,
}

impl Persistence {
    /// The settings, as `redis.conf` spells them.
    pub fn describe(self) -> &'static str {
        match self {
            Persistence::None => "appendonly no, save \"\"",
            Persistence::EverySec => "appendonly yes, appendfsync everysec (the lab's)",
            Persistence::Always => "appendonly yes, appendfsync always",
        }
    }

    /// `appendonly` and `appendfsync`.
    fn settings(self) -> (bool, &'static str) {
        match self {
            Persistence::None => (false, "everysec"),
            Persistence::EverySec => (true, "everysec"),
            Persistence::Always => (true, "always"),
        }
    }
}

/// What one run of the drill counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartCount {
    /// The server's settings.
    pub persistence: Persistence,
    /// Jobs enqueued, each acknowledged by Redis, and counted in the queue
    /// (`LLEN`) before the kill.
    pub queued: u64,
    /// Jobs in the queue after the restart (`LLEN`, Redis's own count).
    pub after_restart: u64,
    /// `queued - after_restart`: computed.
    pub lost: u64,
    /// `aof_enabled` in the restarted server's `INFO persistence`: the
    /// setting as the server reports it, not as we asked.
    pub aof_enabled: bool,
}

/// Runs the drill once: a private redis-server with `persistence`, `jobs`
/// jobs enqueued on the Redis queue (each acknowledged), `SIGKILL`, a
/// restart, and the jobs left counted by the same queue handle (its
/// connection reconnects by itself). Jobs are bare envelopes: the drill
/// counts what the queue keeps, no worker or database involved.
pub async fn count_lost_on_restart(
    persistence: Persistence,
    jobs: u64,
) -> anyhow::Result<RestartCount> {
    let (appendonly, appendfsync) = persistence.settings();
    let mut server = PrivateRedis::start_with(appendonly, appendfsync).await?;
    let config = QueueConfig::new(Backend::Redis, common::testing::unique_name("p4drill"));
    let queue = RedisQueue::connect(&server.url(), config).await?;
    for _ in 0..jobs {
        let job = Envelope::new(JobId::generate(), "export", serde_json::json!({}));
        queue.enqueue(&job).await?;
    }
    let queued = queue.depth().await?.ready;
    anyhow::ensure!(
        queued == jobs,
        "{jobs} jobs enqueued but the queue holds {queued} before the restart"
    );
    server.kill_and_restart().await?;
    // The queue's connection finds out on its first command that the
    // server went away, and reconnects: a few tries.
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let after_restart = loop {
        match queue.depth().await {
            Ok(d) => break d.ready,
            Err(e) => {
                anyhow::ensure!(
                    tokio::time::Instant::now() < until,
                    "the Redis queue did not reconnect within 10 s after the restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    Ok(RestartCount {
        persistence,
        queued,
        after_restart,
        lost: queued.saturating_sub(after_restart),
        aof_enabled: server.info_u64("persistence", "aof_enabled").await? == 1,
    })
}
