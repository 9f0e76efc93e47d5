//! A small pool of sandboxed instances that serve one device to many threads (the NBD
//! server's workers, the kernel attach).
//!
//! A [`SandboxedDevice`] takes `&mut self`, and each instance keeps its own inflater
//! cursors and decoded-byte cache. For a gzip layer, a sequential stream is cheap only on
//! the instance that holds its cursor: a second instance would decode the same bytes again
//! from a checkpoint. So the pool routes by *affinity*:
//!
//! - every instance remembers where its last read ended (`next`), set when the instance
//!   is lent out, so the next request of a pipelined stream finds it even while busy;
//! - a request near an instance's `next` (within [`NEAR_BEHIND`] before it, the range the
//!   cache likely still holds, or [`NEAR_AHEAD`] after it, cheap to decode forward) goes
//!   to that instance, and waits for it when it is busy;
//! - a request near none of them takes the least recently used idle instance, or opens a
//!   new one while there are fewer than the configured maximum, or waits.
//!
//! Independent streams (other files, other clients far away in the device) therefore run
//! on separate instances in parallel, while one stream never costs two decodes.
//!
//! A wait for an instance has the call deadline (`--call-timeout`) too: the instance it
//! waits for may be held by a call stuck in a host wait the epoch deadline cannot
//! interrupt (a slow server), so past the deadline the request fails (EIO) instead of
//! queueing behind it.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Result;

use super::device::{DeviceSpec, Limits, SandboxedDevice};
use super::errors::CallError;
use super::runtime::{Runtime, WitError};
use super::trap::Trap;

/// A read that starts up to this far before an instance's last end is probably in its
/// decoded-byte cache (32 MiB by default); routing it there costs a memcpy.
pub const NEAR_BEHIND: u64 = 16 << 20;
/// A read that starts up to this far after an instance's last end continues its cursor:
/// decoding 8 MiB forward costs less than restarting elsewhere from a checkpoint.
pub const NEAR_AHEAD: u64 = 8 << 20;

/// One instance and its routing state. A slot is *idle* (it holds its instance), *lent*
/// (a reader has the instance, or it is being opened), or *empty* (its instance was lost:
/// opening failed, or a reader panicked; the next request that needs one reopens it).
struct Slot {
    device: Option<SandboxedDevice>,
    lent: bool,
    /// Device offset where the instance's latest read ends.
    next: u64,
    /// Value of the pool's use counter when the slot was last lent (for LRU choice).
    last_used: u64,
}

impl Slot {
    fn idle(&self) -> bool {
        self.device.is_some()
    }
    fn empty(&self) -> bool {
        self.device.is_none() && !self.lent
    }
}

struct State {
    slots: Vec<Slot>,
    /// Monotonic counter of lends, for least-recently-used choice.
    uses: u64,
}

/// Where a request goes, decided under the lock. Both `Take` and `Open` have already
/// marked slot `i` lent, with its `next` set to the end of this read.
enum Route {
    /// Use the instance taken from slot `i` (boxed: an instance is large).
    Take(usize, Box<SandboxedDevice>),
    /// Open a new instance for slot `i` (outside the lock).
    Open(usize),
    /// Wait for an instance to come back, then decide again.
    Wait,
}

/// A device served by up to `max_instances` sandboxed instances.
pub struct DevicePool {
    runtime: Arc<Runtime>,
    spec: DeviceSpec,
    limits: Limits,
    size: u64,
    max_instances: usize,
    state: Mutex<State>,
    returned: Condvar,
}

/// An instance lent to one read. Dropping it gives the instance back; if the instance is
/// missing (the read panicked), the slot becomes empty, so no request waits for it forever.
struct Lease<'a> {
    pool: &'a DevicePool,
    index: usize,
    device: Option<SandboxedDevice>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut state = self.pool.lock();
        if let Some(slot) = state.slots.get_mut(self.index) {
            slot.device = self.device.take();
            slot.lent = false;
        }
        drop(state);
        self.pool.returned.notify_all();
    }
}

impl DevicePool {
    /// Opens the first instance now, so that a bad input is reported at start (naming the
    /// file at fault), and learns the device size from it. More instances are opened on
    /// demand. `max_instances` of 0 is treated as 1.
    pub fn open(
        runtime: Arc<Runtime>,
        spec: DeviceSpec,
        limits: Limits,
        max_instances: usize,
    ) -> Result<DevicePool> {
        let first = SandboxedDevice::open(Arc::clone(&runtime), spec.clone(), limits)?;
        let size = first.size();
        Ok(DevicePool {
            runtime,
            spec,
            limits,
            size,
            max_instances: max_instances.max(1),
            state: Mutex::new(State {
                slots: vec![Slot {
                    device: Some(first),
                    lent: false,
                    next: 0,
                    last_used: 0,
                }],
                uses: 0,
            }),
            returned: Condvar::new(),
        })
    }

    /// The true device size (meta ‖ tar), as the first instance reported it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Instances opened so far, lent or idle (for logs and tests).
    pub fn instances(&self) -> usize {
        self.lock().slots.iter().filter(|s| !s.empty()).count()
    }

    /// Logs each idle instance's counters (at info level), e.g. when a server stops.
    pub fn log_stats(&self) {
        let mut state = self.lock();
        for (slot, s) in state.slots.iter_mut().enumerate() {
            if let Some(device) = s.device.as_mut() {
                match device.stats() {
                    Ok(stats) => {
                        tracing::info!(slot, traps = device.traps, ?stats, "instance counters")
                    }
                    Err(e) => tracing::info!(slot, "no counters: {e}"),
                }
            }
        }
    }

    /// Reads `len` bytes at `offset` on a suitable instance (see the module comment).
    /// The `device.pread` contract applies: exactly `len` bytes unless past the end.
    pub fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, CallError> {
        let end = offset.saturating_add(u64::from(len));
        let mut lease = self.acquire(offset, end)?;
        match lease.device.as_mut() {
            Some(device) => device.pread(offset, len),
            None => Err(CallError::Trap(Trap::other("the pool lent no instance"))),
        }
    }

    /// Lends an instance for a read of `offset..end`, opening one if the route says so.
    fn acquire(&self, offset: u64, end: u64) -> Result<Lease<'_>, CallError> {
        let deadline = Instant::now() + self.limits.call_timeout;
        let mut state = self.lock();
        loop {
            match self.route(&mut state, offset, end) {
                Route::Take(index, device) => {
                    return Ok(Lease {
                        pool: self,
                        index,
                        device: Some(*device),
                    })
                }
                Route::Open(index) => {
                    drop(state);
                    // From here the lease owns the slot: on failure its drop leaves the
                    // slot empty and wakes the waiters.
                    let mut lease = Lease {
                        pool: self,
                        index,
                        device: None,
                    };
                    let opened = SandboxedDevice::open(
                        Arc::clone(&self.runtime),
                        self.spec.clone(),
                        self.limits,
                    )
                    .map_err(|e| {
                        CallError::Component(WitError::Io(format!(
                            "opening another sandboxed instance: {e:#}"
                        )))
                    })?;
                    tracing::debug!(slot = index, "opened a sandboxed instance");
                    lease.device = Some(opened);
                    return Ok(lease);
                }
                Route::Wait => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(CallError::Component(WitError::Io(format!(
                            "no sandboxed instance became free for a read at device offset {offset} \
                             within --call-timeout {} s (all {} are busy)",
                            self.limits.call_timeout.as_secs_f64(),
                            state.slots.len()
                        ))));
                    }
                    state = self
                        .returned
                        .wait_timeout(state, left)
                        .map(|(guard, _)| guard)
                        .unwrap_or_else(|p| p.into_inner().0);
                }
            }
        }
    }

    /// Decides where a read of `offset..end` goes (see the module comment), and marks the
    /// chosen slot lent with its `next` at `end`, so that the stream's following request
    /// is routed to the same instance even before this read finishes.
    fn route(&self, state: &mut State, offset: u64, end: u64) -> Route {
        let near = |s: &Slot| {
            !s.empty()
                && offset.saturating_add(NEAR_BEHIND) >= s.next
                && offset <= s.next.saturating_add(NEAR_AHEAD)
        };
        // 1. The nearest idle instance among the near ones.
        let nearest_idle = state
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.idle() && near(s))
            .min_by_key(|(_, s)| s.next.abs_diff(offset))
            .map(|(i, _)| i);
        // 2. A busy instance is near: this request belongs to its stream; wait for it.
        if nearest_idle.is_none() && state.slots.iter().any(near) {
            return Route::Wait;
        }
        // 3. Near none: the least recently used idle instance, or a new one, or wait.
        let chosen = nearest_idle.or_else(|| {
            state
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.idle())
                .min_by_key(|(_, s)| s.last_used)
                .map(|(i, _)| i)
        });
        state.uses += 1;
        let uses = state.uses;
        let lend = |slot: &mut Slot| {
            slot.lent = true;
            slot.next = end;
            slot.last_used = uses;
        };
        if let Some(i) = chosen {
            let slot = &mut state.slots[i];
            if let Some(device) = slot.device.take() {
                lend(slot);
                return Route::Take(i, Box::new(device));
            }
        }
        // Reopen an empty slot first, then grow up to the maximum.
        if let Some(i) = state.slots.iter().position(Slot::empty) {
            lend(&mut state.slots[i]);
            return Route::Open(i);
        }
        if state.slots.len() < self.max_instances {
            let mut slot = Slot {
                device: None,
                lent: false,
                next: 0,
                last_used: 0,
            };
            lend(&mut slot);
            state.slots.push(slot);
            return Route::Open(state.slots.len() - 1);
        }
        Route::Wait
    }

    /// The state holds instances and plain numbers, consistent between statements, so a
    /// lock poisoned by a panicking reader is still usable.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
