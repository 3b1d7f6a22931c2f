//! Copies the social blog from MariaDB into MongoDB documents, denormalizing
//! as it goes, then checks that every count matches (exit 1 if not).
//!
//! ```text
//! cargo run --release -p part2-database --bin part2-migrate -- --mongo-database lab
//! ```
//!
//! Source: `MARIADB_PRIMARY_URL` (the `lab` database `./lab up part2` loads);
//! target: `MONGO_URL`, database `--mongo-database`, emptied first.

use anyhow::Context;
use clap::Parser;
use part2_database::mongo;

/// MariaDB to MongoDB, with a count check.
#[derive(Parser)]
#[command(
    name = "part2-migrate",
    about = "Part 2: migrate MariaDB to MongoDB documents and check every count"
)]
struct Args {
    /// The MongoDB database to fill (emptied first).
    #[arg(long, env = "MONGO_DATABASE", default_value = "lab")]
    mongo_database: String,
    /// The stack's URLs.
    #[command(flatten)]
    stack: common::config::StackConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    common::telemetry::init();
    let args = Args::parse();
    let pool =
        common::testing::mariadb_at("MariaDB primary", &args.stack.mariadb_primary_url).await?;
    let db = mongo::connect(&args.stack.mongo_url, &args.mongo_database).await?;
    db.drop().await.context("emptying the target database")?;
    let m = mongo::migrate(&pool, &db).await?;
    println!(
        "copied {} users, {} articles, {} comments, {} friendship edges in {:.1} s: {:.0} rows/s",
        m.users,
        m.articles,
        m.comments,
        m.friendships,
        m.seconds,
        m.rate()
    );
    let (sql, docs) = (
        mongo::counts_sql(&pool).await?,
        mongo::counts_mongo(&db).await?,
    );
    println!("MariaDB {sql:?}\nMongoDB {docs:?}");
    anyhow::ensure!(
        sql == docs,
        "the counts differ: the migration is incomplete"
    );
    println!("every count matches");
    Ok(())
}
