//! Users, in the shared database: a clone keeps nothing about a user.
//!
//! Passwords are hashed with Argon2id (the `argon2` crate's defaults: 19 MiB,
//! 2 passes), on the blocking pool so a login does not stall the other
//! requests of its clone. A login for an unknown user still verifies a hash,
//! so the response time does not tell which usernames exist.

use std::sync::LazyLock;

use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use argon2::{Argon2, PasswordHash};
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

/// The users table.
#[derive(Clone)]
pub struct Users {
    pool: MySqlPool,
}

impl Users {
    /// Users in `pool`'s database (created by the migrations).
    pub fn new(pool: MySqlPool) -> Self {
        Users { pool }
    }

    /// Creates a user; `Conflict` if the name is taken.
    pub async fn create(&self, username: &str, password: &str) -> Result<u64, ApiError> {
        let password = password.to_owned();
        let hash = tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        let created = sqlx::query("INSERT INTO users (username, password_hash, created_at) VALUES (?, ?, UNIX_TIMESTAMP())")
            .bind(username)
            .bind(hash)
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

    /// Looks a user up by name.
    pub async fn find(&self, username: &str) -> Result<Option<UserRecord>, ApiError> {
        let row: Option<(u64, String, String)> =
            sqlx::query_as("SELECT id, username, password_hash FROM users WHERE username = ?")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(id, username, password_hash)| UserRecord {
            id,
            username,
            password_hash,
        }))
    }

    /// The user if the password is right, else `BadCredentials`.
    pub async fn authenticate(
        &self,
        username: &str,
        password: &str,
    ) -> Result<UserRecord, ApiError> {
        let user = self.find(username).await?;
        let hash = user
            .as_ref()
            .map_or_else(|| DUMMY_HASH.clone(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
        match user {
            Some(u) if ok => Ok(u),
            _ => Err(ApiError::BadCredentials),
        }
    }

    /// Loads the dataset's users (`user1`..`userN`), all with
    /// [`common::dataset::DATASET_PASSWORD`] hashed once (see its doc), in
    /// batches. Users already there are kept. Returns how many were new.
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
                "INSERT IGNORE INTO users (id, username, password_hash, created_at) ",
            );
            q.push_values(batch, |mut row, u| {
                row.push_bind(u.id)
                    .push_bind(&u.username)
                    .push_bind(&hash)
                    .push_bind(u.joined_at);
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
    fn password_length_is_bounded() {
        assert!(validate_password("short").is_err());
        assert!(validate_password("long enough").is_ok());
        assert!(validate_password(&"x".repeat(129)).is_err());
    }
}
