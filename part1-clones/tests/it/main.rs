//! Part 1's integration tests, against the real stack (`./lab up`).
//! One test binary; each module is one lesson's claims.

mod avatars;
mod cluster;
mod readiness;
mod sessions;
mod support;
