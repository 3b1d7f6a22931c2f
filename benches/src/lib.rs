//! Criterion benchmarks, one file per part under `benches/`.
//!
//! Run them with `./lab bench` (or `./lab bench part1`): the stack must be up,
//! since every bench measures a real service round trip next to its baseline.
//!
//! Part 4's queue throughput is shared by the criterion bench and a sweep
//! binary that charts it: [`queue_load`] (publish and consume N jobs
//! through part 4's own queue code) and [`sweep`] (`part4-sweep`: every
//! prefetch and confirm window, written into the lab report).

pub mod queue_load;
pub mod sweep;
