//! Experiment 11: Scale out over shards. Every server here shares the same 2 cores,
//! so a second shard adds no CPU and raw throughput barely moves. To show
//! the law, each shard is also given a stated capacity
//! ([`common::capacity::Modelled`]: so many queries at once, so long
//! each); those runs are recorded as *modelled*, their ceiling as
//! *computed*, and the raw run is printed and recorded beside them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use common::capacity::Modelled;
use common::demo::{figure, line};
use common::measure::Load;
use common::results::Kind;
use sqlx::MySqlPool;

use super::Demo;
use crate::articles;
use crate::sharding::{Modulo, Placement};

/// Queries a modelled server works on at once.
const SLOTS: usize = 4;
/// The modelled work of one query.
const SERVICE: Duration = Duration::from_millis(5);

/// 1 and 2 shards, each modelled and raw.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let shards = demo
        .sharded
        .as_ref()
        .context("the sharding experiment runs first")?
        .direct
        .clone();
    let per_server = Modelled::new(SLOTS, SERVICE).ceiling();
    line(format!(
        "each server modelled as {SLOTS} queries at a time x {} ms: at most {per_server:.0} queries/s (every server here shares the same 2 cores)",
        SERVICE.as_millis()
    ));
    let n_users = demo.spec.sizes.users;
    for (label, servers) in [("1 shard", &shards[..1]), ("2 shards", &shards[..2])] {
        for modelled in [true, false] {
            let models: Arc<Vec<(MySqlPool, Modelled)>> = Arc::new(
                servers
                    .iter()
                    .map(|p| (p.clone(), Modelled::new(SLOTS, SERVICE)))
                    .collect(),
            );
            let placement = Modulo(servers.len());
            let read = move |i: u64| {
                let models = models.clone();
                let user = 1 + (i.wrapping_mul(2_654_435_761) % n_users);
                let shard = placement.shard_of(user);
                async move {
                    let (pool, model) = &models[shard];
                    let q = articles::friends(pool, user);
                    let out = if modelled {
                        model.run(q).await
                    } else {
                        q.await
                    };
                    out.map(drop).map_err(|e| e.to_string())
                }
            };
            let (kind, name, cmp) = if modelled {
                (
                    Kind::Modelled,
                    format!("{label}, modelled"),
                    "scale-out over shards (modelled capacity)",
                )
            } else {
                (
                    Kind::Measured,
                    format!("{label}, raw"),
                    "scale-out over shards (raw servers on 2 shared cores)",
                )
            };
            let load = Load::closed(32, demo.seconds());
            demo.load_runs(kind, cmp, &name, load, read).await;
            if modelled {
                let ceiling = per_server * servers.len() as f64;
                figure(
                    Kind::Computed,
                    format!(
                        "{:<28} {ceiling:>9.0} queries/s at most (the model's ceiling)",
                        format!("{label}, modelled ceiling")
                    ),
                );
                demo.results.computed(
                    cmp,
                    &format!("{label}: model ceiling"),
                    ceiling,
                    "queries/s",
                    "servers x slots / service time",
                );
            }
        }
    }
    demo.results.notes.push(format!(
        "Scale-out figures marked modelled give each server a stated capacity ({SLOTS} concurrent queries x {} ms); the raw figures beside them show what servers sharing 2 cores do.",
        SERVICE.as_millis()
    ));
    Ok(())
}
