//! A database server's modelled capacity, so scale-out shows on 2 cores.
//!
//! Every server of the lab shares the same two cores, so adding a replica
//! or a shard cannot add CPU, and raw throughput barely moves. To show the
//! scaling law honestly, each server can be given a fixed, stated capacity:
//! at most `slots` queries at once, each taking at least `service_time`
//! (a sleep standing in for the work of a bigger query). One server then
//! serves at most `slots / service_time` queries per second; N servers, N
//! times that. The demo prints this model next to the raw figures.

use std::time::Duration;

use tokio::sync::Semaphore;

/// One server's modelled capacity.
pub struct Modelled {
    slots: Semaphore,
    service_time: Duration,
    ceiling: f64,
}

impl Modelled {
    /// `slots` queries at once, `service_time` each.
    pub fn new(slots: usize, service_time: Duration) -> Self {
        Modelled {
            slots: Semaphore::new(slots.max(1)),
            service_time,
            ceiling: slots.max(1) as f64 / service_time.as_secs_f64().max(1e-9),
        }
    }

    /// The most queries per second this server can serve.
    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// Runs `query` inside the model: wait for a slot, spend the service
    /// time, then do the real query.
    pub async fn run<T>(&self, query: impl Future<Output = T>) -> T {
        let _slot = self.slots.acquire().await.expect("semaphore never closed");
        tokio::time::sleep(self.service_time).await;
        query.await
    }
}
