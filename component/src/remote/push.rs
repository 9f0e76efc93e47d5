//! Publishing an index: upload the blobs (META and ZINFO of every layer, the empty
//! config), push the artifact manifest, and make it findable from the image manifest.
//!
//! Findable means, per OCI distribution 1.1: a registry with the referrers API indexes the
//! artifact by its `subject` when it is pushed (it says so with an `OCI-Subject` header,
//! or its referrers endpoint lists it). A registry without it (Debian's docker-registry
//! 2.8) gets the referrers list under the fallback tag `sha256-<hex of the subject
//! digest>`, updated in place: other referrers there are kept.


use super::artifact::{
    build_manifest, referrer_descriptor, updated_referrers, LayerIndex, Subject, ARTIFACT_TYPE,
    EMPTY_JSON,
};
use super::image_rootfs::Image;
use super::manifest::{sha256_digest, OCI_INDEX, OCI_MANIFEST};
use super::session::Session;
use crate::error::{Error, Result};

/// What a push did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub artifact_digest: String,
    /// The tag the referrers list went under, when the registry has no referrers API.
    pub fallback_tag: Option<String>,
    pub blobs_uploaded: u32,
    /// Blobs the registry already had (a HEAD said so), not uploaded again.
    pub blobs_present: u32,
}

/// The referrers fallback tag of a manifest digest: `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// Check that `layers` index exactly the layers of `image`, in order.
pub fn check_layers(image: &Image, layers: &[LayerIndex]) -> Result<()> {
    if layers.len() != image.layers.len() {
        return Err(Error::bad(format!(
            "index push: {} layer indexes for an image of {} layers",
            layers.len(),
            image.layers.len()
        )));
    }
    for (i, (have, want)) in layers.iter().zip(&image.layers).enumerate() {
        if have.layer_digest != want.digest {
            return Err(Error::bad(format!(
                "index push: layer {i}: the index is for blob {}, the image's layer is {}",
                have.layer_digest, want.digest
            )));
        }
        if have.diff_id != want.diff_id {
            return Err(Error::bad(format!(
                "index push: layer {i}: the indexed tar's sha256 is {}, but the image config's \
                 rootfs.diff_ids[{i}] is {}",
                have.diff_id, want.diff_id
            )));
        }
        if have.zinfo.is_some() != have.span.is_some() {
            return Err(Error::bad(format!(
                "index push: layer {i}: a zinfo needs its span, and only a zinfo has one"
            )));
        }
    }
    Ok(())
}

/// Push the index of every layer of `image` (already resolved by `session`).
pub fn push_index(session: &Session, image: &Image, layers: &[LayerIndex]) -> Result<Pushed> {
    check_layers(image, layers)?;
    let subject = Subject {
        media_type: image.manifest_media_type.clone(),
        digest: image.manifest_digest.clone(),
        size: image.manifest_size,
    };
    let artifact = build_manifest(&subject, layers)?;
    let mut pushed = Pushed {
        artifact_digest: artifact.digest.clone(),
        fallback_tag: None,
        blobs_uploaded: 0,
        blobs_present: 0,
    };
    // Blobs first: a registry checks that a manifest's blobs exist when it is pushed.
    let mut blobs: Vec<&[u8]> = vec![EMPTY_JSON];
    for l in layers {
        blobs.push(&l.meta);
        if let Some(z) = &l.zinfo {
            blobs.push(z);
        }
    }
    for bytes in blobs {
        let digest = sha256_digest(bytes);
        if session.has_blob(&digest)? {
            pushed.blobs_present = pushed.blobs_present.saturating_add(1);
        } else {
            session.upload_blob(&digest, bytes)?;
            pushed.blobs_uploaded = pushed.blobs_uploaded.saturating_add(1);
        }
    }
    let answer = session.put_manifest(&artifact.digest, OCI_MANIFEST, &artifact.body)?;
    let indexed = answer
        .header("oci-subject")
        .is_some_and(|s| s.trim() == image.manifest_digest);
    if indexed
        || session
            .get_referrers(&image.manifest_digest, ARTIFACT_TYPE)?
            .is_some()
    {
        // The registry keeps the referrers list itself.
        return Ok(pushed);
    }
    let tag = fallback_tag(&image.manifest_digest);
    let existing = session.get_manifest(&tag, &[OCI_INDEX, OCI_MANIFEST], None)?;
    let list = updated_referrers(
        existing.as_ref().map(|f| f.body.as_slice()),
        &referrer_descriptor(&artifact)?,
    )
    .map_err(|e| e.context(&format!("{}: tag {tag}", session.name())))?;
    session.put_manifest(&tag, OCI_INDEX, &list)?;
    pushed.fallback_tag = Some(tag);
    Ok(pushed)
}
