//! Path 2: MongoDB, with the data denormalized into documents and joins done
//! in application code.
//!
//! An article document embeds its author's summary and its comments, so an
//! article page is one `find_one`. A user document holds its friends' ids,
//! so the feed is "friend ids, then one `$in` query" ([`feed_app_join`]):
//! two round trips, each a simple indexed lookup the database can serve
//! from anywhere. [`feed_lookup`] asks the server to join instead
//! (`$lookup`), which is one round trip but the join work lands on the
//! database, which is what the article says to avoid.
//!
//! The server here is SecantusDB, a MongoDB-wire server written in Python:
//! its latencies are not a real mongod's. Round trips and query counts do
//! not depend on that, so those lead; every figure names the server.
//! Round trips are counted, not asserted: [`connect_monitored`] hands back
//! a [`CommandCounter`] fed by the driver's command monitoring (one
//! `CommandStartedEvent` per command sent, `getMore` included).
//!
//! [`migrate`] copies MariaDB into documents, denormalizing as it goes
//! (the article's "migrate while the dataset is still small"), then checks
//! that every count matches.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::TryStreamExt;
use mongodb::bson::{Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::IndexOptions;
use mongodb::{Client, Database, IndexModel};
use sqlx::MySqlPool;

/// Connects with short timeouts; the error says how to start the server.
pub async fn connect(url: &str, database: &str) -> anyhow::Result<Database> {
    Ok(connect_monitored(url, database).await?.0)
}

/// The commands a client has sent, as its driver's command monitoring saw
/// them: a round trip each (the handshake and heartbeats of the driver's
/// own monitoring connections are not commands, so are not counted).
#[derive(Debug, Clone, Default)]
pub struct CommandCounter(Arc<AtomicU64>);

impl CommandCounter {
    /// Commands started so far.
    pub fn total(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Runs `f` and returns its output with the commands it sent. Only
    /// meaningful when nothing else uses the client meanwhile.
    pub async fn count<T>(&self, f: impl Future<Output = T>) -> (T, u64) {
        let before = self.total();
        let out = f.await;
        (out, self.total() - before)
    }
}

/// [`connect`], with a [`CommandCounter`] on the client.
pub async fn connect_monitored(
    url: &str,
    database: &str,
) -> anyhow::Result<(Database, CommandCounter)> {
    let mut options = mongodb::options::ClientOptions::parse(url).await?;
    options.server_selection_timeout = Some(std::time::Duration::from_secs(3));
    options.connect_timeout = Some(std::time::Duration::from_secs(3));
    let counter = CommandCounter::default();
    let seen = counter.0.clone();
    options.command_event_handler = Some(EventHandler::callback(move |event: CommandEvent| {
        if let CommandEvent::Started(_) = event {
            seen.fetch_add(1, Ordering::Relaxed);
        }
    }));
    let client = Client::with_options(options)?;
    let db = client.database(database);
    db.run_command(doc! { "ping": 1 }).await.map_err(|e| {
        anyhow::anyhow!("the MongoDB-wire server is not reachable at {url}: run ./lab up ({e})")
    })?;
    Ok((db, counter))
}

/// Creates the indexes the queries need (idempotent).
pub async fn create_indexes(db: &Database) -> anyhow::Result<()> {
    let articles = db.collection::<Document>("articles");
    articles
        .create_index(
            IndexModel::builder()
                .keys(doc! { "author.id": 1, "published_at": -1 })
                .build(),
        )
        .await?;
    db.collection::<Document>("users")
        .create_index(
            IndexModel::builder()
                .keys(doc! { "username": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await?;
    Ok(())
}

/// What a migration copied, and how fast.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Migration {
    /// Users copied.
    pub users: u64,
    /// Articles copied.
    pub articles: u64,
    /// Comments embedded.
    pub comments: u64,
    /// Friendship edges (both directions) embedded.
    pub friendships: u64,
    /// Wall time.
    pub seconds: f64,
}

impl Migration {
    /// Source rows per second.
    pub fn rate(&self) -> f64 {
        (self.users + self.articles + self.comments + self.friendships) as f64
            / self.seconds.max(1e-9)
    }
}

const BATCH: u64 = 500;

/// Copies users (with friend ids) and articles (with author and comments
/// embedded) from MariaDB into `db`, in batches by id.
pub async fn migrate(pool: &MySqlPool, db: &Database) -> anyhow::Result<Migration> {
    let start = Instant::now();
    let users_coll = db.collection::<Document>("users");
    let articles_coll = db.collection::<Document>("articles");
    let mut m = Migration {
        users: 0,
        articles: 0,
        comments: 0,
        friendships: 0,
        seconds: 0.0,
    };

    let mut summaries: HashMap<u64, (String, String)> = HashMap::new();
    let mut after = 0u64;
    loop {
        let rows: Vec<(u64, String, String, String)> = sqlx::query_as(
            "SELECT id, username, display_name, bio FROM users WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let (lo, hi) = (rows[0].0, last.0);
        let edges: Vec<(u64, u64)> = sqlx::query_as("SELECT user_id, friend_id FROM friendships WHERE user_id BETWEEN ? AND ? ORDER BY user_id, friend_id")
            .bind(lo)
            .bind(hi)
            .fetch_all(pool)
            .await?;
        let mut friends: HashMap<u64, Vec<i64>> = HashMap::new();
        for (u, f) in edges {
            friends.entry(u).or_default().push(f as i64);
            m.friendships += 1;
        }
        let docs: Vec<Document> = rows
            .into_iter()
            .map(|(id, username, display_name, bio)| {
                summaries.insert(id, (username.clone(), display_name.clone()));
                doc! { "_id": id as i64, "username": username, "display_name": display_name, "bio": bio,
                       "friends": friends.remove(&id).unwrap_or_default() }
            })
            .collect();
        m.users += docs.len() as u64;
        users_coll.insert_many(docs).await?;
    }

    after = 0;
    loop {
        let rows: Vec<(u64, u64, String, String, i64, u32)> = sqlx::query_as(
            "SELECT id, author_id, title, body, published_at, like_count FROM articles WHERE id > ? ORDER BY id LIMIT ?",
        )
        .bind(after)
        .bind(BATCH)
        .fetch_all(pool)
        .await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        let (lo, hi) = (rows[0].0, last.0);
        let comments: Vec<(u64, u64, u64, String, i64)> = sqlx::query_as(
            "SELECT id, article_id, author_id, body, created_at FROM comments WHERE article_id BETWEEN ? AND ? ORDER BY created_at",
        )
        .bind(lo)
        .bind(hi)
        .fetch_all(pool)
        .await?;
        let mut by_article: HashMap<u64, Vec<Document>> = HashMap::new();
        for (id, article_id, author_id, body, created_at) in comments {
            by_article
                .entry(article_id)
                .or_default()
                .push(doc! { "id": id as i64, "author_id": author_id as i64, "body": body, "created_at": created_at });
            m.comments += 1;
        }
        let docs: Vec<Document> = rows
            .into_iter()
            .map(|(id, author_id, title, body, published_at, like_count)| {
                let (username, display_name) = summaries.get(&author_id).cloned().unwrap_or_default();
                let comments = by_article.remove(&id).unwrap_or_default();
                doc! { "_id": id as i64, "title": title, "body": body, "published_at": published_at,
                       "author": { "id": author_id as i64, "username": username, "display_name": display_name },
                       "comment_count": comments.len() as i64, "comments": comments, "like_count": like_count as i64 }
            })
            .collect();
        m.articles += docs.len() as u64;
        articles_coll.insert_many(docs).await?;
    }
    m.seconds = start.elapsed().as_secs_f64();
    create_indexes(db).await?;
    Ok(m)
}

/// Counts on both sides; a migration is right when they are equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Counts {
    /// Users.
    pub users: u64,
    /// Articles.
    pub articles: u64,
    /// Comments (embedded, in MongoDB).
    pub comments: u64,
    /// Friendship edges (embedded ids, in MongoDB).
    pub friendships: u64,
}

/// The counts in MariaDB.
pub async fn counts_sql(pool: &MySqlPool) -> anyhow::Result<Counts> {
    let one = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .fetch_one(pool)
            .await
            .map(|n| n as u64)
    };
    Ok(Counts {
        users: one("SELECT COUNT(*) FROM users").await?,
        articles: one("SELECT COUNT(*) FROM articles").await?,
        comments: one("SELECT COUNT(*) FROM comments").await?,
        friendships: one("SELECT COUNT(*) FROM friendships").await?,
    })
}

async fn sum_of_sizes(db: &Database, collection: &str, field: &str) -> anyhow::Result<u64> {
    let mut cursor = db
        .collection::<Document>(collection)
        .aggregate([
            doc! { "$group": { "_id": null, "n": { "$sum": { "$size": format!("${field}") } } } },
        ])
        .await?;
    let n = match cursor.try_next().await? {
        Some(d) => d
            .get_i64("n")
            .or_else(|_| d.get_i32("n").map(i64::from))
            .unwrap_or(0),
        None => 0,
    };
    Ok(n as u64)
}

/// The counts in MongoDB.
pub async fn counts_mongo(db: &Database) -> anyhow::Result<Counts> {
    Ok(Counts {
        users: db
            .collection::<Document>("users")
            .count_documents(doc! {})
            .await?,
        articles: db
            .collection::<Document>("articles")
            .count_documents(doc! {})
            .await?,
        comments: sum_of_sizes(db, "articles", "comments").await?,
        friendships: sum_of_sizes(db, "users", "friends").await?,
    })
}

/// A feed line: article id, author id, published at.
pub type FeedLine = (i64, i64, i64);

fn line(d: &Document) -> FeedLine {
    let author = d.get_document("author").ok();
    (
        d.get_i64("_id").unwrap_or(0),
        author.and_then(|a| a.get_i64("id").ok()).unwrap_or(0),
        d.get_i64("published_at").unwrap_or(0),
    )
}

/// The feed joined in application code: the user's friend ids, then one
/// `$in` query: two round trips (counted in the demo and tests by
/// [`CommandCounter`]).
pub async fn feed_app_join(
    db: &Database,
    user_id: u64,
    limit: i64,
) -> anyhow::Result<Vec<FeedLine>> {
    let user = db
        .collection::<Document>("users")
        .find_one(doc! { "_id": user_id as i64 })
        .projection(doc! { "friends": 1 })
        .await?;
    let friends: Vec<i64> = user
        .and_then(|u| u.get_array("friends").ok().cloned())
        .unwrap_or_default()
        .into_iter()
        .filter_map(|b| b.as_i64())
        .collect();
    let articles: Vec<Document> = db
        .collection::<Document>("articles")
        .find(doc! { "author.id": { "$in": friends } })
        .projection(doc! { "author.id": 1, "published_at": 1 })
        .sort(doc! { "published_at": -1 })
        .limit(limit)
        .await?
        .try_collect()
        .await?;
    Ok(articles.iter().map(line).collect())
}

/// The feed joined by the server: `$lookup`, one round trip.
pub async fn feed_lookup(db: &Database, user_id: u64, limit: i64) -> anyhow::Result<Vec<FeedLine>> {
    let pipeline = [
        doc! { "$match": { "_id": user_id as i64 } },
        doc! { "$lookup": { "from": "articles", "localField": "friends", "foreignField": "author.id", "as": "articles" } },
        doc! { "$unwind": "$articles" },
        doc! { "$replaceRoot": { "newRoot": "$articles" } },
        doc! { "$sort": { "published_at": -1 } },
        doc! { "$limit": limit },
        doc! { "$project": { "author.id": 1, "published_at": 1 } },
    ];
    let docs: Vec<Document> = db
        .collection::<Document>("users")
        .aggregate(pipeline)
        .await?
        .try_collect()
        .await?;
    Ok(docs.iter().map(line).collect())
}

/// `part2-migrate`'s flags: MariaDB to MongoDB, with a count check.
#[derive(clap::Parser)]
#[command(
    name = "part2-migrate",
    about = "Part 2: migrate MariaDB to MongoDB documents and check every count"
)]
struct MigrateArgs {
    /// The MongoDB database to fill (emptied first).
    #[arg(long, env = "MONGO_DATABASE", default_value = "lab")]
    mongo_database: String,
    /// The stack's URLs.
    #[command(flatten)]
    stack: common::config::StackConfig,
}

/// `part2-migrate`'s work (the binary is one line, see
/// [`common::entry`]): copies MariaDB into MongoDB documents, then checks
/// every count (an error, so exit 1, if one differs).
pub fn migrate_main() -> anyhow::Result<()> {
    common::entry::run(|| async {
        use anyhow::Context;
        use clap::Parser;
        let args = MigrateArgs::parse();
        let pool =
            common::testing::mariadb_at("MariaDB primary", &args.stack.mariadb_primary_url).await?;
        let db = connect(&args.stack.mongo_url, &args.mongo_database).await?;
        db.drop().await.context("emptying the target database")?;
        let m = migrate(&pool, &db).await?;
        println!(
            "copied {} users, {} articles, {} comments, {} friendship edges in {:.1} s: {:.0} rows/s",
            m.users,
            m.articles,
            m.comments,
            m.friendships,
            m.seconds,
            m.rate()
        );
        let (sql, docs) = (counts_sql(&pool).await?, counts_mongo(&db).await?);
        println!("MariaDB {sql:?}\nMongoDB {docs:?}");
        anyhow::ensure!(
            sql == docs,
            "the counts differ: the migration is incomplete"
        );
        println!("every count matches");
        Ok(())
    })
}
