//! Criterion benchmarks, one file per part under `benches/`.
//!
//! Run them with `./lab bench` (or `./lab bench part1`): the stack must be up,
//! since every bench measures a real service round trip next to its baseline.
