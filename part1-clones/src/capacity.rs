//! A clone's modelled capacity, so the scaling law shows on a small machine.
//!
//! On the 2-core lab machine, three CPU-bound clones share the same two
//! cores: adding clones cannot add throughput, and a demo that claimed it
//! did would be lying. So each clone can be given a fixed, stated capacity
//! (`MAX_CONCURRENCY` requests at once, `SERVICE_TIME_MS` each): the model
//! is [`common::capacity::Modelled`], the same one part 2 gives its
//! database servers. One clone then serves at most
//! `max_concurrency / service_time` requests per second, three serve three
//! times that, and the demo records those figures as *modelled*, beside
//! the raw run. Both are off by default (`0`).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// The modelled capacity of one clone: part 1's name for the shared model.
pub type Capacity = common::capacity::Modelled;

/// Middleware: wait for a slot, do the modelled work, then the real request.
pub async fn limit(State(capacity): State<Arc<Capacity>>, req: Request, next: Next) -> Response {
    capacity.run(next.run(req)).await
}
