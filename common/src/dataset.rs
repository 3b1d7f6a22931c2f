//! A deterministic, Zipf-skewed dataset of the social blog.
//!
//! Caches and replicas only show their worth under realistic skew: a few
//! articles get most of the reads, a few authors most of the followers. So
//! popularity here follows Zipf's law (`s = 1.0` by default): the article of
//! popularity rank `r` is chosen with probability proportional to `1/r`.
//!
//! The same [`DatasetSpec`] (seed + sizes) always yields the same data, byte
//! for byte, on every machine: the generator uses ChaCha8, whose stream is
//! fixed by its specification, and each table draws from its own stream, so
//! one table can be streamed without generating the others first.
//!
//! Popularity rank is not id order: rank `r` maps to an id through a fixed
//! permutation ([`Popularity::id_of_rank`]), so the hot items are spread over
//! the id range, and therefore over shards, as they would be in real life.
//!
//! ```
//! use common::dataset::{DatasetSpec, Scale};
//! let spec = DatasetSpec::new(42, Scale::Tiny);
//! let first = spec.users().next().unwrap();
//! assert_eq!(first.username, "user1");
//! assert_eq!(spec.users().count() as u64, spec.sizes.users);
//! ```

use std::collections::HashSet;
use std::str::FromStr;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};

use crate::domain::{Article, Comment, Friendship, Like, User};

/// The password every generated user logs in with. Hashing 10k passwords
/// with a real password hash takes minutes, so the loader hashes this one
/// once and stores the same hash for every generated user. A simplification
/// of the dataset only: accounts made through `/signup` get their own salt.
pub const DATASET_PASSWORD: &str = "correct-horse-battery";

/// Unix time of the dataset's first event (2026-01-01T00:00:00Z).
pub const EPOCH: i64 = 1_767_225_600;

/// How big the dataset is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scale {
    /// For tests: a few hundred users, generated in milliseconds.
    Tiny,
    /// For `./lab tour`: 10k users, 100k articles, 500k comments.
    Default,
    /// For benchmark teams: 10x the default.
    Large,
}

impl FromStr for Scale {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tiny" => Ok(Scale::Tiny),
            "default" => Ok(Scale::Default),
            "large" => Ok(Scale::Large),
            other => Err(format!(
                "unknown scale {other:?}: use tiny, default or large"
            )),
        }
    }
}

/// How many of each thing the dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Users.
    pub users: u64,
    /// Friendship edges each user draws (duplicates and self-edges are
    /// dropped, so the real count is a little lower).
    pub friends_per_user: u64,
    /// Articles.
    pub articles: u64,
    /// Comments.
    pub comments: u64,
    /// Likes drawn (duplicates of one (article, user) are dropped).
    pub likes: u64,
}

impl Scale {
    /// The sizes of this scale.
    pub fn sizes(self) -> Sizes {
        match self {
            Scale::Tiny => Sizes {
                users: 200,
                friends_per_user: 8,
                articles: 1_000,
                comments: 5_000,
                likes: 5_000,
            },
            Scale::Default => Sizes {
                users: 10_000,
                friends_per_user: 20,
                articles: 100_000,
                comments: 500_000,
                likes: 500_000,
            },
            Scale::Large => Sizes {
                users: 100_000,
                friends_per_user: 20,
                articles: 1_000_000,
                comments: 5_000_000,
                likes: 5_000_000,
            },
        }
    }
}

/// Zipf popularity over `n` items, with ranks mapped to ids by a fixed
/// permutation. Load generators use it to pick which article to read.
#[derive(Debug, Clone)]
pub struct Popularity {
    n: u64,
    stride: u64,
    zipf: Zipf<f64>,
}

impl Popularity {
    /// Popularity over ids `1..=n` with exponent `s` (1.0 is classic Zipf).
    ///
    /// # Panics
    /// If `n` is 0 or `s` is negative: both are programming errors.
    pub fn new(n: u64, s: f64) -> Self {
        assert!(n > 0, "popularity over zero items");
        let zipf = Zipf::new(n as f64, s).expect("Zipf exponent must be >= 0");
        // A stride coprime with n makes `rank * stride mod n` a permutation.
        let stride = [7919u64, 7907, 104_729, 1]
            .into_iter()
            .find(|p| gcd(*p % n.max(1), n) == 1 || n == 1)
            .unwrap_or(1);
        Popularity { n, stride, zipf }
    }

    /// The id of the item of popularity rank `rank` (1 = most popular).
    pub fn id_of_rank(&self, rank: u64) -> u64 {
        ((rank - 1) * self.stride) % self.n + 1
    }

    /// Draws an id: popular ids come up far more often than others.
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> u64 {
        let rank = (self.zipf.sample(rng) as u64).clamp(1, self.n);
        self.id_of_rank(rank)
    }

    /// How many items there are.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Always false: there is at least one item.
    pub fn is_empty(&self) -> bool {
        false
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// A dataset: a seed and sizes. Cheap to copy; the tables are generated on
/// demand by the iterators below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpec {
    /// The seed: the same seed gives the same data.
    pub seed: u64,
    /// How many of each thing.
    pub sizes: Sizes,
}

/// The stream each table draws from, so tables are independent.
#[derive(Clone, Copy)]
enum Stream {
    Users = 1,
    Friendships = 2,
    Articles = 3,
    Comments = 4,
    Likes = 5,
}

const WORDS: &[&str] = &[
    "scale",
    "clone",
    "cache",
    "queue",
    "replica",
    "shard",
    "latency",
    "throughput",
    "session",
    "server",
    "balance",
    "index",
    "query",
    "object",
    "redis",
    "worker",
    "async",
    "static",
    "render",
    "feed",
    "friend",
    "stream",
    "write",
    "read",
    "primary",
    "memory",
    "disk",
    "load",
    "request",
    "user",
    "page",
    "fast",
    "slow",
    "simple",
    "state",
    "stateless",
    "join",
    "table",
    "document",
    "precompute",
    "invalidate",
    "expire",
    "hot",
    "cold",
    "tail",
    "median",
];

fn words<R: Rng + ?Sized>(rng: &mut R, min: usize, max: usize) -> String {
    let n = rng.random_range(min..=max);
    let mut out = String::with_capacity(n * 7);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(WORDS[rng.random_range(0..WORDS.len())]);
    }
    out
}

impl DatasetSpec {
    /// A dataset of the given scale.
    pub fn new(seed: u64, scale: Scale) -> Self {
        DatasetSpec {
            seed,
            sizes: scale.sizes(),
        }
    }

    fn rng(&self, stream: Stream) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(stream as u64);
        rng
    }

    /// Which users write and get befriended most.
    pub fn user_popularity(&self) -> Popularity {
        Popularity::new(self.sizes.users, 1.0)
    }

    /// Which articles get read, commented and liked most.
    pub fn article_popularity(&self) -> Popularity {
        Popularity::new(self.sizes.articles, 1.0)
    }

    /// Users `user1 ..= userN`, in id order.
    pub fn users(&self) -> impl Iterator<Item = User> + use<> {
        let mut rng = self.rng(Stream::Users);
        (1..=self.sizes.users).map(move |id| User {
            id,
            username: format!("user{id}"),
            display_name: format!("User {id}"),
            bio: words(&mut rng, 3, 10),
            joined_at: EPOCH + id as i64 * 60,
        })
    }

    /// Mutual friendships, each pair once with `user_id < friend_id`. Each
    /// user befriends `friends_per_user` others drawn by popularity, so
    /// popular users end up with many friends (a skewed friend graph).
    pub fn friendships(&self) -> impl Iterator<Item = Friendship> + use<> {
        let mut rng = self.rng(Stream::Friendships);
        let popularity = self.user_popularity();
        let sizes = self.sizes;
        let mut seen = HashSet::new();
        (1..=sizes.users).flat_map(move |user| {
            let mut out = Vec::with_capacity(sizes.friends_per_user as usize);
            for _ in 0..sizes.friends_per_user {
                let other = popularity.sample(&mut rng);
                if other == user {
                    continue;
                }
                let pair = (user.min(other), user.max(other));
                if seen.insert(pair) {
                    out.push(Friendship {
                        user_id: pair.0,
                        friend_id: pair.1,
                        since: EPOCH + 86_400 + rng.random_range(0..86_400 * 30),
                    });
                }
            }
            out
        })
    }

    /// Articles in id (and publication) order; popular users write more.
    pub fn articles(&self) -> impl Iterator<Item = Article> + use<> {
        let mut rng = self.rng(Stream::Articles);
        let authors = self.user_popularity();
        (1..=self.sizes.articles).map(move |id| Article {
            id,
            author_id: authors.sample(&mut rng),
            title: words(&mut rng, 3, 7),
            body: words(&mut rng, 40, 90),
            published_at: EPOCH + 86_400 * 31 + id as i64 * 10,
        })
    }

    /// Comments in id order, on articles drawn by popularity.
    pub fn comments(&self) -> impl Iterator<Item = Comment> + use<> {
        let mut rng = self.rng(Stream::Comments);
        let articles = self.article_popularity();
        let users = self.sizes.users;
        let last_article_at = EPOCH + 86_400 * 31 + self.sizes.articles as i64 * 10;
        (1..=self.sizes.comments).map(move |id| Comment {
            id,
            article_id: articles.sample(&mut rng),
            author_id: rng.random_range(1..=users),
            body: words(&mut rng, 5, 20),
            created_at: last_article_at + id as i64,
        })
    }

    /// Likes, at most one per (article, user), on articles drawn by popularity.
    pub fn likes(&self) -> impl Iterator<Item = Like> + use<> {
        let mut rng = self.rng(Stream::Likes);
        let articles = self.article_popularity();
        let users = self.sizes.users;
        let start = EPOCH + 86_400 * 31 + self.sizes.articles as i64 * 10;
        let mut seen = HashSet::new();
        (1..=self.sizes.likes).filter_map(move |n| {
            let like = Like {
                article_id: articles.sample(&mut rng),
                user_id: rng.random_range(1..=users),
                created_at: start + n as i64,
            };
            seen.insert((like.article_id, like.user_id)).then_some(like)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_same_seed_gives_the_same_data() {
        let a = DatasetSpec::new(7, Scale::Tiny);
        let b = DatasetSpec::new(7, Scale::Tiny);
        assert!(a.users().eq(b.users()));
        assert!(a.friendships().eq(b.friendships()));
        assert!(a.articles().eq(b.articles()));
        assert!(a.comments().eq(b.comments()));
        assert!(a.likes().eq(b.likes()));
    }

    #[test]
    fn another_seed_gives_other_data() {
        let a = DatasetSpec::new(7, Scale::Tiny);
        let b = DatasetSpec::new(8, Scale::Tiny);
        assert!(!a.articles().eq(b.articles()));
        assert!(!a.comments().eq(b.comments()));
    }

    #[test]
    fn sizes_are_as_specified() {
        let spec = DatasetSpec::new(1, Scale::Tiny);
        let s = spec.sizes;
        assert_eq!(spec.users().count() as u64, s.users);
        assert_eq!(spec.articles().count() as u64, s.articles);
        assert_eq!(spec.comments().count() as u64, s.comments);
        let likes = spec.likes().count() as u64;
        assert!(likes <= s.likes && likes > s.likes / 2, "{likes} likes");
        let friendships = spec.friendships().count() as u64;
        let drawn = s.users * s.friends_per_user;
        assert!(
            friendships <= drawn && friendships > drawn / 3,
            "{friendships}"
        );
        assert_eq!(Scale::Default.sizes().users, 10_000);
        assert_eq!(Scale::Default.sizes().articles, 100_000);
        assert_eq!(Scale::Default.sizes().comments, 500_000);
    }

    #[test]
    fn references_point_at_existing_rows() {
        let spec = DatasetSpec::new(3, Scale::Tiny);
        let s = spec.sizes;
        assert!(
            spec.articles()
                .all(|a| (1..=s.users).contains(&a.author_id))
        );
        assert!(
            spec.comments()
                .all(|c| (1..=s.articles).contains(&c.article_id)
                    && (1..=s.users).contains(&c.author_id))
        );
        assert!(
            spec.friendships()
                .all(|f| f.user_id < f.friend_id && f.friend_id <= s.users)
        );
        let mut likes = HashSet::new();
        assert!(
            spec.likes()
                .all(|l| likes.insert((l.article_id, l.user_id)))
        );
        let mut pairs = HashSet::new();
        assert!(
            spec.friendships()
                .all(|f| pairs.insert((f.user_id, f.friend_id)))
        );
    }

    #[test]
    fn popularity_is_zipf_skewed() {
        let spec = DatasetSpec::new(11, Scale::Tiny);
        let mut per_article: HashMap<u64, u64> = HashMap::new();
        for c in spec.comments() {
            *per_article.entry(c.article_id).or_default() += 1;
        }
        let mut counts: Vec<u64> = per_article.values().copied().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_1_percent: u64 = counts.iter().take(spec.sizes.articles as usize / 100).sum();
        let share = top_1_percent as f64 / spec.sizes.comments as f64;
        // Uniform would give 1%; Zipf(1.0) over 1000 items gives ~39%.
        assert!(
            share > 0.25,
            "top 1% of articles got {:.1}% of comments",
            share * 100.0
        );
        // And the most popular article is the one of rank 1.
        let hottest = per_article.iter().max_by_key(|(_, n)| **n).unwrap().0;
        assert_eq!(*hottest, spec.article_popularity().id_of_rank(1));
    }

    #[test]
    fn rank_to_id_is_a_permutation() {
        for n in [1u64, 2, 10, 7919, 1000, 100_000] {
            let p = Popularity::new(n, 1.0);
            let ids: HashSet<u64> = (1..=n.min(20_000)).map(|r| p.id_of_rank(r)).collect();
            assert_eq!(ids.len() as u64, n.min(20_000), "n = {n}");
            assert!(ids.iter().all(|id| (1..=n).contains(id)));
        }
    }

    #[test]
    fn scale_parses() {
        assert_eq!("tiny".parse::<Scale>(), Ok(Scale::Tiny));
        assert!(
            "huge"
                .parse::<Scale>()
                .unwrap_err()
                .contains("tiny, default or large")
        );
    }
}
