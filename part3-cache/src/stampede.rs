//! Stampedes: a hot object expires while a hundred readers want it.
//!
//! A read-through cache does "get; on a miss, load from the database and
//! set". When a popular object expires, every reader in flight misses at
//! once and every one of them assembles the object from the database: the
//! load the cache was hiding arrives all at once (the "thundering herd").
//! Facebook reported a herd's peak of 17K queries/s cut to 1.3K by leases
//! (Nishtala et al., *Scaling Memcache at Facebook*, 2013).
//!
//! [`ReadThrough`] is that read path, with four answers, picked by
//! `--stampede` ([`Stampede`]):
//!
//! - **`none`**: every miss loads. About one load per reader.
//! - **`single-flight`**: inside one process, concurrent misses on one key
//!   wait for the first one's load ([`Flights`]). One load per clone.
//! - **`lease`**: single-flight inside the process, plus a lock across
//!   processes: the first to `add` `{key}:lease` loads; the others poll the
//!   cache until the value is there, or until a deadline, after which they
//!   load for themselves without writing back (a dead or slow lease holder
//!   must not stall the page). A waiter that finds the lease released and
//!   still no value (the holder's fill was overtaken by a write, or its
//!   load failed) takes the lease itself. One load in all.
//! - **`xfetch`**: probabilistic early expiration (Vattani, Chierichetti and
//!   Lowenstein, *Optimal Probabilistic Cache Stampede Prevention*, VLDB
//!   2015). The value is stored with how long it took to compute (`delta`)
//!   and when it expires; each reader recomputes early with a probability
//!   that grows as expiry nears and with `delta`:
//!   `now - delta * beta * ln(rand) >= expiry`. Under steady traffic one
//!   reader refreshes the value before it expires, so nobody misses; it
//!   does nothing for a key that is already gone (a cold start). Two
//!   additions of this code: the entry is kept a second past its logical
//!   expiry (memcached's clock ticks in whole seconds), and while one
//!   reader of a clone refreshes it, the clone's other readers whose draw
//!   also says "refresh" serve the cached value instead (without that, on
//!   a busy server every reader past the expiry, or close to it, refreshes
//!   at once: a herd again, measured in experiment 9).
//!
//! Whatever the strategy, a cache error never fails the read: the loader
//! runs and the answer is [`Outcome::Bypass`].
//!
//! ## The stale-set race, and its fix
//!
//! Read-through has a race of its own, apart from herds (experiment 10 of
//! the demo, `tests/it/races.rs`):
//!
//! 1. a read misses and loads the article (from a lagging replica, or from
//!    the primary just before a write commits): the old version;
//! 2. a write commits and deletes the key (invalidation after commit);
//! 3. the slow read now stores what it loaded. The old object is back in
//!    the cache, after the delete that was meant to remove it, and every
//!    reader on every clone gets it until its TTL (minutes).
//!
//! The delete came *before* the set, so deleting harder does not help: the
//! fill has to learn that a write happened while it was loading. The fix
//! here is a version marker, Facebook's lease tokens (Nishtala et al.
//! 2013, §3.2.1) written out over `get`/`set`/`delete`:
//!
//! - [`ReadThrough::invalidate`] first sets `{key}:written` to a fresh
//!   random token (TTL [`DEFAULT_WRITTEN_TTL`]), then deletes the key.
//! - A fill reads `{key}:written` *before* it loads (`before`), and again
//!   after: if the marker changed (a write happened meanwhile), it serves
//!   what it loaded but does not store it. It stores otherwise, then reads
//!   the marker once more: a write that landed between that check and the
//!   set is caught here, and the fill deletes what it just stored.
//! - A fill that took longer than the marker's TTL does not store either
//!   (a marker that came and went would be invisible to it).
//!
//! So the request is never failed by the race: only the cache write is
//! skipped, and [`ReadThrough::skipped_stores`] counts those. Fills that
//! start after a write see the marker in `before` and store normally: the
//! marker costs a write nothing but one `set`, and a miss two or three
//! small `get`s. What is left: between a set and the check that undoes it
//! (one round trip), a reader on another clone may be served the old
//! object once; memcached's server-side leases (`mg ... N`, the token
//! checked *in* the set) or a Redis script close that window. And a fill
//! that *starts* after the write must not read a lagging replica: the
//! server's loads read the primary ([`crate::server::cache`]).
//! [`ReadThrough::with_fill_guard`]`(false)` turns the marker off, to show
//! the race. A read that fills from a multi-get (the feed) does the same
//! by hand: [`ReadThrough::marks`] before loading the misses,
//! [`ReadThrough::set_unless_written`] to store each.
//!
//! See it: `DEMO_ONLY=9,10 cargo run -p part3-cache --bin part3-demo`
//! (assemblies per strategy; the race counted without and with the fix),
//! `cargo test -p part3-cache --test it stampede:: races::`.
//!
//! What production adds: memcached's meta protocol has leases built in (`mg
//! ... N` vivifies a missing key and hands the lease to one client, with
//! stale-while-revalidate); the memcache crate's `exp::AsyncMemcache::fetch`
//! uses them. They are written out here over the six operations of
//! [`CacheBackend`] so both backends run the same code and a learner sees
//! every step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::backend::{CacheBackend, CacheError};
use crate::key::Key;

/// Which stampede protection (`--stampede`, env `STAMPEDE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Stampede {
    /// Every miss loads.
    None,
    /// Concurrent misses in one process share one load.
    #[value(name = "single-flight")]
    SingleFlight,
    /// One load across every process (a lock in the cache), the others wait.
    Lease,
    /// Probabilistic early recomputation (Vattani et al. 2015).
    #[value(name = "xfetch")]
    XFetch,
}

impl Stampede {
    /// The flag's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Stampede::None => "none",
            Stampede::SingleFlight => "single-flight",
            Stampede::Lease => "lease",
            Stampede::XFetch => "xfetch",
        }
    }
}

/// Where an answer came from: the `X-Cache` header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From the cache.
    Hit,
    /// Loaded from the database (by this request, or by the request it
    /// waited for), then cached (unless a write invalidated the key while
    /// it was loading: then served, not cached).
    Miss,
    /// The cache failed or timed out: loaded from the database, not cached.
    Bypass,
}

impl Outcome {
    /// `hit`, `miss` or `bypass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Bypass => "bypass",
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How long a lease holds, and how long the others wait for its value.
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);
const DEFAULT_LEASE_WAIT: Duration = Duration::from_secs(1);
/// The first poll of a lease loser; it doubles up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
const MAX_POLL: Duration = Duration::from_millis(50);
/// How long a write's `{key}:written` marker lives: longer than any fill
/// should take (a fill that takes longer does not store). See the module
/// docs.
pub const DEFAULT_WRITTEN_TTL: Duration = Duration::from_secs(10);

/// The read path: get, and on a miss load under the chosen protection,
/// store (TTL with jitter) and answer. One per process (a clone), shared by
/// its request handlers.
pub struct ReadThrough {
    backend: Arc<dyn CacheBackend>,
    policy: Stampede,
    flights: Flights,
    /// How long a lease is held at most: if its holder dies, the next
    /// reader after this gets a new one.
    lease_ttl: Duration,
    /// How long a lease loser waits for the value before loading itself.
    lease_wait: Duration,
    /// XFetch's `beta`: above 1 recomputes earlier, below 1 later.
    beta: f64,
    /// TTLs are shortened by up to this fraction at random, so objects
    /// cached together do not all expire together.
    jitter: f64,
    /// The stale-set fix: writes leave a `{key}:written` marker, fills
    /// check it (module docs). On by default.
    fill_guard: bool,
    /// How long the marker lives.
    written_ttl: Duration,
    /// Loader runs (database assemblies) by this read path.
    loads: AtomicU64,
    /// Fills not stored (or taken back) because a write invalidated the
    /// key while they loaded.
    skipped_stores: AtomicU64,
    rng: Mutex<StdRng>,
}

impl ReadThrough {
    /// A read path over `backend` with protection `policy`, lease TTL 2 s,
    /// lease wait 1 s, XFetch beta 1, no TTL jitter.
    pub fn new(backend: Arc<dyn CacheBackend>, policy: Stampede) -> Self {
        ReadThrough {
            backend,
            policy,
            flights: Flights::default(),
            lease_ttl: DEFAULT_LEASE_TTL,
            lease_wait: DEFAULT_LEASE_WAIT,
            beta: 1.0,
            jitter: 0.0,
            fill_guard: true,
            written_ttl: DEFAULT_WRITTEN_TTL,
            loads: AtomicU64::new(0),
            skipped_stores: AtomicU64::new(0),
            rng: Mutex::new(StdRng::from_os_rng()),
        }
    }

    /// Turns the stale-set fix (the `{key}:written` marker) on (the
    /// default) or off (to reproduce the race).
    pub fn with_fill_guard(mut self, on: bool) -> Self {
        self.fill_guard = on;
        self
    }

    /// Sets how long a write's marker lives (default
    /// [`DEFAULT_WRITTEN_TTL`]); fills slower than this do not store.
    pub fn with_written_ttl(mut self, ttl: Duration) -> Self {
        // At least 2 s: a fill gives up storing a second before the marker
        // could be gone (memcached's whole-second clock).
        self.written_ttl = ttl.max(Duration::from_secs(2));
        self
    }

    /// How many times this read path ran a loader: the database
    /// assemblies it caused, hits excluded, since it was made.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// How many fills were served but not stored (or stored and taken
    /// back) because a write invalidated their key while they loaded.
    pub fn skipped_stores(&self) -> u64 {
        self.skipped_stores.load(Ordering::Relaxed)
    }

    /// Whether the stale-set fix is on.
    pub fn fill_guard(&self) -> bool {
        self.fill_guard
    }

    /// Sets how long a lease loser waits for the holder's value.
    pub fn with_lease_wait(mut self, wait: Duration) -> Self {
        self.lease_wait = wait;
        self
    }

    /// Sets how long a lease is held at most.
    pub fn with_lease_ttl(mut self, ttl: Duration) -> Self {
        self.lease_ttl = ttl;
        self
    }

    /// Sets XFetch's `beta` (default 1).
    pub fn with_xfetch_beta(mut self, beta: f64) -> Self {
        self.beta = beta;
        self
    }

    /// Sets the TTL jitter (`CACHE_JITTER`): each TTL is shortened by a
    /// random fraction in `[0, jitter)`. Clamped to `[0, 0.9]`.
    pub fn with_jitter(mut self, jitter: f64) -> Self {
        self.jitter = jitter.clamp(0.0, 0.9);
        self
    }

    /// The backend underneath.
    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    /// The protection in use.
    pub fn policy(&self) -> Stampede {
        self.policy
    }

    /// The value of `key` from the cache, or from `loader` (then cached for
    /// `ttl`), with where it came from. Only the loader's error is
    /// returned: the cache's are logged and turn into [`Outcome::Bypass`].
    pub async fn get_or_load<F, Fut, E>(
        &self,
        key: &Key,
        ttl: Duration,
        loader: F,
    ) -> Result<(Vec<u8>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let found = match self.read(key).await {
            Ok(found) => found,
            Err(e) => {
                tracing::debug!(%key, error = %e, "cache read failed: bypass");
                return Ok((self.load(loader).await?, Outcome::Bypass));
            }
        };
        match (self.policy, found) {
            (Stampede::XFetch, Some(Stored::Timed(entry))) => {
                if self.recompute_early(&entry) {
                    if self.flights.is_flying(key) {
                        // Another reader of this clone is refreshing it:
                        // the cached value is still there, serve it.
                        return Ok((entry.value, Outcome::Hit));
                    }
                    self.flights
                        .run(key, || self.load_and_store(key, ttl, loader))
                        .await
                } else {
                    Ok((entry.value, Outcome::Hit))
                }
            }
            (_, Some(stored)) => Ok((stored.into_value(), Outcome::Hit)),
            (Stampede::None | Stampede::XFetch, None) => {
                self.load_and_store(key, ttl, loader).await
            }
            (Stampede::SingleFlight, None) => {
                self.flights
                    .run(key, || async {
                        // Checked again inside the flight: a flight that
                        // just landed has stored the value.
                        if let Ok(Some(v)) = self.read(key).await {
                            return Ok((v.into_value(), Outcome::Hit));
                        }
                        self.load_and_store(key, ttl, loader).await
                    })
                    .await
            }
            (Stampede::Lease, None) => {
                self.flights
                    .run(key, || self.lease_fill(key, ttl, loader))
                    .await
            }
        }
    }

    /// The values of `keys` in one round trip, as stored by this read path
    /// (XFetch's envelope removed). For objects read together, such as the
    /// feed's per-author lists; the caller loads the misses.
    pub async fn get_many(&self, keys: &[Key]) -> Result<Vec<Option<Vec<u8>>>, CacheError> {
        let raw = self.backend.get_many(keys).await?;
        Ok(raw
            .into_iter()
            .map(|v| v.and_then(|v| self.decode(v)).map(Stored::into_value))
            .collect())
    }

    /// Stores `value` under `key` as this read path would after a load
    /// (with jitter, and XFetch's envelope with a compute time of zero),
    /// without the stale-set guard: for a value that was not loaded from
    /// the database by this read (a read that fills the cache with what it
    /// loaded uses [`ReadThrough::set_unless_written`]).
    pub async fn set(&self, key: &Key, value: &[u8], ttl: Duration) -> Result<(), CacheError> {
        self.store(key, value, ttl, Duration::ZERO).await
    }

    /// What a write does after it commits: with the fill guard on, marks
    /// each key `{key}:written` with a fresh token (so a fill in flight
    /// does not store what it loaded before the write), deletes `keys` in
    /// one round trip, then marks them again with another token. The second
    /// mark closes a gap: a fill that took its "before" between the first
    /// mark and the delete may have loaded from something the delete had
    /// not reached yet (a page rendered from the cached article, say); the
    /// second mark makes its check fail too. The delete is tried even if a
    /// mark fails; the first error is returned.
    pub async fn invalidate(&self, keys: &[Key]) -> Result<(), CacheError> {
        let mut failed = None;
        if let Err(e) = self.mark_written(keys).await {
            failed.get_or_insert(e);
        }
        self.backend.delete_many(keys).await?;
        if let Err(e) = self.mark_written(keys).await {
            failed.get_or_insert(e);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Sets `{key}:written` to one fresh token for every key (with the
    /// fill guard on; a no-op otherwise).
    async fn mark_written(&self, keys: &[Key]) -> Result<(), CacheError> {
        if !self.fill_guard || keys.is_empty() {
            return Ok(());
        }
        let token = {
            let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
            format!("{:016x}", rng.random::<u64>())
        };
        let token = token.as_bytes();
        let ttl = self.written_ttl;
        let marks = keys.iter().map(|key| async move {
            let marker = key.derived(WRITTEN);
            self.backend.set(&marker, token, ttl).await
        });
        let mut failed = None;
        for result in futures::future::join_all(marks).await {
            if let Err(e) = result {
                failed.get_or_insert(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// The cross-process lease: one `add` wins, the rest wait for its value.
    async fn lease_fill<F, Fut, E>(
        &self,
        key: &Key,
        ttl: Duration,
        loader: F,
    ) -> Result<(Vec<u8>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        let lease = key.derived("lease");
        match self.backend.add(&lease, b"1", self.lease_ttl).await {
            Ok(true) => self.holding_lease(key, &lease, ttl, loader).await,
            Ok(false) => {
                // Lost: someone else is loading. Poll for their value (and
                // their lease, in the same round trip).
                let deadline = Instant::now() + self.lease_wait;
                let mut pause = FIRST_POLL;
                let mut outcome = Outcome::Miss;
                let both = [key.clone(), lease.clone()];
                while Instant::now() < deadline {
                    tokio::time::sleep(pause.min(deadline - Instant::now())).await;
                    pause = (pause * 2).min(MAX_POLL);
                    let found = match self.backend.get_many(&both).await {
                        Ok(found) => found,
                        Err(_) => {
                            outcome = Outcome::Bypass;
                            break;
                        }
                    };
                    let mut found = found.into_iter();
                    let (value, held) = (found.next().flatten(), found.next().flatten());
                    if let Some(v) = value.and_then(|v| self.decode(v)) {
                        return Ok((v.into_value(), Outcome::Hit));
                    }
                    if held.is_none() {
                        // The holder let go without storing a value (a write
                        // invalidated its fill, or its load failed): the
                        // next lease is for whoever takes it first.
                        match self.backend.add(&lease, b"1", self.lease_ttl).await {
                            Ok(true) => {
                                return self.holding_lease(key, &lease, ttl, loader).await;
                            }
                            Ok(false) => continue,
                            Err(_) => {
                                outcome = Outcome::Bypass;
                                break;
                            }
                        }
                    }
                }
                // The holder is slow or gone (or the cache is): load, but do
                // not write back (its value, fresher or not, is about to land).
                tracing::debug!(%key, "lease wait over: loading without writing back");
                Ok((self.load(loader).await?, outcome))
            }
            Err(e) => {
                tracing::debug!(%key, error = %e, "lease failed: bypass");
                Ok((self.load(loader).await?, Outcome::Bypass))
            }
        }
    }

    /// Holding the lease: check, load, store, release.
    async fn holding_lease<F, Fut, E>(
        &self,
        key: &Key,
        lease: &Key,
        ttl: Duration,
        loader: F,
    ) -> Result<(Vec<u8>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        // Check once more: the previous holder may have stored the value
        // and released its lease just before our add.
        let result = match self.read(key).await {
            Ok(Some(v)) => Ok((v.into_value(), Outcome::Hit)),
            _ => self.load_and_store(key, ttl, loader).await,
        };
        // Simplified: the delete does not check that the lease is still
        // ours (it may have expired under a loader slower than the lease
        // TTL). A compare-and-delete (memcached CAS, a Redis script) would.
        if let Err(e) = self.backend.delete(lease).await {
            tracing::debug!(%key, error = %e, "lease release failed; it expires");
        }
        result
    }

    /// Runs the loader, counted.
    async fn load<F, Fut, E>(&self, loader: F) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        self.loads.fetch_add(1, Ordering::Relaxed);
        loader().await
    }

    /// Whether `{key}:written` still holds what it held before the load
    /// (an error counts as changed: when in doubt, do not store).
    async fn unwritten(&self, key: &Key, before: &Option<Vec<u8>>) -> bool {
        matches!(self.backend.get(&key.derived(WRITTEN)).await, Ok(now) if now == *before)
    }

    /// Loads, stores (errors logged, never returned) and answers `Miss`.
    async fn load_and_store<F, Fut, E>(
        &self,
        key: &Key,
        ttl: Duration,
        loader: F,
    ) -> Result<(Vec<u8>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Vec<u8>, E>>,
    {
        // The stale-set guard: the write marker as it was before the load.
        let mark = match self.mark(key).await {
            Ok(mark) => mark,
            Err(e) => {
                tracing::debug!(%key, error = %e, "cache read failed: bypass");
                return Ok((self.load(loader).await?, Outcome::Bypass));
            }
        };
        let started = Instant::now();
        let value = self.load(loader).await?;
        let delta = started.elapsed();
        match self.fill(key, &value, ttl, delta, &mark).await {
            Ok(_) => Ok((value, Outcome::Miss)),
            Err(e @ CacheError::TooLarge { .. }) => {
                tracing::debug!(%key, error = %e, "not cached");
                Ok((value, Outcome::Miss))
            }
            Err(e) => {
                tracing::debug!(%key, error = %e, "cache write failed: bypass");
                Ok((value, Outcome::Bypass))
            }
        }
    }

    /// Stores a loaded value under the stale-set guard: not if a write
    /// marked `key` since `mark` was taken (`Ok(false)`), and taken back if
    /// a write marks it between that check and the set.
    async fn fill(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
        delta: Duration,
        mark: &Mark,
    ) -> Result<bool, CacheError> {
        // Memcached's clock ticks in whole seconds, so a marker may be gone
        // up to a second early: a fill that ran that long gives up storing.
        if mark.guarded
            && (mark.taken.elapsed() + XFETCH_GRACE >= self.written_ttl
                || !self.unwritten(key, &mark.before).await)
        {
            self.skipped_stores.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%key, "a write invalidated the key during the fill: served, not stored");
            return Ok(false);
        }
        self.store(key, value, ttl, delta).await?;
        if mark.guarded && !self.unwritten(key, &mark.before).await {
            // A write landed between the check and the set: take it back.
            self.skipped_stores.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.backend.delete(key).await {
                tracing::warn!(%key, error = %e, "could not take back a fill a write overtook: it lives until its TTL");
            }
            return Ok(false);
        }
        Ok(true)
    }

    /// For a value *derived from another cached value* (a page rendered
    /// from the cached article), after it was stored: keeps it only if
    /// `source` still holds the bytes it was derived from (`used`), else
    /// deletes it and answers `false`.
    ///
    /// The write marker cannot protect such a fill on its own: the write
    /// marks, then deletes, then marks again; a page fill that takes its
    /// mark after the first mark, reads the old article before the delete
    /// and stores and checks between the delete and the second mark sees
    /// the same marker every time, and would keep an old page for its
    /// whole TTL. Re-reading the source after the store closes it: if the
    /// old article is still there, the delete has not run yet (and will
    /// delete the page too); if it is gone or different, the page is taken
    /// back. A no-op (`true`) with the fill guard off.
    pub async fn keep_if_source_unchanged(&self, key: &Key, source: &Key, used: &[u8]) -> bool {
        if !self.fill_guard {
            return true;
        }
        match self.get_many(std::slice::from_ref(source)).await {
            Ok(now) if matches!(now.as_slice(), [Some(v)] if v == used) => true,
            _ => {
                self.skipped_stores.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%key, %source, "the source changed after the derived value was stored: taken back");
                if let Err(e) = self.backend.delete(key).await {
                    tracing::warn!(%key, error = %e, "could not take back a derived value: it lives until its TTL");
                }
                false
            }
        }
    }

    /// The write marker of `key` now: take it *before* loading a value to
    /// store with [`ReadThrough::set_unless_written`]. No round trip when
    /// the guard is off.
    pub async fn mark(&self, key: &Key) -> Result<Mark, CacheError> {
        let taken = Instant::now();
        if !self.fill_guard {
            return Ok(Mark::unguarded(taken));
        }
        let before = self.backend.get(&key.derived(WRITTEN)).await?;
        Ok(Mark {
            guarded: true,
            before,
            taken,
        })
    }

    /// The write markers of `keys`, in one round trip: for a multi-get
    /// whose misses are loaded and stored one by one (the feed's path).
    pub async fn marks(&self, keys: &[Key]) -> Result<Vec<Mark>, CacheError> {
        let taken = Instant::now();
        if !self.fill_guard {
            return Ok(keys.iter().map(|_| Mark::unguarded(taken)).collect());
        }
        let markers: Vec<Key> = keys.iter().map(|k| k.derived(WRITTEN)).collect();
        Ok(self
            .backend
            .get_many(&markers)
            .await?
            .into_iter()
            .map(|before| Mark {
                guarded: true,
                before,
                taken,
            })
            .collect())
    }

    /// Stores a value loaded after `mark` was taken, as a fill does:
    /// `Ok(false)` (nothing stored) if a write invalidated `key` since.
    /// Use it instead of [`ReadThrough::set`] wherever a read fills the
    /// cache with what it loaded, or the stale-set race is back.
    pub async fn set_unless_written(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
        mark: &Mark,
    ) -> Result<bool, CacheError> {
        self.fill(key, value, ttl, Duration::ZERO, mark).await
    }

    async fn store(
        &self,
        key: &Key,
        value: &[u8],
        ttl: Duration,
        delta: Duration,
    ) -> Result<(), CacheError> {
        let ttl = self.jittered(ttl);
        if self.policy == Stampede::XFetch {
            // The server keeps the entry a little past its logical expiry:
            // memcached's clock ticks in whole seconds, so an item may
            // expire up to a second before `ttl` is up, which would turn
            // XFetch's early refresh into a plain miss.
            let entry = encode_timed(value, delta, unix_now() + ttl);
            self.backend.set(key, &entry, ttl + XFETCH_GRACE).await
        } else {
            self.backend.set(key, value, ttl).await
        }
    }

    async fn read(&self, key: &Key) -> Result<Option<Stored>, CacheError> {
        Ok(self.backend.get(key).await?.and_then(|v| self.decode(v)))
    }

    /// A stored value as this policy wrote it; an XFetch envelope that
    /// does not parse is a miss.
    fn decode(&self, raw: Vec<u8>) -> Option<Stored> {
        if self.policy == Stampede::XFetch {
            decode_timed(&raw).map(Stored::Timed)
        } else {
            Some(Stored::Plain(raw))
        }
    }

    fn recompute_early(&self, entry: &Timed) -> bool {
        let r: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        should_recompute(unix_now(), entry.delta, self.beta, entry.expiry, 1.0 - r)
    }

    fn jittered(&self, ttl: Duration) -> Duration {
        if self.jitter == 0.0 {
            return ttl;
        }
        let u: f64 = self.rng.lock().unwrap_or_else(|p| p.into_inner()).random();
        ttl.mul_f64(1.0 - self.jitter * u)
    }
}

/// The suffix of a write's marker, `{key}:written`.
const WRITTEN: &str = "written";

/// A key's write marker as a fill found it before loading (see
/// [`ReadThrough::mark`]).
#[derive(Debug, Clone)]
pub struct Mark {
    guarded: bool,
    before: Option<Vec<u8>>,
    taken: Instant,
}

impl Mark {
    fn unguarded(taken: Instant) -> Mark {
        Mark {
            guarded: false,
            before: None,
            taken,
        }
    }
}

/// What a read found.
enum Stored {
    Plain(Vec<u8>),
    Timed(Timed),
}

impl Stored {
    fn into_value(self) -> Vec<u8> {
        match self {
            Stored::Plain(v) => v,
            Stored::Timed(t) => t.value,
        }
    }
}

/// An XFetch entry: the value, its compute time and its expiry.
#[derive(Debug, PartialEq)]
struct Timed {
    value: Vec<u8>,
    delta: Duration,
    /// Since the Unix epoch (wall clock: shared by every clone).
    expiry: Duration,
}

/// XFetch's rule: recompute when `now - delta * beta * ln(r) >= expiry`,
/// `r` uniform in `(0, 1]`. `-ln(r)` is exponentially distributed, so the
/// chance of an early recompute is `exp(-(expiry - now) / (delta * beta))`:
/// negligible while expiry is many `delta`s away, certain once it passed.
fn should_recompute(now: Duration, delta: Duration, beta: f64, expiry: Duration, r: f64) -> bool {
    let early = delta.as_secs_f64() * beta * -r.ln();
    now.as_secs_f64() + early >= expiry.as_secs_f64()
}

/// How long past its logical expiry an XFetch entry is kept by the server.
const XFETCH_GRACE: Duration = Duration::from_secs(1);

/// Marks an XFetch envelope: `X`, delta (ms, u32 LE), expiry (ms since the
/// epoch, u64 LE), then the value.
const TIMED_MAGIC: u8 = b'X';
const TIMED_HEADER: usize = 1 + 4 + 8;

fn encode_timed(value: &[u8], delta: Duration, expiry: Duration) -> Vec<u8> {
    let delta_ms = u32::try_from(delta.as_millis()).unwrap_or(u32::MAX);
    let expiry_ms = u64::try_from(expiry.as_millis()).unwrap_or(u64::MAX);
    let mut out = Vec::with_capacity(TIMED_HEADER + value.len());
    out.push(TIMED_MAGIC);
    out.extend_from_slice(&delta_ms.to_le_bytes());
    out.extend_from_slice(&expiry_ms.to_le_bytes());
    out.extend_from_slice(value);
    out
}

fn decode_timed(raw: &[u8]) -> Option<Timed> {
    if raw.len() < TIMED_HEADER || raw[0] != TIMED_MAGIC {
        return None;
    }
    let delta_ms = u32::from_le_bytes(raw[1..5].try_into().ok()?);
    let expiry_ms = u64::from_le_bytes(raw[5..13].try_into().ok()?);
    Some(Timed {
        value: raw[TIMED_HEADER..].to_vec(),
        delta: Duration::from_millis(u64::from(delta_ms)),
        expiry: Duration::from_millis(expiry_ms),
    })
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Single-flight: concurrent misses on one key in this process share the
/// first one's load.
///
/// The first caller for a key (the leader) registers a `watch` channel and
/// runs the work; the others (followers) wait on the channel. When the
/// leader's work fails, or its request is dropped mid-way, the channel
/// closes without a value and each follower runs the work itself: a
/// follower never gets a value the leader did not produce, and never
/// waits forever.
#[derive(Default)]
pub struct Flights {
    in_flight: Mutex<HashMap<String, watch::Receiver<Option<Landed>>>>,
}

/// What a leader hands its followers.
#[derive(Clone)]
struct Landed {
    value: Arc<[u8]>,
    outcome: Outcome,
}

impl Flights {
    /// Runs `work` for `key`, or waits for the run already in flight and
    /// answers what it landed.
    ///
    /// If the flight fails (its load erred, 404 included, or its leader was
    /// dropped or panicked), its followers do not all run `work` at once:
    /// that would be the herd again, exactly when the database struggles.
    /// They re-enter: the first becomes the next leader, the others follow
    /// it. A load that keeps failing (a missing article) is therefore run
    /// by one reader at a time, never by all of them together (a negative
    /// cache, "not found" stored briefly, would save even those; not built).
    pub async fn run<F, Fut, E>(&self, key: &Key, work: F) -> Result<(Vec<u8>, Outcome), E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(Vec<u8>, Outcome), E>>,
    {
        loop {
            let joined = {
                let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
                let existing = map.get(key.as_str()).cloned();
                match existing {
                    Some(rx) => Err(rx),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        map.insert(key.as_str().to_owned(), rx);
                        Ok(tx)
                    }
                }
            };
            match joined {
                Ok(tx) => {
                    // Removes the entry however this ends, drop included;
                    // dropped before `tx`, so the flight is gone from the
                    // map by the time a follower wakes to re-enter.
                    let _landing = Landing { flights: self, key };
                    let result = work().await;
                    if let Ok((value, outcome)) = &result {
                        let _ = tx.send(Some(Landed {
                            value: Arc::from(value.as_slice()),
                            outcome: *outcome,
                        }));
                    }
                    return result;
                }
                Err(mut rx) => {
                    let landed = rx
                        .wait_for(Option::is_some)
                        .await
                        .ok()
                        .and_then(|l| (*l).clone());
                    if let Some(l) = landed {
                        return Ok((l.value.to_vec(), l.outcome));
                    }
                    // The flight failed: try again, as leader or follower.
                }
            }
        }
    }

    /// Whether a load of `key` is in flight in this process now.
    pub fn is_flying(&self, key: &Key) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(key.as_str())
    }

    /// Keys with a load in flight now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether no load is in flight.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Landing<'a> {
    flights: &'a Flights,
    key: &'a Key,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        self.flights
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(self.key.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn xfetch_never_recomputes_far_from_expiry() {
        // 300 s to go, 50 ms to compute: exp(-6000), zero in practice.
        for r in [1.0, 0.5, 0.01, 1e-9] {
            assert!(!should_recompute(
                secs(1000.0),
                secs(0.05),
                1.0,
                secs(1300.0),
                r
            ));
        }
    }

    #[test]
    fn xfetch_always_recomputes_past_expiry() {
        for r in [1.0, 0.5, 1e-9] {
            assert!(should_recompute(
                secs(1300.0),
                secs(0.05),
                1.0,
                secs(1300.0),
                r
            ));
        }
    }

    #[test]
    fn xfetch_recomputes_early_when_the_draw_is_low() {
        // 1 s to go, 1 s to compute: recompute iff -ln(r) >= 1, r <= 1/e.
        let (now, delta, expiry) = (secs(100.0), secs(1.0), secs(101.0));
        assert!(should_recompute(now, delta, 1.0, expiry, 0.3));
        assert!(!should_recompute(now, delta, 1.0, expiry, 0.4));
        // A larger beta recomputes earlier.
        assert!(should_recompute(now, delta, 2.0, expiry, 0.6));
    }

    #[test]
    fn timed_entries_round_trip() {
        let entry = encode_timed(
            b"value",
            Duration::from_millis(42),
            Duration::from_millis(7),
        );
        assert_eq!(
            decode_timed(&entry),
            Some(Timed {
                value: b"value".to_vec(),
                delta: Duration::from_millis(42),
                expiry: Duration::from_millis(7),
            })
        );
        assert_eq!(decode_timed(b"plain value"), None);
        assert_eq!(decode_timed(b"X12"), None);
    }

    #[test]
    fn outcomes_spell_the_header() {
        let spelled: Vec<&str> = [Outcome::Hit, Outcome::Miss, Outcome::Bypass]
            .iter()
            .map(|o| o.as_str())
            .collect();
        assert_eq!(spelled, ["hit", "miss", "bypass"]);
    }

    #[test]
    fn policies_parse_as_the_flag_spells_them() {
        use clap::ValueEnum;
        for p in [
            Stampede::None,
            Stampede::SingleFlight,
            Stampede::Lease,
            Stampede::XFetch,
        ] {
            assert_eq!(Stampede::from_str(p.as_str(), false), Ok(p));
        }
    }

    #[tokio::test]
    async fn a_follower_leads_the_next_flight_when_the_leader_fails() {
        let flights = Arc::new(Flights::default());
        let key = Key::new("test", &["k"]);
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<()>();
        let leader = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run(&key, || async move {
                        started_tx.send(()).unwrap();
                        fail_rx.await.unwrap();
                        Err::<(Vec<u8>, Outcome), &str>("database down")
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        let follower = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run(&key, || async {
                        Ok::<_, &str>((b"own".to_vec(), Outcome::Miss))
                    })
                    .await
            })
        };
        // The follower is waiting on the leader's flight; fail the leader.
        fail_tx.send(()).unwrap();
        assert_eq!(leader.await.unwrap(), Err("database down"));
        assert_eq!(
            follower.await.unwrap(),
            Ok((b"own".to_vec(), Outcome::Miss))
        );
        assert!(flights.is_empty());
    }
}
