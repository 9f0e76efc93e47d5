//! Which layers an image has, and where each one's index is: the component lists the
//! manifest's layers (it parses the manifest; the host never does), then each layer's
//! META and ZINFO are looked up by digest in `--tarindex-dir`, or, without it, left to
//! the component to find in the registry: the index published next to the image
//! (`erofs-host index ... --push`), through the referrers API, then the fallback tag.
//! The component checks that published index's entry for the layer against the image
//! manifest's layer digest and the config's diff_id, and each blob against its digest,
//! before it uses the META (`component/src/remote/discover.rs`).
//!
//! Naming in the index directory: `sha256-<hex>.meta` (the EROFS tar index, made with
//! aufs whiteout conversion so that overlayfs sees OCI whiteouts) and, for gzip layers,
//! `sha256-<hex>.zinfo`, where `sha256:<hex>` is the layer's (compressed) digest in the
//! manifest. `:` is replaced by `-` because it separates overlayfs' `lowerdir` entries
//! and is awkward in file names on some systems.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Result};

use crate::commands::DeviceArgs;
use crate::sandbox::runtime::{BlobLocation, ImageLayer, OciBlob};
use crate::sandbox::{list_image_layers, BlobSource, Runtime};

/// One layer to mount: its place in the manifest and the device arguments that open it.
pub struct PlannedLayer {
    pub index: u32,
    pub digest: String,
    /// The image's arguments with this layer's index files.
    pub device: DeviceArgs,
    /// The layer blob, by digest in the pinned manifest, through the shared egress.
    pub source: BlobSource,
}

/// The layers to mount, bottom first, each with its device arguments ready.
pub struct Plan {
    pub manifest_digest: String,
    pub layers: Vec<PlannedLayer>,
}

/// The file names of a layer's index in `--tarindex-dir`.
pub fn index_names(digest: &str) -> (String, String) {
    let stem = digest.replace(':', "-");
    (format!("{stem}.meta"), format!("{stem}.zinfo"))
}

/// List the image's layers in the sandbox and find each one's index.
///
/// `index_dir`: the `--tarindex-dir`; `None` uses the published index of each layer.
pub fn plan(device: &DeviceArgs, runtime: &Arc<Runtime>, index_dir: Option<&Path>) -> Result<Plan> {
    // One egress policy for the listing and every layer: one allow-list, one range
    // cache, and the credentials read once (a password on stdin can only be read once).
    let image = device.image_source()?;
    let BlobSource::Remote {
        options, egress, ..
    } = &image
    else {
        bail!(
            "{}: a whole-image mount needs an oci:// reference",
            device.blob
        );
    };
    let platform = device.platform_choice()?;
    let info = list_image_layers(runtime, image.clone(), &device.blob, platform.as_deref())?;
    let pinned = format!(
        "oci://{}/{}@{}",
        info.registry, info.repository, info.manifest_digest
    );
    let mut layers = Vec::with_capacity(info.layers.len());
    for layer in &info.layers {
        let mut args = device.clone();
        (args.tarindex, args.zinfo) = match index_dir {
            Some(dir) => {
                let (meta, zinfo) = find_index(dir, layer, &pinned)?;
                (Some(meta), zinfo)
            }
            // Found and checked by the component when the layer opens.
            None => (None, None),
        };
        // Every layer comes from the manifest just listed, by digest: a tag moved
        // meanwhile cannot mix two images.
        args.blob = pinned.clone();
        let source = BlobSource::Remote {
            location: BlobLocation::Oci(OciBlob {
                reference: pinned.clone(),
                layer: Some(layer.index),
                digest: Some(layer.digest.clone()),
                platform: None,
            }),
            options: *options,
            egress: egress.clone(),
        };
        layers.push(PlannedLayer {
            index: layer.index,
            digest: layer.digest.clone(),
            device: args,
            source,
        });
    }
    Ok(Plan {
        manifest_digest: info.manifest_digest,
        layers,
    })
}

fn find_index(dir: &Path, layer: &ImageLayer, image: &str) -> Result<(PathBuf, Option<PathBuf>)> {
    let (meta_name, zinfo_name) = index_names(&layer.digest);
    let meta = dir.join(&meta_name);
    let zinfo = dir.join(&zinfo_name);
    let how = format!(
        "make it with `erofs-host index COMPONENT {image} --layer {} --aufs --tarindex {}{}`",
        layer.index,
        meta.display(),
        if layer.gzip {
            format!(" --zinfo {}", zinfo.display())
        } else {
            String::new()
        }
    );
    if !meta.is_file() {
        bail!(
            "layer {} ({}): no tar index {} in --tarindex-dir; {how}",
            layer.index,
            layer.digest,
            meta.display()
        );
    }
    match (layer.gzip, zinfo.is_file()) {
        (true, true) => Ok((meta, Some(zinfo))),
        (true, false) => bail!(
            "layer {} ({}) is gzip ({}) but {} is missing; {how}",
            layer.index,
            layer.digest,
            layer.media_type,
            zinfo.display()
        ),
        (false, true) => bail!(
            "layer {} ({}) is an uncompressed tar ({}), yet {} exists: a zinfo belongs to a gzip layer; remove it",
            layer.index,
            layer.digest,
            layer.media_type,
            zinfo.display()
        ),
        (false, false) => Ok((meta, None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_file_names() {
        let (m, z) = index_names("sha256:abcd");
        assert_eq!(
            (m.as_str(), z.as_str()),
            ("sha256-abcd.meta", "sha256-abcd.zinfo")
        );
    }
}
