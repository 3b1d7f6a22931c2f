//! The baker: each page is part 3's page plus a `baked-at` tag, every user
//! text escaped, a gzip copy beside it, written atomically; a vanished
//! article loses its files; a hostile username never becomes a path; a full
//! bake covers the whole dataset (in several batches) and prunes what is
//! gone. Each test has its own database and its own directory.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::dataset::{DatasetSpec, Scale};
use common::testing::{self, TestDatabase, prometheus};
use part2_database::articles::{self, Shape};
use part2_database::schema;
use part3_cache::render;
use part4_async::bake::{self, Baker, UnsafeUsername};

use crate::support::{Db, eventually};

/// A directory of the test's own, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(testing::unique_name("bake"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn gunzip(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut out)
        .unwrap();
    out
}

/// The page without its `baked-at` tag (and the `read-at` tag after it).
fn without_meta(html: &str) -> String {
    let at = bake::baked_at(html).unwrap_or_else(|| panic!("no baked-at tag in {html}"));
    let html = html.replacen(&format!("<meta name=\"baked-at\" content=\"{at}\">"), "", 1);
    match html.find("<meta name=\"read-at\" content=\"") {
        Some(i) => {
            let end = i + html[i..].find('>').unwrap() + 1;
            format!("{}{}", &html[..i], &html[end..])
        }
        None => html,
    }
}

/// Part 3's rendering of article `id`, read as part 3 reads it.
async fn part3_page(pool: &sqlx::MySqlPool, id: u64) -> String {
    let page = articles::page(pool, Shape::Denormalized, id)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("no article {id}"));
    render::article_page(&page)
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).unwrap().to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

fn set_mtime(path: &Path, at: SystemTime) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(at))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[tokio::test]
async fn a_baked_article_is_part_3s_page_plus_the_baked_at_tag() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let before = now_ms();
    let baked = baker.article(1).await.unwrap();
    let after = now_ms();

    assert_eq!(baked.path, dir.0.join("articles").join("1.html"));
    assert_eq!(baked.path, baker.article_path(1));
    assert!(!baked.removed);
    let html = read(&baked.path);
    assert_eq!(baked.bytes, html.len() as u64);
    let at = bake::baked_at(&html).unwrap();
    assert!(
        (before..=after).contains(&at),
        "{before} <= {at} <= {after}"
    );
    assert_eq!(without_meta(&html), part3_page(&db.db.pool, 1).await);
    // The charset declaration stays first in <head>.
    assert!(
        html.contains("<head><meta charset=\"utf-8\"><meta name=\"baked-at\""),
        "{html}"
    );
    db.drop().await;
}

#[tokio::test]
async fn every_user_text_is_escaped_on_both_pages() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let pool = &db.db.pool;
    let evil = "<script>alert('x')</script>";
    sqlx::query("UPDATE users SET display_name = ? WHERE id = 1")
        .bind(evil)
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO articles (id, author_id, title, body, published_at, author_name) VALUES (4, 1, ?, ?, 4, ?)",
    )
    .bind(evil)
    .bind(evil)
    .bind(evil)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO comments (id, article_id, author_id, body, created_at) VALUES (6, 4, 2, ?, 6)",
    )
    .bind(evil)
    .execute(pool)
    .await
    .unwrap();
    let baker = Baker::new(pool.clone(), &dir.0);
    let article = read(&baker.article(4).await.unwrap().path);
    let author = read(&baker.author(1).await.unwrap().path);
    // The article: title (twice: <title>, <h1>), author, body, comment.
    // The author page: the name (twice: <title>, <h1>) and the title.
    for (what, html, shown) in [("article", &article, 5), ("author", &author, 3)] {
        assert!(!html.contains("<script"), "{what}: {html}");
        assert_eq!(
            html.matches("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;")
                .count(),
            shown,
            "{what}: {html}"
        );
    }
    db.drop().await;
}

#[tokio::test]
async fn the_gzip_copy_decompresses_to_the_same_page() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    for baked in [
        baker.article(2).await.unwrap(),
        baker.author(1).await.unwrap(),
    ] {
        let gz = PathBuf::from(format!("{}.gz", baked.path.display()));
        assert_eq!(gunzip(&gz), read(&baked.path));
        assert_eq!(baked.gzip_bytes, std::fs::metadata(&gz).unwrap().len());
    }
    db.drop().await;
}

#[tokio::test]
async fn writes_are_atomic_and_leave_no_temporary_files() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let path = baker.article(1).await.unwrap().path;

    // A reader that keeps opening the page while it is re-baked 50 times
    // sees a whole page every time: the old one or the new one.
    let reader = {
        let path = path.clone();
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let task = tokio::task::spawn_blocking(move || {
            let (mut reads, mut partial) = (0u64, 0u64);
            while !*done.borrow() {
                let html = std::fs::read_to_string(&path).unwrap();
                reads += 1;
                if !(html.starts_with("<!doctype html>") && html.ends_with("</html>\n")) {
                    partial += 1;
                }
            }
            (reads, partial)
        });
        (done_tx, task)
    };
    for _ in 0..50 {
        baker.article(1).await.unwrap();
    }
    reader.0.send(true).unwrap();
    let (reads, partial) = reader.1.await.unwrap();
    assert!(reads > 0);
    assert_eq!(partial, 0, "{partial} of {reads} reads saw a partial page");

    baker.all().await.unwrap();
    let names = files(&dir.0);
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".tmp") && !n.contains("/.")),
        "{names:?}"
    );
    assert_eq!(
        names,
        [
            "articles/1.html",
            "articles/1.html.gz",
            "articles/2.html",
            "articles/2.html.gz",
            "articles/3.html",
            "articles/3.html.gz",
            "users/ada.html",
            "users/ada.html.gz",
            "users/bob.html",
            "users/bob.html.gz",
        ]
    );
    db.drop().await;
}

#[tokio::test]
async fn a_removed_article_has_its_files_removed() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let path = baker.article(3).await.unwrap().path;
    assert!(path.exists());
    sqlx::query("DELETE FROM articles WHERE id = 3")
        .execute(&db.db.pool)
        .await
        .unwrap();
    let baked = baker.article(3).await.unwrap();
    assert!(baked.removed);
    assert_eq!(baked.path, path);
    assert!(!path.exists());
    assert!(!PathBuf::from(format!("{}.gz", path.display())).exists());
    // Again, with nothing left to remove: still fine.
    assert!(baker.article(3).await.unwrap().removed);
    // Never baked at all: fine too.
    assert!(baker.article(999).await.unwrap().removed);
    db.drop().await;
}

#[tokio::test]
async fn a_full_bake_prunes_what_is_gone_and_keeps_what_is_fresher() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let first = baker.all().await.unwrap();
    assert_eq!((first.articles, first.removed), (3, 0));

    // Article 2 is deleted while no event says so (its files are from an
    // earlier bake); a crashed bake left a temporary file behind.
    sqlx::query("DELETE FROM articles WHERE id = 2")
        .execute(&db.db.pool)
        .await
        .unwrap();
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    let two = baker.article_path(2);
    let two_gz = PathBuf::from(format!("{}.gz", two.display()));
    set_mtime(&two, hour_ago);
    set_mtime(&two_gz, hour_ago);
    let tmp = dir.0.join("articles").join(".1.html.1-1.tmp");
    std::fs::write(&tmp, "half a pa").unwrap();
    set_mtime(&tmp, hour_ago);
    // A file the bake does not write is never touched.
    let other = dir.0.join("articles").join("notes.txt");
    std::fs::write(&other, "mine").unwrap();
    set_mtime(&other, hour_ago);
    // Article 1 was re-baked by a worker after this bake will read it.
    let one = baker.article_path(1);
    std::fs::write(&one, "fresher").unwrap();
    set_mtime(&one, SystemTime::now() + Duration::from_secs(3600));

    let second = baker.all().await.unwrap();
    assert_eq!(second.removed, 1, "{second:?}");
    assert_eq!(second.kept_fresher, 1, "{second:?}");
    // Article 3 and bob's page are as they were; ada's lost article 2.
    assert_eq!((second.articles, second.authors), (0, 1), "{second:?}");
    assert_eq!(second.unchanged, 2, "{second:?}");
    assert!(!two.exists() && !two_gz.exists() && !tmp.exists());
    assert!(other.exists());
    assert_eq!(read(&one), "fresher");
    db.drop().await;
}

#[tokio::test]
async fn the_author_page_lists_their_articles_newest_first() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let baked = baker.author(1).await.unwrap();
    assert_eq!(baked.path, dir.0.join("users").join("ada.html"));
    let html = read(&baked.path);
    assert!(bake::baked_at(&html).is_some());
    let links: Vec<usize> = (1..=3)
        .map(|id| {
            html.find(&format!("<a href=\"/articles/{id}\">article {id}</a>"))
                .unwrap_or_else(|| panic!("no link to article {id}: {html}"))
        })
        .collect();
    assert!(links[2] < links[1] && links[1] < links[0], "{html}");
    assert!(html.contains("3 articles"), "{html}");

    let bob = read(&baker.author(2).await.unwrap().path);
    assert_eq!(bob.matches("<a href=").count(), 0, "{bob}");
    assert!(bob.contains("0 articles"), "{bob}");

    let missing = baker.author(999).await.unwrap_err();
    assert!(missing.to_string().contains("no user 999"), "{missing:#}");
    db.drop().await;
}

#[tokio::test]
async fn a_hostile_username_is_refused() {
    let db = Db::new().await;
    let root = TempDir::new();
    // The tree lives one level down, so an escape would land in `root`.
    let tree = root.0.join("tree");
    let baker = Baker::new(db.db.pool.clone(), &tree);
    let hostile = ["../../escaped", "a/b", "..", "nul\0byte", "Caps", ""];
    for (i, name) in hostile.iter().enumerate() {
        sqlx::query(
            "INSERT INTO users (id, username, password_hash, created_at) VALUES (?, ?, 'x', 0)",
        )
        .bind(10 + i as u64)
        .bind(name)
        .execute(&db.db.pool)
        .await
        .unwrap();
    }
    for (i, name) in hostile.iter().enumerate() {
        let e = baker.author(10 + i as u64).await.unwrap_err();
        let unsafe_name = e
            .downcast_ref::<UnsafeUsername>()
            .unwrap_or_else(|| panic!("{name:?}: {e:#}"));
        assert_eq!(unsafe_name.username, *name);
        assert!(e.to_string().contains("not a safe file name"), "{e}");
    }
    let stats = baker.all().await.unwrap();
    assert_eq!(stats.refused, hostile.len() as u64, "{stats:?}");
    assert_eq!(stats.authors, 2, "{stats:?}");
    // Nothing outside the tree, and only the two safe users inside it.
    assert_eq!(
        files(&root.0)
            .iter()
            .filter(|f| !f.starts_with("tree/"))
            .count(),
        0
    );
    assert_eq!(
        files(&tree.join("users")),
        ["ada.html", "ada.html.gz", "bob.html", "bob.html.gz"]
    );
    db.drop().await;
}

#[tokio::test]
async fn a_full_bake_covers_the_dataset_in_batches_and_matches_the_single_bakes() {
    let db = TestDatabase::create("MariaDB primary", &testing::stack().mariadb_primary_url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    schema::migrate(&db.pool).await.unwrap();
    let spec = DatasetSpec::new(9, Scale::Tiny);
    schema::load(&db.pool, &spec).await.unwrap();
    let (n_articles, n_users): (i64, i64) =
        sqlx::query_as("SELECT (SELECT COUNT(*) FROM articles), (SELECT COUNT(*) FROM users)")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(n_articles as u32 > bake::BATCH, "several batches");

    let dir = TempDir::new();
    let baker = Baker::new(db.pool.clone(), &dir.0);
    let stats = baker.all().await.unwrap();
    assert_eq!(stats.articles, n_articles as u64, "{stats:?}");
    assert_eq!(stats.authors, n_users as u64, "{stats:?}");
    assert_eq!(stats.pages, stats.articles + stats.authors);
    assert_eq!(
        (stats.removed, stats.refused, stats.kept_fresher),
        (0, 0, 0)
    );

    let names = files(&dir.0);
    assert_eq!(names.len() as u64, 2 * stats.pages);
    let size = |suffix: &str| -> u64 {
        names
            .iter()
            .filter(|n| n.ends_with(suffix))
            .map(|n| std::fs::metadata(dir.0.join(n)).unwrap().len())
            .sum()
    };
    assert_eq!(stats.bytes, size(".html"));
    assert_eq!(stats.gzip_bytes, size(".gz"));

    // Every batched page is the page part 3 renders for that article.
    let ids: Vec<u64> = sqlx::query_scalar("SELECT id FROM articles ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    let mut differ = Vec::new();
    for id in ids {
        let baked = without_meta(&read(&baker.article_path(id)));
        if baked != part3_page(&db.pool, id).await {
            differ.push(id);
        }
    }
    assert!(differ.is_empty(), "batched pages differ: {differ:?}");

    // And every author page is what the single bake writes.
    let users: Vec<(u64, String)> = sqlx::query_as("SELECT id, username FROM users ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    for (id, username) in users.into_iter().take(20) {
        let path = baker.author_path(id, &username).unwrap();
        let batched = without_meta(&read(&path));
        baker.author(id).await.unwrap();
        assert_eq!(batched, without_meta(&read(&path)), "user {id}");
    }
    db.drop_database().await;
}

#[tokio::test]
async fn run_every_bakes_serves_health_and_stops() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        baker
            .run_every(
                Duration::ZERO,
                Duration::from_secs(3600),
                Some(listener),
                async move {
                    let _ = stopped.await;
                },
            )
            .await
    });
    let client = reqwest::Client::new();
    let health: serde_json::Value = eventually("a first bake reported on /health", || {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let v: serde_json::Value = client.get(&url).send().await.ok()?.json().await.ok()?;
            (v["bakes"] == 1).then_some(v)
        }
    })
    .await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["last"]["pages"], 5);
    assert_eq!(health["failures"], 0);
    // Its /metrics, beside /health: parses, and counts the bake (at least
    // this one: the recorder is the test process's).
    let metrics_url = url.replace("/health", "/metrics");
    let text = client
        .get(&metrics_url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let samples = prometheus::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let ok = prometheus::find(&samples, "lab_bakes_total", &[("result", "ok")]);
    assert!(ok.first().is_some_and(|s| s.value >= 1.0), "{text}");
    assert_eq!(
        prometheus::find(&samples, "lab_bake_last_seconds", &[]).len(),
        1,
        "{text}"
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run_every stops when told")
        .unwrap()
        .unwrap();
    db.drop().await;
}

#[tokio::test]
async fn run_every_can_wait_one_interval_before_its_first_bake() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/health", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hour = Duration::from_secs(3600);
    let run = tokio::spawn(async move {
        baker
            .run_every(hour, hour, Some(listener), async move {
                let _ = stopped.await;
            })
            .await
    });
    let health: serde_json::Value = eventually("/health answers", || {
        let url = url.clone();
        async move { reqwest::get(&url).await.ok()?.json().await.ok() }
    })
    .await;
    assert_eq!(
        (health["status"].as_str(), health["bakes"].as_u64()),
        (Some("ok"), Some(0))
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run_every stops when told, even while waiting")
        .unwrap()
        .unwrap();
    assert!(files(&dir.0).is_empty());
    db.drop().await;
}

#[tokio::test]
async fn a_re_bake_rewrites_only_what_changed_and_prunes_nothing_alive() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);
    let first = baker.all().await.unwrap();
    assert_eq!((first.pages, first.unchanged), (5, 0), "{first:?}");
    let before = files(&dir.0);
    // Every file is old now: only the set of what the bake found may
    // decide what is pruned, never the age alone.
    let hour_ago = SystemTime::now() - Duration::from_secs(3600);
    for f in &before {
        set_mtime(&dir.0.join(f), hour_ago);
    }
    let baked_at = bake::baked_at(&read(&baker.article_path(2))).unwrap();

    sqlx::query("UPDATE articles SET like_count = like_count + 1 WHERE id = 1")
        .execute(&db.db.pool)
        .await
        .unwrap();
    let second = baker.all().await.unwrap();
    // Article 1 and ada's page (it shows the count) changed.
    assert_eq!((second.articles, second.authors), (1, 1), "{second:?}");
    assert_eq!((second.unchanged, second.removed), (3, 0), "{second:?}");
    assert_eq!(files(&dir.0), before);
    assert_eq!(
        bake::baked_at(&read(&baker.article_path(2))),
        Some(baked_at)
    );
    assert!(read(&baker.article_path(1)).contains("1 likes"));
    db.drop().await;
}

/// Two re-bakes of one article finishing out of order: A read before a
/// comment, B after it; B writes first, then A. B's page stays (A is
/// kept out), for the article page and the author page alike. Then a
/// read later than B's writes as usual.
#[tokio::test]
async fn an_older_read_never_overwrites_a_newer_page() {
    let db = Db::new().await;
    let dir = TempDir::new();
    let baker = Baker::new(db.db.pool.clone(), &dir.0);

    // A: the time before its read, then the read and the render.
    let a_read_at = SystemTime::now();
    let old = articles::page(&db.db.pool, Shape::Denormalized, 1)
        .await
        .unwrap()
        .unwrap();
    let a_html = bake::article_html(&old, now_ms());

    // A comment lands; B reads after it and writes first.
    let text = testing::unique_name("newer comment");
    sqlx::query(
        "INSERT INTO comments (article_id, author_id, body, created_at) VALUES (1, 2, ?, 4102444800)",
    )
    .bind(&text)
    .execute(&db.db.pool)
    .await
    .unwrap();
    let b = baker.article(1).await.unwrap();
    assert!(!b.kept_fresher && !b.unchanged && !b.removed, "{b:?}");
    assert!(read(&b.path).contains(&text), "B's page shows the comment");

    // A finishes last: kept out.
    let a = baker
        .write_unless_fresher(baker.article_path(1), a_read_at, a_html.clone())
        .await
        .unwrap();
    assert!(a.kept_fresher, "{a:?}");
    assert_eq!(a.bytes, 0);
    assert!(read(&b.path).contains(&text), "the newer page stays");

    // The author page: the same guard.
    let author = baker.author(1).await.unwrap();
    let before = read(&author.path);
    let late = baker
        .write_unless_fresher(author.path.clone(), a_read_at, "older".into())
        .await
        .unwrap();
    assert!(late.kept_fresher, "{late:?}");
    assert_eq!(read(&author.path), before);

    // A read later than B's is written over B's page as usual.
    let later = baker
        .write_unless_fresher(
            baker.article_path(1),
            SystemTime::now(),
            a_html.replace("</body>", "<p>later</p></body>"),
        )
        .await
        .unwrap();
    assert!(!later.kept_fresher && !later.unchanged, "{later:?}");
    assert!(read(&b.path).contains("<p>later</p>"));
    db.drop().await;
}
