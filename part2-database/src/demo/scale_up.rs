//! Experiment 4: Scale up: the same uniform random article pages with a buffer pool
//! too small for the data (16 MiB) and one that holds it (1 GiB). The
//! primary's pool is resized online through [`drill::with_buffer_pool`],
//! which puts back the size it found whatever happens.

use common::measure::{self, Load};
use common::results::Kind;

use super::Demo;
use crate::articles::{self, Shape};
use crate::drill;

/// Each size: a warm-up run, then the measured run(s).
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let admin =
        common::testing::mariadb_at("MariaDB primary (admin)", &demo.args.primary_admin_url)
            .await?;
    let cmp = "scale up: buffer pool size (uniform random article pages)";
    for (label, bytes) in [
        ("16 MiB buffer pool", 16u64 << 20),
        ("1 GiB buffer pool", 1u64 << 30),
    ] {
        let demo = &mut *demo;
        drill::with_buffer_pool(&admin, bytes, || async move {
            let (pool, n) = (demo.primary.clone(), demo.spec.sizes.articles);
            let read = move |i: u64| {
                let pool = pool.clone();
                async move {
                    let id = 1 + (i.wrapping_mul(2_654_435_761) % n);
                    articles::page(&pool, Shape::Denormalized, id)
                        .await
                        .map(drop)
                        .map_err(|e| e.to_string())
                }
            };
            // Warm up first: only the large pool can keep what it read.
            measure::run_load(label, Load::closed(4, demo.seconds()), read.clone()).await;
            let load = Load::closed(4, demo.seconds());
            demo.load_runs(Kind::Measured, cmp, label, load, read).await;
            Ok(())
        })
        .await?;
    }
    Ok(())
}
