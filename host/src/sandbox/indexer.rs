//! One index build inside the sandbox ([`index_blob`]): the blob is streamed once, front
//! to back, into the component's `builder.indexer`, which parses the tar and returns the
//! EROFS metadata image, the zinfo of a gzip blob, and the stats. The host reads a local
//! blob itself and hands it over in pieces; a remote blob is fetched by the component
//! (its network client, through the egress policy), `pump` by `pump`.
//!
//! The limits are the device's: a memory cap for the store, and a deadline per call
//! (each piece is one call, so a stuck parser is stopped within one deadline). A trap
//! ends the build: the indexer's state was in the instance, and there is nothing to
//! resume from.

use std::io::Read;
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::device::{new_store, BlobSource, Limits};
use super::errors::describe;
use super::runtime::{
    IndexOptions, IndexOutput, IndexProgress, Reader, Runtime, StoreState, WitError,
};
use super::trap::{begin_call, log_guest_stderr, trap_in, TrapSettings};
use crate::net::egress::EgressPolicy;

/// Bytes per `push` of a local blob: each call costs a copy into the guest and a few µs;
/// 1 MiB makes that nothing, and keeps the guest's input buffer small.
pub const PUSH_BYTES: usize = 1 << 20;

/// Bytes per `pump` of a remote blob: 8 MiB is a few Range requests of readahead, so a
/// progress line moves, and one call stays far inside the remote call deadline.
pub const PUMP_BYTES: u64 = 8 << 20;

/// What to build.
#[derive(Debug, Clone, Default)]
pub struct IndexRequest {
    /// Translate aufs whiteouts (`--aufs`).
    pub aufs: bool,
    /// zinfo span in uncompressed bytes; `None`: the component's default.
    pub span: Option<u64>,
    /// The digest the blob must have (`sha256:…`); an OCI layer is always checked against
    /// its manifest as well.
    pub blob_digest: Option<String>,
    /// Whether the caller has somewhere to put a zinfo. `Some(false)` refuses a gzip blob
    /// and `Some(true)` a plain tar, as soon as the first bytes show which it is.
    pub want_zinfo: Option<bool>,
}

/// The result of one raw call into the guest: the outer error is a trap.
type GuestResult<R> = wasmtime::Result<Result<R, WitError>>;

/// A build in one store.
struct Build {
    store: Store<StoreState>,
    bindings: Reader,
    indexer: ResourceAny,
    ticks: u64,
    /// What a trap message names (the cap and the deadline; an indexer has no cache).
    settings: TrapSettings,
    want_zinfo: Option<bool>,
    /// The blob's name, for messages.
    name: String,
}

impl Build {
    fn call<R>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Reader, &mut Store<StoreState>, ResourceAny) -> GuestResult<R>,
    ) -> Result<R> {
        // A fresh deadline for each call.
        self.store.set_epoch_deadline(self.ticks);
        begin_call(&mut self.store);
        let result = f(&self.bindings, &mut self.store, self.indexer);
        log_guest_stderr(&self.store);
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(anyhow!("{}: {}", self.name, describe(&e))),
            Err(e) => Err(anyhow!(
                "{}: {what}: {}",
                self.name,
                trap_in(&self.store, &e, self.settings)
            )),
        }
    }

    fn push(&mut self, chunk: &[u8]) -> Result<()> {
        self.call("indexing", |b, s, h| {
            b.erofs_reader_builder().indexer().call_push(s, h, chunk)
        })
    }

    fn pump(&mut self, max: u64) -> Result<IndexProgress> {
        self.call("fetching and indexing", |b, s, h| {
            b.erofs_reader_builder().indexer().call_pump(s, h, max)
        })
    }

    fn progress(&mut self) -> Result<IndexProgress> {
        let p = self.call("reporting progress", |b, s, h| {
            Ok(Ok(b
                .erofs_reader_builder()
                .indexer()
                .call_progress(s, h)?))
        })?;
        self.check_format(&p)?;
        Ok(p)
    }

    /// Refuse a gzip blob without a place for its zinfo, or a zinfo for a plain tar, as
    /// soon as the component knows which the blob is.
    fn check_format(&self, p: &IndexProgress) -> Result<()> {
        match (p.gzip, self.want_zinfo) {
            (Some(true), Some(false)) => bail!(
                "{}: the blob is gzip, so its index has a zinfo: give --zinfo OUT_ZINFO",
                self.name
            ),
            (Some(false), Some(true)) => bail!(
                "{}: the blob is a plain tar, which needs no zinfo: drop --zinfo",
                self.name
            ),
            _ => Ok(()),
        }
    }

    fn finish(&mut self) -> Result<IndexOutput> {
        self.call("finishing the index", |b, s, h| {
            b.erofs_reader_builder().indexer().call_finish(s, h)
        })
    }
}

/// Build the index of one blob (a local file, a URL or an OCI layer) in a fresh sandboxed
/// instance. `on_progress` is called after each piece, with the blob's size filled in
/// when the host knows it. This is the library entry point: `erofs-host index` calls it
/// once, and a caller indexing every layer of an image calls it once per layer.
pub fn index_blob(
    runtime: &Arc<Runtime>,
    blob: &BlobSource,
    request: &IndexRequest,
    limits: Limits,
    on_progress: &mut dyn FnMut(&IndexProgress),
) -> Result<IndexOutput> {
    let options = IndexOptions {
        aufs: Some(request.aufs),
        span_size: request.span,
        uuid: None,
        blob_digest: request.blob_digest.clone(),
    };
    let egress = match blob {
        BlobSource::Remote { egress, .. } => egress.clone(),
        BlobSource::Local(_) => EgressPolicy::deny_all()?,
    };
    let mut store = new_store(runtime, &limits, egress);
    let settings = TrapSettings {
        memory_limit: limits.memory,
        decode_cache: None,
        call_timeout: limits.call_timeout,
    };
    let bindings = match runtime.pre.instantiate(&mut store) {
        Ok(bindings) => bindings,
        Err(e) => bail!(
            "instantiating the component: {}",
            trap_in(&store, &e, settings)
        ),
    };
    let name = match blob {
        BlobSource::Local(path) => path.display().to_string(),
        BlobSource::Remote { .. } => blob.display_name(),
    };
    let created = match blob {
        BlobSource::Local(_) => bindings
            .erofs_reader_builder()
            .indexer()
            .call_create(&mut store, &options),
        BlobSource::Remote {
            location,
            options: remote,
            ..
        } => bindings
            .erofs_reader_builder()
            .indexer()
            .call_create_remote(&mut store, location, &options, *remote),
    };
    let indexer = match created {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => bail!("{name}: {}", describe(&e)),
        Err(e) => bail!(
            "{name}: opening the blob: {}",
            trap_in(&store, &e, settings)
        ),
    };
    let mut build = Build {
        store,
        bindings,
        indexer,
        ticks: limits.deadline_ticks(),
        settings,
        want_zinfo: request.want_zinfo,
        name,
    };
    match blob {
        BlobSource::Local(path) => push_file(&mut build, path, on_progress)?,
        BlobSource::Remote { .. } => loop {
            let p = build.pump(PUMP_BYTES)?;
            build.check_format(&p)?;
            on_progress(&p);
            if p.done {
                break;
            }
        },
    }
    let output = build.finish()?;
    // A blob too short to show its format before the end: the same check, on the result.
    build.check_format(&IndexProgress {
        blob_bytes: output.stats.blob_size,
        blob_size: Some(output.stats.blob_size),
        tar_bytes: output.stats.tar_size,
        entries: output.stats.entries,
        gzip: Some(output.zinfo.is_some()),
        done: true,
    })?;
    Ok(output)
}

/// Stream a local file into the indexer, [`PUSH_BYTES`] at a time.
fn push_file(
    build: &mut Build,
    path: &std::path::Path,
    on_progress: &mut dyn FnMut(&IndexProgress),
) -> Result<()> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let size = file
        .metadata()
        .with_context(|| format!("{}: cannot stat", path.display()))?
        .len();
    let mut buf = vec![0u8; PUSH_BYTES];
    loop {
        let n = read_full(&mut file, &mut buf)
            .with_context(|| format!("{}: read failed", path.display()))?;
        if n == 0 {
            break;
        }
        build.push(&buf[..n])?;
        let mut p = build.progress()?;
        p.blob_size = Some(size);
        on_progress(&p);
    }
    Ok(())
}

/// Read until `buf` is full or the file ends.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}
