//! The WIT glue of the `registry` interface (wasm32 only): publishing a layer's index
//! next to its image and opening a layer with the index found there. No logic lives here;
//! it is in `remote::{image, push, discover}`.

use crate::bindings::erofs::reader::types::Error as WitError;
use crate::bindings::exports::erofs::reader::registry::{
    self, Image, ImageLayer, LayerIndex, Pushed,
};
use crate::bindings::exports::erofs::reader::tarindex::{
    self, BlobLocation, OciBlob, OpenOptions, RemoteOptions,
};
use crate::bindings::{
    location_from_wit, options_from_wit, remote_options_from_wit, Component, DeviceResource,
};
use crate::remote;
use crate::source::{MemSource, SizedSource};
use crate::tarindex::policy::check_zinfo_for_layer;
use crate::tarindex::Device;

fn transport() -> Box<remote::WasiTransport> {
    Box::new(remote::WasiTransport::default())
}

impl registry::Guest for Component {
    fn inspect(
        reference: String,
        platform: Option<String>,
        remote: RemoteOptions,
    ) -> Result<Image, WitError> {
        let opts = remote_options_from_wit(remote);
        let image = remote::inspect_image(&reference, platform.as_deref(), transport(), &opts)?;
        Ok(Image {
            manifest_digest: image.manifest_digest,
            platform: image.platform,
            layers: image
                .layers
                .into_iter()
                .map(|l| ImageLayer {
                    digest: l.digest,
                    size: l.size,
                    media_type: l.media_type,
                    diff_id: l.diff_id,
                })
                .collect(),
        })
    }

    fn push(
        reference: String,
        manifest_digest: String,
        layers: Vec<LayerIndex>,
        remote: RemoteOptions,
    ) -> Result<Pushed, WitError> {
        let opts = remote_options_from_wit(remote);
        let layers: Vec<remote::artifact::LayerIndex> = layers
            .into_iter()
            .map(|l| remote::artifact::LayerIndex {
                layer_digest: l.layer_digest,
                diff_id: l.diff_id,
                span: l.span_size,
                meta: l.meta,
                zinfo: l.zinfo,
            })
            .collect();
        let pushed = remote::push_index(&reference, &manifest_digest, &layers, transport(), &opts)?;
        Ok(Pushed {
            artifact_digest: pushed.artifact_digest,
            fallback_tag: pushed.fallback_tag,
            blobs_uploaded: pushed.blobs_uploaded,
            blobs_present: pushed.blobs_present,
        })
    }

    fn open_published(
        blob: OciBlob,
        options: OpenOptions,
        remote: RemoteOptions,
    ) -> Result<tarindex::Device, WitError> {
        let opts = remote_options_from_wit(remote);
        let location = location_from_wit(BlobLocation::Oci(blob));
        let (blob, info, found) = remote::open_published(&location, transport(), &opts)?;
        check_zinfo_for_layer(&info, found.zinfo.is_some())?;
        let meta = SizedSource::new("meta", Box::new(MemSource(found.meta)))?;
        let blob = SizedSource::new("blob", Box::new(blob))?;
        let zinfo = found
            .zinfo
            .map(|z| SizedSource::new("zinfo", Box::new(MemSource(z))))
            .transpose()?;
        // The embedder's header sample, as for `open-remote` (it was the default here).
        let samples = crate::bindings::samples_from_wit(&options);
        let device = Device::open_with(meta, blob, zinfo, options_from_wit(options)?, samples)?;
        Ok(tarindex::Device::new(
            DeviceResource::new(device).resolved(&info),
        ))
    }
}
