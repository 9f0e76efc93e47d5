//! Opening a device in a fresh instance: the META and zinfo snapshots, the OCI pin, the
//! open call, the checks against the first open ([`super::super::pins`]) and the
//! filesystem on top. Every reopen (pool growth, the rebuild after a trap) comes here.
//!
//! The OCI pin comes from the open itself: the component resolves the reference to one
//! manifest and layer and reports them (`device.resolved-layer`); the host lists no
//! manifest of its own, so a layer it cannot serve elsewhere in the image (zstd) does
//! not stop a mount of this one.

use wasmtime::component::ResourceAny;
use wasmtime::Store;

use super::super::errors::CallError;
use super::super::host_file::HostFile;
use super::super::pins::{names_a_tag, FirstOpen};
use super::super::runtime::{BlobLocation, Reader, StoreState, WitError};
use super::super::trap::Trap;
use super::{new_store, trapped, BlobSource, Live, Mode, SandboxedDevice};

impl SandboxedDevice {
    /// Build a store and an instance, and open the device (and filesystem) in it.
    pub(super) fn start(&self) -> Result<Live, CallError> {
        let egress = match &self.spec.blob {
            BlobSource::Remote { egress, .. } => egress.clone(),
            BlobSource::Local(_) => self.deny_all.clone(),
        };
        let mut store = new_store(&self.runtime, &self.limits, egress);

        let io = |e: anyhow::Error| CallError::Component(WitError::Io(format!("{e:#}")));
        let Some(meta_path) = &self.spec.meta else {
            return self.start_published(store);
        };
        // The META and zinfo as the first open read them (pins), never the path again.
        let pins = &self.spec.pins;
        let meta = HostFile::from_snapshot(&pins.meta(meta_path)?);
        let zinfo = match &self.spec.zinfo {
            Some(path) => Some(HostFile::from_snapshot(&pins.zinfo(path)?)),
            None => None,
        };
        let table = &mut store.data_mut().table;
        let meta = table.push(meta).map_err(|e| io(e.into()))?;
        let zinfo = zinfo
            .map(|z| table.push(z))
            .transpose()
            .map_err(|e| io(e.into()))?;

        let bindings = match self.runtime.pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(e) => return Err(trapped(self.trap_settings(), &e, &store)),
        };
        let tarindex = bindings.erofs_reader_tarindex();
        let mut blob_size = None;
        let device = match &self.spec.blob {
            BlobSource::Local(path) => {
                #[cfg_attr(not(feature = "fault-injection"), allow(unused_mut))]
                let mut blob = HostFile::open(path).map_err(io)?;
                blob_size = Some(blob.size);
                #[cfg(feature = "fault-injection")]
                {
                    blob.trap_after_reads = self.spec.trap_after_blob_reads.clone();
                }
                let blob = store
                    .data_mut()
                    .table
                    .push(blob)
                    .map_err(|e| io(e.into()))?;
                tarindex.call_open(&mut store, meta, blob, zinfo, &self.spec.options)
            }
            BlobSource::Remote {
                location, options, ..
            } => {
                let location = self.pinned_location(location);
                bindings.erofs_reader_tarindex().call_open_remote(
                    &mut store,
                    meta,
                    &location,
                    zinfo,
                    &self.spec.options,
                    *options,
                )
            }
        };
        let device = match device {
            Ok(opened) => opened.map_err(CallError::Component)?,
            Err(e) => return Err(trapped(self.trap_settings(), &e, &store)),
        };
        self.finish_start(store, bindings, device, blob_size)
    }

    /// The OCI layer every instance opens: the one the first open resolved, once it is
    /// pinned ([`Self::pin_resolved`]); until then the reference as given.
    fn pinned_location(&self, location: &BlobLocation) -> BlobLocation {
        match (location, self.spec.pins.oci()) {
            (BlobLocation::Oci(_), Some(pinned)) => BlobLocation::Oci(pinned.clone()),
            _ => location.clone(),
        }
    }

    /// Pin an `oci://…:TAG` to the manifest and layer this open resolved (the component
    /// reported them), for the life of the device: a moved tag then changes nothing. A
    /// reference by digest is immutable already and needs no pin. The layer's digest
    /// and size, which every reopen must report again.
    fn pin_resolved(
        &self,
        store: &mut Store<StoreState>,
        bindings: &Reader,
        device: ResourceAny,
    ) -> Result<Option<(String, u64)>, CallError> {
        let BlobSource::Remote {
            location: BlobLocation::Oci(asked),
            ..
        } = &self.spec.blob
        else {
            return Ok(None);
        };
        let d = bindings.erofs_reader_tarindex().device();
        let resolved = match d.call_resolved_layer(&mut *store, device) {
            Ok(resolved) => resolved,
            Err(e) => return Err(trapped(self.trap_settings(), &e, store)),
        };
        let Some(resolved) = resolved else {
            return Err(CallError::Trap(Trap::other(
                "the open of an oci:// layer reported no resolved layer",
            )));
        };
        if names_a_tag(&asked.reference) {
            self.spec.pins.pin_oci(asked, &resolved);
        }
        Ok(Some((resolved.layer_digest, resolved.layer_size)))
    }

    /// [`SandboxedDevice::start`] without a META: the component finds the index published
    /// next to the image (`registry.open-published`).
    fn start_published(&self, mut store: Store<StoreState>) -> Result<Live, CallError> {
        let BlobSource::Remote {
            location: location @ BlobLocation::Oci(_),
            options,
            ..
        } = &self.spec.blob
        else {
            return Err(CallError::Component(WitError::Unsupported(
                "a published index is found next to an oci:// image only; give --tarindex META"
                    .into(),
            )));
        };
        let bindings = match self.runtime.pre.instantiate(&mut store) {
            Ok(bindings) => bindings,
            Err(e) => return Err(trapped(self.trap_settings(), &e, &store)),
        };
        let BlobLocation::Oci(blob) = self.pinned_location(location) else {
            return Err(CallError::Trap(Trap::other(
                "a pinned OCI layer became a URL",
            )));
        };
        let device = match bindings.erofs_reader_registry().call_open_published(
            &mut store,
            &blob,
            &self.spec.options,
            *options,
        ) {
            Ok(opened) => opened.map_err(CallError::Component)?,
            Err(e) => return Err(trapped(self.trap_settings(), &e, &store)),
        };
        self.finish_start(store, bindings, device, None)
    }

    /// The rest of a start once the device is open: its sizes (and, for a published
    /// index, the digest of its metadata) checked against the first open's (pins), then
    /// the filesystem on it, in filesystem mode.
    fn finish_start(
        &self,
        mut store: Store<StoreState>,
        bindings: Reader,
        device: ResourceAny,
        blob_size: Option<u64>,
    ) -> Result<Live, CallError> {
        let settings = self.trap_settings();
        let d = bindings.erofs_reader_tarindex().device();
        let sizes = d
            .call_size(&mut store, device)
            .and_then(|size| Ok((size, d.call_meta_size(&mut store, device)?)));
        let (size, meta_size) = sizes.map_err(|e| trapped(settings, &e, &store))?;
        let meta_digest = match self.spec.meta {
            Some(_) => None,
            None => Some(self.digest_of_metadata(&mut store, &bindings, device, meta_size)?),
        };
        let layer = self.pin_resolved(&mut store, &bindings, device)?;
        let opened = FirstOpen {
            size,
            meta_size,
            blob_size,
            meta_digest,
            layer,
        };
        self.spec.pins.check_open(&self.spec.meta_name(), opened)?;
        let handle = match self.mode {
            Mode::Device => device,
            Mode::Filesystem => match bindings
                .erofs_reader_filesystem()
                .call_open(&mut store, device)
            {
                Ok(opened) => opened.map_err(CallError::Component)?,
                Err(e) => return Err(trapped(self.trap_settings(), &e, &store)),
            },
        };
        Ok(Live {
            store,
            bindings,
            handle,
            size,
            meta_size,
        })
    }

    /// `sha256:<hex>` of device bytes `0..meta_size` (a published index's metadata, as
    /// this instance serves it), read in 4 MiB pieces.
    fn digest_of_metadata(
        &self,
        store: &mut Store<StoreState>,
        bindings: &Reader,
        device: ResourceAny,
        meta_size: u64,
    ) -> Result<String, CallError> {
        use sha2::{Digest, Sha256};
        const PIECE: u32 = 4 << 20;
        let d = bindings.erofs_reader_tarindex().device();
        let mut hash = Sha256::new();
        let mut at = 0u64;
        while at < meta_size {
            let want = u32::try_from((meta_size - at).min(u64::from(PIECE))).unwrap_or(PIECE);
            let bytes = match d.call_pread(&mut *store, device, at, want) {
                Ok(read) => read.map_err(CallError::Component)?,
                Err(e) => return Err(trapped(self.trap_settings(), &e, store)),
            };
            if bytes.len() != want as usize {
                return Err(CallError::Component(WitError::Io(format!(
                    "{}: the device gave {} bytes of metadata at offset {at}, not {want}",
                    self.spec.meta_name(),
                    bytes.len()
                ))));
            }
            hash.update(&bytes);
            at += u64::from(want);
        }
        Ok(format!("sha256:{}", hex::encode(hash.finalize())))
    }
}
