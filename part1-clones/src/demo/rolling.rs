//! Rolling restart: every clone runs the same code, so a new build goes
//! out by replacing the clones one at a time (SIGTERM: each finishes what
//! it has in flight), under reads and writes. No request fails, no write is
//! lost or doubled, and every clone ends on the new build.

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;
use sqlx::MySqlPool;

use super::{CART_WRITERS, DRILL_CART_MAX, Demo, SIGNUP_WRITERS};
use crate::cluster::{Cluster, WriteMix};

/// Rolls 3 clones to `v2` while GET /me and the write mix run.
pub(super) async fn run(demo: &mut Demo, db: &MySqlPool) -> anyhow::Result<()> {
    let mut cluster = Cluster::start(demo.spec(3, "redis", &[DRILL_CART_MAX])).await?;
    let lb = cluster.lb_url();
    let users = demo.users(&lb, demo.args.users).await?;
    let writers = demo.users(&lb, CART_WRITERS).await?;
    // Long enough to cover the roll: about 3 s per clone, plus the run.
    let roll_time = std::time::Duration::from_secs(3 * 3) + demo.args.demo.load_time();
    let mix = WriteMix::start(&lb, &writers, SIGNUP_WRITERS, &demo.prefix);
    let run = tokio::spawn(super::me_load_detached(
        "redis, rolling restart",
        users.clone(),
        8,
        roll_time,
    ));
    let before = cluster.versions().await?;
    cluster.roll("v2").await?;
    let report = run.await.context("load run")?;
    let writes = mix.finish(&writers).await?;
    let after = cluster.versions().await?;
    let audit = writes.audit(db).await?;
    cluster.stop().await;
    figure(Kind::Measured, report.line());
    figure(
        Kind::Measured,
        format!("builds before the roll {before:?}, after {after:?}"),
    );
    let cmp = "rolling restart to a new build under reads and writes";
    demo.results.measured(
        cmp,
        "failed reads",
        report.errors as f64,
        "requests",
        "GET /me requests that got an error while each clone was replaced in turn",
    );
    demo.results.measured(
        cmp,
        "reads served",
        report.requests as f64,
        "requests",
        "GET /me requests made during the roll",
    );
    let on_new = after.iter().filter(|v| *v == "v2").count();
    demo.results.measured(
        cmp,
        "clones on the new build",
        on_new as f64,
        "clones",
        &format!(
            "clones that report the new build afterwards (of {})",
            after.len()
        ),
    );
    demo.write_figures(cmp, &audit);
    anyhow::ensure!(on_new == after.len(), "a clone missed the roll: {after:?}");
    anyhow::ensure!(
        audit.lost == 0 && audit.doubled == 0,
        "the roll lost or doubled acknowledged writes: {}",
        audit.line()
    );
    Ok(())
}
