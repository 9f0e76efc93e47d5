//! The WIT glue (wasm32 only): imported `vfile`s become [`Source`]s, the exported
//! `tarindex` interface wraps [`Device`], and `builder` wraps the index builder's
//! [`Session`]. No logic lives here. The `registry` interface's glue is in
//! `bindings_registry.rs`.

use std::cell::RefCell;

use crate::build::session::{digest_text, Progress, Session, SessionOptions};
use crate::build::BlobFormat;
use crate::error::{Error, Kind};
use crate::fs::Filesystem;
use crate::gzran::{Options, ZinfoTrust};
use crate::remote;
use crate::source::{SizedSource, Source};
use crate::tarindex::policy::check_zinfo_for_layer;
use crate::tarindex::{Device, Tar, DEFAULT_HEADER_SAMPLES};

wit_bindgen::generate!({
    path: "../wit",
    world: "reader",
});

use erofs::reader::types::Error as WitError;
use erofs::reader::vfile::Vfile;
use exports::erofs::reader::builder::{
    self, GuestIndexer, IndexOptions, IndexOutput, IndexProgress, IndexStats,
};
use exports::erofs::reader::filesystem::{
    self as wit_fs, Attributes, DirEntry as WitDirEntry, FileKind, GuestFilesystem, VerifyReport,
};
use exports::erofs::reader::tarindex::{
    self, BlobLocation, DeviceStats, GuestDevice, ImageInfo, ImageLayer, OpenOptions,
    RemoteOptions, RemoteStats, ResolvedLayer,
};

/// The one conversion to the WIT error: each kind to the case the WIT documents for it.
impl From<Error> for WitError {
    fn from(e: Error) -> Self {
        let text = e.wit_text();
        match e.kind {
            Kind::BadInput | Kind::Internal => WitError::BadInput(text),
            Kind::Corrupt => WitError::Corrupt(text),
            Kind::Io => WitError::Io(text),
            Kind::Mismatch => WitError::Mismatch(text),
            Kind::OutOfRange => WitError::OutOfRange(text),
            Kind::Unsupported => WitError::Unsupported(text),
            Kind::NotFound => WitError::NotFound,
            Kind::NotDirectory => WitError::NotDirectory,
            Kind::IsDirectory => WitError::IsDirectory,
            Kind::NotSymlink => WitError::NotSymlink,
            Kind::NoAttribute => WitError::NoAttribute,
            Kind::NameTooLong => WitError::NameTooLong,
        }
    }
}

/// An embedder's error, seen from inside. The filesystem answers cannot come from a
/// vfile; they are kept as the kind they name, and the caller reports them as it would.
fn from_wit(e: WitError) -> Error {
    match e {
        WitError::BadInput(m) => Error::bad(m),
        WitError::Io(m) => Error::io(m),
        WitError::OutOfRange(m) => Error::out_of_range(m),
        WitError::Unsupported(m) => Error::unsupported(m),
        WitError::Corrupt(m) => Error::corrupt(m),
        WitError::Mismatch(m) => Error::new(Kind::Mismatch, m),
        other => Error::io(format!("vfile answered {other:?}")),
    }
}

/// An embedder's vfile seen as a [`Source`].
struct ImportedFile(Vfile);

impl Source for ImportedFile {
    fn size(&self) -> crate::error::Result<u64> {
        self.0.size().map_err(from_wit)
    }
    fn pread(&self, offset: u64, len: u32) -> crate::error::Result<Vec<u8>> {
        self.0.pread(offset, len).map_err(from_wit)
    }
}

pub(crate) struct Component;

/// The header sample an embedder asked for (WIT `header-samples`), or the default.
pub(crate) fn samples_from_wit(options: &OpenOptions) -> u32 {
    options.header_samples.unwrap_or(DEFAULT_HEADER_SAMPLES)
}

/// The reader's options from the WIT's (`zinfo-sha256` must be a SHA-256).
pub(crate) fn options_from_wit(options: OpenOptions) -> crate::error::Result<Options> {
    let defaults = Options::default();
    let zinfo_trust = match options.zinfo_sha256.as_deref() {
        Some(text) => ZinfoTrust::pinned_from_text(text)?,
        None => defaults.zinfo_trust,
    };
    Ok(Options {
        cache_bytes: options.cache_bytes.unwrap_or(defaults.cache_bytes),
        max_cursors: options
            .max_cursors
            .map_or(defaults.max_cursors, |n| n as usize),
        learn_interval: options.learn_interval.unwrap_or(defaults.learn_interval),
        max_learned: options
            .max_learned
            .map_or(defaults.max_learned, |n| n as usize),
        zinfo_trust,
    })
}

pub(crate) fn remote_options_from_wit(remote: RemoteOptions) -> remote::RemoteOptions {
    let defaults = remote::RemoteOptions::default();
    remote::RemoteOptions {
        insecure: remote.insecure.unwrap_or(defaults.insecure),
        chunk_size: remote.chunk_size.unwrap_or(defaults.chunk_size),
        readahead_max: remote.readahead_max.unwrap_or(defaults.readahead_max),
        max_retries: remote.max_retries.unwrap_or(defaults.max_retries),
        ..defaults
    }
}

pub(crate) fn location_from_wit(blob: BlobLocation) -> remote::BlobLocation {
    match blob {
        BlobLocation::Url(url) => remote::BlobLocation::Url(url),
        BlobLocation::Oci(o) => remote::BlobLocation::Oci {
            reference: o.reference,
            layer: o.layer,
            digest: o.digest,
            platform: o.platform,
        },
    }
}

impl tarindex::Guest for Component {
    type Device = DeviceResource;

    fn image_layers(
        reference: String,
        platform: Option<String>,
        remote: RemoteOptions,
    ) -> Result<ImageInfo, WitError> {
        let transport = Box::new(remote::WasiTransport::default());
        let found = remote::image_layers(
            &reference,
            platform.as_deref(),
            transport,
            &remote_options_from_wit(remote),
        )?;
        Ok(ImageInfo {
            registry: found.registry,
            repository: found.repository,
            manifest_digest: found.manifest_digest,
            platform: found.platform,
            layers: found
                .layers
                .into_iter()
                .map(|l| ImageLayer {
                    index: l.index,
                    digest: l.digest,
                    media_type: l.media_type,
                    size: l.size,
                    gzip: l.compression == remote::Compression::Gzip,
                })
                .collect(),
        })
    }

    fn open_remote(
        meta: Vfile,
        blob: BlobLocation,
        zinfo: Option<Vfile>,
        options: OpenOptions,
        remote: RemoteOptions,
    ) -> Result<tarindex::Device, WitError> {
        let remote_options = remote_options_from_wit(remote);
        let location = location_from_wit(blob);
        let transport = Box::new(remote::WasiTransport::default());
        let (blob, info) = remote::open_blob(&location, transport, &remote_options)?;
        check_zinfo_for_layer(&info, zinfo.is_some())?;
        let meta = SizedSource::new("meta", Box::new(ImportedFile(meta)))?;
        let blob = SizedSource::new("blob", Box::new(blob))?;
        let zinfo = zinfo
            .map(|z| SizedSource::new("zinfo", Box::new(ImportedFile(z))))
            .transpose()?;
        let samples = samples_from_wit(&options);
        let device = Device::open_with(meta, blob, zinfo, options_from_wit(options)?, samples)?;
        Ok(tarindex::Device::new(
            DeviceResource::new(device).resolved(&info),
        ))
    }

    fn open(
        meta: Vfile,
        blob: Vfile,
        zinfo: Option<Vfile>,
        options: OpenOptions,
    ) -> Result<tarindex::Device, WitError> {
        let samples = samples_from_wit(&options);
        let options = options_from_wit(options)?;
        let meta = SizedSource::new("meta", Box::new(ImportedFile(meta)))?;
        let blob = SizedSource::new("blob", Box::new(ImportedFile(blob)))?;
        let zinfo = zinfo
            .map(|z| SizedSource::new("zinfo", Box::new(ImportedFile(z))))
            .transpose()?;
        let device = Device::open_with(meta, blob, zinfo, options, samples)?;
        Ok(tarindex::Device::new(DeviceResource::new(device)))
    }
}

/// A `device` resource: the device until a filesystem takes it, and its two sizes, which
/// never change and so stay true after the hand-over (instead of a made-up 0).
pub(crate) struct DeviceResource {
    device: RefCell<Option<Device>>,
    size: u64,
    meta_size: u64,
    /// The OCI layer its open resolved (`device.resolved-layer`).
    resolved: Option<ResolvedLayer>,
}

impl DeviceResource {
    pub(crate) fn new(device: Device) -> DeviceResource {
        DeviceResource {
            size: device.size(),
            meta_size: device.meta_size(),
            device: RefCell::new(Some(device)),
            resolved: None,
        }
    }

    /// Record the OCI layer `info` names (nothing for a URL blob).
    pub(crate) fn resolved(mut self, info: &remote::BlobInfo) -> DeviceResource {
        self.resolved = resolved_layer(info);
        self
    }

    fn with<R>(&self, f: impl FnOnce(&mut Device) -> R) -> Result<R, WitError> {
        match self.device.borrow_mut().as_mut() {
            Some(device) => Ok(f(device)),
            None => Err(WitError::Io("device: it was handed to a filesystem".into())),
        }
    }
}

impl GuestDevice for DeviceResource {
    fn size(&self) -> u64 {
        self.size
    }

    fn meta_size(&self) -> u64 {
        self.meta_size
    }

    fn pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, WitError> {
        Ok(self.with(|d| d.pread(offset, len))??)
    }

    fn span_boundaries(&self) -> Vec<u64> {
        self.with(|d| span_boundaries(d))
            .unwrap_or_else(|_| vec![0])
    }

    fn stats(&self) -> DeviceStats {
        self.with(|d| stats(d))
            .unwrap_or_else(|_| stats_of_nothing())
    }

    fn remote_stats(&self) -> RemoteStats {
        self.with(|d| remote_stats(d))
            .unwrap_or_else(|_| remote_stats_of_nothing())
    }

    fn resolved_layer(&self) -> Option<ResolvedLayer> {
        self.resolved.clone()
    }
}

/// `device.resolved-layer` (see the WIT): all of it, or none for a blob that is not an
/// OCI layer.
fn resolved_layer(info: &remote::BlobInfo) -> Option<ResolvedLayer> {
    Some(ResolvedLayer {
        reference: info.pinned_reference.clone()?,
        manifest_digest: info.manifest_digest.clone()?,
        layer_index: info.layer_index?,
        layer_digest: info.digest.clone()?,
        layer_size: info.size,
    })
}

/// `device.remote-stats` (see the WIT): zero for a blob read through a vfile.
fn remote_stats(device: &Device) -> RemoteStats {
    let r = device.remote_stats().unwrap_or_default();
    RemoteStats {
        requests: r.requests,
        bytes_fetched: r.bytes_fetched,
        retries: r.retries,
        chunk_hits: r.chunk_hits,
    }
}

fn remote_stats_of_nothing() -> RemoteStats {
    RemoteStats {
        requests: 0,
        bytes_fetched: 0,
        retries: 0,
        chunk_hits: 0,
    }
}

/// `device.span-boundaries` (see the WIT): the device offset of the first decode page at
/// or after each zinfo checkpoint, so that a read starting there restarts at that very
/// checkpoint (`GzRan` restarts at the checkpoint at or before a page's start).
fn span_boundaries(device: &Device) -> Vec<u64> {
    let page = crate::gzran::cursor::PAGE as u64;
    let mut starts = vec![0];
    for out in device.cheap_offsets().unwrap_or_default() {
        let at = out
            .div_ceil(page)
            .saturating_mul(page)
            .saturating_add(device.meta_size());
        // Ascending, without repeats (two checkpoints on one page), and inside the device.
        if at < device.size() && starts.last().is_some_and(|&last| at > last) {
            starts.push(at);
        }
    }
    starts
}

fn stats_of_nothing() -> DeviceStats {
    DeviceStats {
        bytes_decoded: 0,
        cache_hits: 0,
        cache_misses: 0,
        blob_bytes_read: 0,
        blob_reads: 0,
        cursor_starts: 0,
        learned_starts: 0,
        learned_checkpoints: 0,
        header_check_files: 0,
        header_check_tar_reads: 0,
        header_check_tar_bytes: 0,
        header_check_blob_reads: 0,
        header_check_requests: 0,
    }
}

fn stats(device: &Device) -> DeviceStats {
    let h = device.sample_report();
    let mut out = match device.tar() {
        Tar::Plain(blob) => DeviceStats {
            blob_bytes_read: blob.bytes_read.get(),
            blob_reads: blob.reads.get(),
            ..stats_of_nothing()
        },
        Tar::Gzip(gz) => DeviceStats {
            bytes_decoded: gz.decoded(),
            cache_hits: gz.counters.cache_hits,
            cache_misses: gz.counters.cache_misses,
            blob_bytes_read: gz.blob().bytes_read.get(),
            blob_reads: gz.blob().reads.get(),
            cursor_starts: gz.counters.cursor_starts,
            learned_starts: gz.counters.learned_starts,
            learned_checkpoints: gz.learned_count() as u32,
            ..stats_of_nothing()
        },
    };
    out.header_check_files = h.files;
    out.header_check_tar_reads = h.tar_reads;
    out.header_check_tar_bytes = h.tar_bytes;
    out.header_check_blob_reads = h.blob_reads;
    out.header_check_requests = h.remote_requests;
    out
}

impl wit_fs::Guest for Component {
    type Filesystem = FsResource;

    fn open(dev: tarindex::Device) -> Result<wit_fs::Filesystem, WitError> {
        let resource: DeviceResource = dev.into_inner();
        let device =
            resource.device.borrow_mut().take().ok_or_else(|| {
                WitError::Io("device: it was already handed to a filesystem".into())
            })?;
        let fs = Filesystem::open(device)?;
        Ok(wit_fs::Filesystem::new(FsResource(RefCell::new(fs))))
    }
}

pub(crate) struct FsResource(RefCell<Filesystem>);

fn kind_of_mode(mode: u32) -> FileKind {
    match mode & 0o170000 {
        0o040000 => FileKind::Directory,
        0o120000 => FileKind::Symlink,
        0o020000 => FileKind::CharDevice,
        0o060000 => FileKind::BlockDevice,
        0o010000 => FileKind::Fifo,
        0o140000 => FileKind::Socket,
        _ => FileKind::Regular,
    }
}

fn attributes(a: erofs_image::Attr) -> Attributes {
    let is_device = matches!(a.mode & 0o170000, 0o020000 | 0o060000);
    Attributes {
        ino: a.nid,
        kind: kind_of_mode(a.mode),
        mode: a.mode,
        uid: a.uid,
        gid: a.gid,
        size: a.size,
        nlink: a.nlink,
        mtime_seconds: a.mtime_sec,
        mtime_nanoseconds: a.mtime_nsec,
        rdev_major: if is_device { a.major() } else { 0 },
        rdev_minor: if is_device { a.minor() } else { 0 },
    }
}

fn kind_of_dirent(t: erofs_image::FileType) -> FileKind {
    use erofs_image::FileType as T;
    match t {
        T::Directory => FileKind::Directory,
        T::Symlink => FileKind::Symlink,
        T::CharDevice => FileKind::CharDevice,
        T::BlockDevice => FileKind::BlockDevice,
        T::Fifo => FileKind::Fifo,
        T::Socket => FileKind::Socket,
        T::Regular | T::Unknown => FileKind::Regular,
    }
}

impl GuestFilesystem for FsResource {
    fn device_size(&self) -> u64 {
        self.0.borrow().device_ref().size()
    }

    fn device_pread(&self, offset: u64, len: u32) -> Result<Vec<u8>, WitError> {
        Ok(self.0.borrow_mut().device().pread(offset, len)?)
    }

    fn device_stats(&self) -> DeviceStats {
        stats(self.0.borrow().device_ref())
    }

    fn device_remote_stats(&self) -> RemoteStats {
        remote_stats(self.0.borrow().device_ref())
    }

    fn root(&self) -> u64 {
        self.0.borrow().root()
    }

    fn getattr(&self, ino: u64) -> Result<Attributes, WitError> {
        Ok(attributes(self.0.borrow_mut().getattr(ino)?))
    }

    fn lookup(&self, parent: u64, name: Vec<u8>) -> Result<Attributes, WitError> {
        Ok(attributes(self.0.borrow_mut().lookup(parent, &name)?))
    }

    fn readdir(&self, ino: u64, cookie: u64, max: u32) -> Result<Vec<WitDirEntry>, WitError> {
        let entries = self.0.borrow_mut().readdir(ino, cookie, max)?;
        Ok(entries
            .into_iter()
            .map(|e| WitDirEntry {
                ino: e.nid,
                kind: kind_of_dirent(e.file_type),
                name: e.name,
                next_cookie: e.next_cookie,
            })
            .collect())
    }

    fn read(&self, ino: u64, offset: u64, len: u32) -> Result<Vec<u8>, WitError> {
        Ok(self.0.borrow_mut().read(ino, offset, len)?)
    }

    fn readlink(&self, ino: u64) -> Result<Vec<u8>, WitError> {
        Ok(self.0.borrow_mut().readlink(ino)?)
    }

    fn listxattr(&self, ino: u64) -> Result<Vec<Vec<u8>>, WitError> {
        Ok(self.0.borrow_mut().listxattr(ino)?)
    }

    fn getxattr(&self, ino: u64, name: Vec<u8>) -> Result<Vec<u8>, WitError> {
        Ok(self.0.borrow_mut().getxattr(ino, &name)?)
    }

    fn verify_headers(&self) -> Result<u64, WitError> {
        Ok(self.0.borrow_mut().verify_headers()?)
    }

    fn verify(&self) -> Result<VerifyReport, WitError> {
        let r = self.0.borrow_mut().verify()?;
        Ok(VerifyReport {
            directories: r.directories,
            regular_files: r.regular_files,
            symlinks: r.symlinks,
            special_files: r.devices + r.fifos_and_sockets,
            entries: r.entries,
            hard_links: r.hard_links,
            data_bytes: r.data_bytes,
        })
    }
}

fn session_options(options: IndexOptions, format: BlobFormat) -> SessionOptions {
    SessionOptions {
        format,
        aufs: options.aufs,
        span: options.span_size,
        uuid: options.uuid,
        blob_digest: options.blob_digest,
    }
}

fn progress_to_wit(p: Progress) -> IndexProgress {
    IndexProgress {
        blob_bytes: p.blob_bytes,
        blob_size: p.blob_size,
        tar_bytes: p.tar_bytes,
        entries: p.entries,
        gzip: p.gzip,
        done: p.done,
    }
}

impl builder::Guest for Component {
    type Indexer = IndexerResource;
}

pub(crate) struct IndexerResource(RefCell<Session>);

impl GuestIndexer for IndexerResource {
    fn create(options: IndexOptions) -> Result<builder::Indexer, WitError> {
        let session = Session::new(session_options(options, BlobFormat::Detect))?;
        Ok(builder::Indexer::new(IndexerResource(RefCell::new(
            session,
        ))))
    }

    fn create_remote(
        blob: BlobLocation,
        options: IndexOptions,
        remote: RemoteOptions,
    ) -> Result<builder::Indexer, WitError> {
        let remote_options = remote_options_from_wit(remote);
        let transport = Box::new(remote::WasiTransport::default());
        let (source, info) =
            remote::open_blob(&location_from_wit(blob), transport, &remote_options)?;
        // The manifest's media type, when there is one, decides the format.
        let format = match info.compression {
            remote::Compression::Gzip => BlobFormat::Gzip,
            remote::Compression::Uncompressed => BlobFormat::Tar,
            remote::Compression::Unknown => BlobFormat::Detect,
        };
        let session = Session::pulling(
            session_options(options, format),
            Box::new(source),
            info.digest,
        )?;
        Ok(builder::Indexer::new(IndexerResource(RefCell::new(
            session,
        ))))
    }

    fn push(&self, chunk: Vec<u8>) -> Result<(), WitError> {
        Ok(self.0.borrow_mut().push(&chunk)?)
    }

    fn pump(&self, max_bytes: u64) -> Result<IndexProgress, WitError> {
        Ok(progress_to_wit(self.0.borrow_mut().pump(max_bytes)?))
    }

    fn progress(&self) -> IndexProgress {
        progress_to_wit(self.0.borrow().progress())
    }

    fn finish(&self) -> Result<IndexOutput, WitError> {
        let index = self.0.borrow_mut().finish()?;
        let s = index.stats;
        Ok(IndexOutput {
            meta: index.meta,
            zinfo: index.zinfo,
            stats: IndexStats {
                entries: s.entries,
                inodes: s.inodes,
                blob_size: s.blob_size,
                tar_size: s.tar_size,
                blob_digest: digest_text(&s.blob_sha256),
                diff_id: digest_text(&s.tar_sha256),
                checkpoints: s.checkpoints,
                span_size: s.span,
                notes: s.notes,
            },
        })
    }
}

export!(Component);
