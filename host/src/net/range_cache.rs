//! A bounded on-disk cache of fetched compressed ranges of registry blobs
//! (`--cache-dir`, `--cache-size`), shared by concurrent processes and kept across
//! restarts. Blobs are content-addressed, so a range of `sha256:X` never changes: the
//! key is the digest and the exact byte range the component asked for (it asks for
//! aligned chunks, so repeated runs ask for the same ranges).
//!
//! Layout: `DIR/sha256-HEX/START-END` holds the bytes, `DIR/sha256-HEX/size` the blob's
//! total size. Files are written to a temporary name and renamed into place, so readers
//! in other processes see a whole file or none. When the cache grows past its bound, the
//! least recently used files (by modification time, refreshed on every hit) are removed.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use anyhow::{Context, Result};

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

impl RangeCache {
    pub fn open(dir: &Path, limit: u64) -> Result<RangeCache> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the cache directory", dir.display()))?;
        Ok(RangeCache {
            dir: dir.to_path_buf(),
            limit,
            since_check: AtomicU64::new(u64::MAX / 2),
        })
    }

    fn blob_dir(&self, digest_hex: &str) -> PathBuf {
        self.dir.join(format!("sha256-{digest_hex}"))
    }

    pub fn get(&self, digest_hex: &str, start: u64, end: u64) -> Option<Hit> {
        let dir = self.blob_dir(digest_hex);
        let path = dir.join(format!("{start}-{end}"));
        let bytes = std::fs::read(&path).ok()?;
        let total = std::fs::read_to_string(dir.join("size"))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // A file of the wrong length (a crash between write and rename cannot leave one,
        // but a full disk can) is a miss, and is removed.
        if bytes.len() as u64 != end - start + 1 {
            let _ = std::fs::remove_file(&path);
            return None;
        }
        if let Ok(f) = std::fs::File::options().append(true).open(&path) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(Hit { bytes, total })
    }

    pub fn put(&self, digest_hex: &str, start: u64, end: u64, total: u64, bytes: &[u8]) {
        if let Err(e) = self.try_put(digest_hex, start, end, total, bytes) {
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

    fn try_put(
        &self,
        digest_hex: &str,
        start: u64,
        end: u64,
        total: u64,
        bytes: &[u8],
    ) -> Result<()> {
        let dir = self.blob_dir(digest_hex);
        std::fs::create_dir_all(&dir)?;
        let unique = format!("{}.{:?}", std::process::id(), std::thread::current().id());
        let size_path = dir.join("size");
        if !size_path.exists() {
            let tmp = dir.join(format!(".size.{unique}"));
            std::fs::write(&tmp, total.to_string())?;
            std::fs::rename(&tmp, &size_path)?;
        }
        let tmp = dir.join(format!(".{start}-{end}.{unique}"));
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(format!("{start}-{end}")))?;
        Ok(())
    }

    /// Remove the least recently used ranges until the cache is under 90% of its bound.
    fn evict(&self) -> Result<()> {
        let mut files = Vec::new();
        let mut total = 0u64;
        for blob in std::fs::read_dir(&self.dir)?.flatten() {
            let Ok(entries) = std::fs::read_dir(blob.path()) else {
                continue;
            };
            for e in entries.flatten() {
                let name = e.file_name();
                if name == "size" || name.to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(md) = e.metadata() else { continue };
                total += md.len();
                files.push((
                    md.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                    md.len(),
                    e.path(),
                ));
            }
        }
        if total <= self.limit {
            return Ok(());
        }
        files.sort();
        let target = self.limit / 10 * 9;
        for (_, len, path) in files {
            if total <= target {
                break;
            }
            if std::fs::remove_file(&path).is_ok() {
                total = total.saturating_sub(len);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_and_evict() {
        let dir = std::env::temp_dir().join(format!("range-cache-test-{}", std::process::id()));
        let cache = RangeCache::open(&dir, 10_000).unwrap();
        cache.put("ab", 0, 999, 5000, &[7u8; 1000]);
        let hit = cache.get("ab", 0, 999).unwrap();
        assert_eq!((hit.bytes.len(), hit.total), (1000, 5000));
        assert!(cache.get("ab", 0, 998).is_none());
        for i in 1..30u64 {
            cache.put("ab", i * 1000, i * 1000 + 999, 50_000, &[1u8; 1000]);
        }
        cache.evict().unwrap();
        let kept: u64 = std::fs::read_dir(dir.join("sha256-ab"))
            .unwrap()
            .flatten()
            .filter(|e| e.file_name() != "size")
            .count() as u64;
        assert!(kept * 1000 <= 10_000, "{kept} ranges kept");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
