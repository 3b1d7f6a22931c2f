//! Experiment 9: Resharding: adding a third shard. How many users must move is fixed
//! by the placement scheme, not by this machine, so these figures are
//! *computed* (arithmetic over every user id), not measured: modulo moves
//! about two thirds, consistent hashing about a third (what the new shard
//! takes), a directory exactly what you choose.

use common::demo::figure;
use common::results::Kind;

use super::Demo;
use crate::sharding::{ConsistentHash, Directory, Modulo, moved_share};

/// The share of users whose shard changes from 2 to 3 shards, per scheme.
pub fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let users = demo.spec.sizes.users;
    let keys = || 1..=users;
    let modulo = moved_share(&Modulo(2), &Modulo(3), keys());
    let ring = moved_share(
        &ConsistentHash::new(2, 160),
        &ConsistentHash::new(3, 160),
        keys(),
    );
    let mut dir = Directory::freeze(&Modulo(2), keys(), 3);
    // A directory moves exactly what you choose: a third of the users, to balance.
    for k in keys().filter(|k| k % 3 == 0) {
        dir.assign(k, 2);
    }
    let directory = moved_share(&Modulo(2), &dir, keys());
    let cmp = "adding a third shard: share of users that must move";
    for (name, share) in [
        ("modulo", modulo),
        ("consistent hashing", ring),
        ("directory", directory),
    ] {
        figure(
            Kind::Computed,
            format!("{name:<20} moves {:>5.1}% of {users} users", share * 100.0),
        );
        demo.results.computed(
            cmp,
            name,
            share * 100.0,
            "%",
            "users whose shard changes from 2 to 3 shards",
        );
    }
    Ok(())
}
