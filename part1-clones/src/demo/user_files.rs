//! User files in the shared store: a profile picture uploaded through one
//! clone is served, byte for byte, by every other, because it lives in
//! Redis, not on the clone's disk.

use anyhow::Context;
use common::demo::figure;
use common::results::Kind;

use super::Demo;
use crate::client::{UserClient, http};
use crate::cluster::Cluster;

/// Upload through clone1, fetch from clones 2 and 3.
pub(super) async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let cluster = Cluster::start(demo.spec(3, "redis", &[])).await?;
    let users = demo.users(&cluster.clone_url(0), 1).await?;
    let me = users[0].me().await?.context("logged in")?;
    let png = crate::avatar::sample_png(32, 32);
    let status = users[0].put_avatar("image/png", png.clone()).await?;
    anyhow::ensure!(status == 204, "upload: {status}");
    let mut served = 0;
    for i in 1..cluster.len() {
        let other = UserClient::new(http(), &cluster.clone_url(i));
        let (status, kind, bytes) = other.avatar(&me.username).await?;
        if status == 200 && kind == "image/png" && bytes == png {
            served += 1;
        }
    }
    let others = cluster.len() - 1;
    figure(
        Kind::Measured,
        format!("uploaded through clone1; served identically by {served} of {others} other clones"),
    );
    cluster.stop().await;
    demo.results.measured(
        "user files in the shared store",
        "avatar served by other clones",
        served as f64,
        "clones",
        &format!("clones (of {others}) that served the picture uploaded through clone1"),
    );
    Ok(())
}
