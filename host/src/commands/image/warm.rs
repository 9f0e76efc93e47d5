//! Fetching ahead of the readers of a whole-image mount, into the on-disk range cache
//! (`--cache-dir`), on one thread of its own with its own sandbox instance per layer, so
//! that a foreground read never waits for it (no shared instance, no shared lock; the
//! HTTP connection pool opens another connection). One thread per layer, all at once:
//!
//! 1. `--prefetch FILE` first, at full speed and normal priority: the paths (or recorded
//!    regions) it lists that the layer's tree holds;
//! 2. then the background fetch, `--background-fetch RATE`: the layer's tar from start
//!    to end, at most RATE / layers bytes a second, pausing while a foreground read
//!    happened in the last [`QUIET`], at the lowest CPU priority.
//!
//! The foreground's own ranges are then served from what was kept (the range cache
//! pieces a range together from the larger ones kept here). Dropping [`Warmer`] (at
//! unmount) stops the thread after the read in progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::prefetch_list::Wanted;
use crate::bridge::fuse::access_watch::AccessWatch;
use crate::net::blob_counters::BackgroundCounters;
use crate::sandbox::runtime::FileKind;
use crate::sandbox::{DeviceSpec, Limits, Runtime, SandboxedDevice};

/// How long the background fetch waits after a foreground read before it goes on: a
/// reader that is working through files reads again well within this, so the background
/// stays out of its way until it pauses.
pub const QUIET: Duration = Duration::from_millis(300);

/// The size of one read of the warmer (the component then asks for the compressed
/// ranges it needs, with its own readahead).
const PIECE: u32 = 1 << 20;

/// One layer to warm.
pub struct WarmLayer {
    pub index: u32,
    pub spec: DeviceSpec,
    pub limits: Limits,
    pub counters: Arc<BackgroundCounters>,
}

/// What to do.
pub struct WarmPlan {
    pub layers: Vec<WarmLayer>,
    pub prefetch: Vec<Wanted>,
    /// Bytes per second for the background fetch; 0: none.
    pub rate: u64,
    pub watch: Arc<AccessWatch>,
}

/// The running warmer; dropping it stops it.
pub struct Warmer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Warmer {
    /// One thread per layer, each with its share of the rate.
    pub fn start(runtime: Arc<Runtime>, plan: WarmPlan) -> Result<Warmer> {
        let mut warmer = Warmer {
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        let share = plan.rate / (plan.layers.len().max(1) as u64);
        let rate = if plan.rate > 0 { share.max(1) } else { 0 };
        let prefetch = Arc::new(plan.prefetch);
        for layer in plan.layers {
            let (runtime, prefetch, watch) =
                (runtime.clone(), prefetch.clone(), plan.watch.clone());
            let stop = warmer.stop.clone();
            let thread = std::thread::Builder::new()
                .name(format!("warm-{}", layer.index))
                .spawn(move || run_layer(&runtime, layer, &prefetch, rate, &watch, &stop))
                .context("starting a background fetch thread")?;
            warmer.threads.push(thread);
        }
        Ok(warmer)
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::warn!("a background fetch thread panicked");
            }
        }
    }
}

/// A layer's instance, opened when first needed (`None` once it failed to open).
struct Opened {
    layer: WarmLayer,
    device: Option<Option<SandboxedDevice>>,
}

impl Opened {
    fn device(&mut self, runtime: &Arc<Runtime>) -> Option<&mut SandboxedDevice> {
        if self.device.is_none() {
            let opened = SandboxedDevice::open_filesystem(
                runtime.clone(),
                self.layer.spec.clone(),
                self.layer.limits,
            );
            self.device = Some(match opened {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::warn!("layer {}: background fetch: {e:#}", self.layer.index);
                    None
                }
            });
        }
        self.device.as_mut().and_then(Option::as_mut)
    }

    /// Copy the instance's counters to the layer's background counters.
    fn publish(&mut self) {
        let counters = self.layer.counters.clone();
        if let Some(Some(d)) = self.device.as_mut() {
            if let Ok(r) = d.remote_stats() {
                counters
                    .bytes_fetched
                    .store(r.bytes_fetched, Ordering::Relaxed);
                counters.requests.store(r.requests, Ordering::Relaxed);
            }
        }
    }
}

/// One layer's warming, on its own thread: its part of the prefetch list (the listed
/// files its tree holds), then, at the lowest CPU priority and its share of the rate,
/// its whole tar.
fn run_layer(
    runtime: &Arc<Runtime>,
    layer: WarmLayer,
    prefetch: &[Wanted],
    rate: u64,
    watch: &AccessWatch,
    stop: &AtomicBool,
) {
    let counters = layer.counters.clone();
    let index = layer.index;
    let mut opened = Opened {
        layer,
        device: None,
    };
    let started = Instant::now();
    let mut found = 0usize;
    for wanted in prefetch {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        found += usize::from(prefetch_one(runtime, &mut opened, wanted, stop));
    }
    opened.publish();
    counters.prefetch_done.store(true, Ordering::Relaxed);
    if !prefetch.is_empty() {
        tracing::info!(
            "layer {index}: prefetched {found} of {} entries in {:.2?}",
            prefetch.len(),
            started.elapsed()
        );
    }
    if rate == 0 {
        return;
    }
    lower_priority();
    let mut pace = Pace::new(rate);
    let Some(device) = opened.device(runtime) else {
        return;
    };
    let (start, end) = (device.meta_size(), device.size());
    counters
        .bytes_total
        .store(end.saturating_sub(start), Ordering::Relaxed);
    let mut offset = start;
    while offset < end {
        if !pace.wait(watch, stop) {
            return;
        }
        let Some(device) = opened.device(runtime) else {
            return;
        };
        let before = device.remote_stats().map(|r| r.bytes_fetched).unwrap_or(0);
        let len = u32::try_from(end - offset).unwrap_or(PIECE).min(PIECE);
        if let Err(e) = device.pread(offset, len) {
            tracing::warn!(
                "layer {index}: background fetch stopped at device offset {offset}: {e}"
            );
            return;
        }
        let after = device.remote_stats().map(|r| r.bytes_fetched).unwrap_or(0);
        pace.spent(after.saturating_sub(before));
        offset += u64::from(len);
        counters.bytes_done.store(offset - start, Ordering::Relaxed);
        opened.publish();
    }
    tracing::info!(
        "layer {index}: background fetch done ({} bytes of tar)",
        end - start
    );
}

/// Read `wanted` if this layer's tree has it as a regular file; true if it did. (A file
/// an upper layer hides is fetched too: harmless, and rare in a recorded log.)
fn prefetch_one(
    runtime: &Arc<Runtime>,
    layer: &mut Opened,
    wanted: &Wanted,
    stop: &AtomicBool,
) -> bool {
    let Some(device) = layer.device(runtime) else {
        return false;
    };
    let Some((nid, size)) = find_file(device, &wanted.path) else {
        return false;
    };
    let (mut offset, end) = match wanted.region {
        Some((o, l)) => (o.min(size), o.saturating_add(l).min(size)),
        None => (0, size),
    };
    while offset < end && !stop.load(Ordering::Relaxed) {
        let len = u32::try_from(end - offset).unwrap_or(PIECE).min(PIECE);
        if let Err(e) = device.read(nid, offset, len) {
            tracing::debug!("prefetch {}: {e}", wanted.path);
            break;
        }
        offset += u64::from(len);
    }
    true
}

/// The nid and size of the regular file at `path` (absolute) in this layer's tree.
fn find_file(device: &mut SandboxedDevice, path: &str) -> Option<(u64, u64)> {
    let mut nid = device.root().ok()?;
    let mut attrs = None;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        let a = device.lookup(nid, name.as_bytes()).ok()?;
        nid = a.ino;
        attrs = Some(a);
    }
    let a = attrs?;
    matches!(a.kind, FileKind::Regular).then_some((a.ino, a.size))
}

/// The background fetch's pace: at most `rate` bytes a second on average, and never
/// while the foreground reads.
struct Pace {
    rate: u64,
    started: Instant,
    spent: u64,
}

impl Pace {
    fn new(rate: u64) -> Pace {
        Pace {
            rate,
            started: Instant::now(),
            spent: 0,
        }
    }

    fn spent(&mut self, bytes: u64) {
        self.spent = self.spent.saturating_add(bytes);
    }

    /// Wait until the next read may go; false when told to stop.
    fn wait(&mut self, watch: &AccessWatch, stop: &AtomicBool) -> bool {
        loop {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let allowed_at = Duration::from_secs_f64(self.spent as f64 / self.rate as f64);
            let ahead = allowed_at.saturating_sub(self.started.elapsed());
            let busy = watch
                .since_last_read()
                .and_then(|since| QUIET.checked_sub(since))
                .unwrap_or_default();
            let wait = ahead.max(busy);
            if wait.is_zero() {
                return true;
            }
            // Short naps: an unmount is not kept waiting.
            std::thread::sleep(wait.min(Duration::from_millis(100)));
        }
    }
}

/// The warm thread runs at the lowest CPU priority: its decoding must not slow the
/// foreground on a busy machine. (Linux: a thread's nice value is its own.)
fn lower_priority() {
    // SAFETY: gettid and setpriority have no memory preconditions.
    let rc = unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 19)
    };
    if rc != 0 {
        tracing::debug!(
            "background fetch: setpriority: {}",
            std::io::Error::last_os_error()
        );
    }
}
