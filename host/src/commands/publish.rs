//! `erofs-host index COMPONENT oci://REGISTRY/REPO:TAG --push [--platform P]`: index
//! every layer of the image in the sandbox and publish the indexes next to the image, as
//! one OCI artifact whose `subject` is the image manifest (see `registry.push` in
//! wit/reader.wit). `mount`, `cat`, `verify` and `serve-nbd` then find it by themselves
//! when they are given an `oci://` layer without `--tarindex`.

use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::commands::verify::print_lines;
use crate::sandbox::registry;
use crate::sandbox::runtime::{BlobLocation, IndexedLayer, LayerIndex, OciBlob};
use crate::sandbox::{index_blob, BlobSource, IndexProgress, IndexRequest, Limits, Runtime};

/// Builds the index of one layer of an image.
pub trait LayerIndexer {
    /// Index layer `index` (`layer` as the image manifest and config describe it), read
    /// from `blob` (the image's `oci://` reference with that layer chosen by index and
    /// digest).
    fn index_layer(
        &mut self,
        blob: &BlobSource,
        index: u32,
        layer: &IndexedLayer,
    ) -> Result<LayerIndex>;
}

/// The indexer of `erofs-host index`: each layer built in its own sandboxed instance by
/// the component's `builder.indexer`, streamed once from the registry (the component checks
/// the layer digest as the bytes go by). The diff_id is the sha256 of the tar it parsed.
pub struct SandboxIndexer<'a> {
    pub runtime: &'a Arc<Runtime>,
    pub aufs: bool,
    pub span: u64,
    pub limits: Limits,
    pub on_progress: &'a mut dyn FnMut(&IndexProgress),
}

impl LayerIndexer for SandboxIndexer<'_> {
    fn index_layer(
        &mut self,
        blob: &BlobSource,
        _index: u32,
        layer: &IndexedLayer,
    ) -> Result<LayerIndex> {
        let request = IndexRequest {
            aufs: self.aufs,
            span: Some(self.span),
            blob_digest: Some(layer.digest.clone()),
            // The layer's media type decides; a zinfo is kept for gzip layers.
            want_zinfo: None,
        };
        let out = index_blob(self.runtime, blob, &request, self.limits, self.on_progress)?;
        let span = out.zinfo.as_ref().map(|_| out.stats.span_size);
        Ok(LayerIndex {
            layer_digest: layer.digest.clone(),
            diff_id: out.stats.diff_id,
            span_size: span,
            meta: out.meta,
            zinfo: out.zinfo,
        })
    }
}

/// The blob source of layer `index` of the image `image` names: the same reference,
/// registry access and egress policy, with the layer chosen by index and digest (so a tag
/// moved since the image was inspected fails instead of mixing two images).
fn layer_source(image: &BlobSource, index: u32, layer: &IndexedLayer) -> Result<BlobSource> {
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

/// Index every layer of the image `source` names (an `oci://` blob source from
/// `--platform` and the registry arguments) and publish the indexes. `source`'s egress
/// policy is given the right to write to the registry.
pub fn push_image(
    runtime: &Arc<Runtime>,
    source: &BlobSource,
    limits: Limits,
    indexer: &mut dyn LayerIndexer,
) -> Result<()> {
    let BlobSource::Remote {
        location: BlobLocation::Oci(oci),
        egress,
        ..
    } = source
    else {
        bail!("--push needs an oci://REGISTRY/REPO:TAG image, not a file or a URL");
    };
    if oci.layer.is_some() || oci.digest.is_some() {
        bail!("--push publishes the index of every layer of the image: drop --layer and --blob-digest");
    }
    egress.allow_writes();
    let platform = oci.platform.clone();
    let name = &oci.reference;
    let image = registry::inspect(runtime, source, platform.as_deref(), limits)?;
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
        let layer_blob = layer_source(source, index, layer)?;
        let built = indexer
            .index_layer(&layer_blob, index, layer)
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
    let pushed = registry::push(runtime, source, &image.manifest_digest, &layers, limits)?;
    let place = match &pushed.fallback_tag {
        Some(tag) => format!("referrers list under tag {tag}"),
        None => "the registry's referrers API".to_string(),
    };
    print_lines(&[format!(
        "published index {} for image manifest {} ({} blob(s) uploaded, {} already there; found through {place})",
        pushed.artifact_digest, image.manifest_digest, pushed.blobs_uploaded, pushed.blobs_present
    )])?;
    Ok(())
}
