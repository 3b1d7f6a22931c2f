//! Experiment 2: Read your own writes: a user comments, then reloads the page. Under
//! normal lag, and with lag injected (the replica's SQL thread stopped,
//! through [`drill::with_sql_thread_stopped`], which starts it again
//! whatever happens), three policies: naive (any replica), pinned to the
//! primary for a window after the write, or waiting on the replica for the
//! write's GTID.

use std::time::{Duration, Instant};

use anyhow::Context;
use common::demo::figure;
use common::measure::{Latencies, LatencySummary, fmt_us};
use common::results::Kind;
use sqlx::MySqlPool;

use super::Demo;
use crate::articles::{self, Shape};
use crate::drill;
use crate::replication::{self, LastWrite, ReadFrom, ReadYourWrites, SplitPool};

const POLICIES: [ReadYourWrites; 3] = [
    ReadYourWrites::Naive,
    ReadYourWrites::PinToPrimary {
        window: Duration::from_secs(5),
    },
    ReadYourWrites::WaitForGtid {
        timeout: Duration::from_millis(50),
    },
];

/// What one policy did over `n` write-then-read rounds.
struct Round {
    policy: ReadYourWrites,
    n: u32,
    stale: u32,
    on_primary: u32,
    read: LatencySummary,
}

/// `n` rounds per policy: write a comment, read the count back.
async fn rounds(
    split: &SplitPool,
    primary: &MySqlPool,
    demo_spec: &common::dataset::DatasetSpec,
    n: u32,
) -> anyhow::Result<Vec<Round>> {
    let mut out = Vec::new();
    for policy in POLICIES {
        let (mut stale, mut on_primary, mut lat) = (0, 0, Latencies::new());
        for i in 0..n {
            let article = demo_spec
                .article_popularity()
                .id_of_rank(2 + u64::from(i) % 50);
            let count = |p: MySqlPool| async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM comments WHERE article_id = ?")
                    .bind(article)
                    .fetch_one(&p)
                    .await
            };
            let before = count(primary.clone()).await?;
            let mut last = LastWrite::default();
            replication::write_tracked(split, &mut last, |mut conn| async move {
                articles::add_comment(
                    &mut *conn,
                    Shape::Denormalized,
                    article,
                    1,
                    "read your writes",
                    0,
                )
                .await?;
                Ok(((), conn))
            })
            .await?;
            let t = Instant::now();
            let (seen, from) = replication::read_own(split, policy, &last, count).await?;
            lat.record(t.elapsed());
            stale += u32::from(seen == before);
            on_primary += u32::from(from == ReadFrom::Primary);
        }
        out.push(Round {
            policy,
            n,
            stale,
            on_primary,
            read: lat.summary(),
        });
    }
    Ok(out)
}

/// Both conditions, every policy.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let split = SplitPool::new(demo.primary.clone(), vec![demo.replica.clone()]);
    let admin =
        common::testing::mariadb_at("MariaDB replica (admin)", &demo.args.replica_admin_url)
            .await?;
    let normal = rounds(&split, &demo.primary, &demo.spec, 200).await?;
    let (primary, spec) = (demo.primary.clone(), demo.spec);
    let injected = drill::with_sql_thread_stopped(&admin, || async {
        // Let the health check see the stopped thread, as a server would.
        tokio::time::sleep(2 * replication::HEALTH_INTERVAL).await;
        rounds(&split, &primary, &spec, 30).await
    })
    .await?;
    for (when, runs) in [
        ("normal lag", normal),
        ("replica stopped applying", injected),
    ] {
        for r in runs {
            let name = r.policy.name();
            figure(
                Kind::Measured,
                format!(
                    "{when:<26} {name:<15} stale reads {:>3}/{}  read p50 {:>8}  answered by the primary {}/{}",
                    r.stale,
                    r.n,
                    fmt_us(r.read.p50_us),
                    r.on_primary,
                    r.n
                ),
            );
            let cmp = format!("read-your-writes, {when}");
            let share = |k: u32| 100.0 * f64::from(k) / f64::from(r.n);
            demo.measured(
                &cmp,
                &format!("{name}: stale reads"),
                share(r.stale),
                "%",
                "reads right after the user's own write that missed it",
            );
            demo.measured(
                &cmp,
                &format!("{name}: read p50"),
                r.read.p50_us as f64,
                "µs",
                "the read's latency, waits included",
            );
            demo.measured(
                &cmp,
                &format!("{name}: reads on the primary"),
                share(r.on_primary),
                "%",
                "reads the primary had to serve",
            );
        }
    }
    replication::measure_lag(&demo.primary, &demo.replica, Duration::from_secs(60))
        .await?
        .context("the replica did not catch up again")?;
    Ok(())
}
