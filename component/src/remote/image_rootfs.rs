//! An image as publishing and discovery need it: the image manifest for one platform (its
//! digest, media type and size, the artifact's `subject`), its layers, and the diff_ids
//! of its config (fetched and checked against the config descriptor's digest).


use oci_spec::image::{ImageManifest, RootFs};
use serde::Deserialize;

use super::manifest::{
    choose_platform, parse_document, Descriptor, Document, Platform, DOCKER_LIST, DOCKER_MANIFEST,
    OCI_INDEX, OCI_MANIFEST,
};
use super::reference::validate_digest;
use super::session::Session;
use crate::error::{Error, Result};

/// One layer: as the manifest describes it, and its diff_id from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayer {
    pub digest: String,
    pub size: u64,
    pub media_type: String,
    pub diff_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub manifest_digest: String,
    pub manifest_media_type: String,
    pub manifest_size: u64,
    /// The platform of the index entry, when the reference named an index.
    pub platform: Option<String>,
    pub layers: Vec<ImageLayer>,
}

impl Image {
    /// The layers as the layer chooser of `manifest.rs` takes them.
    pub fn descriptors(&self) -> Vec<Descriptor> {
        self.layers
            .iter()
            .map(|l| Descriptor {
                media_type: Some(l.media_type.clone()),
                digest: l.digest.clone(),
                size: l.size,
                platform: None,
            })
            .collect()
    }
}

/// Only `rootfs` of the image config matters here; the rest is left unparsed, so configs
/// with fields of their own are fine.
#[derive(Deserialize)]
struct ConfigRootFs {
    rootfs: RootFs,
}

const ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Resolve `manifest_ref` (a tag or digest) to the image manifest for `platform`, with its
/// layers and diff_ids.
pub fn resolve_image(session: &Session, manifest_ref: &str, platform: &Platform) -> Result<Image> {
    let name = session.name();
    let pinned = manifest_ref.starts_with("sha256:").then_some(manifest_ref);
    let not_found = |r: &str| {
        Error::io(format!(
            "{name}: manifest `{r}` not found in the registry (HTTP 404)"
        ))
        .with_status(404)
    };
    let top = session
        .get_manifest(manifest_ref, &ACCEPT, pinned)?
        .ok_or_else(|| not_found(manifest_ref))?;
    let ctx = |r: &str| format!("{name}: manifest {r}");
    let (fetched, platform) =
        match parse_document(&top.body).map_err(|e| e.context(&ctx(manifest_ref)))? {
            Document::Manifest(_) => (top, None),
            Document::Index(entries) => {
                let entry = choose_platform(&entries, platform)
                    .map_err(|e| e.context(&ctx(manifest_ref)))?;
                let digest =
                    validate_digest(&entry.digest).map_err(|e| e.context(&ctx(manifest_ref)))?;
                let child = session
                    .get_manifest(&digest, &ACCEPT, Some(&digest))?
                    .ok_or_else(|| not_found(&digest))?;
                let described = entry.platform.as_ref().map(|p| match &p.variant {
                    Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
                    _ => format!("{}/{}", p.os, p.architecture),
                });
                (child, described)
            }
        };
    let here = ctx(&fetched.digest);
    let manifest: ImageManifest = serde_json::from_slice(&fetched.body)
        .map_err(|e| Error::bad(format!("{here}: not a valid image manifest: {e}")))?;
    let media_type = manifest
        .media_type()
        .as_ref()
        .map(|m| m.to_string())
        .or(fetched.media_type.clone())
        .unwrap_or_else(|| OCI_MANIFEST.to_string());
    let config = manifest.config();
    let config_bytes = session.get_blob(
        &format!("{here}: the image config"),
        config.digest().as_ref(),
        config.size(),
        session.net.max_manifest,
    )?;
    let rootfs: ConfigRootFs = serde_json::from_slice(&config_bytes).map_err(|e| {
        Error::bad(format!(
            "{here}: the image config {} has no valid `rootfs`: {e}",
            config.digest()
        ))
    })?;
    let diff_ids = rootfs.rootfs.diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(Error::bad(format!(
            "{here}: the image config lists {} diff_ids for {} layers",
            diff_ids.len(),
            manifest.layers().len()
        )));
    }
    let mut layers = Vec::with_capacity(diff_ids.len());
    for (i, (l, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let diff_id = validate_digest(diff_id)
            .map_err(|e| e.context(&format!("{here}: config rootfs.diff_ids[{i}]")))?;
        layers.push(ImageLayer {
            digest: l.digest().to_string(),
            size: l.size(),
            media_type: l.media_type().to_string(),
            diff_id,
        });
    }
    Ok(Image {
        manifest_digest: fetched.digest,
        manifest_media_type: media_type,
        manifest_size: fetched.body.len() as u64,
        platform,
        layers,
    })
}
