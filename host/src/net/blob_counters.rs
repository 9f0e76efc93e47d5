//! What the egress did for each registry blob, by digest: bytes fetched from the network,
//! requests sent, and ranges answered from the on-disk range cache. A whole-image mount
//! shares one egress policy among its layers; these counters split its traffic per
//! layer for `erofs-host stats` (the component's own counters cannot tell a range that
//! came from the disk cache from one that came over the network).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// One blob's traffic through the egress.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobCounters {
    /// Bytes of answers received from the network.
    pub bytes_fetched: u64,
    /// Requests sent to the network.
    pub requests: u64,
    /// Ranges answered from the on-disk range cache.
    pub disk_cache_hits: u64,
    /// Bytes of those answers.
    pub disk_cache_bytes: u64,
}

/// The counters of every blob the egress has seen, keyed by the digest's hex.
#[derive(Debug, Default)]
pub struct PerBlob(Mutex<HashMap<String, BlobCounters>>);

impl PerBlob {
    /// Change the counters of blob `hex` (lower-case hex of its sha256).
    pub fn update(&self, hex: &str, change: impl FnOnce(&mut BlobCounters)) {
        // A poisoned lock only means another thread panicked mid-update: counters.
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        change(map.entry(hex.to_string()).or_default());
    }

    /// The counters of blob `hex` (zeros if it was never asked for).
    pub fn get(&self, hex: &str) -> BlobCounters {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(hex).copied().unwrap_or_default()
    }
}

/// What the background fetcher of one layer did (its own sandbox instance's counters:
/// bytes its instance received, ranges it asked for, whether it reached the end).
#[derive(Debug, Default)]
pub struct BackgroundCounters {
    pub bytes_fetched: AtomicU64,
    pub requests: AtomicU64,
    /// Device bytes read so far (of the tar part), and that part's size.
    pub bytes_done: AtomicU64,
    pub bytes_total: AtomicU64,
    /// Set when the mount's `--prefetch` list has been gone through (or there is none).
    pub prefetch_done: AtomicBool,
}

impl BackgroundCounters {
    pub fn load(&self) -> (u64, u64, u64, u64) {
        (
            self.bytes_fetched.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
            self.bytes_done.load(Ordering::Relaxed),
            self.bytes_total.load(Ordering::Relaxed),
        )
    }
}

/// Where a layer's traffic counters are, besides its sandbox instances: the shared
/// egress's counters for the layer's digest, and its background fetcher.
#[derive(Clone)]
pub struct LayerTraffic {
    pub per_blob: Arc<PerBlob>,
    /// Lower-case hex of the layer digest.
    pub hex: String,
    pub background: Arc<BackgroundCounters>,
}

/// The hex of the blob a registry request names (`…/blobs/sha256:HEX`), lower-cased.
pub fn blob_hex(uri: &http::Uri) -> Option<String> {
    let hex = uri.path().split("/blobs/sha256:").nth(1)?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_blob() {
        let per = PerBlob::default();
        per.update("aa", |c| c.requests += 1);
        per.update("aa", |c| c.bytes_fetched += 10);
        assert_eq!(per.get("aa").requests, 1);
        assert_eq!(per.get("aa").bytes_fetched, 10);
        assert_eq!(per.get("bb"), BlobCounters::default());
        let hex = "A".repeat(64);
        let uri: http::Uri = format!("https://r/v2/x/blobs/sha256:{hex}")
            .parse()
            .unwrap();
        assert_eq!(blob_hex(&uri), Some("a".repeat(64)));
        let uri: http::Uri = "https://r/v2/x/manifests/latest".parse().unwrap();
        assert_eq!(blob_hex(&uri), None);
    }
}
