//! The published index: an OCI 1.1 artifact that carries the tar index (META) and the
//! zinfo of every layer of an image, attached to the image manifest as its `subject`.
//!
//! ```text
//! image manifest  ◄── subject ──  artifact manifest (artifactType ARTIFACT_TYPE)
//!                                   config: the OCI empty descriptor ({})
//!                                   layers: META of layer 0, ZINFO of layer 0, META of layer 1, ...
//!                                   each annotated: layer index, layer digest, diff_id, span
//! ```
//!
//! Building and reading the artifact manifest is here, apart from any I/O: the push and the
//! discovery (`push.rs`, `discover.rs`) fetch and send the bytes. Serialised manifests go
//! through `serde_json::Value`, whose maps are sorted, so the same inputs always give the
//! same bytes and so the same artifact digest.


use std::collections::HashMap;

use oci_spec::image::{
    Descriptor, Digest, ImageIndex, ImageManifest, ImageManifestBuilder, MediaType,
};

use super::manifest::{sha256_digest, OCI_INDEX, OCI_MANIFEST};
use super::reference::validate_digest;
use super::url::shorten;
use crate::error::{Error, Result};

/// The artifact type of a published index.
pub const ARTIFACT_TYPE: &str = "application/vnd.erofs-wasm.index.v1+json";
/// A tar index: an EROFS image of the layout of `mkfs.erofs --tar=i` (spec §2).
pub const META_MEDIA_TYPE: &str = "application/vnd.erofs-wasm.tarindex.v1";
/// A zinfo checkpoint index, SOCI's version 2 (spec §3.2).
pub const ZINFO_MEDIA_TYPE: &str = "application/vnd.erofs-wasm.zinfo.v2";

/// The position of the layer in the image manifest (decimal).
pub const ANNOTATION_LAYER_INDEX: &str = "org.erofs-wasm.layer.index";
/// The image layer's digest (the compressed blob, as the manifest names it).
pub const ANNOTATION_LAYER_DIGEST: &str = "org.erofs-wasm.layer.digest";
/// The layer's diff_id: sha256 of the uncompressed tar, as the image config names it.
pub const ANNOTATION_DIFF_ID: &str = "org.erofs-wasm.layer.diff-id";
/// The zinfo span: uncompressed bytes between checkpoints (decimal; gzip layers only).
pub const ANNOTATION_SPAN: &str = "org.erofs-wasm.zinfo.span-size";

/// The OCI empty JSON blob, `{}`, the config of artifacts that need none.
pub const EMPTY_JSON: &[u8] = b"{}";
pub const EMPTY_JSON_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";

/// The image manifest an artifact is attached to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

/// The index of one image layer, as pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerIndex {
    pub layer_digest: String,
    pub diff_id: String,
    /// The zinfo span (gzip layers only).
    pub span: Option<u64>,
    pub meta: Vec<u8>,
    /// Present exactly for gzip layers.
    pub zinfo: Option<Vec<u8>>,
}

/// A built artifact manifest: its bytes and digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltManifest {
    pub body: Vec<u8>,
    pub digest: String,
}

fn digest_of(text: &str) -> Result<Digest> {
    let checked = validate_digest(text)?;
    checked
        .parse::<Digest>()
        .map_err(|e| Error::bad(format!("digest `{}`: {e}", shorten(text))))
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Result<Descriptor> {
    Ok(Descriptor::new(
        MediaType::from(media_type),
        bytes.len() as u64,
        digest_of(&sha256_digest(bytes))?,
    ))
}

/// Serialise with sorted keys (see the module comment).
fn to_sorted_json<T: serde::Serialize>(value: &T, what: &str) -> Result<Vec<u8>> {
    let tree = serde_json::to_value(value)
        .map_err(|e| Error::internal(format!("serialising the {what}: {e}")))?;
    serde_json::to_vec(&tree).map_err(|e| Error::internal(format!("serialising the {what}: {e}")))
}

fn annotations(index: usize, layer: &LayerIndex) -> HashMap<String, String> {
    let mut a = HashMap::new();
    a.insert(ANNOTATION_LAYER_INDEX.to_string(), index.to_string());
    a.insert(
        ANNOTATION_LAYER_DIGEST.to_string(),
        layer.layer_digest.clone(),
    );
    a.insert(ANNOTATION_DIFF_ID.to_string(), layer.diff_id.clone());
    if let Some(span) = layer.span {
        a.insert(ANNOTATION_SPAN.to_string(), span.to_string());
    }
    a
}

/// The artifact manifest for `layers` (in image order) attached to `subject`.
pub fn build_manifest(subject: &Subject, layers: &[LayerIndex]) -> Result<BuiltManifest> {
    let mut config = descriptor(EMPTY_JSON_MEDIA_TYPE, EMPTY_JSON)?;
    // The empty blob inline as well, as the OCI image spec recommends for it.
    config.set_data(Some("e30=".to_string()));
    let mut blobs = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let mut meta = descriptor(META_MEDIA_TYPE, &layer.meta)?;
        meta.set_annotations(Some(annotations(i, layer)));
        blobs.push(meta);
        if let Some(zinfo) = &layer.zinfo {
            let mut z = descriptor(ZINFO_MEDIA_TYPE, zinfo)?;
            z.set_annotations(Some(annotations(i, layer)));
            blobs.push(z);
        }
    }
    let subject = Descriptor::new(
        MediaType::from(subject.media_type.as_str()),
        subject.size,
        digest_of(&subject.digest)?,
    );
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .artifact_type(MediaType::from(ARTIFACT_TYPE))
        .config(config)
        .layers(blobs)
        .subject(subject)
        .build()
        .map_err(|e| Error::internal(format!("building the artifact manifest: {e}")))?;
    let body = to_sorted_json(&manifest, "artifact manifest")?;
    let digest = sha256_digest(&body);
    Ok(BuiltManifest { body, digest })
}

/// The descriptor of a pushed artifact manifest, as a referrers list holds it.
pub fn referrer_descriptor(artifact: &BuiltManifest) -> Result<Descriptor> {
    let mut d = Descriptor::new(
        MediaType::ImageManifest,
        artifact.body.len() as u64,
        digest_of(&artifact.digest)?,
    );
    d.set_artifact_type(Some(MediaType::from(ARTIFACT_TYPE)));
    Ok(d)
}

/// The referrers list to push under the fallback tag (OCI distribution 1.1, "referrers
/// tag schema"): the list found there (`existing`) with `ours` added, and earlier indexes
/// of ours for the same image replaced (a re-index supersedes them). Other referrers,
/// such as signatures, are kept. A tag that holds something other than an image index is
/// refused, as the spec asks, rather than overwritten.
pub fn updated_referrers(existing: Option<&[u8]>, ours: &Descriptor) -> Result<Vec<u8>> {
    let mut index = match existing {
        Some(body) => parse_index(body).map_err(|e| {
            e.context(
                "the referrers tag holds something other than an image index; not overwriting it",
            )
        })?,
        None => {
            let mut fresh = ImageIndex::default();
            fresh.set_schema_version(2);
            fresh.set_manifests(Vec::new());
            fresh
        }
    };
    index.set_media_type(Some(MediaType::ImageIndex));
    let ours_type = MediaType::from(ARTIFACT_TYPE);
    let mut entries: Vec<Descriptor> = index
        .manifests()
        .iter()
        .filter(|d| d.artifact_type().as_ref() != Some(&ours_type) && d.digest() != ours.digest())
        .cloned()
        .collect();
    entries.push(ours.clone());
    index.set_manifests(entries);
    to_sorted_json(&index, "referrers list")
}

fn parse_index(body: &[u8]) -> Result<ImageIndex> {
    let index: ImageIndex = serde_json::from_slice(body)
        .map_err(|e| Error::bad(format!("not a valid image index: {e}")))?;
    if let Some(mt) = index.media_type() {
        if mt.to_string() != OCI_INDEX {
            return Err(Error::bad(format!(
                "mediaType `{}` is not an image index",
                shorten(mt.as_ref())
            )));
        }
    }
    Ok(index)
}

/// A referrer that may be our artifact: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub digest: String,
    pub size: u64,
}

/// What a referrers list (from the API or the fallback tag) offers of our artifact type,
/// newest last as lists are appended to.
pub fn candidates(body: &[u8]) -> Result<Vec<Candidate>> {
    let index = parse_index(body).map_err(|e| e.context("referrers list"))?;
    let ours = MediaType::from(ARTIFACT_TYPE);
    Ok(index
        .manifests()
        .iter()
        .filter(|d| d.artifact_type().as_ref() == Some(&ours))
        .map(|d| Candidate {
            digest: d.digest().to_string(),
            size: d.size(),
        })
        .collect())
}

/// Whether a document is an artifact manifest of ours (the fallback tag may name one
/// directly instead of a referrers list).
pub fn is_our_manifest(body: &[u8]) -> bool {
    serde_json::from_slice::<ImageManifest>(body)
        .ok()
        .and_then(|m| m.artifact_type().clone())
        .is_some_and(|t| t == MediaType::from(ARTIFACT_TYPE))
}

/// A blob the artifact names for a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: String,
    pub size: u64,
}

/// What an artifact says about one layer, checked against the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    pub meta: BlobRef,
    pub zinfo: Option<BlobRef>,
    pub span: Option<u64>,
}

/// The layer the index is wanted for, as the image manifest and config name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted<'a> {
    /// The image manifest's digest (the artifact's subject must be it).
    pub subject: &'a str,
    pub index: usize,
    pub layer_digest: &'a str,
    /// `rootfs.diff_ids[index]` of the image config.
    pub diff_id: &'a str,
}

/// Read artifact manifest `body` (already checked against its digest `name`) and find
/// the META and ZINFO of the layer `want` names. Refuses an artifact of another type,
/// for another image, or whose annotations name another layer digest or diff_id.
pub fn layer_entry(body: &[u8], name: &str, want: &Wanted<'_>) -> Result<LayerEntry> {
    let ctx = |e: Error| e.context(&format!("published index {name}"));
    let manifest: ImageManifest = serde_json::from_slice(body)
        .map_err(|e| ctx(Error::bad(format!("not a valid OCI image manifest: {e}"))))?;
    if let Some(mt) = manifest.media_type() {
        if mt.to_string() != OCI_MANIFEST {
            return Err(ctx(Error::bad(format!(
                "field `mediaType` is `{}`, not an OCI image manifest",
                shorten(mt.as_ref())
            ))));
        }
    }
    let kind = manifest.artifact_type().as_ref().map(|t| t.to_string());
    if kind.as_deref() != Some(ARTIFACT_TYPE) {
        return Err(ctx(Error::bad(format!(
            "field `artifactType` is {}, not {ARTIFACT_TYPE}",
            kind.map(|k| format!("`{}`", shorten(&k)))
                .unwrap_or_else(|| "absent".into())
        ))));
    }
    let subject = manifest.subject().as_ref().map(|s| s.digest().to_string());
    if subject.as_deref() != Some(want.subject) {
        return Err(ctx(Error::bad(format!(
            "field `subject` names {}, not the image manifest {}",
            subject.unwrap_or_else(|| "nothing".into()),
            want.subject
        ))));
    }
    let mut meta = None;
    let mut zinfo = None;
    let mut span = None;
    for (position, d) in manifest.layers().iter().enumerate() {
        let notes = d.annotations().clone().unwrap_or_default();
        let note = |key: &str| notes.get(key).map(String::as_str);
        if note(ANNOTATION_LAYER_INDEX) != Some(want.index.to_string().as_str()) {
            continue;
        }
        let field = |key: &str| format!("layers[{position}] annotation `{key}`");
        let claimed_layer = note(ANNOTATION_LAYER_DIGEST).unwrap_or("absent");
        if claimed_layer != want.layer_digest {
            return Err(ctx(Error::bad(format!(
                "{} is {}, but layer {} of the image is {}: this index is for another layer",
                field(ANNOTATION_LAYER_DIGEST),
                shorten(claimed_layer),
                want.index,
                want.layer_digest
            ))
            .with_field(ANNOTATION_LAYER_DIGEST)));
        }
        let claimed_diff = note(ANNOTATION_DIFF_ID).unwrap_or("absent");
        if claimed_diff != want.diff_id {
            return Err(ctx(Error::bad(format!(
                "{} is {}, but the image config's rootfs.diff_ids[{}] is {}: this index \
                 is for another tar",
                field(ANNOTATION_DIFF_ID),
                shorten(claimed_diff),
                want.index,
                want.diff_id
            ))
            .with_field(ANNOTATION_DIFF_ID)));
        }
        if let Some(text) = note(ANNOTATION_SPAN) {
            let value = text.parse::<u64>().map_err(|_| {
                ctx(Error::bad(format!(
                    "{} is `{}`, not a number",
                    field(ANNOTATION_SPAN),
                    shorten(text)
                )))
            })?;
            span = Some(value);
        }
        let blob = BlobRef {
            digest: d.digest().to_string(),
            size: d.size(),
        };
        let slot = match d.media_type().to_string().as_str() {
            META_MEDIA_TYPE => &mut meta,
            ZINFO_MEDIA_TYPE => &mut zinfo,
            other => {
                return Err(ctx(Error::bad(format!(
                    "layers[{position}] has media type `{}` (expected {META_MEDIA_TYPE} or \
                     {ZINFO_MEDIA_TYPE})",
                    shorten(other)
                ))))
            }
        };
        if slot.replace(blob).is_some() {
            return Err(ctx(Error::bad(format!(
                "layers[{position}]: a second {} blob for layer {}",
                d.media_type(),
                want.index
            ))));
        }
    }
    let meta = meta.ok_or_else(|| {
        ctx(Error::bad(format!(
            "no {META_MEDIA_TYPE} blob for layer {} ({})",
            want.index, want.layer_digest
        )))
    })?;
    Ok(LayerEntry { meta, zinfo, span })
}

#[cfg(test)]
#[path = "artifact_tests.rs"]
mod tests;
