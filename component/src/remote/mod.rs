//! The network client: a layer blob read lazily from a plain `http(s)://` URL or from an
//! OCI registry by image reference, through a [`Transport`] (`wasi:http` in the component,
//! a fake in unit tests).
//!
//! Every byte from the network, manifests and auth challenges included, is parsed here,
//! inside the sandbox. The host grants and polices the network and adds credentials; the
//! component never sees a password.

parser_modules! {
    pub mod artifact;
    pub mod auth;
    pub mod blob;
    pub mod content_range;
    pub mod discover;
    pub mod image_rootfs;
    pub mod manifest;
    pub mod push;
    pub mod reference;
    pub mod session;
    pub mod url;
}
pub mod image;
mod manifest_memo;
pub mod net;
mod prefetch;
mod streams;
pub mod transport;
#[cfg(target_arch = "wasm32")]
pub mod wasi_transport;

#[cfg(test)]
mod fake;
#[cfg(test)]
mod tests;

use std::cell::RefCell;

pub use crate::source::RemoteStats;
pub use blob::RemoteBlob;
pub use image::{image_layers, ImageLayers};
pub use transport::{HttpRequest, HttpResponse, Method, Transport};
#[cfg(target_arch = "wasm32")]
pub use wasi_transport::WasiTransport;

use self::auth::{Access, Auth};
use self::discover::Found;
use self::image_rootfs::{resolve_image, Image};
use self::manifest::{Platform, DEFAULT_PLATFORM};
use self::net::Net;
use self::push::Pushed;
use self::reference::Reference;
use self::session::Session;
use self::url::Url;
use crate::defaults;
use crate::error::{Error, Result};

/// Where the layer blob lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobLocation {
    /// An `https://` (or, with `insecure`, `http://`) URL that serves Range requests.
    Url(String),
    /// `oci://REGISTRY/REPO:TAG` or `…@sha256:…` (the `oci://` is optional), with the
    /// layer chosen by index and/or digest, and the platform (`os/arch[/variant]`,
    /// default linux/amd64) when the reference names an image index.
    Oci {
        reference: String,
        layer: Option<u32>,
        digest: Option<String>,
        platform: Option<String>,
    },
}

/// How the layer blob is compressed, as far as its source says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A gzip'd tar: needs a zinfo.
    Gzip,
    /// A plain tar: no zinfo.
    Uncompressed,
    /// A plain URL says nothing; look at the bytes (gzip starts with 1f 8b).
    Unknown,
}

/// How remote blobs are fetched. The defaults and their reasons are in
/// [`crate::defaults`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOptions {
    /// Allow plain `http://` (and use it for `oci://` references other than Docker Hub).
    /// Off: plain HTTP shows the layer and the registry token to anyone on the path.
    pub insecure: bool,
    /// Bytes per cached chunk; requests are aligned to chunks.
    pub chunk_size: u64,
    /// Largest readahead window of a sequential stream; capped at half the chunk cache.
    pub readahead_max: u64,
    /// Bytes of fetched chunks kept in memory; 0 turns caching and readahead off.
    pub cache_bytes: u64,
    /// Attempts after the first, for connection errors, 408/429/5xx and responses that
    /// fail their checks.
    pub max_retries: u32,
    /// First backoff, doubled for each further retry, and its ceiling.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// The full-body limit: the largest blob kept whole when a server ignores Range.
    pub memory_cap_for_full_body: u64,
    /// Redirects followed per request.
    pub max_redirects: u32,
    /// Largest manifest or index read.
    pub max_manifest_bytes: u64,
}

impl Default for RemoteOptions {
    fn default() -> Self {
        Self {
            insecure: false,
            chunk_size: defaults::CHUNK_SIZE,
            readahead_max: defaults::READAHEAD_MAX,
            cache_bytes: defaults::CHUNK_CACHE_BYTES,
            max_retries: defaults::MAX_RETRIES,
            backoff_initial_ms: defaults::BACKOFF_INITIAL_MS,
            backoff_max_ms: defaults::BACKOFF_MAX_MS,
            memory_cap_for_full_body: defaults::FULL_BODY_LIMIT,
            max_redirects: defaults::MAX_REDIRECTS,
            max_manifest_bytes: defaults::MAX_MANIFEST_BYTES,
        }
    }
}

/// What was opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The URL blob reads go to (before any redirect).
    pub url: String,
    pub size: u64,
    /// The layer's digest (OCI only).
    pub digest: Option<String>,
    /// The layer's media type (OCI only).
    pub media_type: Option<String>,
    pub compression: Compression,
    /// Digest of the image manifest the layer came from, its index in that manifest, and
    /// the platform picked from an image index (OCI only).
    pub manifest_digest: Option<String>,
    pub layer_index: Option<u32>,
    pub platform: Option<String>,
    /// `oci://REGISTRY/REPO@MANIFEST-DIGEST` (OCI only): the reference that opens this
    /// very manifest again, whatever its tag names later.
    pub pinned_reference: Option<String>,
}

/// Open a remote blob: for a URL, probe its size; for an OCI reference, resolve the
/// manifest (authenticating as the registry asks) down to one layer. The returned blob is
/// a [`crate::source::Source`] and keeps the transport, the token and the caches.
pub fn open_blob(
    location: &BlobLocation,
    transport: Box<dyn Transport>,
    opts: &RemoteOptions,
) -> Result<(RemoteBlob, BlobInfo)> {
    let net = Net::new(transport, opts);
    match location {
        BlobLocation::Url(text) => {
            let url = Url::parse(text)?;
            let blob = RemoteBlob::probe(net, url, opts)?;
            let info = BlobInfo {
                url: blob.url().to_string(),
                size: blob.size(),
                digest: None,
                media_type: None,
                compression: Compression::Unknown,
                manifest_digest: None,
                layer_index: None,
                platform: None,
                pinned_reference: None,
            };
            Ok((blob, info))
        }
        BlobLocation::Oci {
            reference,
            layer,
            digest,
            platform,
        } => {
            let r = Reference::parse(reference)?;
            if let Some(d) = digest {
                reference::validate_digest(d)
                    .map_err(|e| e.context("the requested layer digest"))?;
            }
            let platform = Platform::parse(platform.as_deref().unwrap_or(DEFAULT_PLATFORM))?;
            let base = r.api_base(opts.insecure)?;
            let auth = RefCell::new(Auth::new(base.clone(), &r.repository));
            let resolved =
                manifest::resolve(&net, &auth, &base, &r, &platform, *layer, digest.as_deref())?;
            let l = resolved.layer;
            let info = BlobInfo {
                url: resolved.blob_url.to_string(),
                size: l.size,
                digest: Some(l.digest.clone()),
                media_type: Some(l.media_type),
                compression: l.compression,
                pinned_reference: Some(r.pinned(&resolved.manifest_digest)),
                manifest_digest: Some(resolved.manifest_digest),
                layer_index: Some(l.index),
                platform: resolved.platform,
            };
            let blob = RemoteBlob::new(
                net,
                resolved.blob_url,
                l.size,
                Some(auth.into_inner()),
                Some(l.digest),
                opts,
            )?;
            Ok((blob, info))
        }
    }
}

/// The image manifest of `reference` for `platform` (default linux/amd64), with its
/// layers and the diff_ids of its config: what `push_index` needs to be given indexes
/// for.
pub fn inspect_image(
    reference: &str,
    platform: Option<&str>,
    transport: Box<dyn Transport>,
    opts: &RemoteOptions,
) -> Result<Image> {
    let session = Session::open(reference, transport, opts, Access::Pull)?;
    let platform = Platform::parse(platform.unwrap_or(DEFAULT_PLATFORM))?;
    resolve_image(&session, session.reference.manifest_ref(), &platform)
}

/// Publish `layers` (one index per layer, in order) as the index of image manifest
/// `manifest_digest` in the repository of `reference`. The manifest is fetched again by
/// digest and its layers and diff_ids must match the indexes.
pub fn push_index(
    reference: &str,
    manifest_digest: &str,
    layers: &[artifact::LayerIndex],
    transport: Box<dyn Transport>,
    opts: &RemoteOptions,
) -> Result<Pushed> {
    let session = Session::open(reference, transport, opts, Access::PullPush)?;
    reference::validate_digest(manifest_digest)
        .map_err(|e| e.context("the image manifest digest"))?;
    // A pinned digest names one manifest; the platform only matters for an index.
    let platform = Platform::parse(DEFAULT_PLATFORM)?;
    let image = resolve_image(&session, manifest_digest, &platform)?;
    push::push_index(&session, &image, layers)
}

/// [`open_blob`] for an OCI layer whose tar index and zinfo are found in the registry
/// (published by `push_index`), checked against the image: the blob, what was opened,
/// and the index.
pub fn open_published(
    location: &BlobLocation,
    transport: Box<dyn Transport>,
    opts: &RemoteOptions,
) -> Result<(RemoteBlob, BlobInfo, Found)> {
    let BlobLocation::Oci {
        reference,
        layer,
        digest,
        platform,
    } = location
    else {
        return Err(Error::unsupported(
            "a published index is found next to an OCI image; a plain URL needs its tar \
             index given",
        ));
    };
    let session = Session::open(reference, transport, opts, Access::Pull)?;
    let platform = Platform::parse(platform.as_deref().unwrap_or(DEFAULT_PLATFORM))?;
    let image = resolve_image(&session, session.reference.manifest_ref(), &platform)?;
    let chosen =
        manifest::choose_layer(&image.descriptors(), *layer, digest.as_deref()).map_err(|e| {
            e.context(&format!(
                "{}: manifest {}",
                session.name(),
                image.manifest_digest
            ))
        })?;
    let found = discover::find_index(&session, &image, chosen.index as usize)?;
    let blob_url = session.url(&format!("blobs/{}", chosen.digest))?;
    let info = BlobInfo {
        url: blob_url.to_string(),
        size: chosen.size,
        digest: Some(chosen.digest.clone()),
        media_type: Some(chosen.media_type),
        compression: chosen.compression,
        manifest_digest: Some(image.manifest_digest.clone()),
        layer_index: Some(chosen.index),
        platform: image.platform.clone(),
        pinned_reference: Some(session.reference.pinned(&image.manifest_digest)),
    };
    let Session { net, auth, .. } = session;
    let blob = RemoteBlob::new(
        net,
        blob_url,
        chosen.size,
        Some(auth.into_inner()),
        Some(chosen.digest),
        opts,
    )?;
    Ok((blob, info, found))
}
