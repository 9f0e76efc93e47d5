//! A tar-index device served by the component, inside a sandbox:
//! - the store's linear memory is capped (`memory_limit`);
//! - every call has a deadline (`call_timeout`), enforced by epoch interruption;
//! - a trap (guest panic, memory cap, deadline) fails only the call that hit it: the
//!   store is dropped and the next call builds a fresh instance and reopens the device.
//!   The error says why in one line ([`Trap`]); wasmtime's report with the wasm backtrace
//!   goes to the debug log.
//!
//! Component errors (bad input, I/O, ...) are not traps: they are returned as they are
//! and the instance stays.

use std::path::PathBuf;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::AtomicI64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use wasmtime::component::ResourceAny;
use wasmtime::{Store, StoreLimitsBuilder};
use wasmtime_wasi::WasiCtx;

use super::errors::{check_reply_length, reply_error, CallError};
use super::guest_stderr::GuestStderr;
use super::pins::SharedPins;
use super::runtime::{
    Attributes, BlobLocation, DeviceStats, DirEntry, OpenOptions, Reader, RemoteOptions,
    RemoteStats, Runtime, StoreState, VerifyReport, WitError, EPOCH_TICK,
};
use super::trap::{begin_call, log_guest_stderr, trap_in, MemoryCap, Trap, TrapSettings};
use crate::net::egress::{Egress, EgressPolicy};

/// Core instances one store may hold. The component is a handful of core modules
/// (the Rust code and the WASI adapter shims); 4 leaves room without allowing a guest to
/// multiply itself.
const MAX_INSTANCES: usize = 4;
/// Tables one store may hold: each core module has one or two (functions, the
/// component's indirect-call shims); 16 is several times what the component needs.
const MAX_TABLES: usize = 16;
/// Linear memories one store may hold: the component uses one, its adapters at most one
/// more; 4 is a safe bound. Their total size is capped by [`Limits::memory`].
const MAX_MEMORIES: usize = 4;

/// A store with the sandbox's limits: the memory cap and the instance, table and memory
/// bounds, WASI with nothing granted, `wasi:http` through `egress`, and a deadline of one
/// call (`limits.call_timeout`) that traps when it passes. Callers set a fresh deadline
/// before each later call.
mod open;

pub(crate) fn new_store(
    runtime: &Runtime,
    limits: &Limits,
    egress: Arc<EgressPolicy>,
) -> Store<StoreState> {
    let store_limits = MemoryCap::new(
        StoreLimitsBuilder::new()
            .memory_size(usize::try_from(limits.memory).unwrap_or(usize::MAX))
            .instances(MAX_INSTANCES)
            .tables(MAX_TABLES)
            .memories(MAX_MEMORIES)
            .build(),
    );
    let stderr = GuestStderr::default();
    let state = StoreState {
        wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
        table: Default::default(),
        limits: store_limits,
        stderr,
        http: wasmtime_wasi_http::WasiHttpCtx::new(),
        egress: Egress(egress),
    };
    let mut store = Store::new(&runtime.engine, state);
    store.limiter(|s| &mut s.limits);
    store.set_epoch_deadline(limits.deadline_ticks());
    store.epoch_deadline_trap();
    store
}

/// Sandbox limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Cap on the guest's linear memory.
    pub memory: u64,
    /// Deadline for one call into the guest.
    pub call_timeout: Duration,
}

impl Limits {
    /// The call deadline in epoch ticks (at least one).
    pub(crate) fn deadline_ticks(&self) -> u64 {
        (self.call_timeout.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
    }
}

/// The files and settings a device is opened with; kept so that it can be reopened.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The tar index; `None`: the one published next to the image (an `oci://` blob
    /// only), which the component finds and checks itself (`registry.open-published`).
    pub meta: Option<PathBuf>,
    pub blob: BlobSource,
    pub zinfo: Option<PathBuf>,
    pub options: OpenOptions,
    /// What the first open fixed (the META and zinfo bytes, the pinned OCI manifest, the
    /// sizes), shared by every clone: see [`super::pins`]. `Default::default()` for a new
    /// device.
    pub pins: SharedPins,
    /// Fault injection for tests: the blob read after this many more blob reads (over
    /// all instances) traps the component, once.
    #[cfg(feature = "fault-injection")]
    pub trap_after_blob_reads: Option<Arc<AtomicI64>>,
}

/// Where the layer blob comes from.
#[derive(Clone)]
pub enum BlobSource {
    /// A local file, given to the component as a vfile.
    Local(PathBuf),
    /// Fetched by the component over wasi:http, through the egress policy.
    Remote {
        location: BlobLocation,
        options: RemoteOptions,
        egress: Arc<EgressPolicy>,
    },
}

impl DeviceSpec {
    /// The tar index, for messages: its path, or where it was found.
    pub fn meta_name(&self) -> String {
        match &self.meta {
            Some(path) => path.display().to_string(),
            None => format!("the published index of {}", self.blob.display_name()),
        }
    }
}

/// What the host adds to a component error that says an image has no published index:
/// how to publish one.
pub fn publish_hint(message: &str) -> Option<&'static str> {
    message.contains("no published index").then_some(
        "publish one with `erofs-host index COMPONENT oci://REGISTRY/REPO:TAG --push` \
         (push access needed), or give a tar index with --tarindex META [--zinfo ZINFO]",
    )
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::Local(p) => write!(f, "{}", p.display()),
            BlobSource::Remote { location, .. } => write!(f, "{location:?}"),
        }
    }
}

impl BlobSource {
    /// The egress policy of a remote blob (its counters are the host's network stats).
    pub fn egress(&self) -> Option<&Arc<EgressPolicy>> {
        match self {
            BlobSource::Local(_) => None,
            BlobSource::Remote { egress, .. } => Some(egress),
        }
    }

    /// A short name for messages and FUSE's fsname.
    pub fn display_name(&self) -> String {
        match self {
            BlobSource::Local(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            BlobSource::Remote {
                location: BlobLocation::Url(u),
                ..
            } => u.rsplit('/').next().unwrap_or(u).to_string(),
            BlobSource::Remote {
                location: BlobLocation::Oci(o),
                ..
            } => o.reference.clone(),
        }
    }
}

/// What the instance serves: the raw device, or the EROFS filesystem on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Device,
    Filesystem,
}

struct Live {
    store: Store<StoreState>,
    bindings: Reader,
    /// A `device`, or a `filesystem` (which owns its device), per `mode`.
    handle: ResourceAny,
    /// The device's size and metadata size, asked before a filesystem took the device.
    size: u64,
    meta_size: u64,
}

/// The result of one raw call into the guest: the outer error is a trap.
type GuestResult<R> = wasmtime::Result<Result<R, WitError>>;

pub struct SandboxedDevice {
    runtime: Arc<Runtime>,
    spec: DeviceSpec,
    mode: Mode,
    limits: Limits,
    live: Option<Live>,
    size: u64,
    meta_size: u64,
    /// Traps survived so far.
    pub traps: u64,
    /// The policy for stores of local-blob devices: no network at all.
    deny_all: Arc<EgressPolicy>,
}

impl SandboxedDevice {
    /// Instantiate the component and open the device. Errors name the file at fault.
    pub fn open(runtime: Arc<Runtime>, spec: DeviceSpec, limits: Limits) -> Result<Self> {
        Self::open_as(runtime, spec, limits, Mode::Device)
    }

    /// Instantiate the component, open the device and parse its EROFS superblock.
    pub fn open_filesystem(
        runtime: Arc<Runtime>,
        spec: DeviceSpec,
        limits: Limits,
    ) -> Result<Self> {
        Self::open_as(runtime, spec, limits, Mode::Filesystem)
    }

    fn open_as(
        runtime: Arc<Runtime>,
        spec: DeviceSpec,
        limits: Limits,
        mode: Mode,
    ) -> Result<Self> {
        let mut this = SandboxedDevice {
            runtime,
            spec,
            mode,
            limits,
            live: None,
            size: 0,
            meta_size: 0,
            traps: 0,
            deny_all: EgressPolicy::deny_all()?,
        };
        let live = this.start().map_err(|e| {
            let text = e.to_string();
            match publish_hint(&text) {
                Some(hint) => anyhow::anyhow!("{text}; {hint}"),
                None => anyhow::anyhow!("{text}"),
            }
        })?;
        // The sizes the device reported when it opened (a filesystem's device is asked
        // before the filesystem takes it; every reopen must report the same, see pins).
        this.size = live.size;
        this.meta_size = live.meta_size;
        this.live = Some(live);
        Ok(this)
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn meta_size(&self) -> u64 {
        self.meta_size
    }

    /// The files and settings this device was opened with.
    pub fn spec(&self) -> &DeviceSpec {
        &self.spec
    }

    /// What another instance of this device is opened with (the parallel reader's).
    pub fn reopen_parts(&self) -> (Arc<Runtime>, DeviceSpec, Limits) {
        (Arc::clone(&self.runtime), self.spec.clone(), self.limits)
    }

    /// Change the deadline for later calls.
    pub fn set_call_timeout(&mut self, timeout: Duration) {
        self.limits.call_timeout = timeout;
    }

    /// Read device bytes. See the WIT `device.pread` for the contract, which is checked
    /// here: exactly `len` bytes, fewer only where the device ends.
    pub fn pread(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, CallError> {
        let bytes = match self.mode {
            Mode::Device => self.call(|b, s, h| {
                b.erofs_reader_tarindex()
                    .device()
                    .call_pread(s, h, offset, len)
            }),
            Mode::Filesystem => self.call(|b, s, h| {
                b.erofs_reader_filesystem()
                    .filesystem()
                    .call_device_pread(s, h, offset, len)
            }),
        }?;
        let expected = self.size.saturating_sub(offset).min(u64::from(len));
        check_reply_length("device pread", offset, len, bytes.len(), expected)?;
        Ok(bytes)
    }

    /// Where a whole-device read may be split among instances (device mode; see the WIT
    /// `device.span-boundaries`). Checked here, since the reply is the component's: the
    /// offsets must start at 0, ascend and stay below the device size.
    pub fn span_boundaries(&mut self) -> Result<Vec<u64>, CallError> {
        if self.mode != Mode::Device {
            return Err(CallError::Component(WitError::Unsupported(
                "span boundaries of a filesystem".into(),
            )));
        }
        let starts = self.call(|b, s, h| {
            Ok(Ok(b
                .erofs_reader_tarindex()
                .device()
                .call_span_boundaries(s, h)?))
        })?;
        let ordered = starts.first() == Some(&0)
            && starts.windows(2).all(|w| w[0] < w[1])
            && starts.last().is_some_and(|&last| last < self.size.max(1));
        if !ordered {
            return Err(CallError::Component(WitError::BadInput(format!(
                "the component's span boundaries are not ascending offsets from 0 below the device size {}: {} offsets, first {:?}, last {:?}",
                self.size,
                starts.len(),
                starts.first(),
                starts.last()
            ))));
        }
        Ok(starts)
    }

    /// The device's counters (of a filesystem: those of the device it owns).
    pub fn stats(&mut self) -> Result<DeviceStats, CallError> {
        match self.mode {
            Mode::Device => {
                self.call(|b, s, h| Ok(Ok(b.erofs_reader_tarindex().device().call_stats(s, h)?)))
            }
            Mode::Filesystem => self.call(|b, s, h| {
                Ok(Ok(b
                    .erofs_reader_filesystem()
                    .filesystem()
                    .call_device_stats(s, h)?))
            }),
        }
    }

    /// The remote fetcher's counters.
    pub fn remote_stats(&mut self) -> Result<RemoteStats, CallError> {
        match self.mode {
            Mode::Device => self.call(|b, s, h| {
                Ok(Ok(b
                    .erofs_reader_tarindex()
                    .device()
                    .call_remote_stats(s, h)?))
            }),
            Mode::Filesystem => self.call(|b, s, h| {
                Ok(Ok(b
                    .erofs_reader_filesystem()
                    .filesystem()
                    .call_device_remote_stats(s, h)?))
            }),
        }
    }

    pub fn root(&mut self) -> Result<u64, CallError> {
        self.fs_call(|b, s, h| {
            Ok(Ok(b
                .erofs_reader_filesystem()
                .filesystem()
                .call_root(s, h)?))
        })
    }

    pub fn getattr(&mut self, ino: u64) -> Result<Attributes, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_getattr(s, h, ino)
        })
    }

    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Attributes, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_lookup(s, h, parent, name)
        })
    }

    /// At most `max` entries (checked: a longer answer is refused).
    pub fn readdir(&mut self, ino: u64, cookie: u64, max: u32) -> Result<Vec<DirEntry>, CallError> {
        let entries = self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_readdir(s, h, ino, cookie, max)
        })?;
        if entries.len() > max as usize {
            return Err(reply_error(format!(
                "readdir of inode {ino}: the component returned {} entries, more than the {max} asked for",
                entries.len()
            )));
        }
        Ok(entries)
    }

    /// At most `len` bytes (checked: a longer answer is refused; a shorter one means the
    /// file ends there, which the caller sees from the file's size).
    pub fn read(&mut self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, CallError> {
        let bytes = self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_read(s, h, ino, offset, len)
        })?;
        if bytes.len() > len as usize {
            return Err(reply_error(format!(
                "read of inode {ino} at offset {offset}: the component returned {} bytes, more than the {len} asked for",
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    pub fn readlink(&mut self, ino: u64) -> Result<Vec<u8>, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_readlink(s, h, ino)
        })
    }

    pub fn listxattr(&mut self, ino: u64) -> Result<Vec<Vec<u8>>, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_listxattr(s, h, ino)
        })
    }

    pub fn getxattr(&mut self, ino: u64, name: &[u8]) -> Result<Vec<u8>, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_getxattr(s, h, ino, name)
        })
    }

    /// Walk the whole EROFS tree in the sandbox (see the WIT `filesystem.verify`).
    pub fn verify(&mut self) -> Result<VerifyReport, CallError> {
        self.fs_call(|b, s, h| b.erofs_reader_filesystem().filesystem().call_verify(s, h))
    }

    /// Check every regular file's tar header (see the WIT `filesystem.verify-headers`).
    pub fn verify_headers(&mut self) -> Result<u64, CallError> {
        self.fs_call(|b, s, h| {
            b.erofs_reader_filesystem()
                .filesystem()
                .call_verify_headers(s, h)
        })
    }

    fn fs_call<R>(
        &mut self,
        f: impl FnOnce(&Reader, &mut Store<StoreState>, ResourceAny) -> GuestResult<R>,
    ) -> Result<R, CallError> {
        if self.mode != Mode::Filesystem {
            return Err(CallError::Component(WitError::Unsupported(
                "a filesystem call on a raw device".into(),
            )));
        }
        self.call(f)
    }

    fn deadline_ticks(&self) -> u64 {
        self.limits.deadline_ticks()
    }

    /// Run one call with a fresh deadline; rebuild the instance first if a trap killed
    /// it, and discard it if this call traps.
    fn call<R>(
        &mut self,
        f: impl FnOnce(&Reader, &mut Store<StoreState>, ResourceAny) -> GuestResult<R>,
    ) -> Result<R, CallError> {
        if self.live.is_none() {
            self.live = Some(self.start()?);
        }
        let ticks = self.deadline_ticks();
        let settings = self.trap_settings();
        let live = self
            .live
            .as_mut()
            .ok_or_else(|| CallError::Trap(Trap::other("no instance")))?;
        live.store.set_epoch_deadline(ticks);
        // A fresh record for this call: no refused growth, no stderr yet.
        begin_call(&mut live.store);
        match f(&live.bindings, &mut live.store, live.handle) {
            Ok(result) => {
                log_guest_stderr(&live.store);
                if let Err(WitError::Corrupt(_)) = &result {
                    // Corrupt data may have come from the range cache: what was served
                    // from it lately goes, so the next read fetches it again.
                    if let Some(egress) = self.spec.blob.egress() {
                        egress.forget_recent_cache_hits();
                    }
                }
                result.map_err(CallError::Component)
            }
            Err(e) => {
                let err = trapped(settings, &e, &live.store);
                // State change: the instance is gone; the next call starts a new one.
                self.traps += 1;
                self.live = None;
                Err(err)
            }
        }
    }

    /// The settings a trap message names.
    fn trap_settings(&self) -> TrapSettings {
        TrapSettings {
            memory_limit: self.limits.memory,
            decode_cache: Some(self.spec.options.cache_bytes.unwrap_or(0)),
            call_timeout: self.limits.call_timeout,
        }
    }
}

/// The error for a trap in `store`: its cause in one line (the bridges and commands
/// report it); the next call rebuilds the instance.
fn trapped(
    settings: TrapSettings,
    error: &wasmtime::Error,
    store: &Store<StoreState>,
) -> CallError {
    CallError::Trap(trap_in(store, error, settings))
}
