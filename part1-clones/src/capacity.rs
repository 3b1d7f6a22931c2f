//! A clone's modelled capacity, so the scaling law shows on a small machine.
//!
//! On the 2-core lab machine, three CPU-bound clones share the same two
//! cores: adding clones cannot add throughput, and a demo that claimed it
//! did would be lying. So each clone can be given a fixed, stated capacity:
//! at most `max_concurrency` requests worked on at once, each taking
//! `service_time` (a sleep standing in for real work). One clone then serves
//! at most `max_concurrency / service_time` requests per second, three serve
//! three times that, and the demo prints the figure next to the model.
//! Both are off by default (`0`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

/// The modelled capacity of one clone.
pub struct Capacity {
    slots: Option<Semaphore>,
    service_time: Duration,
}

impl Capacity {
    /// `max_concurrency` of 0 means unlimited; a `service_time` of zero adds nothing.
    pub fn new(max_concurrency: usize, service_time: Duration) -> Self {
        Capacity {
            slots: (max_concurrency > 0).then(|| Semaphore::new(max_concurrency)),
            service_time,
        }
    }

    /// The throughput ceiling this models, in requests per second (None if unlimited).
    pub fn ceiling(max_concurrency: usize, service_time: Duration) -> Option<f64> {
        (max_concurrency > 0 && !service_time.is_zero())
            .then(|| max_concurrency as f64 / service_time.as_secs_f64())
    }
}

/// Middleware: wait for a slot, do the modelled work, then the real request.
pub async fn limit(State(capacity): State<Arc<Capacity>>, req: Request, next: Next) -> Response {
    let _permit = match &capacity.slots {
        Some(s) => Some(s.acquire().await.expect("semaphore never closed")),
        None => None,
    };
    if !capacity.service_time.is_zero() {
        tokio::time::sleep(capacity.service_time).await;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_is_slots_over_service_time() {
        assert_eq!(Capacity::ceiling(4, Duration::from_millis(20)), Some(200.0));
        assert_eq!(Capacity::ceiling(0, Duration::from_millis(20)), None);
    }
}
