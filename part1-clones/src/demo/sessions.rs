//! Sessions behind the load balancer: in a clone's memory (the
//! anti-pattern) they are lost 2 requests in 3; in Redis (the fix) never.
//! Then what each store costs one request.

use common::demo::{figure, line};
use common::measure::{self, fmt_us};
use common::results::Kind;

use super::Demo;
use crate::cluster::Cluster;

/// What one user population saw.
pub(super) struct SessionsRun {
    /// Share of requests answered 401, in %.
    pub no_session: f64,
    /// Share of cart items added but not in the cart afterwards, in %.
    pub items_lost: f64,
}

/// Each user browses and fills a cart through the LB, alternating GET /me
/// and POST /cart/items; afterwards the cart is read back.
pub(super) async fn behind_the_balancer(
    demo: &mut Demo,
    sessions: &str,
) -> anyhow::Result<SessionsRun> {
    let cluster = Cluster::start(demo.spec(3, sessions, &[])).await?;
    let users = demo.users(&cluster.lb_url(), demo.args.users).await?;
    let (mut total, mut no_session, mut added) = (0u64, 0u64, 0u64);
    for (u_i, u) in users.iter().enumerate() {
        for r in 0..demo.args.requests {
            total += 1;
            if r % 2 == 0 {
                if u.me().await?.is_none() {
                    no_session += 1;
                }
            } else {
                let status = u.add_item(&format!("item-{u_i}-{r}")).await?;
                if status == 201 {
                    added += 1;
                } else {
                    no_session += 1;
                }
            }
        }
    }
    // The cart the user sees now, wherever it lands, against what they put in.
    let attempted = (users.len() * (demo.args.requests / 2)) as u64;
    let mut seen = 0u64;
    for u in &users {
        seen += u.cart().await?.map_or(0, |c| c.items.len() as u64);
    }
    cluster.stop().await;
    let lost_share = 100.0 * no_session as f64 / total as f64;
    let items_lost = 100.0 * (attempted - seen.min(attempted)) as f64 / attempted.max(1) as f64;
    figure(
        Kind::Measured,
        format!(
            "{sessions:>7} sessions: {no_session} of {total} requests found no session ({lost_share:.1}%); \
             {added} of {attempted} cart additions accepted; the cart shows {seen} ({items_lost:.1}% of items lost)"
        ),
    );
    let cmp = "sessions behind the load balancer (3 clones, round robin)";
    demo.results.measured(
        cmp,
        &format!("{sessions} sessions: requests without a session"),
        lost_share,
        "%",
        "share of a logged-in user's requests answered 401",
    );
    demo.results.measured(
        cmp,
        &format!("{sessions} sessions: cart items lost"),
        items_lost,
        "%",
        "cart items the user added but does not see in the cart",
    );
    Ok(SessionsRun {
        no_session: lost_share,
        items_lost,
    })
}

/// GET /me on one clone, sequentially, per session store, beside the raw
/// Redis round trip it is built on.
pub(super) async fn store_cost(demo: &mut Demo) -> anyhow::Result<()> {
    let mut redis = common::testing::redis_at(&demo.args.demo.stack.redis_url).await?;
    let key = format!("{}:baseline", demo.prefix);
    let () = redis::cmd("SET")
        .arg(&key)
        .arg("x")
        .query_async(&mut redis)
        .await?;
    let n = 400;
    let baseline = measure::sequential(n, |_| {
        let mut r = redis.clone();
        let key = key.clone();
        async move {
            redis::cmd("GET")
                .arg(&key)
                .query_async::<String>(&mut r)
                .await
                .map(drop)
        }
    })
    .await?
    .summary();
    let cmp = "session store cost per request (GET /me on one clone, sequential)";
    figure(
        Kind::Measured,
        format!(
            "{:<30} p50 {:>8}  p99 {:>8}",
            "raw Redis GET (baseline)",
            fmt_us(baseline.p50_us),
            fmt_us(baseline.p99_us)
        ),
    );
    demo.results.measured(
        cmp,
        "raw Redis GET: p50",
        baseline.p50_us as f64,
        "µs",
        "one Redis round trip, no HTTP",
    );
    for store in ["memory", "redis", "mariadb"] {
        let cluster = Cluster::start(demo.spec(1, store, &[])).await?;
        let users = demo.users(&cluster.clone_url(0), 1).await?;
        let u = users[0].clone();
        let lat = measure::sequential(n, |_| {
            let u = u.clone();
            async move { u.me_required().await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("GET /me: {e}"))?
        .summary();
        cluster.stop().await;
        figure(
            Kind::Measured,
            format!(
                "{:<30} p50 {:>8}  p99 {:>8}",
                format!("GET /me, {store} sessions"),
                fmt_us(lat.p50_us),
                fmt_us(lat.p99_us)
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{store} sessions: p50"),
            lat.p50_us as f64,
            "µs",
            "median latency of GET /me",
        );
        demo.results.measured(
            cmp,
            &format!("{store} sessions: p99"),
            lat.p99_us as f64,
            "µs",
            "99th percentile of GET /me",
        );
    }
    line("(memory is fastest and wrong behind a balancer; Redis costs about one round trip more)");
    Ok(())
}
