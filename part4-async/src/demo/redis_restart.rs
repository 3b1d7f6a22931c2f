//! Experiment 5: the Redis queue across a restart.
//!
//! Never the stack's Redis: [`crate::queue::redis_restart`] starts a
//! private `redis-server` per setting, enqueues [`JOBS`] jobs on the Redis
//! queue (each acknowledged by Redis), `SIGKILL`s the server, starts it
//! again on the same directory and counts what the queue still holds
//! (`LLEN`, Redis's own count), with each of three persistence settings:
//! none (`appendonly no`: a cache's setting), the lab's (`appendonly yes`,
//! `appendfsync everysec`: `lab.d/services.sh`) and `appendfsync always`.
//! The three run at the same time, each on its own server.
//!
//! What a killed *process* cannot show: with everysec, a crash of the
//! *machine* (power, kernel) loses what was written in the last second
//! and not yet fsynced; `always` closes that window at one fsync per
//! write. The demo says so rather than pretending to pull the plug.
//!
//! Run it alone: `DEMO_ONLY=5 cargo run -p part4-async --bin part4-demo`.

use common::demo::{figure, line};
use common::results::Kind;

use super::Demo;
use crate::queue::redis_restart::{Persistence, RestartCount, count_lost_on_restart};

/// Jobs queued before each kill.
pub const JOBS: u64 = 200;

/// Runs the three settings at once, prints and records them.
pub async fn run(demo: &mut Demo) -> anyhow::Result<Vec<RestartCount>> {
    let (none, everysec, always) = tokio::join!(
        count_lost_on_restart(Persistence::None, JOBS),
        count_lost_on_restart(Persistence::EverySec, JOBS),
        count_lost_on_restart(Persistence::Always, JOBS),
    );
    let counts = vec![none?, everysec?, always?];
    line(format!(
        "three private redis-servers, {JOBS} jobs queued on each, SIGKILL, started again on the same directory; the stack's Redis is not touched"
    ));
    let cmp = "the Redis queue across a kill -9 and a restart";
    for c in &counts {
        figure(
            Kind::Measured,
            format!(
                "{}: {} queued, {} after the restart (LLEN), {} lost; the restarted server reports aof_enabled={}",
                c.persistence.describe(),
                c.queued,
                c.after_restart,
                c.lost,
                u8::from(c.aof_enabled)
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{}: jobs lost", c.persistence.describe()),
            c.lost as f64,
            &format!("of {}", c.queued),
            "jobs acknowledged by Redis and gone after a kill -9 and a restart (LLEN before and after)",
        );
    }
    line(
        "why: with no persistence the queue lived in memory only; with the append-only file each LPUSH reached the file (the kernel's cache) before Redis replied, so a killed process loses nothing. A crash of the machine can still lose everysec's last second; appendfsync always (one fsync per write) closes it, and RabbitMQ's confirm comes after its disk.",
    );
    demo.results.notes.push(
        "Experiment 5 kills the redis-server process, not the machine: the last second everysec can lose on a power or kernel failure is stated, not measured.".into(),
    );
    Ok(counts)
}
