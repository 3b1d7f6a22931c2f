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
//!    [`app::Application`] that builds, runs and stops gracefully; the
//!    [`app::AppPart`] trait by which part 2 grows it.
//! 3. [`users`] and [`avatar`]: users in the shared database, profile
//!    pictures in Redis: nothing on a clone's disk.
//! 4. [`idempotency`] and [`throttle`]: what shared state makes possible
//!    across clones: a write safe to retry, failed logins counted once for
//!    the whole tier.
//! 5. [`config`]: one binary and one configuration make any number of clones.
//! 6. [`capacity`]: a clone's modelled capacity, so scaling out shows
//!    honestly on a 2-core machine.
//! 7. [`cluster`] and [`client`]: clones and HAProxy as real processes, and
//!    a user with a cookie, for the demo and the tests.
//! 8. [`demo`]: the experiments of `./lab tour part1`, each a number.
//!
//! ## What a clone defends against
//!
//! A clone faces the internet (through the balancer), so part 1 also shows
//! the basics every clone needs, each with its test: a session cookie whose
//! `Max-Age` follows the server's sliding and absolute expiry and a planted
//! second `sid` that cannot lock a user out; a capped cart and an
//! `Idempotency-Key` so a retried POST adds one item; Argon2id bounded to
//! one hash per core in reused memory, and failed logins limited per account
//! and per client (429 + `Retry-After`); body limits per route (413);
//! avatars whose headers are decoded, served with `nosniff`; a header-read
//! timeout against slowloris; utf8mb4 text.
//!
//! Binaries: `part1-server` (a clone) and `part1-load` (the dataset's
//! users, loaded once before the clones start; the server never loads data).
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
pub mod idempotency;
pub mod session;
pub mod throttle;
pub mod users;
