//! A small pool of sandboxed instances, so that FUSE or NBD worker threads can be served
//! at once. Each instance has its own store, cache and cursors; a trap in one rebuilds
//! only that one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};

use crate::runtime::Runtime;
use crate::sandbox::{DeviceSpec, Limits, Mode, SandboxedDevice};

pub struct Pool {
    instances: Vec<Mutex<SandboxedDevice>>,
    next: AtomicUsize,
}

impl Pool {
    /// `count` instances (at least 1) opened on the same files in the same mode.
    pub fn open(
        runtime: Arc<Runtime>,
        spec: &DeviceSpec,
        limits: Limits,
        mode: Mode,
        count: usize,
    ) -> Result<Pool> {
        let mut instances = Vec::new();
        for i in 0..count.max(1) {
            let open = match mode {
                Mode::Device => SandboxedDevice::open(runtime.clone(), spec.clone(), limits),
                Mode::Filesystem => {
                    SandboxedDevice::open_filesystem(runtime.clone(), spec.clone(), limits)
                }
            };
            instances.push(Mutex::new(
                open.with_context(|| format!("opening sandbox instance {i}"))?,
            ));
        }
        Ok(Pool {
            instances,
            next: AtomicUsize::new(0),
        })
    }

    /// An idle instance if there is one, else the next in turn (waiting for it).
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

    pub fn size(&self) -> u64 {
        self.get().size()
    }
}
