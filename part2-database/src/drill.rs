//! Drills that break a shared server on purpose, and always put it back.
//!
//! The lab has one replica, one primary: a demo or a test that stops the
//! replica's SQL thread, shrinks the primary's buffer pool or drops an
//! index, and then fails half-way, would leave every later test and demo
//! reading a broken stack. So each drill here is a guard around a closure:
//! it breaks the thing, runs the closure, and undoes the damage whatever
//! the closure did: returned `Ok`, returned `Err`, or panicked (the panic
//! is caught, the undo runs, then the panic goes on). The closure's error
//! wins over an undo error, which is added to it as context.
//!
//! Drills on a shared server are also serialised across processes by a
//! MariaDB named lock (`GET_LOCK`), held on a connection of its own for the
//! drill's whole length: two drills never stop the same replica at once,
//! and a process that dies mid-drill releases the lock as its connection
//! closes.
//!
//! If the drill's future is dropped before it ends (a timeout around it, a
//! cancelled task), the undo is spawned on the current Tokio runtime, best
//! effort. A production tool would also record the drill in a table so an
//! operator can see what is still broken after a crash.

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::{Acquire, MySqlConnection, MySqlPool};

/// The named lock (on the replica) that serialises drills on the replica.
pub const REPLICA_DRILL_LOCK: &str = "lab_replica_drill";
/// The named lock (on the primary) that serialises buffer-pool drills.
pub const BUFFER_POOL_DRILL_LOCK: &str = "lab_buffer_pool_drill";
/// How long a drill waits for another one holding its lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(300);
/// How long a buffer-pool resize may take before the drill gives up.
pub const RESIZE_WAIT: Duration = Duration::from_secs(60);

/// Stops the replica's SQL thread (it keeps receiving the primary's binlog
/// but applies nothing: lag grows), runs `f`, then starts it again.
///
/// `replica_admin` is a login allowed to run `STOP SLAVE` (the lab's
/// `labadmin`). Serialised with other replica drills by
/// [`REPLICA_DRILL_LOCK`]. The thread is started again on every path, even
/// if it had been stopped by someone else before.
pub async fn with_sql_thread_stopped<T, F, Fut>(
    replica_admin: &MySqlPool,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut lock = NamedLock::take(replica_admin, REPLICA_DRILL_LOCK).await?;
    sqlx::query("STOP SLAVE SQL_THREAD")
        .execute(lock.connection())
        .await
        .context("STOP SLAVE SQL_THREAD on the replica")?;
    // Armed only once the break happened: a failed STOP must not "undo"
    // anything (no await between the two, so no cancellation either).
    let pool = replica_admin.clone();
    let undo = Undo::new("START SLAVE SQL_THREAD", move || {
        Box::pin(async move {
            sqlx::query("START SLAVE SQL_THREAD").execute(&pool).await?;
            Ok(())
        })
    });
    let out = undo_always(undo, f).await;
    lock.release().await;
    out
}

/// Whether the replica's SQL thread (the one applying the relay log) runs.
pub async fn sql_thread_running(replica_admin: &MySqlPool) -> anyhow::Result<bool> {
    let status = sqlx::query("SHOW SLAVE STATUS")
        .fetch_optional(replica_admin)
        .await?
        .context("SHOW SLAVE STATUS is empty: this server is not a replica")?;
    let running: String = sqlx::Row::try_get(&status, "Slave_SQL_Running")?;
    Ok(running == "Yes")
}

/// Resizes the primary's InnoDB buffer pool to `bytes`, waits for the
/// resize to finish, runs `f`, then puts back the size it found.
///
/// MariaDB resizes the pool online, in chunks, in the background: the
/// guard waits (up to [`RESIZE_WAIT`]) until the new size is in place both
/// ways, so `f` measures the size it asked for. Serialised with other
/// buffer-pool drills by [`BUFFER_POOL_DRILL_LOCK`].
pub async fn with_buffer_pool<T, F, Fut>(
    primary_admin: &MySqlPool,
    bytes: u64,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let mut lock = NamedLock::take(primary_admin, BUFFER_POOL_DRILL_LOCK).await?;
    let original = buffer_pool_size(primary_admin).await?;
    let pool = primary_admin.clone();
    let undo = Undo::new(
        format!("resizing the buffer pool back to {original} bytes"),
        move || Box::pin(async move { resize_buffer_pool(&pool, original).await }),
    );
    let resize = primary_admin.clone();
    // The resize is inside the guard: one that failed half-way is undone too.
    let out = undo_always(undo, || async move {
        resize_buffer_pool(&resize, bytes).await?;
        f().await
    })
    .await;
    lock.release().await;
    out
}

/// Drops `index` of `table` (in `pool`'s database), runs `f`, then creates
/// the index again exactly as it was, from its line in `SHOW CREATE TABLE`
/// (columns, order, prefix lengths, `UNIQUE`).
///
/// `table` and `index` must be plain identifiers (letters, digits, `_`),
/// and the index must exist; the primary key cannot be dropped this way.
pub async fn with_index_dropped<T, F, Fut>(
    pool: &MySqlPool,
    table: &str,
    index: &str,
    f: F,
) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    for name in [table, index] {
        anyhow::ensure!(
            is_identifier(name),
            "{name:?} is not a plain identifier (letters, digits, _)"
        );
    }
    anyhow::ensure!(
        !index.eq_ignore_ascii_case("PRIMARY"),
        "the primary key is not an index a drill drops"
    );
    let definition = index_definition(pool, table, index).await?;
    let restore = format!("ALTER TABLE `{table}` ADD {definition}");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE `{table}` DROP INDEX `{index}`"
    )))
    .execute(pool)
    .await
    .with_context(|| format!("dropping index {index} of {table}"))?;
    // Armed only once the index is gone: a failed DROP must not add back
    // an index this drill never removed.
    let undo_pool = pool.clone();
    let undo = Undo::new(restore.clone(), move || {
        Box::pin(async move {
            sqlx::query(sqlx::AssertSqlSafe(restore))
                .execute(&undo_pool)
                .await?;
            Ok(())
        })
    });
    undo_always(undo, f).await
}

/// The index's line of `SHOW CREATE TABLE`, without its trailing comma,
/// for example ``KEY `comments_article` (`article_id`,`created_at`)``.
pub async fn index_definition(
    pool: &MySqlPool,
    table: &str,
    index: &str,
) -> anyhow::Result<String> {
    anyhow::ensure!(is_identifier(table), "{table:?} is not a plain identifier");
    let (_, create): (String, String) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SHOW CREATE TABLE `{table}`")))
            .fetch_one(pool)
            .await
            .with_context(|| format!("SHOW CREATE TABLE {table}"))?;
    find_index_line(&create, index).with_context(|| format!("table {table} has no index {index}"))
}

fn find_index_line(create_table: &str, index: &str) -> Option<String> {
    let named = format!("KEY `{index}` ");
    create_table.lines().map(str::trim).find_map(|line| {
        let kind = line.strip_suffix(',').unwrap_or(line);
        let rest = kind
            .strip_prefix("UNIQUE ")
            .or_else(|| kind.strip_prefix("FULLTEXT "))
            .or_else(|| kind.strip_prefix("SPATIAL "))
            .unwrap_or(kind);
        rest.starts_with(&named).then(|| kind.to_owned())
    })
}

fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The primary's buffer pool size in bytes.
pub async fn buffer_pool_size(admin: &MySqlPool) -> anyhow::Result<u64> {
    Ok(sqlx::query_scalar("SELECT @@innodb_buffer_pool_size")
        .fetch_one(admin)
        .await?)
}

/// Asks for `bytes` and waits until the resize has finished. MariaDB may
/// round the size (to whole chunks): the size it reports after the `SET`
/// is the one waited for.
async fn resize_buffer_pool(admin: &MySqlPool, bytes: u64) -> anyhow::Result<()> {
    sqlx::query("SET GLOBAL innodb_buffer_pool_size = ?")
        .bind(bytes)
        .execute(admin)
        .await
        .with_context(|| format!("SET GLOBAL innodb_buffer_pool_size = {bytes}"))?;
    let target = buffer_pool_size(admin).await?;
    let deadline = Instant::now() + RESIZE_WAIT;
    loop {
        let status: Option<(String, String)> =
            sqlx::query_as("SHOW STATUS LIKE 'Innodb_buffer_pool_resize_status'")
                .fetch_optional(admin)
                .await?;
        // Empty before any resize, "Completed resizing buffer pool at ..."
        // after one; anything else is a resize still running.
        let done = status.is_none_or(|(_, v)| v.is_empty() || v.starts_with("Completed"));
        if done && buffer_pool_size(admin).await? == target {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the buffer pool did not resize to {bytes} bytes in {RESIZE_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What a drill must undo: run explicitly on every normal path; spawned
/// on the runtime if the drill's future is dropped before.
struct Undo {
    what: String,
    action: Option<Box<dyn FnOnce() -> BoxFuture<'static, anyhow::Result<()>> + Send>>,
}

impl Undo {
    fn new(
        what: impl Into<String>,
        action: impl FnOnce() -> BoxFuture<'static, anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Undo {
            what: what.into(),
            action: Some(Box::new(action)),
        }
    }

    async fn run(mut self) -> anyhow::Result<()> {
        match self.action.take() {
            Some(action) => action()
                .await
                .with_context(|| format!("undoing a drill: {}", self.what)),
            None => Ok(()),
        }
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        let Some(action) = self.action.take() else {
            return;
        };
        let what = std::mem::take(&mut self.what);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = action().await {
                        tracing::error!(%what, "a cancelled drill could not be undone: {e:#}");
                    }
                });
            }
            Err(_) => tracing::error!(%what, "a cancelled drill was left undone (no runtime)"),
        }
    }
}

/// Runs `f` (catching a panic), then `undo`, then hands back `f`'s result
/// (or resumes its panic).
async fn undo_always<T, F, Fut>(undo: Undo, f: F) -> anyhow::Result<T>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    // `f()` is called inside the future, so a panic building it is caught too.
    let outcome = AssertUnwindSafe(async move { f().await })
        .catch_unwind()
        .await;
    let undone = undo.run().await;
    match outcome {
        Err(panic) => {
            if let Err(e) = undone {
                tracing::error!("{e:#}");
            }
            std::panic::resume_unwind(panic)
        }
        Ok(Ok(value)) => undone.map(|()| value),
        Ok(Err(e)) => match undone {
            Ok(()) => Err(e),
            Err(u) => Err(e.context(format!("and then {u:#}"))),
        },
    }
}

/// A MariaDB named lock, held by a connection of its own (detached from
/// the pool, so it is closed, and the lock freed, if the holder is dropped).
struct NamedLock {
    name: &'static str,
    conn: Option<MySqlConnection>,
}

impl NamedLock {
    async fn take(pool: &MySqlPool, name: &'static str) -> anyhow::Result<Self> {
        let mut conn = pool.acquire().await?.detach();
        let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
            .bind(name)
            .bind(LOCK_WAIT.as_secs())
            .fetch_one(conn.acquire().await?)
            .await?;
        anyhow::ensure!(
            got == Some(1),
            "another drill held the lock {name} for {LOCK_WAIT:?}: is a demo or test stuck?"
        );
        Ok(NamedLock {
            name,
            conn: Some(conn),
        })
    }

    fn connection(&mut self) -> &mut MySqlConnection {
        self.conn.as_mut().expect("held until released")
    }

    async fn release(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            // Closing the connection would free it as well; say it anyway.
            let _ = sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(self.name)
                .execute(&mut conn)
                .await;
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CREATE: &str = "CREATE TABLE `comments` (\n  `id` bigint(20) unsigned NOT NULL AUTO_INCREMENT,\n  PRIMARY KEY (`id`),\n  KEY `comments_article` (`article_id`,`created_at`),\n  UNIQUE KEY `one_like` (`article_id`,`user_id`),\n  KEY `comments_article2` (`x`)\n) ENGINE=InnoDB";

    #[test]
    fn the_index_line_is_found_whole_and_by_its_exact_name() {
        assert_eq!(
            find_index_line(CREATE, "comments_article").as_deref(),
            Some("KEY `comments_article` (`article_id`,`created_at`)")
        );
        assert_eq!(
            find_index_line(CREATE, "one_like").as_deref(),
            Some("UNIQUE KEY `one_like` (`article_id`,`user_id`)")
        );
        assert_eq!(
            find_index_line(CREATE, "comments_article2").as_deref(),
            Some("KEY `comments_article2` (`x`)")
        );
        assert_eq!(find_index_line(CREATE, "missing"), None);
    }

    #[test]
    fn only_plain_identifiers_reach_the_sql() {
        assert!(is_identifier("comments_article"));
        for bad in ["", "a`b", "a b", "x;DROP", &"a".repeat(65)] {
            assert!(!is_identifier(bad), "{bad:?}");
        }
    }
}
