//! Part 1's integration tests, against the real stack (`./lab up`).
//! One test binary; each module is one lesson's claims.

mod avatars;
mod cart;
mod cluster;
mod connections;
mod load;
mod logins;
mod metrics;
mod parts;
mod readiness;
mod sessions;
mod signup;
mod support;
