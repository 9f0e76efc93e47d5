//! The counters a FUSE tree server publishes for `erofs-host stats`: one small JSON file
//! per served tree (a single-layer mount, or each layer of a whole-image mount), named
//! after the directory it serves, in the private state directory. The server rewrites it
//! atomically (at most once a second, when it changed, and once at unmount); `stats`
//! reads it with the same checks as a registration (no symlink, ours, not writable by
//! others).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{mount_id, private, state_dir};

/// Counters of one served tree, summed over its sandbox instances. An instance rebuilt
/// after a trap starts its counters again, so these are lower bounds after a trap.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeStats {
    /// What the tree is ("layer 0 sha256:..." or the blob's name).
    pub label: String,
    /// Bytes the remote fetcher received (0 for a local blob).
    pub bytes_fetched: u64,
    /// Range requests the remote fetcher sent.
    pub requests: u64,
    /// 32 KiB pages served from the decoded-byte cache.
    pub cache_hits: u64,
    /// Chunks of the remote blob served from the fetcher's cache.
    pub remote_chunk_hits: u64,
    /// Uncompressed bytes the inflater produced.
    pub bytes_decoded: u64,
    /// Bytes read from a local blob file.
    pub blob_bytes_read: u64,
    /// Whole image: bytes of this layer's blob that came over the network (foreground
    /// and background together; `bytes_fetched` also counts ranges the disk cache gave).
    #[serde(default)]
    pub registry_bytes_fetched: u64,
    /// Whole image: requests for this layer's blob sent over the network.
    #[serde(default)]
    pub registry_requests: u64,
    /// Whole image: ranges of this layer answered from the on-disk cache (`--cache-dir`).
    #[serde(default)]
    pub disk_cache_hits: u64,
    /// Whole image: bytes the background fetcher's instance received for this layer.
    #[serde(default)]
    pub background_bytes_fetched: u64,
    /// Whole image: range requests of the background fetcher for this layer.
    #[serde(default)]
    pub background_requests: u64,
    /// Whole image: bytes of the layer's tar the background fetcher has gone through…
    #[serde(default)]
    pub background_done: u64,
    /// …of this many.
    #[serde(default)]
    pub background_total: u64,
    /// Whole image: the `--prefetch` list has been fetched (true without one).
    #[serde(default)]
    pub prefetch_done: bool,
}

impl TreeStats {
    /// Add `other`'s counters to these (saturating: a counter never wraps).
    pub fn add(&mut self, other: &TreeStats) {
        self.bytes_fetched = self.bytes_fetched.saturating_add(other.bytes_fetched);
        self.requests = self.requests.saturating_add(other.requests);
        self.cache_hits = self.cache_hits.saturating_add(other.cache_hits);
        self.remote_chunk_hits = self
            .remote_chunk_hits
            .saturating_add(other.remote_chunk_hits);
        self.bytes_decoded = self.bytes_decoded.saturating_add(other.bytes_decoded);
        self.blob_bytes_read = self.blob_bytes_read.saturating_add(other.blob_bytes_read);
        let sums = [
            (
                &mut self.registry_bytes_fetched,
                other.registry_bytes_fetched,
            ),
            (&mut self.registry_requests, other.registry_requests),
            (&mut self.disk_cache_hits, other.disk_cache_hits),
            (
                &mut self.background_bytes_fetched,
                other.background_bytes_fetched,
            ),
            (&mut self.background_requests, other.background_requests),
            (&mut self.background_done, other.background_done),
            (&mut self.background_total, other.background_total),
        ];
        for (mine, theirs) in sums {
            *mine = mine.saturating_add(theirs);
        }
        self.prefetch_done |= other.prefetch_done;
    }
}

/// Where the server of the tree at `served_dir` publishes its counters.
pub fn stats_path(served_dir: &Path) -> Result<PathBuf> {
    Ok(state_dir()?.join(format!("{}.stats.json", mount_id(served_dir))))
}

/// Replace the file at `path` with `stats` (atomically, 0600).
pub fn write_stats(path: &Path, stats: &TreeStats) -> Result<()> {
    let bytes = serde_json::to_vec(stats)?;
    private::write_own_file(path, &bytes, "the stats file")
}

/// The counters at `path`, or `None` when the server has not written any yet. A planted
/// file is refused; a damaged one is an error naming it.
pub fn read_stats(path: &Path) -> Result<Option<TreeStats>> {
    let Some(mut file) = private::open_own_file(path, "the stats file")? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read the stats file", path.display()))?;
    let stats = serde_json::from_slice(&bytes)
        .with_context(|| format!("{}: the stats file is not valid JSON", path.display()))?;
    Ok(Some(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_round_trip_and_a_damaged_file_is_named() {
        let dir = std::env::temp_dir().join(format!("erofs-stats-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.stats.json");
        assert_eq!(read_stats(&path).unwrap(), None);
        let s = TreeStats {
            label: "layer 0".into(),
            bytes_fetched: 5,
            requests: 2,
            ..TreeStats::default()
        };
        write_stats(&path, &s).unwrap();
        assert_eq!(read_stats(&path).unwrap(), Some(s.clone()));
        let mut total = TreeStats::default();
        total.add(&s);
        total.add(&s);
        assert_eq!((total.bytes_fetched, total.requests), (10, 4));
        write_stats(&path, &s).unwrap();
        std::fs::write(&path, b"{").unwrap();
        let e = read_stats(&path).unwrap_err();
        assert!(format!("{e:#}").contains("x.stats.json"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
