//! Part 2's integration tests, against the real stack (`./lab up`).

mod data;
mod drills;
mod http;
mod kill;
mod mongo;
mod reads;
mod replication;
mod sharding;
mod support;
mod writes;
