//! The social blog every part serves.
//!
//! The article names what a real site caches: sessions, fully rendered
//! articles, activity streams, friend graphs. So the domain is exactly that:
//! users who befriend each other, write articles, comment and like, and read
//! a feed of their friends' activity. Ids are `u64` everywhere; part 2 shows
//! how to make them unique across shards without a central counter.
//!
//! Timestamps are Unix seconds (`i64`): simple to store in MariaDB, MongoDB
//! and Redis alike, and easy to read in a JSON body.

use serde::{Deserialize, Serialize};

/// A user of the blog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Stable id, 1-based in the generated dataset.
    pub id: u64,
    /// Unique login name: 3 to 32 characters of `[a-z0-9_]`.
    pub username: String,
    /// What the pages show.
    pub display_name: String,
    /// A line about the user.
    pub bio: String,
    /// When the account was created (Unix seconds).
    pub joined_at: i64,
}

/// A friendship. Friendships are mutual, so the generator emits each pair
/// once, with `user_id < friend_id`; stores that want both directions (a
/// user document holding its friends' ids) write both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Friendship {
    /// The smaller id of the pair.
    pub user_id: u64,
    /// The larger id of the pair.
    pub friend_id: u64,
    /// When they became friends (Unix seconds).
    pub since: i64,
}

/// An article: the page that part 3 caches fully rendered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Article {
    /// Stable id, 1-based in the generated dataset.
    pub id: u64,
    /// The user who wrote it.
    pub author_id: u64,
    /// Its title.
    pub title: String,
    /// Its text.
    pub body: String,
    /// When it was published (Unix seconds).
    pub published_at: i64,
}

/// A comment on an article.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Comment {
    /// Stable id, 1-based in the generated dataset.
    pub id: u64,
    /// The article it belongs to.
    pub article_id: u64,
    /// Who wrote it.
    pub author_id: u64,
    /// Its text.
    pub body: String,
    /// When it was written (Unix seconds).
    pub created_at: i64,
}

/// A like: one per (article, user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Like {
    /// The article liked.
    pub article_id: u64,
    /// Who liked it.
    pub user_id: u64,
    /// When (Unix seconds).
    pub created_at: i64,
}

/// One line of a user's activity feed: what a friend did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Activity {
    /// A friend published an article.
    Posted {
        /// The friend.
        user_id: u64,
        /// The article.
        article_id: u64,
        /// When.
        at: i64,
    },
    /// A friend commented on an article.
    Commented {
        /// The friend.
        user_id: u64,
        /// The article commented on.
        article_id: u64,
        /// The comment.
        comment_id: u64,
        /// When.
        at: i64,
    },
    /// A friend liked an article.
    Liked {
        /// The friend.
        user_id: u64,
        /// The article liked.
        article_id: u64,
        /// When.
        at: i64,
    },
}

impl Activity {
    /// When it happened; feeds are sorted newest first by this.
    pub fn at(&self) -> i64 {
        match self {
            Activity::Posted { at, .. }
            | Activity::Commented { at, .. }
            | Activity::Liked { at, .. } => *at,
        }
    }
}

/// Why a username is refused. Usernames end up in URLs, Redis keys and log
/// lines, so they are restricted to a small alphabet instead of escaped
/// everywhere they go.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UsernameError {
    /// Fewer than 3 or more than 32 characters.
    #[error("a username has 3 to 32 characters")]
    Length,
    /// A character outside `[a-z0-9_]`.
    #[error("a username uses only lowercase letters, digits and '_'")]
    Alphabet,
}

/// Checks a username: 3 to 32 characters of `[a-z0-9_]`.
pub fn validate_username(name: &str) -> Result<(), UsernameError> {
    if !(3..=32).contains(&name.len()) {
        return Err(UsernameError::Length);
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(UsernameError::Alphabet);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn usernames() {
        assert!(validate_username("ada_1").is_ok());
        assert_eq!(validate_username("ab"), Err(UsernameError::Length));
        assert_eq!(validate_username("Ada"), Err(UsernameError::Alphabet));
        assert_eq!(validate_username("a b c"), Err(UsernameError::Alphabet));
        assert_eq!(
            validate_username("x\r\nflush_all"),
            Err(UsernameError::Alphabet)
        );
    }

    proptest! {
        #[test]
        fn accepted_usernames_are_safe_in_keys_and_urls(name in "\\PC{0,40}") {
            if validate_username(&name).is_ok() {
                prop_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
            }
        }
    }
}
