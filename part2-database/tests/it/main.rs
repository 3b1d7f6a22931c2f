//! Part 2's integration tests, against the real stack (`./lab up`).

mod data;
mod http;
mod mongo;
mod replication;
mod sharding;
mod support;
