//! The load balancer's own cost: the same load (`GET /health`, the
//! cheapest route, so the hop is what shows) straight to one clone, then
//! through HAProxy in front of that same clone. HAProxy keeps its
//! connections to the clone open (`http-reuse`, backend keep-alive); with
//! a new connection per request (`option http-server-close`) it reached
//! about a sixth of the direct figure here, with keep-alive about 0.45.
//! On two shared cores the balancer, the clone and the load generator
//! compete for the same CPU, so the ratio is a floor: on its own machine
//! a balancer costs a round trip, not half the throughput.

use common::demo::{figure, line};
use common::measure::{self, Load, LoadReport};
use common::results::{Kind, Spread};

use super::Demo;
use crate::client::http;
use crate::cluster::Cluster;

/// Concurrent connections of the load (as wrk -c50 did, a little fewer).
const CONCURRENCY: usize = 32;

async fn health_load(name: &str, base: &str, demo: &Demo) -> LoadReport {
    let (http, url) = (http(), format!("{base}/health"));
    measure::run_load(
        name,
        Load::closed(CONCURRENCY, demo.args.demo.load_time()),
        move |_| {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let res = http.get(&url).send().await.map_err(|e| e.to_string())?;
                let status = res.status();
                // Read the body, so the connection goes back to the pool.
                res.bytes().await.map_err(|e| e.to_string())?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            }
        },
    )
    .await
}

/// Direct, then through HAProxy, `--repeat` times (alternating, so a
/// noisy moment of the machine does not land on one side only).
pub(super) async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let cluster = Cluster::start(demo.spec(1, "redis", &[])).await?;
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for _ in 0..demo.args.demo.repeat {
        direct.push(health_load("straight to the clone", &cluster.clone_url(0), demo).await);
        through.push(health_load("through HAProxy", &cluster.lb_url(), demo).await);
    }
    cluster.stop().await;
    for r in direct.iter().chain(&through) {
        figure(Kind::Measured, r.line());
    }
    let ratios: Vec<f64> = direct
        .iter()
        .zip(&through)
        .map(|(d, t)| t.throughput / d.throughput.max(1e-9))
        .collect();
    let ratio = Spread::of(&ratios).map_or(0.0, |s| s.median);
    figure(
        Kind::Measured,
        format!("through the balancer / direct: {ratio:.2} of the direct throughput"),
    );
    line(
        "(about 0.45 is what HAProxy with keep-alive reached on this 2-core machine; 0.16 without it)",
    );
    let cmp = "the load balancer's cost (GET /health, one clone, 32 connections)";
    demo.results.load_runs(Kind::Measured, cmp, &direct);
    demo.results.load_runs(Kind::Measured, cmp, &through);
    demo.results.repeated(
        Kind::Measured,
        cmp,
        "through HAProxy / direct",
        &ratios,
        "ratio",
        "throughput through the balancer over throughput straight to the clone",
    );
    Ok(())
}
