//! A long device read (`erofs-host cat` of the whole device) decoded by several sandboxed
//! instances at once, written out in order.
//!
//! One core's inflate is the ceiling of a single instance. A gzip layer's zinfo
//! checkpoints make its parts independent: the component lists where to split
//! (`device.span-boundaries`, one per checkpoint), and an instance that starts a part at
//! its boundary restarts at that part's own checkpoint. So:
//!
//! - the range is cut into *parts* at those boundaries ([`plan`]);
//! - `jobs` workers, each with its own instance (the first one is the caller's, already
//!   open and header-checked; the others open the same files with `header-samples 0`:
//!   the first instance already checked that the index belongs to the blob), take parts
//!   in turn (worker w reads parts w, w + jobs, w + 2 jobs, ...: two neighbouring parts
//!   are never on one instance, so each part after the first is decoded from its own
//!   checkpoint, never straight on from the part before it) and read each front to back
//!   in [`CHUNK`] calls;
//! - every part has its own bounded channel ([`BUFFERED_CHUNKS`] chunks): the writer
//!   (the caller's thread) drains part 0, then part 1, ..., so the output is in order;
//! - a worker starts part p only once the writer has received every part before
//!   p - jobs, so at most `jobs + 1` parts are in flight and the host buffers at most
//!   `(jobs + 1) × (BUFFERED_CHUNKS + 1) × CHUNK` bytes in channels, plus the writer's
//!   hold (below), whatever the size of the read. Each instance keeps its own memory cap; the total
//!   cap is `jobs ×` the per-instance one.
//!
//! Every part but the first starts at a zinfo checkpoint, which is untrusted: a wrong
//! window, `in` or `bits` there decodes wrong bytes. So the boundary is *proven* before
//! the bytes on either side are written:
//!
//! - the worker of part k decodes [`OVERLAP`] bytes past its end, straight on from its
//!   own decode (`Piece::End` carries them);
//! - the writer compares them with the first bytes of part k+1, which its instance
//!   decoded from the checkpoint. Equal: the checkpoint continues the decode before it.
//!   Different: the run fails, naming the boundary ("corrupt blob or zinfo").
//! - a part is *held* (up to [`HOLD_MAX`] bytes) until the boundary after it is proven,
//!   so a part whose data goes astray (a corrupt blob decodes to other bytes, and its
//!   decode then ends in another state than the next checkpoint's) is never written.
//!   A longer part is written once the hold is full: its first bytes are then checked
//!   only by its start.
//!
//! A part that fails stops everything: the parts before it are written (they are right,
//! and proven at both ends), then the error names the part, its offsets and the cause.
//! Nothing of it or after it is written. (With one instance, `cat` reads straight
//! through and the checkpoints are never used, so there is nothing to prove.)

use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Condvar, Mutex, MutexGuard};

use anyhow::{anyhow, Context, Result};

use super::device::SandboxedDevice;

/// Bytes per call into the component: a 1 MiB call costs ~2 µs of call overhead against
/// ~5 ms of inflate, and keeps the host's buffers small.
pub const CHUNK: u32 = 1 << 20;
/// Chunks a worker may get ahead of the writer within one part: 8 MiB covers a whole
/// part of the default 2 MiB span and SOCI's 4 MiB, so a worker rarely waits for the
/// writer; a larger span just makes its worker wait.
pub const BUFFERED_CHUNKS: usize = 8;
/// Bytes a worker decodes past the end of its part, compared with the start of the next
/// part: 64 KiB is twice the deflate window, so the next part's first bytes lean on the
/// whole checkpoint window and a wrong one shows; it costs 1.6% of a 4 MiB part.
pub const OVERLAP: u32 = 64 << 10;
/// The most bytes of a part the writer holds back until the boundary after it is
/// proven: 32 MiB covers every usual span (2 MiB here, 4 MiB in SOCI) several times over.
pub const HOLD_MAX: usize = 32 << 20;
/// The default `--jobs`: 1, one instance reading straight through. An instance may serve
/// bytes from a zinfo checkpoint only once it has proven that checkpoint (docs/formats.md),
/// and a fresh instance can prove checkpoint k only by decoding from checkpoint 0 up to
/// it: with N instances the blob is decoded up to N times over, so more instances add
/// work instead of sharing it (measured: `--jobs 2` decoded 112 MB for a 50.6 MB tar).
/// Parallel decode pays again once one part's decode through the next checkpoint can
/// stand as that checkpoint's proof for the next instance (a WIT option still to come).
pub fn default_jobs() -> usize {
    1
}

/// The parts of `range`: cut at every boundary strictly inside it. Boundaries are device
/// offsets, ascending (checked by [`SandboxedDevice::span_boundaries`]).
pub fn plan(boundaries: &[u64], range: Range<u64>) -> Vec<Range<u64>> {
    if range.start >= range.end {
        return Vec::new();
    }
    let mut parts = Vec::new();
    let mut start = range.start;
    for &cut in boundaries {
        if cut > start && cut < range.end {
            parts.push(start..cut);
            start = cut;
        }
    }
    parts.push(start..range.end);
    parts
}

/// What a worker sends the writer about one part.
enum Piece {
    Bytes(Vec<u8>),
    /// The part is complete; the bytes its decode gives right after it (empty at the end
    /// of the read), to prove the next part's checkpoint.
    End(Vec<u8>),
    Failed(anyhow::Error),
}

struct Queue {
    /// Parts the writer has received whole (0..received).
    received: usize,
    /// Set on the first failure: workers stop taking parts.
    cancelled: bool,
    /// Why a worker could not start (an instance that did not open).
    start_error: Option<anyhow::Error>,
}

struct Shared<'a> {
    parts: &'a [Range<u64>],
    jobs: usize,
    /// Each part's sender, until a worker takes it; dropped on cancel, so that the writer
    /// waiting on a part nobody will read sees it end.
    senders: Vec<Mutex<Option<SyncSender<Piece>>>>,
    queue: Mutex<Queue>,
    wake: Condvar,
}

impl Shared<'_> {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Plain counters, consistent between statements: a poisoned lock is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until part `index` may start (the writer is at most `jobs` parts behind it)
    /// and takes its sender; None past the last part or once cancelled.
    fn take(&self, index: usize) -> Option<SyncSender<Piece>> {
        let mut q = self.lock();
        loop {
            if q.cancelled || index >= self.parts.len() {
                return None;
            }
            if index <= q.received + self.jobs {
                break;
            }
            q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        drop(q);
        let sender = self
            .senders
            .get(index)
            .and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).take());
        sender
    }

    /// The writer has received one more part whole.
    fn received_one(&self) {
        self.lock().received += 1;
        self.wake.notify_all();
    }

    /// Stop handing out parts, and end every part not taken yet.
    fn cancel(&self, start_error: Option<anyhow::Error>) {
        let mut q = self.lock();
        q.cancelled = true;
        if q.start_error.is_none() {
            q.start_error = start_error;
        }
        drop(q);
        for sender in &self.senders {
            sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        }
        self.wake.notify_all();
    }
}

/// Cancels the read when the writer leaves, however it leaves (done, failed, panicked).
struct CancelOnDrop<'a, 'b>(&'a Shared<'b>);

impl Drop for CancelOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.cancel(None);
    }
}

/// Reads `range` of the device with `jobs` instances (`first` and `jobs - 1` more opened
/// like it) and hands the bytes to `write` in order. Returns the extra instances (for
/// their counters). With one part or one job it reads on `first` alone.
pub fn read_parallel(
    first: &mut SandboxedDevice,
    jobs: usize,
    range: Range<u64>,
    mut write: impl FnMut(&[u8]) -> Result<()>,
) -> Result<Vec<SandboxedDevice>> {
    let boundaries = first
        .span_boundaries()
        .map_err(|e| anyhow!("{e}"))
        .context("asking the component where to split the read")?;
    let parts = plan(&boundaries, range);
    let jobs = jobs.clamp(1, parts.len().max(1));
    let (senders, receivers): (Vec<_>, Vec<_>) = parts
        .iter()
        .map(|_| {
            let (tx, rx) = sync_channel::<Piece>(BUFFERED_CHUNKS);
            (Mutex::new(Some(tx)), rx)
        })
        .unzip();
    let shared = Shared {
        parts: &parts,
        jobs,
        senders,
        queue: Mutex::new(Queue {
            received: 0,
            cancelled: false,
            start_error: None,
        }),
        wake: Condvar::new(),
    };
    let mut others = Vec::new();
    std::thread::scope(|scope| -> Result<()> {
        let spawned: Vec<_> = (1..jobs)
            .map(|worker| {
                let shared = &shared;
                let (runtime, mut spec, limits) = first.reopen_parts();
                scope.spawn(move || -> Option<SandboxedDevice> {
                    // The first instance checked the headers; this one reads the same files.
                    spec.options.header_samples = Some(0);
                    match SandboxedDevice::open(runtime, spec, limits) {
                        Ok(mut device) => {
                            work(shared, worker, &mut device);
                            Some(device)
                        }
                        Err(e) => {
                            shared.cancel(Some(e.context(format!(
                                "opening sandboxed instance {} of {jobs}",
                                worker + 1
                            ))));
                            None
                        }
                    }
                })
            })
            .collect();
        let first_worker = scope.spawn(|| work(&shared, 0, first));
        let written = write_in_order(&shared, receivers, &mut write);
        let _ = first_worker.join();
        for handle in spawned {
            if let Ok(Some(device)) = handle.join() {
                others.push(device);
            }
        }
        written
    })?;
    Ok(others)
}

/// Worker `worker`: reads parts `worker`, `worker + jobs`, ... front to back, each into
/// its channel.
fn work(shared: &Shared<'_>, worker: usize, device: &mut SandboxedDevice) {
    let mut index = worker;
    while let Some(tx) = shared.take(index) {
        let this = index;
        index += shared.jobs;
        let index = this;
        let Some(part) = shared.parts.get(index) else {
            return;
        };
        let mut pos = part.start;
        while pos < part.end {
            let want = (part.end - pos).min(u64::from(CHUNK)) as u32;
            let piece = match device.pread(pos, want) {
                Ok(bytes) if bytes.len() == want as usize => Piece::Bytes(bytes),
                Ok(bytes) => Piece::Failed(anyhow!(
                    "the component returned {} bytes for a read of {want} inside the device",
                    bytes.len()
                )),
                Err(e) => Piece::Failed(anyhow!("{e}")),
            };
            let failed = matches!(piece, Piece::Failed(_));
            let piece = match piece {
                Piece::Failed(e) => Piece::Failed(e.context(format!(
                    "reading device offset {pos} (part {index} of {}, {}..{})",
                    shared.parts.len(),
                    part.start,
                    part.end
                ))),
                other => other,
            };
            if tx.send(piece).is_err() || failed {
                // The writer has gone (it failed or was cancelled), or this part failed:
                // nothing more of it is wanted.
                return;
            }
            pos += u64::from(want);
        }
        // The decode goes on past the part, for the writer's proof of the next start.
        let overlap = if index + 1 < shared.parts.len() {
            match device.pread(part.end, OVERLAP) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let _ = tx.send(Piece::Failed(anyhow!("{e}").context(format!(
                        "reading device offset {} (the {OVERLAP} bytes after part {index}, to check the next part's start)",
                        part.end
                    ))));
                    return;
                }
            }
        } else {
            Vec::new()
        };
        if tx.send(Piece::End(overlap)).is_err() {
            return;
        }
    }
}

/// The proof of one boundary in progress: the bytes the part before it decoded past its
/// end, and how many of them the part after it has matched so far.
struct Proof {
    /// The boundary, and the start of the part before it (held until the proof is done).
    at: u64,
    held_from: u64,
    expected: Vec<u8>,
    matched: usize,
}

impl Proof {
    /// Compares the next bytes of the part after the boundary; true once done.
    fn check(&mut self, bytes: &[u8]) -> Result<bool> {
        let want = self.expected.get(self.matched..).unwrap_or_default();
        let n = want.len().min(bytes.len());
        if want.get(..n) != bytes.get(..n) {
            let first = want
                .iter()
                .zip(bytes)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            return Err(anyhow!(
                "the zinfo checkpoint at device offset {} does not continue the decode before it: device byte {} decodes differently from there than straight through (corrupt blob or zinfo); nothing from device offset {} on was written",
                self.at,
                self.at + (self.matched + first) as u64,
                self.held_from
            ));
        }
        self.matched += n;
        Ok(self.matched == self.expected.len())
    }
}

/// The writer: every part's bytes in order, each held until the boundary after it is
/// proven (see the module comment).
fn write_in_order(
    shared: &Shared<'_>,
    receivers: Vec<Receiver<Piece>>,
    write: &mut impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let _cancel = CancelOnDrop(shared);
    // The part before the current one, proven at its start, waiting for the proof of its
    // end; and that proof.
    let mut waiting: Vec<Vec<u8>> = Vec::new();
    let mut proof: Option<Proof> = None;
    let mut release = |held: &mut Vec<Vec<u8>>| -> Result<()> {
        for bytes in held.drain(..) {
            write(&bytes)?;
        }
        Ok(())
    };
    for (index, rx) in receivers.iter().enumerate() {
        let mut held: Vec<Vec<u8>> = Vec::new();
        let mut held_bytes = 0usize;
        let overlap = loop {
            match rx.recv() {
                Ok(Piece::Bytes(bytes)) => {
                    if let Some(p) = proof.as_mut() {
                        if p.check(&bytes)? {
                            // State change: the boundary is proven; the part before it goes out.
                            proof = None;
                            release(&mut waiting)?;
                        }
                    }
                    held_bytes += bytes.len();
                    held.push(bytes);
                    if held_bytes > HOLD_MAX && proof.is_none() {
                        // Too long to hold whole: its start is proven, out it goes.
                        release(&mut held)?;
                        held_bytes = 0;
                    }
                }
                Ok(Piece::End(overlap)) => break overlap,
                Ok(Piece::Failed(e)) => return Err(e),
                Err(_) => {
                    let why = shared.lock().start_error.take();
                    return Err(why.unwrap_or_else(|| {
                        anyhow!(
                            "the worker reading part {index} of {} stopped before its end",
                            shared.parts.len()
                        )
                    }));
                }
            }
        };
        shared.received_one();
        // A part shorter than the overlap proves what it has: its end is where the
        // next proof takes over.
        if proof.take().is_some() {
            release(&mut waiting)?;
        }
        if overlap.is_empty() {
            release(&mut held)?;
        } else {
            let (held_from, at) = shared.parts.get(index).map_or((0, 0), |p| (p.start, p.end));
            waiting = held;
            proof = Some(Proof {
                at,
                held_from,
                expected: overlap,
                matched: 0,
            });
        }
    }
    release(&mut waiting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_cuts_at_inner_boundaries_only() {
        let b = [0, 100, 200, 300];
        assert_eq!(plan(&b, 0..400), vec![0..100, 100..200, 200..300, 300..400]);
        assert_eq!(plan(&b, 50..250), vec![50..100, 100..200, 200..250]);
        assert_eq!(plan(&b, 100..200), vec![100..200]);
        assert_eq!(plan(&b, 0..0), Vec::<Range<u64>>::new());
        assert_eq!(plan(&[0], 0..1000), vec![0..1000]);
    }

    #[test]
    fn default_jobs_is_one_until_proofs_can_be_shared() {
        assert_eq!(default_jobs(), 1);
    }
}
