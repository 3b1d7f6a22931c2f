//! Idempotency keys: a write the client may safely send twice.
//!
//! A clone can commit a write and die before its answer leaves; the client
//! (or the load balancer) cannot tell that from a write that never
//! happened, so it sends it again, and without care the write happens
//! twice. The client prevents that by naming the attempt: an
//! `Idempotency-Key` header, the same on every retry of one logical write.
//! The server stores the key *with* the write, atomically, and answers a
//! repeated key with the first answer instead of writing again.
//!
//! "Atomically" is the whole point: checking the key, then writing, then
//! storing the key would let two retries racing on two clones both pass
//! the check. Part 1's cart does all three in one Redis Lua script
//! ([`crate::session::RedisSessions`]); part 2's writes store the key as a
//! row in the same transaction as the write.
//!
//! Keys are scoped per user (one user's key never matches another's
//! write) and expire after a day: long enough for any retry, short enough
//! not to keep every key for ever.

use axum::http::HeaderMap;

use crate::error::ApiError;

/// The request header that carries the key.
pub const HEADER: &str = "idempotency-key";

/// How long a key is remembered, in seconds.
pub const TTL_SECS: u64 = 24 * 3600;

/// The longest key accepted.
pub const MAX_CHARS: usize = 64;

/// A validated idempotency key: 1 to 64 characters of `[A-Za-z0-9_-]`, so
/// it is safe in a Redis key or a SQL string and cannot be a way to store
/// arbitrary data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key of a request, if it sent one; 400 if it is malformed or sent twice.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::BadRequest(
                "send one Idempotency-Key header, not several".into(),
            ));
        }
        let raw = value.to_str().unwrap_or("");
        Self::parse(raw).map(Some).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "an Idempotency-Key has 1 to {MAX_CHARS} characters of A-Z, a-z, 0-9, _ and -"
            ))
        })
    }

    /// Parses a key: `None` unless it has 1 to 64 characters of `[A-Za-z0-9_-]`.
    pub fn parse(raw: &str) -> Option<IdempotencyKey> {
        (!raw.is_empty()
            && raw.len() <= MAX_CHARS
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
        .then(|| IdempotencyKey(raw.to_owned()))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn keys_are_short_and_plain() {
        assert!(IdempotencyKey::parse("a").is_some());
        assert!(IdempotencyKey::parse("0f3c-Retry_2").is_some());
        assert!(IdempotencyKey::parse(&"k".repeat(64)).is_some());
        for bad in ["", " ", "a b", "a:b", "key\r\n", "ключ", &"k".repeat(65)] {
            assert_eq!(IdempotencyKey::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn headers_absent_present_malformed_or_repeated() {
        let mut h = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&h).unwrap(), None);
        h.insert(HEADER, "abc".parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&h).unwrap().unwrap().as_str(),
            "abc"
        );
        h.append(HEADER, "def".parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&h).unwrap_err().status_code(),
            400
        );
        let mut bad = HeaderMap::new();
        bad.insert(HEADER, "no spaces".parse().unwrap());
        assert_eq!(
            IdempotencyKey::from_headers(&bad)
                .unwrap_err()
                .status_code(),
            400
        );
    }

    proptest! {
        #[test]
        fn any_accepted_key_is_safe_in_a_redis_key(raw in "\\PC{0,80}") {
            if let Some(k) = IdempotencyKey::parse(&raw) {
                prop_assert!(k.as_str().len() <= MAX_CHARS);
                prop_assert!(!k.as_str().contains([':', ' ', '*', '\r', '\n']));
            }
        }
    }
}
