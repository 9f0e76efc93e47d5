//! Fetching ahead of the readers of a whole-image mount, into the on-disk range cache
//! (`--cache-dir`), on one thread of its own with its own sandbox instance per layer, so
//! that a foreground read never waits for it (no shared instance, no shared lock; the
//! HTTP connection pool opens another connection):
//!
//! 1. `--prefetch FILE` first, at full speed: the paths (or recorded regions) it lists,
//!    each read from the topmost layer that holds it;
//! 2. then the background fetch, `--background-fetch RATE`: every layer's tar from
//!    start to end, bottom layer first, at most RATE bytes a second, pausing while a
//!    foreground read happened in the last [`QUIET`], at the lowest CPU priority.
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
    thread: Option<JoinHandle<()>>,
}

impl Warmer {
    pub fn start(runtime: Arc<Runtime>, plan: WarmPlan) -> Result<Warmer> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::Builder::new()
            .name("warm".into())
            .spawn(move || run(&runtime, plan, &stopped))
            .context("starting the background fetch thread")?;
        Ok(Warmer {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Warmer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::warn!("the background fetch thread panicked");
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

fn run(runtime: &Arc<Runtime>, plan: WarmPlan, stop: &AtomicBool) {
    lower_priority();
    let mut layers: Vec<Opened> = plan
        .layers
        .into_iter()
        .map(|layer| Opened {
            layer,
            device: None,
        })
        .collect();
    let started = Instant::now();
    for wanted in &plan.prefetch {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        prefetch_one(runtime, &mut layers, wanted, stop);
    }
    for layer in &mut layers {
        layer.publish();
        layer
            .layer
            .counters
            .prefetch_done
            .store(true, Ordering::Relaxed);
    }
    if !plan.prefetch.is_empty() {
        tracing::info!(
            "prefetch: {} entries in {:.2?}",
            plan.prefetch.len(),
            started.elapsed()
        );
    }
    if plan.rate == 0 {
        return;
    }
    let mut pace = Pace::new(plan.rate);
    for layer in &mut layers {
        let Some(device) = layer.device(runtime) else {
            continue;
        };
        let (start, end) = (device.meta_size(), device.size());
        let counters = layer.layer.counters.clone();
        counters
            .bytes_total
            .store(end.saturating_sub(start), Ordering::Relaxed);
        let mut offset = start;
        while offset < end {
            if !pace.wait(&plan.watch, stop) {
                return;
            }
            let Some(device) = layer.device(runtime) else {
                break;
            };
            let before = device.remote_stats().map(|r| r.bytes_fetched).unwrap_or(0);
            let len = u32::try_from(end - offset).unwrap_or(PIECE).min(PIECE);
            if let Err(e) = device.pread(offset, len) {
                tracing::warn!(
                    "layer {}: background fetch stopped at device offset {offset}: {e}",
                    layer.layer.index
                );
                break;
            }
            let after = device.remote_stats().map(|r| r.bytes_fetched).unwrap_or(0);
            pace.spent(after.saturating_sub(before));
            offset += u64::from(len);
            counters.bytes_done.store(offset - start, Ordering::Relaxed);
            layer.publish();
        }
        tracing::info!(
            "layer {}: background fetch done ({} bytes of tar)",
            layer.layer.index,
            end - start
        );
    }
}

/// Read `wanted` from the topmost layer whose tree has it as a regular file.
fn prefetch_one(runtime: &Arc<Runtime>, layers: &mut [Opened], wanted: &Wanted, stop: &AtomicBool) {
    for layer in layers.iter_mut().rev() {
        let Some(device) = layer.device(runtime) else {
            continue;
        };
        let Some((nid, size)) = find_file(device, &wanted.path) else {
            continue;
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
        layer.publish();
        return;
    }
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
