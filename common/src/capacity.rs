//! A modelled capacity, so scale-out shows on a 2-core machine.
//!
//! Every process of the lab shares the same two cores: adding a clone, a
//! replica or a shard cannot add CPU, so raw throughput barely moves, and a
//! demo that claimed otherwise would be lying. To show the scaling law
//! honestly, a server (an app clone in part 1, a database in part 2) can be
//! given a fixed, stated capacity: at most `slots` requests worked on at
//! once, each taking at least `service_time` (a sleep standing in for the
//! work of a bigger request). One server then serves at most
//! `slots / service_time` requests per second; N servers, N times that.
//!
//! Figures measured against such a model are recorded as
//! [`Kind::Modelled`](crate::results::Kind::Modelled), and the demos print
//! the model's ceiling and the raw, unmodelled run beside them.
//!
//! Production has no such thing: a real server's capacity is its hardware,
//! found by load-testing it until the latency curve bends.

use std::time::Duration;

use tokio::sync::Semaphore;

/// One server's modelled capacity.
pub struct Modelled {
    /// `None` when unlimited (`slots` of 0): only the service time applies.
    slots: Option<Semaphore>,
    /// What `slots` was built with (the semaphore's count moves as it is used).
    slot_count: usize,
    service_time: Duration,
}

impl Modelled {
    /// `slots` requests at once, `service_time` each. A `slots` of 0 means
    /// no limit on concurrency, and a zero `service_time` adds no work: both
    /// zero is no model at all.
    pub fn new(slots: usize, service_time: Duration) -> Self {
        Modelled {
            slots: (slots > 0).then(|| Semaphore::new(slots)),
            slot_count: slots,
            service_time,
        }
    }

    /// The most requests per second `slots` at `service_time` each can
    /// serve, or `None` when either is zero (nothing is modelled).
    pub fn ceiling_of(slots: usize, service_time: Duration) -> Option<f64> {
        (slots > 0 && !service_time.is_zero()).then(|| slots as f64 / service_time.as_secs_f64())
    }

    /// The most requests per second this server can serve (infinite when
    /// nothing limits it).
    pub fn ceiling(&self) -> f64 {
        Self::ceiling_of(self.slot_count, self.service_time).unwrap_or(f64::INFINITY)
    }

    /// The stated service time of one request.
    pub fn service_time(&self) -> Duration {
        self.service_time
    }

    /// Runs `work` inside the model: wait for a slot, spend the service
    /// time, then do the real work.
    pub async fn run<T>(&self, work: impl Future<Output = T>) -> T {
        let _slot = match &self.slots {
            Some(s) => Some(s.acquire().await.expect("the semaphore is never closed")),
            None => None,
        };
        if !self.service_time.is_zero() {
            tokio::time::sleep(self.service_time).await;
        }
        work.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ceiling_is_slots_over_service_time() {
        let slots = 4;
        let service = Duration::from_millis(20);
        let expected = slots as f64 / service.as_secs_f64();
        assert_eq!(Modelled::ceiling_of(slots, service), Some(expected));
        assert_eq!(Modelled::new(slots, service).ceiling(), expected);
        assert_eq!(Modelled::ceiling_of(0, service), None);
        assert!(Modelled::new(0, Duration::ZERO).ceiling().is_infinite());
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_model_makes_the_next_request_wait() {
        let model = std::sync::Arc::new(Modelled::new(1, Duration::from_millis(50)));
        let start = tokio::time::Instant::now();
        let (a, b) = tokio::join!(model.run(async { 1 }), model.run(async { 2 }));
        assert_eq!(a + b, 3);
        // Paused time: exact, not a timed assertion on a noisy machine.
        assert_eq!(start.elapsed(), 2 * model.service_time());
    }
}
