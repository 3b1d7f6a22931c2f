//! The anti-pattern: a file cache on each clone's disk
//! (`--cache-backend file`).
//!
//! The article says it plainly: never a file cache on the clone's disk.
//! This backend exists to show why. It is a correct cache for ONE
//! process: each key is a file in the clone's own directory
//! (`CACHE_FILE_DIR`), written atomically (a temporary file renamed over
//! the old one), holding its expiry, so the TTL is honoured. What it
//! cannot be is shared. A write through clone A deletes A's copy of
//! `article:42`; clones B and C still hold theirs, and serve the old
//! comment count (`X-Cache: hit`) until their TTL. With N clones behind a
//! balancer, a reader sees the write one time in N. Experiment 4 of the
//! demo counts those stale reads; the test
//! `a_file_cache_on_each_clone_serves_the_old_page_through_the_others`
//! asserts them.
//!
//! Memcached and Redis fix exactly this: one cache for every clone, so
//! one delete reaches every reader.
//!
//! The format of a file: 8 bytes of expiry (Unix milliseconds, u64
//! little-endian), then the value. The name: the backend's prefix and the
//! key (`p3_..:article:42.entry`); keys are safe by construction
//! ([`Key`]), and a name that would not be a plain file name is hashed.
//! The directory is bounded (`CACHE_FILE_MAX_BYTES`): over it, expired
//! files are swept, and if it is still over, new values are not stored
//! (a miss next time, never an error).
//!
//! Simplified: the byte count is kept in memory and is approximate under
//! concurrent writes of one key; a production disk cache (nginx's
//! `proxy_cache`, Varnish's file storage) evicts by LRU. It would still be
//! one cache per machine, which is the point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::{BoxFuture, CacheBackend, CacheError, Limits, check_prefix};
use crate::key::{Key, sha256_hex};

/// The default bound of a clone's cache directory: 256 MiB.
pub const DEFAULT_MAX_DIR_BYTES: u64 = 256 * 1024 * 1024;

/// What every cache file's name ends with; only these (and our temporary
/// files) are ever removed from the directory.
const SUFFIX: &str = ".entry";
/// What a temporary file's name starts with.
const TMP: &str = ".tmp-";
/// Bytes of the expiry header.
const HEADER: usize = 8;

/// A cache in a directory of this clone's disk.
#[derive(Clone)]
pub struct FileCache {
    inner: Arc<Inner>,
    limits: Limits,
}

struct Inner {
    dir: PathBuf,
    prefix: String,
    /// The most the directory may hold, in bytes (approximately).
    max_dir_bytes: AtomicU64,
    /// What it holds now, in bytes (approximately).
    used: AtomicU64,
}

/// Names of temporary files: unique per write in this process.
static COUNTER: AtomicU64 = AtomicU64::new(0);

impl FileCache {
    /// A cache in `dir` (created if missing). Entries left there by an
    /// earlier run are removed: they are stale by an unknown amount, and
    /// the demo needs each clone to start cold. Only `*.entry` and
    /// `.tmp-*` files are removed; nothing else in `dir` is touched.
    pub async fn open(dir: &Path, prefix: &str, timeout: Duration) -> Result<Self, CacheError> {
        check_prefix(prefix)?;
        let dir = dir.to_path_buf();
        let d = dir.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&d)?;
            for entry in std::fs::read_dir(&d)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if (name.ends_with(SUFFIX) || name.starts_with(TMP)) && entry.file_type()?.is_file()
                {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| CacheError::Config(e.to_string()))?
        .map_err(|e| {
            CacheError::Config(format!(
                "the file cache directory {} cannot be used: {e} (set CACHE_FILE_DIR to a writable directory)",
                dir.display()
            ))
        })?;
        Ok(FileCache {
            inner: Arc::new(Inner {
                dir,
                prefix: prefix.to_owned(),
                max_dir_bytes: AtomicU64::new(DEFAULT_MAX_DIR_BYTES),
                used: AtomicU64::new(0),
            }),
            limits: Limits::new(timeout),
        })
    }

    /// Sets the largest value cached.
    pub fn with_max_value_bytes(mut self, max: usize) -> Self {
        self.limits.max_value_bytes = max;
        self
    }

    /// Sets the bound of the directory (default [`DEFAULT_MAX_DIR_BYTES`]).
    pub fn with_max_dir_bytes(self, max: u64) -> Self {
        self.inner.max_dir_bytes.store(max, Ordering::Relaxed);
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// The file that holds `key` in this cache.
    pub fn path_of(&self, key: &Key) -> PathBuf {
        self.inner.path(key)
    }

    /// Runs blocking file work off the async workers, under the deadline.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T, CacheError> {
        let inner = self.inner.clone();
        self.limits
            .bounded(async move {
                tokio::task::spawn_blocking(move || work(&inner))
                    .await
                    .map_err(|e| CacheError::Unavailable(e.to_string()))?
                    .map_err(|e| CacheError::Unavailable(format!("file cache: {e}")))
            })
            .await
    }
}

impl Inner {
    fn path(&self, key: &Key) -> PathBuf {
        let name = format!("{}{}", self.prefix, key.as_str());
        let plain = !name.starts_with('.')
            && name.len() <= 200
            && name.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'_' | b':' | b'.' | b'-' | b'#')
            });
        let name = if plain {
            name
        } else {
            format!("#{}", sha256_hex(name.as_bytes()))
        };
        self.dir.join(format!("{name}{SUFFIX}"))
    }

    /// The value in `path` if it has not expired; an expired file is removed.
    fn read(&self, path: &Path) -> std::io::Result<Option<Vec<u8>>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        match decode(&bytes, now_ms()) {
            Some(v) => Ok(Some(v.to_vec())),
            None => {
                self.remove(path)?;
                Ok(None)
            }
        }
    }

    /// Writes a temporary file holding `value` with its expiry.
    fn temp(&self, value: &[u8], ttl: Duration) -> std::io::Result<PathBuf> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self.dir.join(format!("{TMP}{}-{n}", std::process::id()));
        let mut f = std::fs::File::create(&tmp)?;
        let expiry = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        f.write_all(&expiry.to_le_bytes())?;
        f.write_all(value)?;
        Ok(tmp)
    }

    /// Whether `bytes` more fit under the bound, sweeping expired files
    /// once if they do not.
    fn room_for(&self, bytes: u64) -> std::io::Result<bool> {
        let max = self.max_dir_bytes.load(Ordering::Relaxed);
        if self.used.load(Ordering::Relaxed) + bytes <= max {
            return Ok(true);
        }
        self.sweep()?;
        Ok(self.used.load(Ordering::Relaxed) + bytes <= max)
    }

    /// Removes expired entries and recounts what the directory holds.
    fn sweep(&self) -> std::io::Result<()> {
        let now = now_ms();
        let mut used = 0;
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if !entry.file_name().to_string_lossy().ends_with(SUFFIX) {
                continue;
            }
            let path = entry.path();
            match std::fs::read(&path) {
                Ok(b) if decode(&b, now).is_some() => used += b.len() as u64,
                Ok(_) => {
                    let _ = std::fs::remove_file(&path);
                }
                Err(_) => {}
            }
        }
        self.used.store(used, Ordering::Relaxed);
        Ok(())
    }

    fn size_of(path: &Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let size = Self::size_of(path);
        match std::fs::remove_file(path) {
            Ok(()) => {
                self.release(size);
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn release(&self, bytes: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }

    /// Stores `value`: a temporary file renamed over the old one, so a
    /// reader sees the old value or the new one, never half of one.
    fn set(&self, path: &Path, value: &[u8], ttl: Duration) -> std::io::Result<bool> {
        let size = (HEADER + value.len()) as u64;
        // An overwrite frees the old file's bytes.
        let old = Self::size_of(path);
        if !self.room_for(size.saturating_sub(old))? {
            return Ok(false);
        }
        let tmp = self.temp(value, ttl)?;
        if let Err(e) = std::fs::rename(&tmp, path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        self.release(old);
        self.used.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// Stores `value` only if `path` holds nothing live: a hard link fails
    /// if the name exists, atomically, so one caller in all wins (within
    /// this clone: no other clone shares the directory, which is the
    /// lesson).
    fn add(&self, path: &Path, value: &[u8], ttl: Duration) -> std::io::Result<bool> {
        let size = (HEADER + value.len()) as u64;
        if !self.room_for(size)? {
            return Ok(false);
        }
        let tmp = self.temp(value, ttl)?;
        let mut result = Ok(false);
        for _ in 0..2 {
            match std::fs::hard_link(&tmp, path) {
                Ok(()) => {
                    self.used.fetch_add(size, Ordering::Relaxed);
                    result = Ok(true);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    // Taken, unless what is there has expired: then it is
                    // removed (by `read`) and the link tried once more.
                    match self.read(path) {
                        Ok(Some(_)) => break,
                        Ok(None) => continue,
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let _ = std::fs::remove_file(&tmp);
        result
    }
}

/// The value of a file's bytes, if it has not expired at `now` (ms).
fn decode(bytes: &[u8], now: u64) -> Option<&[u8]> {
    let expiry = u64::from_le_bytes(bytes.get(..HEADER)?.try_into().ok()?);
    (now < expiry).then(|| &bytes[HEADER..])
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl CacheBackend for FileCache {
    fn name(&self) -> &'static str {
        "file"
    }

    fn get<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<Option<Vec<u8>>, CacheError>> {
        let path = self.inner.path(key);
        Box::pin(self.blocking(move |inner| inner.read(&path)))
    }

    fn get_many<'a>(
        &'a self,
        keys: &'a [Key],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, CacheError>> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.inner.path(k)).collect();
        Box::pin(self.blocking(move |inner| paths.iter().map(|p| inner.read(p)).collect()))
    }

    fn set<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), CacheError>> {
        Box::pin(async move {
            self.limits.check_size(value)?;
            let (path, value) = (self.inner.path(key), value.to_vec());
            let stored = self
                .blocking(move |inner| inner.set(&path, &value, ttl))
                .await?;
            if stored {
                Ok(())
            } else {
                Err(CacheError::Unavailable(format!(
                    "the file cache directory is full ({} bytes): not cached",
                    self.inner.max_dir_bytes.load(Ordering::Relaxed)
                )))
            }
        })
    }

    fn add<'a>(
        &'a self,
        key: &'a Key,
        value: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, CacheError>> {
        Box::pin(async move {
            self.limits.check_size(value)?;
            let (path, value) = (self.inner.path(key), value.to_vec());
            self.blocking(move |inner| inner.add(&path, &value, ttl))
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a Key) -> BoxFuture<'a, Result<(), CacheError>> {
        let path = self.inner.path(key);
        Box::pin(self.blocking(move |inner| inner.remove(&path)))
    }

    fn delete_many<'a>(&'a self, keys: &'a [Key]) -> BoxFuture<'a, Result<(), CacheError>> {
        let paths: Vec<PathBuf> = keys.iter().map(|k| self.inner.path(k)).collect();
        // Every key is tried, even after one fails (a write's other
        // objects must still go); the first error is returned.
        Box::pin(self.blocking(move |inner| {
            let mut first = Ok(());
            for p in &paths {
                if let Err(e) = inner.remove(p)
                    && first.is_ok()
                {
                    first = Err(e);
                }
            }
            first
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "part3-file-cache-unit-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn delete_many_tries_every_key_and_returns_the_first_error() {
        let d = dir("delmany");
        let c = FileCache::open(&d, "t:", Duration::from_secs(5))
            .await
            .unwrap();
        let (bad, good) = (Key::new("article", &["1"]), Key::new("article", &["2"]));
        // A directory where the first entry would be: removing it fails.
        std::fs::create_dir_all(c.path_of(&bad)).unwrap();
        c.set(&good, b"old", Duration::from_secs(60)).await.unwrap();
        assert!(c.delete_many(&[bad, good.clone()]).await.is_err());
        assert_eq!(c.get(&good).await.unwrap(), None, "the next key still went");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn set_get_delete_add_and_ttl() {
        let d = dir("ops");
        let c = FileCache::open(&d, "t:", Duration::from_secs(5))
            .await
            .unwrap();
        let k = Key::new("article", &["42"]);
        assert_eq!(c.get(&k).await.unwrap(), None);
        c.set(&k, b"v1", Duration::from_secs(60)).await.unwrap();
        assert_eq!(c.get(&k).await.unwrap().as_deref(), Some(&b"v1"[..]));
        assert!(c.path_of(&k).ends_with("t:article:42.entry"));
        assert!(!c.add(&k, b"v2", Duration::from_secs(60)).await.unwrap());
        c.delete(&k).await.unwrap();
        assert!(c.add(&k, b"v2", Duration::from_secs(60)).await.unwrap());
        let many = c
            .get_many(&[k.clone(), Key::new("article", &["43"])])
            .await
            .unwrap();
        assert_eq!(many, vec![Some(b"v2".to_vec()), None]);
        // Expired: gone, and `add` may take the name again.
        c.set(&k, b"old", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(c.get(&k).await.unwrap(), None);
        c.set(&k, b"old", Duration::from_millis(1)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(c.add(&k, b"new", Duration::from_secs(60)).await.unwrap());
        c.delete_many(std::slice::from_ref(&k)).await.unwrap();
        assert_eq!(c.get(&k).await.unwrap(), None);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn the_directory_is_bounded_and_values_too() {
        let d = dir("bound");
        let c = FileCache::open(&d, "", Duration::from_secs(5))
            .await
            .unwrap()
            .with_max_value_bytes(100)
            .with_max_dir_bytes(250);
        let ttl = Duration::from_secs(60);
        assert!(matches!(
            c.set(&Key::new("k", &["big"]), &[0; 101], ttl).await,
            Err(CacheError::TooLarge { .. })
        ));
        c.set(&Key::new("k", &["a"]), &[0; 100], ttl).await.unwrap();
        c.set(&Key::new("k", &["b"]), &[0; 100], ttl).await.unwrap();
        // Overwriting a key does not count twice.
        c.set(&Key::new("k", &["b"]), &[1; 100], ttl).await.unwrap();
        assert!(c.set(&Key::new("k", &["c"]), &[0; 100], ttl).await.is_err());
        c.delete(&Key::new("k", &["a"])).await.unwrap();
        c.set(&Key::new("k", &["c"]), &[0; 100], ttl).await.unwrap();
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test]
    async fn opening_removes_old_entries_and_nothing_else() {
        let d = dir("open");
        let c = FileCache::open(&d, "", Duration::from_secs(5))
            .await
            .unwrap();
        let k = Key::new("article", &["1"]);
        c.set(&k, b"x", Duration::from_secs(60)).await.unwrap();
        std::fs::write(d.join("keep.txt"), b"mine").unwrap();
        let c = FileCache::open(&d, "", Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(c.get(&k).await.unwrap(), None);
        assert!(d.join("keep.txt").exists());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn odd_names_are_hashed() {
        let inner = Inner {
            dir: PathBuf::from("/x"),
            prefix: ".".repeat(3),
            max_dir_bytes: AtomicU64::new(0),
            used: AtomicU64::new(0),
        };
        let p = inner.path(&Key::new("a", &["b"]));
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with('#') && name.ends_with(SUFFIX), "{name}");
        assert_eq!(p.parent(), Some(Path::new("/x")));
    }
}
