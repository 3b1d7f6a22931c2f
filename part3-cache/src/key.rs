//! Cache keys that cannot carry an attack.
//!
//! A cache key is usually built from what a user sent: a username, an id
//! from the URL. Memcached's text protocol puts the key on the command
//! line (`get <key>\r\n`), so a key holding a space or `\r\n` splits the
//! command: a username of `x\r\nflush_all\r\n` would empty the whole cache.
//! The memcache crate's ASCII client writes keys as given (see
//! `../shared/notes/local-stack.md`), and memcached up to 1.6.45 stores
//! base64 keys of the meta protocol by their decoded bytes
//! (GHSA-r47x-6p6r-mvcp), so "the client encodes it" is no defence either.
//!
//! The rule here: a [`Key`] is only ever built from a namespace the code
//! names (`"article"`, `"friends"`) and parts. A part that is a plain token
//! (`[A-Za-z0-9_-]{1,64}`, which ids and most usernames are) is kept, so a
//! learner can read keys in `memcached-tool` or `redis-cli`; any other part
//! is replaced by `#` and the hex of its SHA-256. The `#` marks the part as
//! hashed: a literal part can never contain it, so a user literally named
//! like another name's hash cannot share its key. Raw user text never
//! reaches the wire, on either backend.
//!
//! A key is at most [`MAX_KEY_BYTES`] bytes, leaving room for the backend's
//! prefix ([`MAX_PREFIX_BYTES`]) and a derived suffix ([`Key::derived`])
//! under memcached's limit of 250 bytes.

use std::fmt;

use sha2::{Digest, Sha256};

/// The longest key [`Key::new`] builds; longer ones are hashed whole.
pub const MAX_KEY_BYTES: usize = 180;
/// The longest prefix a backend accepts (`prefix + key + suffix <= 250`).
pub const MAX_PREFIX_BYTES: usize = 48;
/// The longest suffix [`Key::derived`] accepts.
pub const MAX_SUFFIX_BYTES: usize = 16;
/// The longest part kept as it is.
pub const MAX_PLAIN_PART: usize = 64;

/// A cache key that is safe on every backend: ASCII, no spaces or control
/// characters, at most [`MAX_KEY_BYTES`] bytes. Built only from a namespace
/// (a static `[a-z0-9_:]+` string) and parts; see the module doc.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// `namespace:part:part...`, each part kept if it is a plain token,
    /// else hashed.
    ///
    /// # Panics
    ///
    /// If `namespace` is empty, longer than 64 bytes or not `[a-z0-9_:]+`:
    /// namespaces are written in the code, never taken from a request, so
    /// a bad one is a bug to fix, not an input to handle.
    pub fn new(namespace: &'static str, parts: &[&str]) -> Key {
        assert!(
            is_namespace(namespace),
            "cache namespace {namespace:?} must be 1..=64 bytes of [a-z0-9_:]"
        );
        let mut key = String::with_capacity(namespace.len() + parts.len() * 16);
        key.push_str(namespace);
        for part in parts {
            key.push(':');
            if is_plain(part) {
                key.push_str(part);
            } else {
                key.push('#');
                key.push_str(&sha256_hex(part.as_bytes()));
            }
        }
        if key.len() > MAX_KEY_BYTES {
            // Many parts: hash them together. The parts are already free of
            // `:` (plain or hashed), so the joined string is unambiguous.
            let joined = &key[namespace.len()..];
            key = format!("{namespace}:##{}", sha256_hex(joined.as_bytes()));
        }
        Key(key)
    }

    /// A key of its own beside this one, for what goes with the value: a
    /// lease (`article:42` -> `article:42:lease`).
    ///
    /// # Panics
    ///
    /// If `suffix` is not 1..=[`MAX_SUFFIX_BYTES`] bytes of `[a-z0-9_]`
    /// (it is written in the code, like a namespace).
    pub fn derived(&self, suffix: &'static str) -> Key {
        assert!(
            !suffix.is_empty()
                && suffix.len() <= MAX_SUFFIX_BYTES
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
            "key suffix {suffix:?} must be 1..={MAX_SUFFIX_BYTES} bytes of [a-z0-9_]"
        );
        Key(format!("{}:{suffix}", self.0))
    }

    /// The key as it goes on the wire (after the backend's prefix).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.0)
    }
}

/// Whether `prefix` may start every key of a backend: at most
/// [`MAX_PREFIX_BYTES`] bytes of `[A-Za-z0-9_:.-]` (possibly empty).
pub fn is_valid_prefix(prefix: &str) -> bool {
    prefix.len() <= MAX_PREFIX_BYTES
        && prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-'))
}

/// The hex of the SHA-256 of `bytes`: what replaces a part that is not a
/// plain token, and what the query cache keys SQL by.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_namespace(namespace: &str) -> bool {
    !namespace.is_empty()
        && namespace.len() <= 64
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b':')
}

fn is_plain(part: &str) -> bool {
    !part.is_empty()
        && part.len() <= MAX_PLAIN_PART
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What memcached's text protocol accepts in a key, and what this
    /// module promises on top: no `#` except as a hash marker.
    fn wire_safe(key: &str) -> bool {
        key.len() <= MAX_KEY_BYTES && key.bytes().all(|b| b.is_ascii_graphic())
    }

    #[test]
    fn plain_parts_are_kept_so_keys_stay_readable() {
        assert_eq!(Key::new("article", &["42"]).as_str(), "article:42");
        assert_eq!(
            Key::new("friends:page", &["user_12", "0"]).as_str(),
            "friends:page:user_12:0"
        );
    }

    #[test]
    fn hostile_parts_are_hashed() {
        let long = "a".repeat(300);
        for hostile in [
            "x y",
            "x\r\nflush_all\r\n",
            "\r\nflush_all\r\n",
            "caf\u{e9}",
            "\u{1f600}",
            "*",
            "",
            "a:b",
            "#abc",
            long.as_str(),
        ] {
            let key = Key::new("friends", &[hostile]);
            assert!(wire_safe(key.as_str()), "{key:?} from {hostile:?}");
            assert_eq!(
                key.as_str(),
                format!("friends:#{}", sha256_hex(hostile.as_bytes()))
            );
        }
    }

    #[test]
    fn a_name_shaped_like_a_hash_does_not_collide_with_the_hashed_name() {
        let hashed = Key::new("friends", &["x y"]);
        let lookalike = sha256_hex(b"x y");
        assert_ne!(Key::new("friends", &[&lookalike]), hashed);
    }

    #[test]
    fn parts_cannot_forge_a_separator() {
        assert_ne!(Key::new("a", &["b:c"]), Key::new("a", &["b", "c"]));
        assert_ne!(Key::new("a", &["b", "c"]), Key::new("a", &["bc"]));
    }

    #[test]
    fn many_parts_are_hashed_whole_under_the_limit() {
        let parts: Vec<String> = (0..20)
            .map(|i| format!("part{i:02}_{}", "x".repeat(20)))
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        let key = Key::new("feed", &parts);
        assert!(wire_safe(key.as_str()), "{key:?}");
        assert!(key.as_str().starts_with("feed:##"));
        let mut other = parts.clone();
        other[19] = "different";
        assert_ne!(Key::new("feed", &other), key);
    }

    #[test]
    fn derived_keys_stay_under_memcached_limit() {
        let part = "a".repeat(40);
        let longest = Key::new("n", &[part.as_str(); 10]);
        let lease = longest.derived("lease");
        assert!(MAX_PREFIX_BYTES + lease.as_str().len() <= 250);
        assert!(lease.as_str().ends_with(":lease"));
    }

    #[test]
    #[should_panic(expected = "cache namespace")]
    fn a_namespace_with_a_space_is_a_bug() {
        let _ = Key::new("bad namespace", &[]);
    }

    #[test]
    fn prefixes_are_checked() {
        assert!(is_valid_prefix(""));
        assert!(is_valid_prefix("p3_1234_0_abcd:"));
        assert!(!is_valid_prefix("a b"));
        assert!(!is_valid_prefix(&"a".repeat(MAX_PREFIX_BYTES + 1)));
    }

    proptest::proptest! {
        #[test]
        fn any_part_gives_a_wire_safe_key(part in ".{0,300}", other in "[ -~]{0,80}") {
            let key = Key::new("prop", &[&part, &other]);
            proptest::prop_assert!(wire_safe(key.as_str()), "{:?}", key);
            // Distinct inputs give distinct keys (up to SHA-256 collisions).
            if part != other {
                proptest::prop_assert_ne!(Key::new("prop", &[&part]), Key::new("prop", &[&other]));
            }
        }
    }
}
