//! Experiment 4: a file cache on each clone's disk, the article's "never".
//!
//! Three clones with `CACHE=object CACHE_BACKEND=file`: the object
//! pattern, done right, but each clone keeps its cache in a directory of
//! its own (`CACHE_FILE_DIR`, by default `part3-file-cache/{clone id}`
//! under the temporary directory; the demo points `TMPDIR` at a directory
//! of its own, removed afterwards). Each article is read through every
//! clone directly (so every clone holds its file), a comment is posted
//! through clone 1, and the article is read through every clone again. The
//! write deleted clone 1's file only: the two other clones serve the old
//! page, comment missing, until the TTL. Counted against the primary, as
//! in experiments 2 and 3. The same steps with Memcached, one cache shared
//! by every clone: 0 stale.
//!
//! Run it alone: `DEMO_ONLY=4 cargo run -p part3-cache --bin part3-demo`.

use common::demo::figure;
use common::results::Kind;
use part1_clones::cluster::Cluster;

use super::Demo;
use super::no_cache;

/// Articles checked (each through every clone).
pub const ARTICLES: u64 = 5;

/// What one backend did.
#[derive(Debug, Clone, Copy, Default)]
pub struct PerClone {
    /// Reads after a comment (articles x clones).
    pub reads: u32,
    /// Of those, stale (the comment in MariaDB, not in the answer).
    pub stale: u32,
    /// Stale reads from the clone the comment went through.
    pub stale_on_writer: u32,
}

/// Both backends, the same steps.
pub async fn run(demo: &mut Demo) -> anyhow::Result<()> {
    let tmp = std::env::temp_dir().join(common::testing::unique_name("d3files"));
    std::fs::create_dir_all(&tmp)?;
    let tmp_s = tmp.to_string_lossy().into_owned();
    let files = async {
        let cluster = demo
            .cluster(
                3,
                &[
                    ("CACHE", "object"),
                    ("CACHE_BACKEND", "file"),
                    ("TMPDIR", &tmp_s),
                ],
            )
            .await?;
        let out = write_through_one(demo, &cluster).await;
        cluster.stop().await;
        out
    }
    .await;
    let _ = std::fs::remove_dir_all(&tmp);
    let files = files?;
    let cluster = demo
        .cluster(3, &[("CACHE", "object"), ("CACHE_BACKEND", "memcached")])
        .await?;
    let shared = write_through_one(demo, &cluster).await;
    cluster.stop().await;
    let shared = shared?;

    let cmp = "a comment through clone 1, then the article read through each of 3 clones";
    for (name, r) in [
        ("file cache on each clone's disk", files),
        ("Memcached, shared by the clones", shared),
    ] {
        figure(
            Kind::Measured,
            format!(
                "{name:<34} stale reads {:>2} of {} ({ARTICLES} articles x 3 clones; {} on the clone that took the write), checked against the primary",
                r.stale, r.reads, r.stale_on_writer
            ),
        );
        demo.results.measured(
            cmp,
            &format!("{name}: stale reads"),
            f64::from(r.stale),
            &format!("of {}", r.reads),
            "reads after a comment that did not show it, while MariaDB had it",
        );
    }
    figure(
        Kind::Computed,
        format!(
            "file cache: {:.1} of 3 clones serve the old page per write ({} stale / {ARTICLES} articles); Memcached: {:.1}",
            f64::from(files.stale) / ARTICLES as f64,
            files.stale,
            f64::from(shared.stale) / ARTICLES as f64
        ),
    );
    demo.results.computed(
        cmp,
        "file cache: clones serving the old page per write",
        f64::from(files.stale) / ARTICLES as f64,
        "of 3 clones",
        "stale reads / articles written",
    );
    Ok(())
}

/// For [`ARTICLES`] hot articles: read through every clone (twice: the
/// second is served from that clone's cache), comment through clone 1,
/// read through every clone again and count the stale answers.
pub async fn write_through_one(demo: &Demo, cluster: &Cluster) -> anyhow::Result<PerClone> {
    let http = part1_clones::client::http();
    let (_, name, _) = no_cache::median_user(&demo.primary).await?;
    let writer = cluster.clone_url(0);
    let cookie = no_cache::login(&writer, &name).await?;
    let pop = demo.spec.article_popularity();
    // Ranks 21..: not the articles experiments 2 and 3 comment on.
    let ids: Vec<u64> = (21..21 + ARTICLES).map(|r| pop.id_of_rank(r)).collect();
    let marker = common::testing::unique_name("file");
    let mut r = PerClone::default();
    for id in ids {
        for i in 0..cluster.len() {
            let url = format!("{}/articles/{id}", cluster.clone_url(i));
            no_cache::get_article(&http, &url).await?;
            no_cache::get_article(&http, &url).await?;
        }
        let body = format!("{marker} {id}");
        no_cache::ok(
            http.post(format!("{writer}/articles/{id}/comments"))
                .header("cookie", &cookie)
                .json(&serde_json::json!({ "body": body }))
                .send()
                .await,
        )
        .await
        .map_err(|e| anyhow::anyhow!("commenting on article {id} through clone 1: {e}"))?;
        for i in 0..cluster.len() {
            let url = format!("{}/articles/{id}", cluster.clone_url(i));
            let (page, _) = no_cache::get_article(&http, &url).await?;
            let stale = no_cache::is_stale(&demo.primary, id, &body, &page).await?;
            r.reads += 1;
            r.stale += u32::from(stale);
            r.stale_on_writer += u32::from(stale && i == 0);
        }
    }
    Ok(r)
}
