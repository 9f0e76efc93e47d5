//! What the FUSE tree servers of a whole-image mount tell the rest of the mount about
//! their readers: when a file was last read (the background fetcher yields to
//! foreground reads), and, with `--record FILE`, the access log of the run: one JSON
//! line per file region in order of first access, `{"path":"/usr/bin/python3",
//! "offset":0,"len":131072}`, which `--prefetch FILE` reads back.
//!
//! Paths come from the lookups the kernel made (an inode is only read after a lookup
//! of its name); the regions are [`REGION`]-sized blocks, so a log says which parts of
//! a large file were used without a line per 4 KiB read.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};

/// The granularity of the access log: 1 MiB, the largest FUSE read we ask for, so one
/// read makes at most two lines.
pub const REGION: u64 = 1 << 20;

/// Shared by every layer of one mount.
pub struct AccessWatch {
    started: Instant,
    /// Milliseconds after `started` of the latest file read, plus one (0: none yet).
    last_read_ms: AtomicU64,
    recorder: Option<Mutex<Recorder>>,
}

struct Recorder {
    out: std::fs::File,
    /// Each layer's known names: (layer, nid) → path from the root ("" is the root).
    paths: HashMap<(u32, u64), Vec<u8>>,
    /// (path, region) pairs already written: the log keeps first accesses only.
    seen: HashSet<(Vec<u8>, u64)>,
    /// The first write error, reported once.
    failed: bool,
}

impl AccessWatch {
    /// A watch that records into `record` (created or truncated) when given.
    pub fn new(record: Option<&Path>) -> Result<AccessWatch> {
        let recorder = record
            .map(|path| {
                let out = std::fs::File::create(path)
                    .with_context(|| format!("--record {}: creating", path.display()))?;
                anyhow::Ok(Mutex::new(Recorder {
                    out,
                    paths: HashMap::new(),
                    seen: HashSet::new(),
                    failed: false,
                }))
            })
            .transpose()?;
        Ok(AccessWatch {
            started: Instant::now(),
            last_read_ms: AtomicU64::new(0),
            recorder,
        })
    }

    /// How long ago a file was last read, if ever.
    pub fn since_last_read(&self) -> Option<std::time::Duration> {
        let at = self.last_read_ms.load(Ordering::Relaxed).checked_sub(1)?;
        let now = self.started.elapsed().as_millis() as u64;
        Some(std::time::Duration::from_millis(now.saturating_sub(at)))
    }

    /// `name` in directory `parent` of `layer` is inode `nid` (from a lookup).
    pub fn named(&self, layer: u32, parent: u64, root: u64, name: &[u8], nid: u64) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        let mut r = recorder.lock().unwrap_or_else(|p| p.into_inner());
        let mut path = if parent == root {
            Vec::new()
        } else {
            match r.paths.get(&(layer, parent)) {
                Some(p) => p.clone(),
                None => return,
            }
        };
        path.push(b'/');
        path.extend_from_slice(name);
        r.paths.insert((layer, nid), path);
    }

    /// Inode `nid` of `layer` is read at `offset` for `len` bytes.
    pub fn read(&self, layer: u32, nid: u64, offset: u64, len: u32) {
        let now = self.started.elapsed().as_millis() as u64 + 1;
        self.last_read_ms.store(now, Ordering::Relaxed);
        let Some(recorder) = &self.recorder else {
            return;
        };
        let mut r = recorder.lock().unwrap_or_else(|p| p.into_inner());
        let Some(path) = r.paths.get(&(layer, nid)).cloned() else {
            return;
        };
        let last = offset.saturating_add(u64::from(len.max(1)) - 1) / REGION;
        for region in offset / REGION..=last {
            if r.seen.insert((path.clone(), region)) {
                let line = serde_json::json!({
                    "path": String::from_utf8_lossy(&path),
                    "offset": region * REGION,
                    "len": REGION,
                });
                let written = writeln!(r.out, "{line}");
                if let (Err(e), false) = (written, r.failed) {
                    r.failed = true;
                    tracing::warn!("--record: writing the access log: {e}; no more lines");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_accesses_in_order() {
        let dir = std::env::temp_dir().join(format!("access-watch-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let w = AccessWatch::new(Some(&log)).unwrap();
        assert!(w.since_last_read().is_none());
        w.named(0, 1, 1, b"usr", 10);
        w.named(0, 10, 1, b"bin", 11);
        w.named(0, 11, 1, b"python3", 12);
        w.named(1, 1, 1, b"etc", 20);
        w.read(0, 12, 0, 4096);
        w.read(0, 12, 100, 4096);
        w.read(1, 20, 0, 1);
        w.read(0, 12, REGION - 1, 2);
        w.read(0, 99, 0, 1); // never looked up: not recorded
        drop(w);
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(String, u64)> = lines
            .iter()
            .map(|v| {
                (
                    v["path"].as_str().unwrap().to_string(),
                    v["offset"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("/usr/bin/python3".to_string(), 0),
                ("/etc".to_string(), 0),
                ("/usr/bin/python3".to_string(), REGION),
            ]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
