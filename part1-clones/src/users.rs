//! Users, in the shared database: a clone keeps nothing about a user.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB,
//! 2 passes), on the blocking pool so a login does not stall the other
//! requests of its clone. A login for an unknown user still verifies a hash,
//! so the response time does not tell which usernames exist.
//!
//! Hashing is bounded: at most `HASH_CONCURRENCY` hashes at once (one per
//! core by default), the rest wait their turn. Unbounded, 80 concurrent
//! wrong-password logins asked for 80 hashes at once: 80 blocking threads
//! and gigabytes of memory on a 2-core clone, for no more throughput than
//! two. And each slot keeps its 19 MiB of Argon2 working memory and reuses
//! it: allocated and freed per hash, the C allocator keeps the freed
//! blocks (its mmap threshold rises to their size), and the clone's memory
//! grows to hundreds of megabytes even with two hashes at a time.
//!
//! Login reads the user from the part's read pool when it has one (part 2:
//! a replica), so login survives the primary's loss like other reads; a
//! user the replica does not know yet (just signed up) is looked up on the
//! primary, so nobody is turned away by replication lag.

use std::sync::{Arc, LazyLock};

use tokio::sync::Semaphore;

use argon2::password_hash::{
    Output, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Block, Params, PasswordHash, Version};
use sqlx::MySqlPool;

use crate::error::ApiError;

/// Passwords have 8 to 128 characters. The upper bound keeps a hostile
/// request from making the hash expensive.
pub const PASSWORD_CHARS: std::ops::RangeInclusive<usize> = 8..=128;

/// A user as the app knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Id.
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Argon2id hash in PHC format.
    pub password_hash: String,
}

/// Hashes a password with Argon2id and a fresh salt.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hashing with default parameters")
        .to_string()
}

/// Checks a password against a PHC hash; a malformed hash is a mismatch.
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Argon2's working memory (one block per KiB of `m_cost`), kept by a
/// hashing slot and reused by every hash it computes.
pub type HashMemory = Vec<Block>;

/// [`hash_password`] in `memory` (grown to the size the parameters need).
pub fn hash_password_in(password: &str, memory: &mut HashMemory) -> String {
    let argon = Argon2::default();
    let salt = SaltString::generate(&mut OsRng);
    let mut salt_bytes = [0u8; 64];
    let salt_bytes = salt
        .as_salt()
        .decode_b64(&mut salt_bytes)
        .expect("a generated salt decodes");
    memory.resize(argon.params().block_count(), Block::default());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, &mut memory[..])
        .expect("argon2 hashing with default parameters");
    PasswordHash {
        algorithm: argon2::ARGON2ID_IDENT,
        version: Some(Version::default().into()),
        params: argon
            .params()
            .try_into()
            .expect("default parameters encode"),
        salt: Some(salt.as_salt()),
        hash: Some(Output::new(&out).expect("a 32-byte output")),
    }
    .to_string()
}

/// [`verify_password`] in `memory`: the hash's own parameters, salt and
/// length, compared in constant time (as `Output`'s equality is).
pub fn verify_password_in(password: &str, hash: &str, memory: &mut HashMemory) -> bool {
    let Ok(hash) = PasswordHash::new(hash) else {
        return false;
    };
    let argon = (|| {
        let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
        let version = match hash.version {
            Some(v) => Version::try_from(v).ok()?,
            None => Version::default(),
        };
        Some(Argon2::new(
            algorithm,
            version,
            Params::try_from(&hash).ok()?,
        ))
    })();
    let (Some(argon), Some(salt), Some(expected)) = (argon, hash.salt, hash.hash) else {
        return false;
    };
    let mut salt_bytes = [0u8; 64];
    let Ok(salt_bytes) = salt.decode_b64(&mut salt_bytes) else {
        return false;
    };
    memory.resize(argon.params().block_count(), Block::default());
    let mut out = vec![0u8; expected.len()];
    argon
        .hash_password_into_with_memory(password.as_bytes(), salt_bytes, &mut out, &mut memory[..])
        .is_ok()
        && Output::new(&out).is_ok_and(|o| o == expected)
}

/// A hash of nothing anyone knows, verified for unknown usernames.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| hash_password("no user has this password"));

/// Checks a signup's password.
pub fn validate_password(password: &str) -> Result<(), ApiError> {
    if PASSWORD_CHARS.contains(&password.chars().count()) {
        Ok(())
    } else {
        Err(ApiError::BadRequest(format!(
            "a password has {} to {} characters",
            PASSWORD_CHARS.start(),
            PASSWORD_CHARS.end()
        )))
    }
}

/// Display names have 1 to 64 characters (the column's size), not all spaces.
pub const DISPLAY_NAME_CHARS: std::ops::RangeInclusive<usize> = 1..=64;

/// Checks a signup's display name; `None` means "use the username".
pub fn validate_display_name(name: Option<&str>) -> Result<Option<&str>, ApiError> {
    let Some(name) = name else { return Ok(None) };
    let n = name.chars().count();
    if name.trim().is_empty()
        || !DISPLAY_NAME_CHARS.contains(&n)
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::BadRequest(format!(
            "a display name has {} to {} printable characters, not only spaces",
            DISPLAY_NAME_CHARS.start(),
            DISPLAY_NAME_CHARS.end()
        )));
    }
    Ok(Some(name))
}

/// The number of cores: the default bound on hashes at once.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

/// The hashing slots of a clone: a permit per slot, and the working
/// memory the slots keep between hashes.
struct Hashing {
    slots: Arc<Semaphore>,
    memory: std::sync::Mutex<Vec<HashMemory>>,
}

/// The users table.
#[derive(Clone)]
pub struct Users {
    pool: MySqlPool,
    /// Hashes computed at once, across every login and signup of this clone.
    hashing: Arc<Hashing>,
}

impl Users {
    /// Users in `pool`'s database (created by the migrations), hashing
    /// one password per core at a time.
    pub fn new(pool: MySqlPool) -> Self {
        Self::with_hash_concurrency(pool, 0)
    }

    /// The same, with at most `hashes` hashes at once (0: one per core).
    pub fn with_hash_concurrency(pool: MySqlPool, hashes: usize) -> Self {
        let hashes = if hashes == 0 { cores() } else { hashes };
        Users {
            pool,
            hashing: Arc::new(Hashing {
                slots: Arc::new(Semaphore::new(hashes)),
                memory: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Runs one Argon2id computation on the blocking pool, once a slot is
    /// free, in that slot's reused memory. Waiting here costs a parked task
    /// (bytes); hashing costs 19 MiB, so only the slots ever hold it.
    async fn hashed<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut HashMemory) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        // The slot and the memory move into the blocking task and are given
        // back by it: if the client hangs up and this future is dropped,
        // the hash still runs to its end, and it must go on holding its
        // slot, or a connect-post-disconnect loop would start unbounded
        // hashes again.
        let slot = self
            .hashing
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let hashing = self.hashing.clone();
        tokio::task::spawn_blocking(move || {
            let mut memory = hashing
                .memory
                .lock()
                .expect("hash memory lock")
                .pop()
                .unwrap_or_default();
            let out = work(&mut memory);
            hashing
                .memory
                .lock()
                .expect("hash memory lock")
                .push(memory);
            drop(slot);
            out
        })
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))
    }

    /// Creates a user; `Conflict` if the name is taken. The display name
    /// defaults to the username, so a user's writing never shows an empty author.
    pub async fn create(
        &self,
        username: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<u64, ApiError> {
        let password = password.to_owned();
        let hash = self
            .hashed(move |memory| hash_password_in(&password, memory))
            .await?;
        let created = sqlx::query("INSERT INTO users (username, password_hash, created_at, display_name) VALUES (?, ?, UNIX_TIMESTAMP(), ?)")
            .bind(username)
            .bind(hash)
            .bind(display_name.unwrap_or(username))
            .execute(&self.pool)
            .await;
        match created {
            Ok(r) => Ok(r.last_insert_id()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(ApiError::Conflict(
                format!("the username {username} is taken"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Looks a user up by name, on the primary.
    pub async fn find(&self, username: &str) -> Result<Option<UserRecord>, ApiError> {
        Ok(find_on(&self.pool, username).await?)
    }

    /// The user's display name, on the primary.
    pub async fn display_name(&self, user_id: u64) -> Result<Option<String>, ApiError> {
        Ok(
            sqlx::query_scalar("SELECT display_name FROM users WHERE id = ?")
                .bind(user_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Looks a user up on `read_pool` (a replica) if given, else or on a
    /// miss or an error there, on the primary.
    pub async fn find_for_login(
        &self,
        read_pool: Option<&MySqlPool>,
        username: &str,
    ) -> Result<Option<UserRecord>, ApiError> {
        if let Some(read) = read_pool {
            match find_on(read, username).await {
                Ok(Some(user)) => return Ok(Some(user)),
                // Not there yet (replication lag after a signup): ask the primary.
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "login read pool failed; trying the primary"),
            }
        }
        self.find(username).await
    }

    /// The user if the password is right, else `BadCredentials`.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserRecord, ApiError> {
        self.authenticate_via(None, username, password).await
    }

    /// [`Users::authenticate`], reading the user from `read_pool` first
    /// (see [`Users::find_for_login`]).
    pub async fn authenticate_via(
        &self,
        read_pool: Option<&MySqlPool>,
        username: &str,
        password: &str,
    ) -> Result<UserRecord, ApiError> {
        let user = self.find_for_login(read_pool, username).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| DUMMY_HASH.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let ok = self
            .hashed(move |memory| verify_password_in(&password, &hash, memory))
            .await?;
        match user {
            Some(u) if ok => Ok(u),
            _ => Err(ApiError::BadCredentials),
        }
    }

    /// Loads the dataset's users (`user1`..`userN`), all with
    /// [`common::dataset::DATASET_PASSWORD`] hashed once (see its doc), in
    /// batches. Users already there are kept. Returns how many were new.
    ///
    /// This is the lab's job, not the server's: the `part1-load` command
    /// runs it before the clones start (a deploy step, as migrations are in
    /// production). A named lock makes concurrent loaders take turns.
    pub async fn load_dataset(
        &self,
        spec: &common::dataset::DatasetSpec,
    ) -> Result<u64, sqlx::Error> {
        let hash = tokio::task::spawn_blocking(|| hash_password(common::dataset::DATASET_PASSWORD))
            .await
            .expect("hashing task");
        // Clones start together and each loads: one at a time, or InnoDB
        // may deadlock two INSERT IGNOREs of the same keys.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("SELECT GET_LOCK('part1_dataset', 60)")
            .execute(&mut *conn)
            .await?;
        let mut inserted = 0;
        let users: Vec<_> = spec.users().collect();
        let mut outcome = Ok(());
        for batch in users.chunks(1000) {
            let mut q = sqlx::QueryBuilder::new(
                "INSERT IGNORE INTO users (id, username, password_hash, created_at, display_name) ",
            );
            q.push_values(batch, |mut row, u| {
                row.push_bind(u.id)
                    .push_bind(&u.username)
                    .push_bind(&hash)
                    .push_bind(u.joined_at)
                    .push_bind(&u.display_name);
            });
            match q.build().execute(&mut *conn).await {
                Ok(r) => inserted += r.rows_affected(),
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            }
        }
        let _ = sqlx::query("SELECT RELEASE_LOCK('part1_dataset')")
            .execute(&mut *conn)
            .await;
        outcome.map(|()| inserted)
    }
}

async fn find_on(pool: &MySqlPool, username: &str) -> Result<Option<UserRecord>, sqlx::Error> {
    let row: Option<(u64, String, String)> =
        sqlx::query_as("SELECT id, username, password_hash FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(id, username, password_hash)| UserRecord {
        id,
        username,
        password_hash,
    }))
}

/// `part1-load`'s work (the binary is one line, see [`common::entry`]):
/// migrates part 1's tables and loads the dataset's users.
pub fn load_main() -> anyhow::Result<()> {
    common::entry::run(|| async {
        use anyhow::Context;
        use clap::Parser;
        let config = crate::config::LoadConfig::parse();
        let pool = crate::app::connect_database(
            &config.stack.mariadb_primary_url,
            std::time::Duration::from_secs(30),
        )
        .await?;
        let spec = common::dataset::DatasetSpec::new(config.dataset_seed, config.scale);
        let new = Users::new(pool)
            .load_dataset(&spec)
            .await
            .context("loading the dataset's users")?;
        tracing::info!(new, users = spec.sizes.users, "dataset users loaded");
        println!("part1-load: {new} new users of {}", spec.sizes.users);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ_by_salt() {
        let a = hash_password("correct horse");
        let b = hash_password("correct horse");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong horse", &a));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn hashing_in_reused_memory_agrees_with_the_crate() {
        let mut memory = HashMemory::new();
        let mine = hash_password_in("correct horse", &mut memory);
        assert!(
            mine.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{mine}"
        );
        assert!(
            verify_password("correct horse", &mine),
            "the crate verifies ours"
        );
        let theirs = hash_password("correct horse");
        assert!(verify_password_in("correct horse", &theirs, &mut memory));
        assert!(!verify_password_in("wrong horse", &theirs, &mut memory));
        assert!(!verify_password_in(
            "correct horse",
            "not a hash",
            &mut memory
        ));
        // Other parameters (a smaller m_cost) verify in the same buffer.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        assert!(verify_password_in("pw", &small, &mut memory));
    }

    #[test]
    fn password_length_is_bounded() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password(&"x".repeat(129)).is_err());
    }

    #[test]
    fn display_names_are_never_blank() {
        assert_eq!(validate_display_name(None).unwrap(), None);
        assert_eq!(
            validate_display_name(Some("Ada 中😀")).unwrap(),
            Some("Ada 中😀")
        );
        for bad in ["", " ", " \t ", "a\nb"] {
            assert!(validate_display_name(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(validate_display_name(Some(&"中".repeat(64))).is_ok());
        assert!(validate_display_name(Some(&"中".repeat(65))).is_err());
    }
}
