//! Experiment 3: A replica dies under a read load (a chaos proxy cuts it): reads fall
//! back to the primary. Then the primary stops: the proxy closes its port,
//! so connects are refused as they are by a stopped `mariadbd`. A write
//! fails after the acquire timeout (`DB_ACQUIRE_TIMEOUT_MS`, the server's
//! setting; sqlx retries a refused connect until then), which the server
//! turns into a 503; reads go on from the replica.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::config::with_database;
use common::demo::figure;
use common::measure::{self, Load, fmt_us};
use common::results::Kind;
use common::testing::ChaosProxy;

use super::{Demo, host_port, us};
use crate::articles::{self, Shape};
use crate::replication::{self, ReadFrom, SplitPool, lazy_pool, lazy_pool_with};

/// Both drills.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    replica_cut(demo).await?;
    primary_stopped(demo).await
}

async fn replica_cut(demo: &mut Demo) -> anyhow::Result<()> {
    let replica_url = with_database(&demo.stack().mariadb_replica_url, &demo.args.database);
    let proxy = Arc::new(ChaosProxy::start(&host_port(&replica_url)).await?);
    let replica = lazy_pool(&proxy.url_for(&replica_url), 8)?;
    let split = SplitPool::new(demo.primary.clone(), vec![replica]);
    let served_by_primary = Arc::new(AtomicU64::new(0));
    let n = demo.spec.sizes.articles;
    let run = {
        let (split, served_by_primary) = (split.clone(), served_by_primary.clone());
        tokio::spawn(measure::run_load(
            "reads, replica cut",
            Load::closed(8, demo.seconds() * 2),
            move |i| {
                let split = split.clone();
                let served_by_primary = served_by_primary.clone();
                async move {
                    let id = 1 + (i * 7919) % n;
                    let (_, from) = split
                        .read(|p| async move { articles::page(&p, Shape::Denormalized, id).await })
                        .await
                        .map_err(|e| e.to_string())?;
                    if from == ReadFrom::Primary {
                        served_by_primary.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), String>(())
                }
            },
        ))
    };
    tokio::time::sleep(demo.seconds() / 2).await;
    proxy.cut();
    let report = run.await?;
    proxy.restore();
    let fell_back = served_by_primary.load(Ordering::Relaxed);
    figure(Kind::Measured, report.line());
    figure(
        Kind::Measured,
        format!(
            "{fell_back} of {} reads were answered by the primary after the replica was cut",
            report.requests
        ),
    );
    let cmp = "a replica dies under a read load";
    demo.measured(
        cmp,
        "failed reads",
        report.errors as f64,
        "reads",
        "reads that got an error",
    );
    demo.measured(
        cmp,
        "reads served by the primary",
        100.0 * fell_back as f64 / report.requests.max(1) as f64,
        "%",
        "the fallback at work",
    );
    Ok(())
}

async fn primary_stopped(demo: &mut Demo) -> anyhow::Result<()> {
    let primary_url = with_database(&demo.stack().mariadb_primary_url, &demo.args.database);
    let proxy = ChaosProxy::start(&host_port(&primary_url)).await?;
    let acquire = Duration::from_millis(demo.args.db_acquire_timeout_ms.max(1));
    let split = SplitPool::new(
        lazy_pool_with(&proxy.url_for(&primary_url), 4, acquire)?,
        vec![demo.replica.clone()],
    );
    // The pool held a live connection before the stop, as a running server's does.
    articles::page(split.primary(), Shape::Denormalized, 1).await?;
    proxy.refuse();
    let t = Instant::now();
    let write = articles::add_comment(split.primary(), Shape::Denormalized, 1, 1, "x", 0).await;
    let failed_after = t.elapsed();
    proxy.restore();
    anyhow::ensure!(
        write.as_ref().is_err_and(replication::is_connection_error),
        "a write with the primary stopped: {write:?}"
    );
    proxy.refuse();
    let mut reads_ok = 0;
    for id in 1..=50 {
        if split
            .read(|p| async move { articles::page(&p, Shape::Denormalized, id).await })
            .await
            .is_ok()
        {
            reads_ok += 1;
        }
    }
    proxy.restore();
    figure(
        Kind::Measured,
        format!(
            "primary stopped (connections refused): a write fails after {} (acquire timeout {} ms; the server answers 503), and {reads_ok}/50 reads still succeed",
            fmt_us(failed_after.as_micros() as u64),
            acquire.as_millis()
        ),
    );
    let cmp = "the primary stops";
    demo.measured(
        cmp,
        "time to fail a write",
        us(failed_after),
        "µs",
        "connect refused, retried until DB_ACQUIRE_TIMEOUT_MS: what a user waits for the 503",
    );
    demo.measured(
        cmp,
        "reads that still succeed",
        f64::from(reads_ok),
        "of 50",
        "reads go on from the replica",
    );
    Ok(())
}
