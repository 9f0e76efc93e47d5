//! Finding the published index of a layer: the referrers API first, then the referrers
//! fallback tag; then the artifact manifest (checked against its digest), its entry for
//! the layer (checked against the image manifest's layer digest and the config's
//! diff_id), and its META and ZINFO blobs (each checked against its digest and size).


use super::artifact::{candidates, is_our_manifest, layer_entry, Candidate, Wanted, ARTIFACT_TYPE};
use super::image_rootfs::Image;
use super::manifest::{OCI_INDEX, OCI_MANIFEST};
use super::push::fallback_tag;
use super::session::Session;
use crate::error::{Error, Result};

/// The start of the message when an image has no published index: embedders may test for
/// it to add how to publish one.
pub const NO_INDEX: &str = "no published index";

/// Largest META or ZINFO blob fetched. 256 MiB: a tar index is ~1% of its tar and a zinfo
/// ~1.6% at the default span, so this covers layers of several GiB; the blob is held in
/// memory, and the embedder's memory cap applies on top.
pub const MAX_INDEX_BLOB: u64 = 256 << 20;

/// A layer's index, found and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub artifact_digest: String,
    /// "referrers API" or "tag sha256-…".
    pub via: String,
    pub meta: Vec<u8>,
    pub zinfo: Option<Vec<u8>>,
    pub span: Option<u64>,
}

/// Where the candidates came from, and the candidates.
fn find_candidates(session: &Session, image: &Image) -> Result<(String, Vec<Candidate>)> {
    let subject = &image.manifest_digest;
    if let Some(list) = session.get_referrers(subject, ARTIFACT_TYPE)? {
        let found = candidates(&list.body)
            .map_err(|e| e.context(&format!("{}: referrers of {subject}", session.name())))?;
        if !found.is_empty() {
            return Ok(("referrers API".to_string(), found));
        }
    }
    let tag = fallback_tag(subject);
    let Some(doc) = session.get_manifest(&tag, &[OCI_INDEX, OCI_MANIFEST], None)? else {
        return Ok((format!("tag {tag}"), Vec::new()));
    };
    let via = format!("tag {tag}");
    if is_our_manifest(&doc.body) {
        // A tag that names our artifact manifest itself rather than a referrers list.
        return Ok((
            via,
            vec![Candidate {
                digest: doc.digest,
                size: doc.body.len() as u64,
            }],
        ));
    }
    let found =
        candidates(&doc.body).map_err(|e| e.context(&format!("{}: {via}", session.name())))?;
    Ok((via, found))
}

/// Find and check the index of layer `index` of `image`.
pub fn find_index(session: &Session, image: &Image, index: usize) -> Result<Found> {
    let layer = image.layers.get(index).ok_or_else(|| {
        Error::internal(format!(
            "layer {index} of an image of {} layers",
            image.layers.len()
        ))
    })?;
    let (via, found) = find_candidates(session, image)?;
    // The newest candidate wins: lists are appended to, and a re-index replaces ours.
    let Some(chosen) = found.last() else {
        return Err(Error::io(format!(
            "{NO_INDEX} for image manifest {} in {} (no referrer of artifact type \
             {ARTIFACT_TYPE} through the referrers API or the {via})",
            image.manifest_digest,
            session.name()
        )));
    };
    let artifact = session
        .get_manifest(&chosen.digest, &[OCI_MANIFEST], Some(&chosen.digest))?
        .ok_or_else(|| {
            Error::io(format!(
                "{}: the published index {} named by the {via} is missing (HTTP 404)",
                session.name(),
                chosen.digest
            ))
        })?;
    if artifact.body.len() as u64 != chosen.size {
        return Err(Error::bad(format!(
            "published index {}: {} bytes, but the {via} says {}",
            chosen.digest,
            artifact.body.len(),
            chosen.size
        )));
    }
    let want = Wanted {
        subject: &image.manifest_digest,
        index,
        layer_digest: &layer.digest,
        diff_id: &layer.diff_id,
    };
    let entry = layer_entry(&artifact.body, &chosen.digest, &want)?;
    let meta = session.get_blob(
        &format!(
            "the tar index of layer {index} in published index {}",
            chosen.digest
        ),
        &entry.meta.digest,
        entry.meta.size,
        MAX_INDEX_BLOB,
    )?;
    let zinfo = entry
        .zinfo
        .as_ref()
        .map(|z| {
            session.get_blob(
                &format!(
                    "the zinfo of layer {index} in published index {}",
                    chosen.digest
                ),
                &z.digest,
                z.size,
                MAX_INDEX_BLOB,
            )
        })
        .transpose()?;
    Ok(Found {
        artifact_digest: chosen.digest.clone(),
        via,
        meta,
        zinfo,
        span: entry.span,
    })
}
