//! Part 3's integration tests, against the real stack (`./lab up`):
//! Memcached, Redis and MariaDB, each test on names of its own (a
//! database, a key prefix), so they run in parallel.

mod backends;
mod http;
mod keys;
mod stampede;
mod support;
mod patterns;
mod eviction;
mod races;
mod streams;
