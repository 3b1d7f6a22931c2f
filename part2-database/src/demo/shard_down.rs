//! Experiment 10: A shard dies (its chaos proxy cuts every connection): its users get
//! a clear "shard 1 is unavailable", everyone else is served as before.

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;

use super::Demo;

/// 200 users' friend lists with shard 1 cut.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let sharded = demo
        .sharded
        .as_ref()
        .context("the sharding experiment runs first")?;
    sharded.proxy.cut();
    let (mut ok, mut failed_on_1, mut failed_elsewhere) = (0, 0, 0);
    for u in 1..=200u64 {
        match sharded.store.friends(u).await {
            Ok(_) => ok += 1,
            Err(e) if e.shard == 1 => failed_on_1 += 1,
            Err(_) => failed_elsewhere += 1,
        }
    }
    sharded.proxy.restore();
    figure(
        Kind::Measured,
        format!(
            "shard 1 cut: {ok} users served, {failed_on_1} told \"shard 1 is unavailable\", {failed_elsewhere} others failed"
        ),
    );
    let cmp = "one shard dies";
    let r = &mut demo.results;
    r.measured(
        cmp,
        "users served",
        ok as f64,
        "of 200",
        "users of the live shard",
    );
    r.measured(
        cmp,
        "users with a clear error",
        failed_on_1 as f64,
        "of 200",
        "users of the dead shard",
    );
    r.measured(
        cmp,
        "other failures",
        failed_elsewhere as f64,
        "of 200",
        "users of the live shard who failed anyway",
    );
    Ok(())
}
