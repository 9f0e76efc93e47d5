//! The wasmtime layer: engine configuration, the precompiled-component cache, the linker
//! with WASI and our `vfile` import, and the epoch ticker that enforces call deadlines.
//!
//! Limits, and why:
//! - Epoch interruption with a 10 ms tick: cheap (a counter check on loop back-edges)
//!   and the only way to stop a guest stuck in a loop. Each call gets a deadline.
//! - A per-store memory cap (StoreLimits inside [`MemoryCap`]), set by the caller (see
//!   `device.rs`).
//! - WASI with nothing granted: no preopened directories, no environment, no arguments,
//!   no stdin or stdout. The guest imports WASI only because Rust's std for wasm32-wasip2
//!   does. Its stderr goes to a small in-memory buffer ([`GuestStderr`]) that only the
//!   host reads, for the message of a panic or a failed allocation.
//! - wasm backtraces are captured only when debug logging is on (`-v`, `RUST_LOG=debug`),
//!   the only time they are shown; wasmtime adds file and line numbers when
//!   `WASMTIME_BACKTRACE_DETAILS=1`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, Resource, ResourceTable};
use wasmtime::{Config, Engine};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::guest_stderr::GuestStderr;
use super::host_file::{HostFile, ReadError};
use super::trap::MemoryCap;

/// Part of the precompiled-cache key (the pinned version in host/Cargo.toml).
const WASMTIME_VERSION: &str = "48.0.8";

/// A wasmtime error with context, as an anyhow error.
pub fn wt(e: wasmtime::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e:#}")
}

wasmtime::component::bindgen!({
    path: "../wit",
    world: "reader",
    with: {
        "erofs:reader/vfile.vfile": crate::sandbox::host_file::HostFile,
    },
    imports: { default: trappable },
});

pub use erofs::reader::types::Error as WitError;
pub use exports::erofs::reader::builder::{IndexOptions, IndexOutput, IndexProgress, IndexStats};
pub use exports::erofs::reader::filesystem::{Attributes, DirEntry, FileKind, VerifyReport};
// `registry.image-layer`: a layer with its diff_id (tarindex has an `image-layer` of its own).
pub use exports::erofs::reader::registry::{Image, ImageLayer as IndexedLayer, LayerIndex, Pushed};
pub use exports::erofs::reader::tarindex::{
    BlobLocation, DeviceStats, ImageInfo, ImageLayer, OciBlob, OpenOptions, RemoteOptions,
    RemoteStats, ResolvedLayer,
};

/// One epoch tick. Deadlines are whole ticks, so they are accurate to about 10 ms.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Per-store state: WASI's context and the table that holds host resources (vfiles).
pub struct StoreState {
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limits: MemoryCap,
    /// The guest's stderr (what a trap report quotes).
    pub stderr: GuestStderr,
    pub http: wasmtime_wasi_http::WasiHttpCtx,
    /// The egress policy this store's `wasi:http` requests go through.
    pub egress: crate::net::egress::Egress,
}

impl wasmtime_wasi_http::WasiHttpView for StoreState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        wasmtime_wasi_http::WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.egress,
        }
    }
}

impl WasiView for StoreState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// A compiled component, ready to instantiate many times.
pub struct Runtime {
    pub engine: Engine,
    pub pre: ReaderPre<StoreState>,
}

impl Runtime {
    /// Load `component` (a .wasm file), from the precompiled cache when possible.
    pub fn load(component: &Path) -> Result<Arc<Runtime>> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        // Backtraces are shown only in the debug log; without it, none is collected
        // (wasmtime's default of 20 frames stays for the debug log).
        if !tracing::enabled!(tracing::Level::DEBUG) {
            config.wasm_backtrace_max_frames(None);
        }
        let engine = Engine::new(&config).map_err(|e| wt(e, "creating the wasmtime engine"))?;
        let compiled = load_cached(&engine, component)?;

        let mut linker: Linker<StoreState> = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| wt(e, "linking WASI"))?;
        // wasi:http goes through the egress policy in each store (net/egress.rs).
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)
            .map_err(|e| wt(e, "linking wasi:http"))?;
        Reader::add_to_linker::<StoreState, wasmtime::component::HasSelf<StoreState>>(
            &mut linker,
            |s| s,
        )
        .map_err(|e| wt(e, "linking erofs:reader/vfile"))?;
        let pre = linker.instantiate_pre(&compiled).map_err(|e| {
            wt(
                e,
                &format!(
                    "{}: the component does not fit the erofs:reader world",
                    component.display()
                ),
            )
        })?;
        let pre = ReaderPre::new(pre).map_err(|e| {
            wt(
                e,
                &format!(
                    "{}: the component does not export erofs:reader/tarindex",
                    component.display()
                ),
            )
        })?;
        start_epoch_ticker(&engine);
        Ok(Arc::new(Runtime { engine, pre }))
    }
}

/// Increment the engine's epoch every tick, forever, from one background thread.
fn start_epoch_ticker(engine: &Engine) {
    static START: Once = Once::new();
    let engine = engine.clone();
    START.call_once(move || {
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            })
            .map(|_| ())
            .unwrap_or_else(|e| {
                tracing::warn!("no epoch ticker thread ({e}); call deadlines are off")
            });
    });
}

/// Where precompiled components are kept: `$EROFS_WASM_CACHE_DIR`, else for root
/// `/var/cache/erofs-wasm` (root never takes a cache from `$XDG_CACHE_HOME` or `$HOME`:
/// under `sudo -E` those are the invoking user's, who could plant native code there),
/// else `$XDG_CACHE_HOME/erofs-wasm`, else `~/.cache/erofs-wasm`. Empty values count as
/// unset (an empty path would put the cache in the current directory).
fn cache_dir(euid: u32) -> Option<PathBuf> {
    if let Some(dir) = crate::env::path("EROFS_WASM_CACHE_DIR") {
        return Some(dir);
    }
    if euid == 0 {
        return Some(PathBuf::from(ROOT_CACHE_DIR));
    }
    if let Some(dir) = crate::env::path("XDG_CACHE_HOME") {
        return Some(dir.join("erofs-wasm"));
    }
    crate::env::path("HOME").map(|h| h.join(".cache/erofs-wasm"))
}

/// Root's precompiled-component cache: root-owned, in the FHS place for caches.
const ROOT_CACHE_DIR: &str = "/var/cache/erofs-wasm";

/// The cache directory, made (0700) if missing, if it may be trusted: owned by the
/// effective uid and not writable by group or others. Otherwise no cache, with a warning
/// naming the path: loading native code from a directory someone else can write would
/// run their code, while going without the cache only costs a compile at every start
/// (measured here under load: 5 s instead of well under 1 s for a mount), so a foreign
/// cache does not stop the command.
fn trusted_cache_dir() -> Option<PathBuf> {
    use crate::mount_registry::private::{ensure_dir, euid, DirRule};
    let dir = cache_dir(euid())?;
    match ensure_dir(
        &dir,
        DirRule::NotWritableByOthers,
        "the precompiled-component cache",
    ) {
        Ok(()) => Some(dir),
        Err(e) => {
            tracing::warn!("{e:#}; compiling the component without a cache");
            None
        }
    }
}

/// Compile `path`, or load the native code compiled earlier for the same wasm bytes, the
/// same wasmtime version and the same engine settings. Compiling takes ~100 ms; loading
/// takes well under 1 ms. A cache that cannot be read or written only costs time; a
/// cache file that is not ours (another owner, writable by others, a symlink) is never
/// loaded (see [`trusted_cache_dir`]).
fn load_cached(engine: &Engine, path: &Path) -> Result<Component> {
    let wasm = std::fs::read(path)
        .with_context(|| format!("{}: cannot read the component", path.display()))?;
    let mut key = Sha256::new();
    key.update(&wasm);
    key.update(WASMTIME_VERSION.as_bytes());
    {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        key.update(h.finish().to_le_bytes());
    }
    let key = hex::encode(key.finalize());
    let cached = trusted_cache_dir().map(|d| d.join(format!("{key}.cwasm")));

    if let Some(cached) = &cached {
        if let Some(c) = load_cached_file(engine, cached) {
            return Ok(c);
        }
    }
    let serialized = engine.precompile_component(&wasm).map_err(|e| {
        wt(
            e,
            &format!("{}: not a valid WebAssembly component", path.display()),
        )
    })?;
    if let Some(cached) = &cached {
        if let Err(e) = write_atomically(cached, &serialized) {
            tracing::debug!(
                "{}: could not cache the compiled component: {e:#}",
                cached.display()
            );
        }
    }
    // SAFETY: the bytes were produced by this engine just now.
    unsafe { Component::deserialize(engine, &serialized) }
        .map_err(|e| wt(e, "loading the compiled component"))
}

/// The precompiled component at `cached`, if it is there, ours and loads. The file is
/// opened without following a symlink and checked on the open descriptor; wasmtime then
/// maps that same open file (through /proc/self/fd), so it cannot be swapped between
/// the check and the load.
fn load_cached_file(engine: &Engine, cached: &Path) -> Option<Component> {
    use std::os::fd::AsRawFd;
    let file =
        match crate::mount_registry::private::open_own_file(cached, "the precompiled component") {
            Ok(Some(file)) => file,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!("{e:#}; compiling the component instead");
                return None;
            }
        };
    let by_fd = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    // SAFETY: the file is ours (checked above), was written by `precompile_component` for
    // an engine with this compatibility hash, under a name keyed by the wasm's sha256; a
    // file that fails wasmtime's own header checks is recompiled.
    match unsafe { Component::deserialize_file(engine, &by_fd) } {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(
                "{}: stale precompiled component ({e:#}); recompiling",
                cached.display()
            );
            None
        }
    }
}

/// Write the cache file: a new 0600 file beside it, then a rename over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::mount_registry::private::write_own_file(path, bytes, "the precompiled component")
}

impl erofs::reader::types::Host for StoreState {}

impl erofs::reader::vfile::Host for StoreState {}

/// The WIT `vfile` resource over a [`HostFile`].
impl erofs::reader::vfile::HostVfile for StoreState {
    fn size(&mut self, file: Resource<HostFile>) -> wasmtime::Result<Result<u64, WitError>> {
        Ok(Ok(self.table.get(&file)?.size))
    }

    fn pread(
        &mut self,
        file: Resource<HostFile>,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, WitError>> {
        let file = self.table.get(&file)?;
        #[cfg(feature = "fault-injection")]
        if let Some(countdown) = &file.trap_after_reads {
            if countdown.fetch_sub(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err(wasmtime::Error::msg(format!(
                    "injected fault: trap on a read of {}",
                    file.path.display()
                )));
            }
        }
        let path = file.path.display();
        Ok(file.pread(offset, len).map_err(|e| match e {
            ReadError::TooLarge { len } => {
                WitError::OutOfRange(format!("{path}: read of {len} bytes is too large"))
            }
            ReadError::Shrank { at } => WitError::Io(format!(
                "{path}: file shrank: read at {at} returned nothing"
            )),
            ReadError::Io { at, source } => WitError::Io(format!("{path}: read at {at}: {source}")),
        }))
    }

    fn drop(&mut self, file: Resource<HostFile>) -> wasmtime::Result<()> {
        self.table.delete(file)?;
        Ok(())
    }
}
