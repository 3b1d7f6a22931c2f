//! What a job is: a row in MariaDB that the user can watch, and an
//! envelope on the queue that tells a worker which row to work on.
//!
//! The frontend creates the row (`queued`) and then enqueues an
//! [`Envelope`] carrying the job's id. A worker takes the envelope, marks
//! the row `running` (with progress), does the work, and commits the work's
//! *effect* and the status `done` in one transaction together with a
//! *claim*: a row in `job_effects` keyed by the job's id. Only then does it
//! acknowledge the message.
//!
//! Why the claim: every queue here delivers **at least once**. A worker
//! that dies after its commit and before its ack gets its job redelivered
//! to another worker; a publisher that lost a confirm publishes twice. The
//! claim's primary key turns the second attempt into a no-op
//! ([`Completed::AlreadyDone`]), so the effect happens once. "Exactly once"
//! is at-least-once delivery plus an idempotent effect; no queue gives it
//! alone.
//!
//! A job whose status is `failed` stays failed: the user was told so
//! (the queue gave up on it, or its publish failed), and a late attempt
//! that finishes anyway commits nothing ([`Completed::Failed`]).
//!
//! Tables (`migrations/0001_jobs.sql`): `jobs`, `job_effects` (the claim),
//! `job_results` (what the export produced). `jobs.published_at`
//! (`migrations/0003_jobs_published.sql`) says that a publish of the job
//! was confirmed: the sweeper ([`crate::worker`]) re-sends only the rows
//! where it is NULL.

use std::fmt;
use std::str::FromStr;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use sqlx::{MySqlPool, Row};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A job's id: 32 lowercase hex digits, 12 of creation time in milliseconds
/// then 20 random (80 bits), so ids sort by age and cannot be guessed.
/// Anything else is refused when parsed, so a forged id never reaches SQL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A new id, from the clock and the operating system's random source.
    pub fn generate() -> Self {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::from_os_rng();
        let random: u128 = rng.random::<u128>() & ((1u128 << 80) - 1);
        let ms = (now_ms() as u64) & ((1u64 << 48) - 1);
        JobId(format!("{ms:012x}{random:020x}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An id that is not 32 lowercase hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a job id is 32 lowercase hex digits, not {0:?}")]
pub struct BadJobId(String);

impl FromStr for JobId {
    type Err = BadJobId;
    fn from_str(s: &str) -> Result<Self, BadJobId> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(JobId(s.to_owned()))
        } else {
            // Cut what we echo: the input may be anything, of any length.
            Err(BadJobId(s.chars().take(40).collect()))
        }
    }
}

impl TryFrom<String> for JobId {
    type Error = BadJobId;
    fn try_from(s: String) -> Result<Self, BadJobId> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.0
    }
}

/// The kinds of work a worker knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// All of the owner's articles with their comments, as one JSON
    /// document (see [`crate::export`]).
    Export,
    /// Always fails: the poison-job drill. Retried up to the delivery
    /// limit, then dead-lettered and marked failed with its reason, while
    /// the jobs behind it go through.
    Fail,
}

impl JobKind {
    /// The kind as the API and the database spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Export => "export",
            JobKind::Fail => "fail",
        }
    }
}

/// A kind no worker knows.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unknown job kind {0:?} (known: export, fail)")]
pub struct UnknownKind(String);

impl FromStr for JobKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        match s {
            "export" => Ok(JobKind::Export),
            "fail" => Ok(JobKind::Fail),
            other => Err(UnknownKind(other.chars().take(40).collect())),
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a job is, as the user sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting in the queue (also after a failed attempt that will be
    /// retried: `error` then says why the last one failed).
    Queued,
    /// A worker has it; `progress` says how far.
    Running,
    /// Finished; the result is stored.
    Done,
    /// Given up: `error` says why.
    Failed,
}

impl JobStatus {
    /// The status as the database and the API spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Done => "done",
            JobStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            "queued" => JobStatus::Queued,
            "running" => JobStatus::Running,
            "done" => JobStatus::Done,
            "failed" => JobStatus::Failed,
            other => anyhow::bail!("the jobs table holds an unknown status {other:?}"),
        })
    }

    /// Whether the job will not change any more.
    pub fn is_finished(self) -> bool {
        matches!(self, JobStatus::Done | JobStatus::Failed)
    }
}

/// What travels on the queue: which job, of which kind, with which
/// parameters. JSON, so a dead letter can be read by a person in
/// `redis-cli` or RabbitMQ's tools.
///
/// The worker trusts the `jobs` row, not the envelope, for everything but
/// the id: the row is where the frontend wrote the owner and the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// The job's id (its row in `jobs`).
    pub id: JobId,
    /// The job's kind, as text: a kind this build does not know still
    /// decodes, so the worker can dead-letter it with a reason.
    pub kind: String,
    /// The job's parameters (a JSON object; `{}` for the export).
    #[serde(default)]
    pub params: serde_json::Value,
}

/// A message that is not an [`Envelope`].
#[derive(Debug, thiserror::Error)]
#[error("the message is not a job envelope ({reason}); first bytes: {preview:?}")]
pub struct DecodeError {
    reason: String,
    preview: String,
}

impl Envelope {
    /// An envelope for job `id`.
    pub fn new(id: JobId, kind: impl Into<String>, params: serde_json::Value) -> Self {
        Envelope {
            id,
            kind: kind.into(),
            params,
        }
    }

    /// The bytes put on the queue.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings and a JSON value always serializes.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads an envelope back; anything else is a [`DecodeError`] that
    /// shows the first bytes, never a panic.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        serde_json::from_slice(bytes).map_err(|e| DecodeError {
            reason: e.to_string(),
            preview: String::from_utf8_lossy(&bytes[..bytes.len().min(60)]).into_owned(),
        })
    }
}

/// A job, as its row says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// The user who started it (the only one who may see it).
    pub owner_id: u64,
    /// What to do (text: the row may hold a kind this build does not know).
    pub kind: String,
    /// The parameters (JSON).
    pub params: serde_json::Value,
    /// Where it is.
    pub status: JobStatus,
    /// Percent done.
    pub progress: u8,
    /// Why the last attempt, or the job, failed.
    pub error: Option<String>,
    /// Attempts started by workers.
    pub attempts: u32,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    /// Milliseconds since the epoch.
    pub updated_at: i64,
}

/// What committing a job's effect did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Completed {
    /// This attempt took the claim: the effect and `done` are committed.
    Committed,
    /// Another attempt had taken the claim: nothing was written.
    AlreadyDone,
    /// The job was marked `failed` before this attempt could commit (the
    /// dead-letter watcher gave up on it while a copy was still running):
    /// nothing was written, and the row stays `failed`. The user was told
    /// "failed"; a result appearing later, or a claim for a job shown as
    /// failed, would contradict what they saw.
    Failed,
}

/// A job's effect: here, a result document stored for its owner.
#[derive(Debug, Clone)]
pub struct Effect {
    /// The result's media type (`application/json`).
    pub content_type: String,
    /// The result.
    pub body: String,
}

/// The `jobs` table and its companions, on the primary.
#[derive(Clone)]
pub struct JobStore {
    pool: MySqlPool,
}

/// `SELECT <every column> FROM jobs <tail>`, as one static string (sqlx
/// takes only static SQL unless told otherwise: no formatting into queries).
macro_rules! select_job {
    ($tail:literal) => {
        concat!(
            "SELECT id, owner_id, kind, params, status, progress, error, attempts, created_at, updated_at FROM jobs ",
            $tail
        )
    };
}

fn job_from_row(row: &sqlx::mysql::MySqlRow) -> anyhow::Result<Job> {
    let id: String = row.try_get("id")?;
    let params: String = row.try_get("params")?;
    let status: String = row.try_get("status")?;
    Ok(Job {
        id: id.parse()?,
        owner_id: row.try_get("owner_id")?,
        kind: row.try_get("kind")?,
        params: serde_json::from_str(&params).unwrap_or(serde_json::Value::Null),
        status: JobStatus::parse(&status)?,
        progress: row.try_get("progress")?,
        error: row.try_get("error")?,
        attempts: row.try_get("attempts")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// Error texts go into a VARCHAR(1000): cut on a character boundary.
fn clip(reason: &str) -> String {
    reason.chars().take(1000).collect()
}

impl JobStore {
    /// The store over `pool` (the primary: every call here writes or must
    /// read its own writes).
    pub fn new(pool: MySqlPool) -> Self {
        JobStore { pool }
    }

    /// The pool (the export reads articles through it).
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// Runs part 2's migrations (users, articles, comments), then part 4's,
    /// under a named lock: workers and clones start together. Idempotent.
    pub async fn migrate(pool: &MySqlPool) -> anyhow::Result<()> {
        part2_database::schema::migrate(pool).await?;
        let mut conn = pool.acquire().await?;
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK('part4_migrations', 30)")
            .fetch_one(&mut *conn)
            .await
            .context("taking part 4's migration lock")?;
        anyhow::ensure!(
            locked == Some(1),
            "another process held part 4's migration lock for 30 s"
        );
        let mut migrator = sqlx::migrate!("./migrations");
        // Each part records its migrations in a table of its own.
        migrator.dangerous_set_table_name("_part4_migrations");
        let outcome = migrator.run(&mut *conn).await;
        let _ = sqlx::query("SELECT RELEASE_LOCK('part4_migrations')")
            .execute(&mut *conn)
            .await;
        outcome.context("running part 4's migrations")
    }

    /// Creates a `queued` job for `owner_id`. With an idempotency key that
    /// this owner used before, returns that job instead (and `false`).
    pub async fn create(
        &self,
        owner_id: u64,
        kind: JobKind,
        params: &serde_json::Value,
        idempotency_key: Option<&str>,
    ) -> anyhow::Result<(Job, bool)> {
        let id = JobId::generate();
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO jobs (id, owner_id, kind, params, status, created_at, updated_at, idempotency_key) \
             VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(owner_id)
        .bind(kind.as_str())
        .bind(params.to_string())
        .bind(now)
        .bind(now)
        .bind(idempotency_key)
        .execute(&self.pool)
        .await;
        match inserted {
            Ok(_) => {}
            Err(sqlx::Error::Database(e))
                if e.is_unique_violation() && idempotency_key.is_some() =>
            {
                let row = sqlx::query(select_job!("WHERE owner_id = ? AND idempotency_key = ?"))
                    .bind(owner_id)
                    .bind(idempotency_key)
                    .fetch_one(&self.pool)
                    .await
                    .context("reading the job of a reused idempotency key")?;
                return Ok((job_from_row(&row)?, false));
            }
            Err(e) => return Err(e).context("inserting a job"),
        }
        // The row as inserted (the schema's defaults for the rest): no
        // second round trip to read back what this call just wrote.
        let job = Job {
            id,
            owner_id,
            kind: kind.as_str().to_owned(),
            params: params.clone(),
            status: JobStatus::Queued,
            progress: 0,
            error: None,
            attempts: 0,
            created_at: now,
            updated_at: now,
        };
        Ok((job, true))
    }

    /// The job `owner_id` created with `idempotency_key`, if any (a retried
    /// `POST /jobs` finds its first attempt's job here before anything
    /// else is checked or written).
    pub async fn find_by_key(
        &self,
        owner_id: u64,
        idempotency_key: &str,
    ) -> anyhow::Result<Option<Job>> {
        let row = sqlx::query(select_job!("WHERE owner_id = ? AND idempotency_key = ?"))
            .bind(owner_id)
            .bind(idempotency_key)
            .fetch_optional(&self.pool)
            .await
            .context("reading the job of an idempotency key")?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// The job could not be put on the queue: `failed` with the reason,
    /// and its idempotency key released, so the client's retry (same key)
    /// starts a new job instead of finding this dead one.
    pub async fn abandon(&self, id: &JobId, reason: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE jobs SET status = 'failed', error = ?, idempotency_key = NULL, updated_at = ? \
             WHERE id = ? AND status = 'queued'",
        )
        .bind(clip(reason))
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .with_context(|| format!("marking job {id} failed (not queued)"))?;
        Ok(())
    }

    /// `owner_id`'s latest jobs, newest first, at most `limit`.
    pub async fn recent(&self, owner_id: u64, limit: u32) -> anyhow::Result<Vec<Job>> {
        let rows = sqlx::query(select_job!(
            "WHERE owner_id = ? ORDER BY created_at DESC, id DESC LIMIT ?"
        ))
        .bind(owner_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .with_context(|| format!("reading user {owner_id}'s jobs"))?;
        rows.iter().map(job_from_row).collect()
    }

    /// How many jobs `owner_id` has (tests count them: a retried request
    /// with an idempotency key must not make a second).
    pub async fn count_for(&self, owner_id: u64) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM jobs WHERE owner_id = ?")
            .bind(owner_id)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("counting user {owner_id}'s jobs"))?;
        Ok(n as u64)
    }

    /// The job, whoever owns it (workers); `None` if there is no such row.
    pub async fn get(&self, id: &JobId) -> anyhow::Result<Option<Job>> {
        let row = sqlx::query(select_job!("WHERE id = ?"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .with_context(|| format!("reading job {id}"))?;
        row.as_ref().map(job_from_row).transpose()
    }

    /// Marks a job `running` at 0 % and counts the attempt, unless it is
    /// finished. Returns the row as it is now (finished rows unchanged), or
    /// `None` if there is no such job. Also records that the job was
    /// published (it was delivered, so it was), if nobody had yet: the
    /// sweeper then leaves it alone.
    pub async fn start(&self, id: &JobId) -> anyhow::Result<Option<Job>> {
        let now = now_ms();
        sqlx::query(
            "UPDATE jobs SET status = 'running', progress = 0, attempts = attempts + 1, updated_at = ?, \
             published_at = COALESCE(published_at, ?) \
             WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(now)
        .bind(now)
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .with_context(|| format!("marking job {id} running"))?;
        self.get(id).await
    }

    /// Records progress (percent) of a running job.
    pub async fn progress(&self, id: &JobId, percent: u8) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE jobs SET progress = ?, updated_at = ? WHERE id = ? AND status = 'running'",
        )
        .bind(percent.min(100))
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await
        .with_context(|| format!("recording job {id}'s progress"))?;
        Ok(())
    }

    /// Commits the job's effect, its claim and `done` in one transaction.
    /// If another attempt holds the claim, writes nothing and says so; if
    /// the job was marked `failed` meanwhile, writes nothing either and
    /// leaves it `failed` ([`Completed::Failed`]).
    pub async fn complete(
        &self,
        id: &JobId,
        worker: &str,
        effect: &Effect,
    ) -> anyhow::Result<Completed> {
        let mut tx = self.pool.begin().await.context("starting a transaction")?;
        let now = now_ms();
        // The job's row first, locked until we commit: the dead-letter
        // watcher's `failed` (an UPDATE of the same row) then happens
        // either wholly before us, and we see it here, or after us, and it
        // finds the row `done` and leaves it. Without the lock, a copy of
        // the job finishing late would turn a `failed` the user has seen
        // into `done`. Every writer locks the `jobs` row before (or
        // without) the claim, so the two locks never wait on each other in
        // opposite orders.
        let status: Option<String> =
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = ? FOR UPDATE")
                .bind(id.as_str())
                .fetch_optional(&mut *tx)
                .await
                .with_context(|| format!("locking job {id}'s row"))?;
        match status.as_deref() {
            None => {
                tx.rollback().await.ok();
                anyhow::bail!("no job {id} in the jobs table: nothing to complete");
            }
            Some("failed") => {
                tx.rollback().await.ok();
                return Ok(Completed::Failed);
            }
            Some(_) => {}
        }
        // Then the claim: a concurrent attempt waited on the row lock above
        // until we committed, and now gets "duplicate" and writes nothing.
        let claim =
            sqlx::query("INSERT INTO job_effects (job_id, worker, claimed_at) VALUES (?, ?, ?)")
                .bind(id.as_str())
                .bind(worker.chars().take(64).collect::<String>())
                .bind(now)
                .execute(&mut *tx)
                .await;
        match claim {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tx.rollback().await.ok();
                return Ok(Completed::AlreadyDone);
            }
            Err(e) => return Err(e).with_context(|| format!("claiming job {id}")),
        }
        sqlx::query(
            "INSERT INTO job_results (job_id, content_type, body, created_at) VALUES (?, ?, ?, ?)",
        )
        .bind(id.as_str())
        .bind(&effect.content_type)
        .bind(&effect.body)
        .bind(now)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("storing job {id}'s result"))?;
        sqlx::query(
            "UPDATE jobs SET status = 'done', progress = 100, error = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(now)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .with_context(|| format!("marking job {id} done"))?;
        tx.commit()
            .await
            .with_context(|| format!("committing job {id}"))?;
        Ok(Completed::Committed)
    }

    /// An attempt failed and the job will be tried again: back to
    /// `queued`, with the reason.
    pub async fn retrying(&self, id: &JobId, reason: &str) -> anyhow::Result<()> {
        self.unfinished_to(id, "queued", reason)
            .await
            .map(drop)
            .with_context(|| format!("recording job {id}'s failed attempt"))
    }

    /// The job is given up: `failed`, with the reason (a finished job is
    /// left as it is).
    pub async fn fail(&self, id: &JobId, reason: &str) -> anyhow::Result<()> {
        self.unfinished_to(id, "failed", reason)
            .await
            .map(drop)
            .with_context(|| format!("marking job {id} failed"))
    }

    /// Like [`JobStore::fail`], and says whether the row changed: `false`
    /// if the job was finished already (a worker marked it first) or has
    /// no row. The dead-letter watcher counts with it.
    pub async fn fail_unfinished(&self, id: &JobId, reason: &str) -> anyhow::Result<bool> {
        let changed = self
            .unfinished_to(id, "failed", reason)
            .await
            .with_context(|| format!("marking dead-lettered job {id} failed"))?;
        Ok(changed > 0)
    }

    /// Records that a publish of the job was confirmed (the clone after
    /// the broker's confirm, the sweeper after its own): from now on the
    /// sweeper leaves the row alone, however long it waits in the queue.
    /// Returns whether this call set it (`false`: set before, or no row).
    pub async fn mark_published(&self, id: &JobId) -> anyhow::Result<bool> {
        let set =
            sqlx::query("UPDATE jobs SET published_at = ? WHERE id = ? AND published_at IS NULL")
                .bind(now_ms())
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .with_context(|| format!("recording that job {id} was published"))?;
        Ok(set.rows_affected() == 1)
    }

    /// [`JobStore::mark_published`] for many jobs in one statement (one
    /// commit, so one flush of the log to disk instead of one per job);
    /// returns how many rows it set.
    pub async fn mark_published_many(&self, ids: &[JobId]) -> anyhow::Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let mut q = sqlx::QueryBuilder::<sqlx::MySql>::new("UPDATE jobs SET published_at = ");
        q.push_bind(now_ms());
        q.push(" WHERE published_at IS NULL AND id IN (");
        let mut list = q.separated(", ");
        for id in ids {
            list.push_bind(id.as_str());
        }
        q.push(")");
        let set = q
            .build()
            .execute(&self.pool)
            .await
            .with_context(|| format!("recording that {} jobs were published", ids.len()))?;
        Ok(set.rows_affected())
    }

    /// When a publish of the job was first confirmed (ms since the
    /// epoch); `None` if never (or no such job). Tests and drills read it.
    pub async fn published_at(&self, id: &JobId) -> anyhow::Result<Option<i64>> {
        let at: Option<Option<i64>> =
            sqlx::query_scalar("SELECT published_at FROM jobs WHERE id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .with_context(|| format!("reading when job {id} was published"))?;
        Ok(at.flatten())
    }

    /// The sweeper's candidates: `queued` rows whose publish was never
    /// confirmed (`published_at` NULL) and that nobody has touched for
    /// `stale_ms`, oldest first, at most `limit`. A job that is merely
    /// waiting behind a backlog was published and is not a candidate,
    /// however long it waits. Read without locks: [`JobStore::take_stale`]
    /// decides which sweeper gets each one.
    ///
    /// `updated_at` rather than `created_at`: for a row never published
    /// they are equal (nobody has worked on it), except after a sweeper
    /// took it and its publish failed; `updated_at` then makes it wait a
    /// whole window before the next try.
    pub async fn stale_queued(&self, stale_ms: i64, limit: u32) -> anyhow::Result<Vec<JobId>> {
        let cutoff = now_ms() - stale_ms;
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM jobs WHERE status = 'queued' AND published_at IS NULL AND updated_at < ? \
             ORDER BY updated_at, id LIMIT ?",
        )
        .bind(cutoff)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading stale queued jobs")?;
        ids.iter()
            .map(|s| s.parse().map_err(anyhow::Error::from))
            .collect()
    }

    /// Takes a stale unpublished row for publishing: bumps its
    /// `updated_at` if it is *still* queued, unpublished and stale. One
    /// statement, so of several sweepers racing for a row exactly one sees
    /// `true`, and the row is not stale again for another `stale_ms`: it
    /// is sent at most once per window, whoever sweeps. The sweeper sets
    /// `published_at` once its publish is confirmed
    /// ([`JobStore::mark_published`]); a sweeper that dies (or whose
    /// publish fails) in between leaves the row for the next window.
    pub async fn take_stale(&self, id: &JobId, stale_ms: i64) -> anyhow::Result<bool> {
        let now = now_ms();
        let taken = sqlx::query(
            "UPDATE jobs SET updated_at = ? \
             WHERE id = ? AND status = 'queued' AND published_at IS NULL AND updated_at < ?",
        )
        .bind(now)
        .bind(id.as_str())
        .bind(now - stale_ms)
        .execute(&self.pool)
        .await
        .with_context(|| format!("taking stale job {id}"))?;
        Ok(taken.rows_affected() == 1)
    }

    /// Moves a job that is not finished (`queued` or `running`) to
    /// `status`, with `reason` as its error. Returns the rows changed.
    async fn unfinished_to(&self, id: &JobId, status: &str, reason: &str) -> sqlx::Result<u64> {
        let done = sqlx::query(
            "UPDATE jobs SET status = ?, error = ?, updated_at = ? \
             WHERE id = ? AND status IN ('queued', 'running')",
        )
        .bind(status)
        .bind(clip(reason))
        .bind(now_ms())
        .bind(id.as_str())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// A finished job's result: its media type and body.
    pub async fn result(&self, id: &JobId) -> anyhow::Result<Option<(String, String)>> {
        let row: Option<(String, String)> =
            sqlx::query_as("SELECT content_type, body FROM job_results WHERE job_id = ?")
                .bind(id.as_str())
                .fetch_optional(&self.pool)
                .await
                .with_context(|| format!("reading job {id}'s result"))?;
        Ok(row)
    }

    /// How many effects were committed for `id` (0 or 1: the drills count
    /// it to show that redelivery did not write twice).
    pub async fn effects(&self, id: &JobId) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_effects WHERE job_id = ?")
            .bind(id.as_str())
            .fetch_one(&self.pool)
            .await?;
        let results: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM job_results WHERE job_id = ?")
            .bind(id.as_str())
            .fetch_one(&self.pool)
            .await?;
        anyhow::ensure!(
            n == results,
            "job {id} has {n} claims but {results} results: the claim and the effect were not committed together"
        );
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_hex_sort_by_time_and_refuse_forgeries() {
        let a = JobId::generate();
        assert_eq!(a.as_str().len(), 32);
        assert_eq!(a.as_str().parse::<JobId>().unwrap(), a);
        for bad in [
            "",
            "x",
            "../../etc/passwd",
            "0123456789ABCDEF0123456789abcdef",
            "0123456789abcdef0123456789abcde",
            "0123456789abcdef0123456789abcdef0",
            "0123456789abcdef0123456789abcd' ",
        ] {
            assert!(bad.parse::<JobId>().is_err(), "{bad:?}");
        }
        // The first 12 digits are the milliseconds: later ids sort later.
        let t = i64::from_str_radix(&a.as_str()[..12], 16).unwrap();
        assert!((t - now_ms()).abs() < 60_000);
    }

    #[test]
    fn envelopes_round_trip_and_garbage_is_an_error() {
        let e = Envelope::new(JobId::generate(), "export", serde_json::json!({}));
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        for garbage in [
            &b""[..],
            b"not json",
            b"{\"kind\":\"fail\"}",
            b"{\"id\":\"nothex\",\"kind\":\"export\"}",
            &[0xff, 0xfe, 0x00],
        ] {
            let err = Envelope::decode(garbage).unwrap_err().to_string();
            assert!(err.contains("not a job envelope"), "{err}");
        }
        // An unknown kind still decodes: the worker dead-letters it with a reason.
        let odd = format!("{{\"id\":\"{}\",\"kind\":\"mine\"}}", JobId::generate());
        assert_eq!(Envelope::decode(odd.as_bytes()).unwrap().kind, "mine");
    }

    #[test]
    fn kinds_parse() {
        assert_eq!("export".parse::<JobKind>().unwrap(), JobKind::Export);
        assert!("Export".parse::<JobKind>().is_err());
        assert!("rm -rf".parse::<JobKind>().is_err());
    }
}
