//! A tar-index device served by the component, inside a sandbox:
//! - the store's linear memory is capped (`memory_limit`);
//! - every call has a deadline (`call_timeout`), enforced by epoch interruption;
//! - a trap (guest panic, memory cap, deadline) fails only the call that hit it: the
//!   store is dropped and the next call builds a fresh instance and reopens the device.
//!
//! Component errors (bad input, I/O, ...) are not traps: they are returned as they are
//! and the instance stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use wasmtime::component::ResourceAny;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use crate::files::HostFile;
use crate::runtime::{DeviceStats, OpenOptions, Reader, Runtime, StoreState, WitError, EPOCH_TICK};

/// Sandbox limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Cap on the guest's linear memory.
    pub memory: u64,
    /// Deadline for one call into the guest.
    pub call_timeout: Duration,
}

/// The files and settings a device is opened with; kept so that it can be reopened.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    pub meta: PathBuf,
    pub blob: PathBuf,
    pub zinfo: Option<PathBuf>,
    pub options: OpenOptions,
}

/// Why a call failed.
#[derive(Debug)]
pub enum CallError {
    /// The component returned an error.
    Component(WitError),
    /// The component trapped; the instance was discarded.
    Trap(String),
}

impl CallError {
    /// The errno a filesystem or block bridge should report.
    pub fn errno(&self) -> i32 {
        match self {
            CallError::Component(WitError::OutOfRange(_)) => libc::EINVAL,
            CallError::Component(WitError::Unsupported(_)) => libc::EOPNOTSUPP,
            CallError::Component(WitError::BadInput(_)) | CallError::Component(WitError::Io(_)) => {
                libc::EIO
            }
            CallError::Trap(_) => libc::EIO,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Component(e) => write!(f, "{}", describe(e)),
            CallError::Trap(t) => write!(f, "the component trapped: {t}"),
        }
    }
}

impl std::error::Error for CallError {}

pub fn describe(e: &WitError) -> String {
    match e {
        WitError::BadInput(m) => format!("bad input: {m}"),
        WitError::Io(m) => format!("I/O error: {m}"),
        WitError::OutOfRange(m) => format!("out of range: {m}"),
        WitError::Unsupported(m) => format!("unsupported: {m}"),
    }
}

struct Live {
    store: Store<StoreState>,
    bindings: Reader,
    device: ResourceAny,
}

pub struct SandboxedDevice {
    runtime: Arc<Runtime>,
    spec: DeviceSpec,
    limits: Limits,
    live: Option<Live>,
    size: u64,
    meta_size: u64,
    /// Traps survived so far.
    pub traps: u64,
}

impl SandboxedDevice {
    /// Instantiate the component and open the device. Errors name the file at fault.
    pub fn open(runtime: Arc<Runtime>, spec: DeviceSpec, limits: Limits) -> Result<Self> {
        let mut this = SandboxedDevice {
            runtime,
            spec,
            limits,
            live: None,
            size: 0,
            meta_size: 0,
            traps: 0,
        };
        let live = this.start().map_err(|e| anyhow::anyhow!("{e}"))?;
        this.live = Some(live);
        let (size, meta_size) = this.with_live(|b, store, dev| {
            let d = b.erofs_reader_tarindex().device();
            Ok((
                d.call_size(&mut *store, dev)?,
                d.call_meta_size(&mut *store, dev)?,
            ))
        })?;
        this.size = size;
        this.meta_size = meta_size;
        Ok(this)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Change the deadline for later calls.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.limits.call_timeout = timeout;
    }

    pub fn meta_size(&self) -> u64 {
        self.meta_size
    }

    /// Read device bytes. See the WIT `device.pread` for the contract.
    pub fn pread(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, CallError> {
        self.call(|b, store, dev| {
            b.erofs_reader_tarindex()
                .device()
                .call_pread(store, dev, offset, len)
        })
    }

    pub fn stats(&mut self) -> Result<DeviceStats, CallError> {
        self.call(|b, store, dev| {
            Ok(Ok(b
                .erofs_reader_tarindex()
                .device()
                .call_stats(store, dev)?))
        })
    }

    /// Build a store and an instance, and open the device in it.
    fn start(&self) -> Result<Live, CallError> {
        let limits = StoreLimitsBuilder::new()
            .memory_size(usize::try_from(self.limits.memory).unwrap_or(usize::MAX))
            .instances(4)
            .tables(16)
            .memories(4)
            .build();
        let state = StoreState {
            wasi: WasiCtx::builder().build(),
            table: Default::default(),
            limits,
        };
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limits);
        self.arm_deadline(&mut store);
        let open_files = |store: &mut Store<StoreState>| -> Result<_> {
            let meta = store
                .data_mut()
                .table
                .push(HostFile::open(&self.spec.meta)?)?;
            let blob = store
                .data_mut()
                .table
                .push(HostFile::open(&self.spec.blob)?)?;
            let zinfo = match &self.spec.zinfo {
                Some(z) => Some(store.data_mut().table.push(HostFile::open(z)?)?),
                None => None,
            };
            Ok((meta, blob, zinfo))
        };
        let (meta, blob, zinfo) = open_files(&mut store)
            .map_err(|e| CallError::Component(WitError::Io(format!("{e:#}"))))?;
        let bindings = self
            .runtime
            .pre
            .instantiate(&mut store)
            .map_err(|e| CallError::Trap(format!("{e:#}")))?;
        let opened = bindings
            .erofs_reader_tarindex()
            .call_open(&mut store, meta, blob, zinfo, self.spec.options)
            .map_err(|e| CallError::Trap(format!("{e:#}")))?;
        let device = opened.map_err(CallError::Component)?;
        Ok(Live {
            store,
            bindings,
            device,
        })
    }

    fn arm_deadline(&self, store: &mut Store<StoreState>) {
        let ticks = (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
    }

    /// Run one call with a fresh deadline; rebuild the instance first if a trap killed
    /// it, and discard it if this call traps.
    fn call<R>(
        &mut self,
        f: impl FnOnce(
            &Reader,
            &mut Store<StoreState>,
            ResourceAny,
        ) -> wasmtime::Result<Result<R, WitError>>,
    ) -> Result<R, CallError> {
        if self.live.is_none() {
            self.live = Some(self.start()?);
        }
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| CallError::Trap("no instance".into()))?;
        let ticks = (self.limits.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64;
        live.store.set_epoch_deadline(ticks);
        match f(&live.bindings, &mut live.store, live.device) {
            Ok(result) => result.map_err(CallError::Component),
            Err(trap) => {
                self.traps += 1;
                self.live = None;
                tracing::warn!("component trapped; the instance will be rebuilt: {trap:#}");
                Err(CallError::Trap(format!("{trap:#}")))
            }
        }
    }

    fn with_live<R>(
        &mut self,
        f: impl FnOnce(&Reader, &mut Store<StoreState>, ResourceAny) -> wasmtime::Result<R>,
    ) -> Result<R> {
        let live = self.live.as_mut().context("no instance")?;
        f(&live.bindings, &mut live.store, live.device)
            .map_err(|e| anyhow::anyhow!("the component trapped: {e:#}"))
    }
}
