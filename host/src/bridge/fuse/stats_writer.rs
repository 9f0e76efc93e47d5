//! Publishes a FUSE tree server's counters for `erofs-host stats`: a thread that sums
//! the sandbox instances' counters once a second and rewrites the tree's stats file
//! (`mount_registry::stats_file`) when they changed. When it is stopped (at unmount) the
//! file is removed: the mount is gone, and its state directory is left as it was found.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::mount_registry::remove_file_quietly;
use crate::mount_registry::stats_file::{write_stats, TreeStats};
use crate::net::blob_counters::LayerTraffic;
use crate::sandbox::FilesystemPool;

/// How often the counters are looked at: once a second is fresh enough for a person
/// watching `stats`, and costs one short call per instance.
const INTERVAL: Duration = Duration::from_secs(1);

/// The running writer; dropping it stops the thread and removes the stats file.
pub(crate) struct StatsWriter {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl StatsWriter {
    /// Start publishing `pool`'s counters, labelled `label`, at `path`, with the layer's
    /// `traffic` through a shared egress and its background fetcher (whole image).
    pub(crate) fn start(
        pool: Arc<FilesystemPool>,
        path: PathBuf,
        label: String,
        traffic: Option<LayerTraffic>,
    ) -> std::io::Result<StatsWriter> {
        // A file left by an earlier mount at the same place would show its counters as
        // ours until the first tick: gone first.
        remove_file_quietly(&path);
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("stats".into())
            .spawn(move || {
                let mut written: Option<TreeStats> = None;
                // Until stopped (a message, or the writer dropped): publish once a second.
                while matches!(
                    stopped.recv_timeout(INTERVAL),
                    Err(RecvTimeoutError::Timeout)
                ) {
                    publish(&pool, traffic.as_ref(), &path, &label, &mut written);
                }
                // State change: the mount is going away; so does its stats file.
                remove_file_quietly(&path);
            })?;
        Ok(StatsWriter {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Write the current counters if they differ from those last written. A failure is
/// logged (the mount serves on without fresh stats) and retried at the next tick.
fn publish(
    pool: &FilesystemPool,
    traffic: Option<&LayerTraffic>,
    path: &Path,
    label: &str,
    written: &mut Option<TreeStats>,
) {
    let mut now = match pool.tree_stats() {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("{}: cannot read the counters: {e}", path.display());
            return;
        }
    };
    now.label = label.to_string();
    if let Some(t) = traffic {
        let blob = t.per_blob.get(&t.hex);
        now.registry_bytes_fetched = blob.bytes_fetched;
        now.registry_requests = blob.requests;
        now.disk_cache_hits = blob.disk_cache_hits;
        let (fetched, requests, done, total) = t.background.load();
        now.background_bytes_fetched = fetched;
        now.background_requests = requests;
        now.background_done = done;
        now.background_total = total;
        now.prefetch_done = t
            .background
            .prefetch_done
            .load(std::sync::atomic::Ordering::Relaxed);
    }
    if written.as_ref() == Some(&now) {
        return;
    }
    match write_stats(path, &now) {
        Ok(()) => *written = Some(now),
        Err(e) => tracing::warn!("{e:#}"),
    }
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            // The thread may have ended already (a panic); then there is nobody to tell.
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the stats writer thread panicked");
            }
        }
    }
}
