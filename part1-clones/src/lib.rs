//! # Part 1: Clones
//!
//! > Public servers hide behind a load balancer that spreads requests over a
//! > cluster of identical app servers. A user's requests land on different
//! > servers, so no server may keep user data (sessions, profile pictures)
//! > on its own disk or in its own memory: sessions go to a central store,
//! > Redis preferred. Every server runs the same code, from one image.
//!
//! This crate is that sentence as a running system: an axum app server that
//! keeps nothing of its own, started as N identical clones behind HAProxy,
//! with the local-memory anti-pattern one flag away (`--sessions memory`)
//! so you can watch it fail.
//!
//! ## Reading order
//!
//! 1. [`session`]: the lesson. One trait, [`session::SessionStore`]; the
//!    anti-pattern [`session::MemorySessions`], the fix
//!    [`session::RedisSessions`], and [`session::MariadbSessions`] for
//!    comparison.
//! 2. [`app`]: the routes, generic over the session store; the
//!    [`app::Application`] that builds, runs and stops gracefully.
//! 3. [`users`] and [`avatar`]: users in the shared database, profile
//!    pictures in Redis: nothing on a clone's disk.
//! 4. [`config`]: one binary and one configuration make any number of clones.
//! 5. [`capacity`]: a clone's modelled capacity, so scaling out shows
//!    honestly on a 2-core machine.
//! 6. [`cluster`] and [`client`]: clones and HAProxy as real processes, and
//!    a user with a cookie, for the demo and the tests.
//! 7. [`demo`]: the experiments of `./lab tour part1`, each a number.
//!
//! Run it: `./lab up part1` (3 clones behind HAProxy on 18080), then
//! `curl -i localhost:18080/health`; the guide is `docs/part1-clones.md`.

pub mod app;
pub mod avatar;
pub mod capacity;
pub mod client;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod session;
pub mod users;
