//! A bounded on-disk cache of fetched compressed ranges of registry blobs
//! (`--cache-dir`, `--cache-size`), shared by concurrent processes and kept across
//! restarts. Blobs are content-addressed, so a range of `sha256:X` from one registry
//! never changes: the key is the origin (scheme, host and port of the request), the
//! digest and the exact byte range the component asked for (it asks for aligned chunks,
//! so repeated runs ask for the same ranges).
//!
//! Only exact answers are kept (the egress checks them: a 206 whose Content-Range names
//! exactly the range asked, a total that agrees with the blob's recorded size, and no
//! Content-Encoding). An entry the component then rejects (corrupt data) is dropped
//! ([`RangeCache::forget`]), so one bad answer cannot poison later runs.
//!
//! Layout: `DIR/ORIGIN/sha256-HEX/START-END` holds the bytes, `DIR/ORIGIN/sha256-HEX/size`
//! the blob's total size; `ORIGIN` is the origin with unsafe characters replaced, plus a
//! hash of it. Files are written to a temporary name (starting with `.`) and renamed
//! into place, so readers in other processes see a whole file or none. Temporary files
//! count towards the bound, and those left by a crash (older than [`STALE_TEMP`]) are
//! removed on open and on every size check. When the cache grows past its bound, the
//! least recently used files (by modification time, refreshed on every hit) are removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// A temporary file older than this was left by a crash: a live writer renames its
/// file within the time one range (at most 64 MiB) takes to write, far less than this.
pub const STALE_TEMP: Duration = Duration::from_secs(600);

pub struct RangeCache {
    dir: PathBuf,
    limit: u64,
    /// Bytes written since the last size check.
    since_check: AtomicU64,
}

/// A cached range: its bytes and the blob's total size.
pub struct Hit {
    pub bytes: Vec<u8>,
    pub total: u64,
}

/// A file in the cache: when it was last used, its length, where it is.
type CachedFile = (SystemTime, u64, PathBuf);

/// Which cached range: origin (`https://host:port`), digest hex, first and last byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    pub origin: String,
    pub hex: String,
    pub start: u64,
    pub end: u64,
}

impl Key {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
}

impl RangeCache {
    pub fn open(dir: &Path, limit: u64) -> Result<RangeCache> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the cache directory", dir.display()))?;
        let cache = RangeCache {
            dir: dir.to_path_buf(),
            limit,
            since_check: AtomicU64::new(u64::MAX / 2),
        };
        // Leftovers of a crash go now, not at the first size check.
        cache
            .walk(true)
            .with_context(|| format!("{}: cannot read the cache directory", dir.display()))?;
        Ok(cache)
    }

    fn blob_dir(&self, key: &Key) -> PathBuf {
        let safe: String = key
            .origin
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let hash = hex::encode(Sha256::digest(key.origin.as_bytes()));
        self.dir
            .join(format!("{safe}-{}", hash.get(..16).unwrap_or(&hash)))
            .join(format!("sha256-{}", key.hex))
    }

    fn range_path(&self, key: &Key) -> PathBuf {
        self.blob_dir(key)
            .join(format!("{}-{}", key.start, key.end))
    }

    /// The blob's total size as recorded by the first range kept.
    fn recorded_total(&self, key: &Key) -> Option<u64> {
        std::fs::read_to_string(self.blob_dir(key).join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The range `key`: its own file, or else pieced together from the cached ranges
    /// that cover it (the background fetcher of a whole-image mount keeps large ranges,
    /// the readers ask for their own smaller ones).
    pub fn get(&self, key: &Key) -> Option<Hit> {
        self.get_exact(key).or_else(|| self.get_covered(key))
    }

    fn get_exact(&self, key: &Key) -> Option<Hit> {
        let path = self.range_path(key);
        let bytes = std::fs::read(&path).ok()?;
        let total = self.recorded_total(key)?;
        // A file of the wrong length (a crash between write and rename cannot leave one,
        // but a full disk can) is a miss, and is removed.
        if bytes.len() as u64 != key.len() || key.end >= total {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(Hit { bytes, total })
    }

    /// `key` from the cached ranges of its blob that overlap it, if together they cover
    /// every byte. Each piece is checked as [`Self::get_exact`] checks a file: one of
    /// the wrong length is not used.
    fn get_covered(&self, key: &Key) -> Option<Hit> {
        let dir = self.blob_dir(key);
        let total = self.recorded_total(key)?;
        if key.end >= total {
            return None;
        }
        let mut pieces: Vec<(u64, u64)> = std::fs::read_dir(&dir)
            .ok()?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let (start, end) = name.to_str()?.split_once('-')?;
                let (start, end) = (start.parse::<u64>().ok()?, end.parse::<u64>().ok()?);
                (start <= key.end && end >= key.start && start <= end).then_some((start, end))
            })
            .collect();
        pieces.sort_unstable();
        let mut bytes = Vec::with_capacity(usize::try_from(key.len()).ok()?);
        let mut next = key.start;
        let mut used = Vec::new();
        while next <= key.end {
            // Of the pieces that hold `next`, the one reaching furthest.
            let &(start, end) = pieces
                .iter()
                .filter(|(s, e)| *s <= next && next <= *e)
                .max_by_key(|(_, e)| *e)?;
            let upto = end.min(key.end);
            let path = dir.join(format!("{start}-{end}"));
            read_piece(
                &path,
                end - start + 1,
                next - start,
                upto - next + 1,
                &mut bytes,
            )?;
            used.push(path);
            next = upto + 1;
        }
        for path in used {
            if let Ok(f) = std::fs::File::options().append(true).open(&path) {
                let _ = f.set_modified(SystemTime::now());
            }
        }
        Some(Hit { bytes, total })
    }

    /// Keep an exact answer. A total that disagrees with the recorded one is not kept
    /// (one of the two answers is wrong; the cache keeps neither story growing).
    pub fn put(&self, key: &Key, total: u64, bytes: &[u8]) {
        match self.recorded_total(key) {
            Some(recorded) if recorded != total => {
                tracing::warn!(
                    "range cache: sha256:{} from {} now says size {total}, the cache has {recorded}: not kept",
                    key.hex,
                    key.origin
                );
                return;
            }
            _ => {}
        }
        if let Err(e) = self.try_put(key, total, bytes) {
            tracing::debug!("range cache: {e:#}");
        }
        let written = self
            .since_check
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            + bytes.len() as u64;
        // Checking the size walks the directory: do it about every tenth of the bound.
        if written >= self.limit / 10 {
            self.since_check.store(0, Ordering::Relaxed);
            if let Err(e) = self.evict() {
                tracing::debug!("range cache eviction: {e:#}");
            }
        }
    }

    /// Drop an entry (the component rejected what it held): its own file, and every
    /// kept range that overlaps it (it may have been pieced together from them).
    pub fn forget(&self, key: &Key) {
        if let Ok(entries) = std::fs::read_dir(self.blob_dir(key)) {
            for e in entries.flatten() {
                let name = e.file_name();
                let overlaps = name
                    .to_str()
                    .and_then(|n| n.split_once('-'))
                    .and_then(|(s, e)| Some((s.parse::<u64>().ok()?, e.parse::<u64>().ok()?)))
                    .is_some_and(|(s, e)| s <= key.end && e >= key.start);
                if overlaps && e.path() != self.range_path(key) {
                    self.forget_file(key, &e.path());
                }
            }
        }
        self.forget_file(key, &self.range_path(key));
    }

    fn forget_file(&self, key: &Key, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::warn!(
                "range cache: dropped {} of sha256:{} from {} (the component rejected {}-{})",
                path.display(),
                key.hex,
                key.origin,
                key.start,
                key.end
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!("range cache: cannot drop a rejected entry: {e}"),
        }
    }

    fn try_put(&self, key: &Key, total: u64, bytes: &[u8]) -> Result<()> {
        let dir = self.blob_dir(key);
        std::fs::create_dir_all(&dir)?;
        let unique = format!("{}.{:?}", std::process::id(), std::thread::current().id());
        let size_path = dir.join("size");
        if !size_path.exists() {
            let tmp = dir.join(format!(".size.{unique}"));
            write_then_rename(&tmp, total.to_string().as_bytes(), &size_path)?;
        }
        let tmp = dir.join(format!(".{}-{}.{unique}", key.start, key.end));
        write_then_rename(&tmp, bytes, &self.range_path(key))
    }

    /// Every range and temporary file: `(modified, length, path)`, and their total
    /// length. Stale temporary files are removed instead (when `remove_stale`).
    fn walk(&self, remove_stale: bool) -> Result<(Vec<CachedFile>, u64)> {
        let mut files = Vec::new();
        let mut total = 0u64;
        let now = SystemTime::now();
        for origin in std::fs::read_dir(&self.dir)?.flatten() {
            let Ok(blobs) = std::fs::read_dir(origin.path()) else {
                continue;
            };
            for blob in blobs.flatten() {
                let Ok(entries) = std::fs::read_dir(blob.path()) else {
                    continue;
                };
                for e in entries.flatten() {
                    if e.file_name() == "size" {
                        continue;
                    }
                    let Ok(md) = e.metadata() else { continue };
                    let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    let temporary = e.file_name().to_string_lossy().starts_with('.');
                    let age = now.duration_since(modified).unwrap_or_default();
                    if temporary && remove_stale && age > STALE_TEMP {
                        // Left by a crash between write and rename.
                        if std::fs::remove_file(e.path()).is_ok() {
                            continue;
                        }
                    }
                    total += md.len();
                    files.push((modified, md.len(), e.path()));
                }
            }
        }
        Ok((files, total))
    }

    /// Remove the least recently used files until the cache is under 90% of its bound.
    /// A live writer's temporary file counts but is left alone (its rename would fail);
    /// once stale, [`Self::walk`] removes it.
    fn evict(&self) -> Result<()> {
        let (mut files, mut total) = self.walk(true)?;
        if total <= self.limit {
            return Ok(());
        }
        files.sort();
        let target = self.limit / 10 * 9;
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            if is_temporary(&path) {
                continue;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
        Ok(())
    }
}

/// Append `len` bytes at `offset` of the cached range file `path` (which must be
/// `file_len` long) to `out`; `None` if it is not (then it is not used).
fn read_piece(path: &Path, file_len: u64, offset: u64, len: u64, out: &mut Vec<u8>) -> Option<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    if f.metadata().ok()?.len() != file_len {
        return None;
    }
    f.seek(SeekFrom::Start(offset)).ok()?;
    let before = out.len();
    f.take(len).read_to_end(out).ok()?;
    (out.len() - before == usize::try_from(len).ok()?).then_some(())
}

/// Temporary files start with `.` (see the module comment).
fn is_temporary(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Write `bytes` to `tmp`, then rename it to `path`. On any failure the temporary file
/// is removed at once (a full disk, a rename refused), not left to the stale sweep.
fn write_then_rename(tmp: &Path, bytes: &[u8], path: &Path) -> Result<()> {
    let done = std::fs::write(tmp, bytes)
        .with_context(|| format!("{}: writing", tmp.display()))
        .and_then(|()| {
            std::fs::rename(tmp, path)
                .with_context(|| format!("{}: renaming to {}", tmp.display(), path.display()))
        });
    if done.is_err() {
        if let Err(e) = std::fs::remove_file(tmp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::debug!("range cache: {}: cannot remove: {e}", tmp.display());
            }
        }
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(origin: &str, start: u64, end: u64) -> Key {
        Key {
            origin: origin.into(),
            hex: "ab".into(),
            start,
            end,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("range-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn put_get_and_evict() {
        let dir = temp_dir("evict");
        let cache = RangeCache::open(&dir, 10_000).unwrap();
        let origin = "https://r:443";
        cache.put(&key(origin, 0, 999), 50_000, &[7u8; 1000]);
        let hit = cache.get(&key(origin, 0, 999)).unwrap();
        assert_eq!((hit.bytes.len(), hit.total), (1000, 50_000));
        // A range inside a kept one is served from it.
        assert_eq!(cache.get(&key(origin, 0, 998)).unwrap().bytes.len(), 999);
        for i in 1..30u64 {
            cache.put(&key(origin, i * 1000, i * 1000 + 999), 50_000, &[1u8; 1000]);
        }
        cache.evict().unwrap();
        let (_, total) = cache.walk(false).unwrap();
        assert!(total <= 10_000, "{total} bytes kept");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_range_is_pieced_together_from_the_ranges_that_cover_it() {
        let dir = temp_dir("covered");
        let cache = RangeCache::open(&dir, 1 << 20).unwrap();
        let origin = "https://r:443";
        let blob: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        cache.put(&key(origin, 0, 999), 3000, &blob[..1000]);
        cache.put(&key(origin, 1000, 1999), 3000, &blob[1000..2000]);
        cache.put(&key(origin, 500, 1499), 3000, &blob[500..1500]);
        let hit = cache.get(&key(origin, 700, 1899)).unwrap();
        assert_eq!(hit.bytes, &blob[700..1900]);
        assert_eq!(
            cache.get(&key(origin, 10, 19)).unwrap().bytes,
            &blob[10..20]
        );
        // A gap is a miss.
        assert!(cache.get(&key(origin, 1500, 2000)).is_none());
        // A piece of the wrong length is not used.
        let piece = cache.range_path(&key(origin, 1000, 1999));
        std::fs::write(&piece, [0u8; 10]).unwrap();
        assert!(cache.get(&key(origin, 1600, 1700)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn keyed_by_origin_and_total_checked() {
        let dir = temp_dir("origin");
        let cache = RangeCache::open(&dir, 1 << 20).unwrap();
        cache.put(&key("https://a:443", 0, 9), 100, &[1u8; 10]);
        assert!(cache.get(&key("https://b:443", 0, 9)).is_none());
        assert!(cache.get(&key("http://a:443", 0, 9)).is_none());
        // Another total for the same blob is not kept.
        cache.put(&key("https://a:443", 10, 19), 200, &[2u8; 10]);
        assert!(cache.get(&key("https://a:443", 10, 19)).is_none());
        // A rejected entry goes.
        cache.forget(&key("https://a:443", 0, 9));
        assert!(cache.get(&key("https://a:443", 0, 9)).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn crash_leftovers_are_counted_and_removed() {
        let dir = temp_dir("temps");
        let cache = RangeCache::open(&dir, 1 << 20).unwrap();
        let k = key("https://a:443", 0, 9);
        cache.put(&k, 100, &[1u8; 10]);
        let blob = cache.blob_dir(&k);
        let fresh = blob.join(".10-19.999.ThreadId(1)");
        let stale = blob.join(".20-29.999.ThreadId(1)");
        std::fs::write(&fresh, [0u8; 5000]).unwrap();
        std::fs::write(&stale, [0u8; 7000]).unwrap();
        let old = SystemTime::now() - STALE_TEMP - Duration::from_secs(5);
        std::fs::File::options()
            .append(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // Fresh temporary files count towards the bound.
        let (_, total) = cache.walk(false).unwrap();
        assert_eq!(total, 10 + 5000 + 7000);
        // A new open (after a crash) removes the stale one and keeps the live writer's.
        let _again = RangeCache::open(&dir, 1 << 20).unwrap();
        assert!(!stale.exists());
        assert!(fresh.exists());
        // Eviction leaves a live writer's file alone even when it is the oldest.
        let tight = RangeCache::open(&dir, 1000).unwrap();
        tight.evict().unwrap();
        assert!(fresh.exists());
        assert!(!cache.range_path(&k).exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_put_leaves_no_temporary_file() {
        let dir = temp_dir("failed-put");
        let cache = RangeCache::open(&dir, 1 << 20).unwrap();
        let k = key("https://a:443", 0, 9);
        // A non-empty directory where the range file goes: the rename fails.
        let in_the_way = cache.range_path(&k);
        std::fs::create_dir_all(in_the_way.join("x")).unwrap();
        assert!(cache.try_put(&k, 100, &[1u8; 10]).is_err());
        let temps: Vec<_> = std::fs::read_dir(cache.blob_dir(&k))
            .unwrap()
            .flatten()
            .filter(|e| is_temporary(&e.path()))
            .collect();
        assert!(temps.is_empty(), "left behind: {temps:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
