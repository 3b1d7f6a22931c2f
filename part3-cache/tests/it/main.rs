//! Part 3's integration tests, against the real stack (`./lab up`):
//! Memcached, Redis and MariaDB, each test on names of its own (a
//! database, a key prefix), so they run in parallel.

mod backends;
mod coalesce;
mod eviction;
mod http;
mod keys;
mod patterns;
mod races;
mod stampede;
mod streams;
mod support;
