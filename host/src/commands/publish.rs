//! `erofs-host index COMPONENT oci://REGISTRY/REPO:TAG --push [--platform P]`: index
//! every layer of the image in the sandbox and publish the indexes next to the image, as
//! one OCI artifact whose `subject` is the image manifest (see `registry.push` in
//! wit/reader.wit). `mount`, `cat`, `verify` and `serve-nbd` then find it by themselves
//! when they are given an `oci://` layer without `--tarindex`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use super::DeviceArgs;
use crate::sandbox::registry;
use crate::sandbox::runtime::{BlobLocation, ImageLayer, LayerIndex, OciBlob, Runtime};
use crate::sandbox::{BlobSource, Limits};

/// Builds the index of one layer of an image.
pub trait LayerIndexer {
    /// Index layer `index` (`layer` as the image manifest and config describe it), read
    /// from `blob` (the image's `oci://` reference with that layer chosen by index and
    /// digest).
    fn index_layer(
        &mut self,
        blob: &BlobSource,
        index: u32,
        layer: &ImageLayer,
    ) -> Result<LayerIndex>;
}

/// An index made elsewhere (by `mkfs.erofs --tar=i --gzinfo`) for a one-layer image:
/// published as it is. Its diff_id is the one the image config names (the tar is not
/// read, so nothing here checks that the META describes it; a reader's own checks of the
/// tar headers still apply).
pub struct Prebuilt {
    pub meta: std::path::PathBuf,
    pub zinfo: Option<std::path::PathBuf>,
}

/// The span of a zinfo file: bytes 4..12 of its header (spec §3.2). The component
/// checks the whole file when it is used; this only labels the upload.
fn zinfo_span(zinfo: &[u8]) -> Option<u64> {
    let bytes: [u8; 8] = zinfo.get(4..12)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

impl LayerIndexer for Prebuilt {
    fn index_layer(
        &mut self,
        _blob: &BlobSource,
        index: u32,
        layer: &ImageLayer,
    ) -> Result<LayerIndex> {
        if index > 0 {
            bail!(
                "--tarindex publishes the index of a one-layer image; this image has more layers"
            );
        }
        let meta = std::fs::read(&self.meta)
            .with_context(|| format!("{}: cannot read", self.meta.display()))?;
        let zinfo = self
            .zinfo
            .as_ref()
            .map(|z| std::fs::read(z).with_context(|| format!("{}: cannot read", z.display())))
            .transpose()?;
        let span = match &zinfo {
            Some(z) => Some(zinfo_span(z).context("the zinfo is shorter than its header")?),
            None => None,
        };
        Ok(LayerIndex {
            layer_digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            span_size: span,
            meta,
            zinfo,
        })
    }
}

/// The blob source of layer `index` of the image `image` names: the same reference,
/// registry access and egress policy, with the layer chosen by index and digest (so a tag
/// moved since the image was inspected fails instead of mixing two images).
fn layer_source(image: &BlobSource, index: u32, layer: &ImageLayer) -> Result<BlobSource> {
    let BlobSource::Remote {
        location: BlobLocation::Oci(o),
        options,
        egress,
    } = image
    else {
        bail!("publishing an index needs an oci://REGISTRY/REPO:TAG image");
    };
    Ok(BlobSource::Remote {
        location: BlobLocation::Oci(OciBlob {
            reference: o.reference.clone(),
            layer: Some(index),
            digest: Some(layer.digest.clone()),
            platform: o.platform.clone(),
        }),
        options: *options,
        egress: egress.clone(),
    })
}

/// Index every layer of the image `device.blob` names and publish the indexes.
pub fn push_image(device: &DeviceArgs, indexer: &mut dyn LayerIndexer) -> Result<()> {
    if device.layer.is_some() || device.blob_digest.is_some() {
        bail!("--push publishes the index of every layer of the image: drop --layer and --blob-digest");
    }
    let (spec, limits): (_, Limits) = device.spec()?;
    let Some(egress) = spec.blob.egress() else {
        bail!("--push needs an oci://REGISTRY/REPO:TAG image, not a local file");
    };
    egress.allow_writes();
    let runtime: Arc<Runtime> = Runtime::load(&device.component)?;
    let platform = match &spec.blob {
        BlobSource::Remote {
            location: BlobLocation::Oci(o),
            ..
        } => o.platform.clone(),
        _ => None,
    };
    let image = registry::inspect(&runtime, &spec.blob, platform.as_deref(), limits)?;
    let name = &device.blob;
    eprintln!(
        "{name}: image manifest {}{}, {} layer(s)",
        image.manifest_digest,
        image
            .platform
            .as_ref()
            .map(|p| format!(" ({p})"))
            .unwrap_or_default(),
        image.layers.len()
    );
    let mut layers = Vec::with_capacity(image.layers.len());
    for (i, layer) in image.layers.iter().enumerate() {
        let index = u32::try_from(i).context("more layers than a u32 counts")?;
        let source = layer_source(&spec.blob, index, layer)?;
        let built = indexer
            .index_layer(&source, index, layer)
            .with_context(|| format!("{name}: layer {i} ({})", layer.digest))?;
        eprintln!(
            "  layer {i} {}: tar index {} bytes{}",
            layer.digest,
            built.meta.len(),
            built
                .zinfo
                .as_ref()
                .map(|z| format!(", zinfo {} bytes", z.len()))
                .unwrap_or_default()
        );
        layers.push(built);
    }
    let pushed = registry::push(
        &runtime,
        &spec.blob,
        &image.manifest_digest,
        &layers,
        limits,
    )?;
    let place = match &pushed.fallback_tag {
        Some(tag) => format!("referrers list under tag {tag}"),
        None => "the registry's referrers API".to_string(),
    };
    println!(
        "published index {} for image manifest {} ({} blob(s) uploaded, {} already there; found through {place})",
        pushed.artifact_digest, image.manifest_digest, pushed.blobs_uploaded, pushed.blobs_present
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::zinfo_span;

    #[test]
    fn span_of_a_zinfo_header() {
        let mut header = vec![3, 0, 0, 0];
        header.extend_from_slice(&(4u64 << 20).to_le_bytes());
        assert_eq!(zinfo_span(&header), Some(4 << 20));
        assert_eq!(zinfo_span(&header[..11]), None);
    }
}

/// `erofs-host index COMPONENT oci://REGISTRY/REPO:TAG --push`.
#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    #[command(flatten)]
    pub device: DeviceArgs,

    /// Index every layer of the image and publish the indexes next to it, as an OCI
    /// artifact whose subject is the image manifest (needs push access)
    #[arg(long)]
    pub push: bool,
}

pub fn run(args: IndexArgs) -> Result<()> {
    if !args.push {
        bail!("index: only --push is implemented here");
    }
    let meta = args.device.tarindex.clone().context(
        "index --push: give the one-layer image's prebuilt --tarindex META [--zinfo ZINFO]",
    )?;
    let mut prebuilt = Prebuilt {
        meta,
        zinfo: args.device.zinfo.clone(),
    };
    push_image(&args.device, &mut prebuilt)
}
