//! A clone SIGKILLed under reads and writes: no goodbye, connections cut
//! mid-request. HAProxy retries what is safe to repeat on another clone (a
//! GET; a write carrying an `Idempotency-Key`, which the clones answer
//! once); a signup carries no key, so one caught by the kill fails rather
//! than risk being written twice. Sessions are in Redis: nobody is logged
//! out. Afterwards every acknowledged write is counted in the stores.

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;
use sqlx::MySqlPool;

use super::{CART_WRITERS, DRILL_CART_MAX, Demo, SIGNUP_WRITERS};
use crate::cluster::{Cluster, WriteMix};

/// Reads (GET /me) and the write mix run; clone2 is SIGKILLed a third of
/// the way in.
pub(super) async fn run(demo: &mut Demo, db: &MySqlPool) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(demo.spec(3, "redis", &[DRILL_CART_MAX])).await?;
    let lb = cluster.lb_url();
    let users = demo.users(&lb, demo.args.users).await?;
    let writers = demo.users(&lb, CART_WRITERS).await?;
    let seconds = demo.args.demo.load_time();
    let calm = demo
        .me_load("redis, 3 clones, calm", &users, 8, seconds)
        .await;
    figure(Kind::Measured, calm.line());
    let mix = WriteMix::start(&lb, &writers, SIGNUP_WRITERS, &demo.prefix);
    let run = tokio::spawn(super::me_load_detached(
        "redis, clone2 SIGKILLed",
        users.clone(),
        8,
        seconds,
    ));
    // A pause, not a wait for work: the kill lands a third into the run.
    tokio::time::sleep(seconds / 3).await;
    cluster.kill(1).await?;
    let report = run.await.context("load run")?;
    let writes = mix.finish(&writers).await?;
    figure(Kind::Measured, report.line());
    let mut lost = 0;
    for u in &users {
        if u.me().await?.is_none() {
            lost += 1;
        }
    }
    figure(
        Kind::Measured,
        format!("sessions lost after the kill: {lost} of {}", users.len()),
    );
    let audit = writes.audit(db).await?;
    cluster.stop().await;
    let cmp = "a clone SIGKILLed under reads and writes (redis sessions)";
    demo.results.measured(
        cmp,
        "failed reads",
        report.errors as f64,
        "requests",
        "GET /me requests that got an error while clone2 died",
    );
    demo.results.measured(
        cmp,
        "sessions lost",
        lost as f64,
        "sessions",
        "users logged out by the kill",
    );
    demo.results.measured(
        cmp,
        "p99 calm",
        calm.latency.p99_us as f64,
        "µs",
        "99th percentile before the kill",
    );
    demo.results.measured(
        cmp,
        "p99 with the kill",
        report.latency.p99_us as f64,
        "µs",
        "99th percentile of the run with the kill",
    );
    demo.results.measured(
        cmp,
        "max with the kill",
        report.latency.max_us as f64,
        "µs",
        "the slowest request: the blip of a retried request",
    );
    demo.write_figures(cmp, &audit);
    anyhow::ensure!(
        audit.lost == 0 && audit.doubled == 0,
        "the kill lost or doubled acknowledged writes: {}",
        audit.line()
    );
    Ok(())
}
