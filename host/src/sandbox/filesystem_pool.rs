//! A small pool of sandboxed *filesystem* instances for the FUSE bridge's worker threads.
//! Each instance has its own store, cache and cursors; a trap in one rebuilds only that
//! one. (Raw device reads use [`DevicePool`](super::DevicePool), which routes reads by
//! offset.)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};

use super::device::{DeviceSpec, Limits, SandboxedDevice};
use super::errors::CallError;
use super::runtime::Runtime;
use crate::mount_registry::stats_file::TreeStats;

/// Filesystem instances opened on the same files, lent to one thread at a time.
pub struct FilesystemPool {
    instances: Vec<Mutex<SandboxedDevice>>,
    next: AtomicUsize,
}

impl FilesystemPool {
    /// `count` filesystem instances (at least 1) opened on the same files.
    pub fn open(
        runtime: Arc<Runtime>,
        spec: &DeviceSpec,
        limits: Limits,
        count: usize,
    ) -> Result<FilesystemPool> {
        let mut instances = Vec::new();
        for i in 0..count.max(1) {
            let fs = SandboxedDevice::open_filesystem(runtime.clone(), spec.clone(), limits)
                .with_context(|| format!("opening sandbox instance {i}"))?;
            instances.push(Mutex::new(fs));
        }
        Ok(FilesystemPool {
            instances,
            next: AtomicUsize::new(0),
        })
    }

    /// An idle instance if there is one, else the next in turn (waiting for it).
    ///
    /// The wait needs no deadline of its own: the FUSE session runs one worker thread
    /// per instance (`bridge::fuse::session`), and each thread holds at most one instance,
    /// so a worker always finds one idle unless another holder is between calls.
    pub fn get(&self) -> MutexGuard<'_, SandboxedDevice> {
        for slot in &self.instances {
            if let Ok(guard) = slot.try_lock() {
                return guard;
            }
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.instances.len();
        // A poisoned lock means a thread panicked while holding it; the instance itself
        // is still consistent (a trap is not a panic), so keep using it.
        self.instances[i]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The counters of every instance, summed (the label left empty). Each instance is
    /// waited for in turn, so a caller blocks behind at most one request per instance.
    pub fn tree_stats(&self) -> Result<TreeStats, CallError> {
        let mut total = TreeStats::default();
        for slot in &self.instances {
            // Poisoned: see `get`.
            let mut fs = slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let d = fs.stats()?;
            let r = fs.remote_stats()?;
            total.add(&TreeStats {
                label: String::new(),
                bytes_fetched: r.bytes_fetched,
                requests: r.requests,
                cache_hits: d.cache_hits,
                remote_chunk_hits: r.chunk_hits,
                bytes_decoded: d.bytes_decoded,
                blob_bytes_read: d.blob_bytes_read,
                ..TreeStats::default()
            });
        }
        Ok(total)
    }
}
