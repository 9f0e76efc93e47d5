//! From an image reference to one layer blob, as the OCI distribution and image specs
//! describe: fetch the manifest (or image index, then the manifest for the wanted
//! platform), check its digest when the reference pins one, pick a layer, and classify its
//! media type.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use std::cell::RefCell;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::manifest_memo;
use super::auth::{fetch_with_auth, Auth};
use super::net::{accept_any, Net};
use super::reference::{validate_digest, Reference};
use super::transport::Method;
use super::url::{shorten, Url};
use super::Compression;
use crate::error::{Error, Result};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// The platform chosen when none is given.
pub const DEFAULT_PLATFORM: &str = "linux/amd64";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: Option<String>,
    pub digest: String,
    pub size: u64,
    pub platform: Option<PlatformJson>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PlatformJson {
    pub architecture: String,
    pub os: String,
    pub variant: Option<String>,
}

#[derive(Deserialize)]
struct DocumentJson {
    #[serde(rename = "schemaVersion")]
    schema_version: Option<serde_json::Value>,
    #[serde(rename = "mediaType")]
    media_type: Option<String>,
    manifests: Option<Vec<Descriptor>>,
    layers: Option<Vec<Descriptor>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Document {
    /// An OCI image index or Docker manifest list: one entry per platform.
    Index(Vec<Descriptor>),
    /// An image manifest: its layers, bottom first.
    Manifest(Vec<Descriptor>),
}

/// Parse a manifest or an index. The kind comes from the keys (`manifests` or `layers`),
/// so a missing `mediaType` is fine; a `mediaType` that contradicts the keys is not.
pub fn parse_document(body: &[u8]) -> Result<Document> {
    let doc: DocumentJson = serde_json::from_slice(body)
        .map_err(|e| Error::bad(format!("not a valid manifest or index: {e}")))?;
    if doc.schema_version.as_ref().and_then(|v| v.as_u64()) == Some(1) {
        return Err(Error::unsupported(
            "Docker schema 1 manifests (only schema 2 and OCI)",
        ));
    }
    let media = doc.media_type.as_deref();
    let said_index = matches!(media, Some(OCI_INDEX | DOCKER_LIST));
    let said_manifest = matches!(media, Some(OCI_MANIFEST | DOCKER_MANIFEST));
    match (doc.manifests, doc.layers) {
        (Some(_), Some(_)) => Err(Error::bad("document has both `manifests` and `layers`")),
        (Some(m), None) if !said_manifest => Ok(Document::Index(m)),
        (None, Some(l)) if !said_index => Ok(Document::Manifest(l)),
        (None, None) => Err(Error::bad(format!(
            "document has neither `manifests` nor `layers` (mediaType {})",
            media.map(shorten).unwrap_or_else(|| "absent".into())
        ))),
        _ => Err(Error::bad(format!(
            "mediaType `{}` does not match the document's keys",
            media.map(shorten).unwrap_or_default()
        ))),
    }
}

/// `os/arch[/variant]`, as `--platform` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let valid = |p: &str| {
            !p.is_empty()
                && p.len() <= 64
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(|p| valid(p)) {
            return Err(Error::bad(format!(
                "platform `{}` is not os/arch[/variant]",
                shorten(text)
            )));
        }
        let [os, arch, variant @ ..] = parts.as_slice() else {
            return Err(Error::bad(format!(
                "platform `{}` is not os/arch[/variant]",
                shorten(text)
            )));
        };
        let architecture = match arch.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            a => a.to_string(),
        };
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant: variant.first().map(|v| v.to_ascii_lowercase()),
        })
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        match &self.variant {
            Some(v) => write!(f, "/{v}"),
            None => Ok(()),
        }
    }
}

fn describe(p: &PlatformJson) -> String {
    match &p.variant {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os, p.architecture),
        _ => format!("{}/{}", p.os, p.architecture),
    }
}

/// How well an index entry fits: 0 exact, 1 equal once arm64's implied `v8` is taken into
/// account, 2 the entry has no variant but we want one, 3 we want none and the entry has
/// one. `None`: another os or architecture, or another variant.
fn rank(entry: &PlatformJson, want: &Platform) -> Option<u8> {
    if !entry.os.eq_ignore_ascii_case(&want.os)
        || !entry.architecture.eq_ignore_ascii_case(&want.architecture)
    {
        return None;
    }
    let entry_variant = entry.variant.as_deref().filter(|v| !v.is_empty());
    let normalize = |v: Option<&str>| match v {
        Some(v) if want.architecture == "arm64" && v.eq_ignore_ascii_case("v8") => None,
        v => v.map(str::to_ascii_lowercase),
    };
    match (entry_variant, want.variant.as_deref()) {
        (None, None) => Some(0),
        (Some(e), Some(w)) if e.eq_ignore_ascii_case(w) => Some(0),
        (e, w) if normalize(e) == normalize(w) => Some(1),
        (None, Some(_)) => Some(2),
        (Some(_), None) => Some(3),
        (Some(_), Some(_)) => None,
    }
}

/// The index entry for `want`: the best rank, the first such entry on ties.
pub fn choose_platform<'a>(entries: &'a [Descriptor], want: &Platform) -> Result<&'a Descriptor> {
    let best = entries
        .iter()
        .filter_map(|e| Some((rank(e.platform.as_ref()?, want)?, e)))
        .min_by_key(|(r, _)| *r);
    if let Some((_, entry)) = best {
        return Ok(entry);
    }
    let available: Vec<String> = entries
        .iter()
        .filter_map(|e| e.platform.as_ref().map(describe))
        .take(32)
        .collect();
    Err(Error::bad(format!(
        "no manifest for platform {want} in the image index; it has: {}",
        if available.is_empty() {
            "no platforms".to_string()
        } else {
            available.join(", ")
        }
    )))
}

/// What a layer's media type means here: gzip tar (needs a zinfo) or plain tar. zstd and
/// anything else are refused with a clear message.
pub fn compression_of(media_type: &str) -> Result<Compression> {
    let mt = media_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if mt.ends_with("tar+gzip") || mt.ends_with("tar.gzip") {
        Ok(Compression::Gzip)
    } else if mt.ends_with("tar+zstd") || mt.ends_with("tar.zstd") {
        Err(Error::unsupported(format!(
            "layer media type `{}`: zstd layers are not supported (only gzip and \
             uncompressed tar)",
            shorten(media_type)
        )))
    } else if mt.ends_with(".tar") {
        Ok(Compression::Uncompressed)
    } else {
        Err(Error::unsupported(format!(
            "layer media type `{}` is not a tar layer this reader knows (gzip or \
             uncompressed tar)",
            shorten(media_type)
        )))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub index: u32,
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub compression: Compression,
}

/// The layer asked for by index and/or digest; with neither, the only layer.
pub fn choose_layer(
    layers: &[Descriptor],
    index: Option<u32>,
    digest: Option<&str>,
) -> Result<Layer> {
    let list = || {
        layers
            .iter()
            .enumerate()
            .take(64)
            .map(|(i, l)| format!("{i}: {} ({} bytes)", shorten(&l.digest), l.size))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if layers.is_empty() {
        return Err(Error::bad("the image manifest has no layers"));
    }
    let by_digest = match digest {
        Some(d) => {
            let d = validate_digest(d).map_err(|e| e.context("the requested layer digest"))?;
            let found = layers.iter().position(|l| l.digest == d).ok_or_else(|| {
                Error::out_of_range(format!(
                    "blob {d} is not a layer of this image; its layers: {}",
                    list()
                ))
            })?;
            Some(found)
        }
        None => None,
    };
    let chosen = match (index, by_digest) {
        (Some(i), _) if i as usize >= layers.len() => {
            return Err(Error::out_of_range(format!(
                "layer {i} was asked for, but the image has {} layers: {}",
                layers.len(),
                list()
            )))
        }
        (Some(i), Some(d)) if i as usize != d => {
            return Err(Error::bad(format!(
                "the requested layer index {i} and layer digest disagree: that blob is layer {d}"
            )))
        }
        (Some(i), _) => i as usize,
        (None, Some(d)) => d,
        (None, None) if layers.len() == 1 => 0,
        (None, None) => {
            return Err(Error::bad(format!(
                "the image has {} layers; choose one by index or by digest: {}",
                layers.len(),
                list()
            )))
        }
    };
    let layer = layers
        .get(chosen)
        .ok_or_else(|| Error::internal(format!("layer {chosen} was chosen but is not there")))?;
    let digest =
        validate_digest(&layer.digest).map_err(|e| e.context(&format!("layer {chosen}")))?;
    let media_type = layer
        .media_type
        .clone()
        .ok_or_else(|| Error::bad(format!("layer {chosen} has no mediaType")))?;
    let compression =
        compression_of(&media_type).map_err(|e| e.context(&format!("layer {chosen}")))?;
    Ok(Layer {
        index: u32::try_from(chosen)
            .map_err(|_| Error::out_of_range(format!("layer index {chosen} passes 2^32")))?,
        media_type,
        digest,
        size: layer.size,
        compression,
    })
}

pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(71);
    out.push_str("sha256:");
    for b in hash {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// What [`resolve`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Digest of the image manifest the layer was taken from.
    pub manifest_digest: String,
    /// The index entry's platform, when the reference named an index.
    pub platform: Option<String>,
    pub layer: Layer,
    pub blob_url: Url,
}

/// Fetch `/v2/<repo>/manifests/<reference>` (at most `net.max_manifest` bytes); when
/// `expect` is a digest, the body must hash to it.
fn fetch_manifest(
    net: &Net,
    auth: &RefCell<Auth>,
    base: &Url,
    repository: &str,
    reference: &str,
    expect: Option<&str>,
) -> Result<Vec<u8>> {
    let repository_url = base.resolve(&format!("/v2/{repository}/manifests/"))?.to_string();
    if let Some(body) = expect.and_then(|digest| manifest_memo::get(&repository_url, digest)) {
        return Ok(body);
    }
    let url = base.resolve(&format!("/v2/{repository}/manifests/{reference}"))?;
    let accept = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST].join(", ");
    let headers = [
        ("Accept".to_string(), accept),
        ("Accept-Encoding".to_string(), "identity".to_string()),
    ];
    let (_, resp) = fetch_with_auth(
        net,
        Some(auth),
        Method::Get,
        &url,
        &headers,
        net.max_manifest,
        &accept_any,
    )?;
    match resp.status {
        200 => {}
        404 => {
            return Err(Error::io(format!(
                "{url}: manifest `{reference}` not found in repository {repository} (HTTP 404)"
            )))
        }
        s => return Err(Error::io(format!("{url}: HTTP {s}"))),
    }
    if let Some(enc) = resp.header("content-encoding") {
        if !enc.trim().eq_ignore_ascii_case("identity") {
            return Err(Error::io(format!(
                "{url}: manifest sent with Content-Encoding `{}`, though identity was asked",
                shorten(enc)
            )));
        }
    }
    let got = sha256_digest(&resp.body);
    if let Some(expect) = expect {
        if got != expect {
            return Err(Error::bad(format!(
                "{url}: the manifest's digest is {got}, not the {expect} asked for"
            )));
        }
    }
    manifest_memo::keep(&repository_url, got, &resp.body);
    Ok(resp.body)
}

/// The image manifest `reference` names (through an index by `platform` when needed):
/// its digest, the index entry's platform, and its layers, bottom first.
pub struct ResolvedManifest {
    pub manifest_digest: String,
    pub platform: Option<String>,
    pub layers: Vec<Descriptor>,
}

/// Fetch the manifest `reference` names, going through an image index by `platform`.
pub fn resolve_manifest(
    net: &Net,
    auth: &RefCell<Auth>,
    base: &Url,
    reference: &Reference,
    platform: &Platform,
) -> Result<ResolvedManifest> {
    let repo = &reference.repository;
    let top = fetch_manifest(
        net,
        auth,
        base,
        repo,
        reference.manifest_ref(),
        reference.digest.as_deref(),
    )?;
    let ctx = |r: &str| manifest_context(reference, r);
    let (body, chosen_platform) =
        match parse_document(&top).map_err(|e| e.context(&ctx(reference.manifest_ref())))? {
            Document::Manifest(_) => (top, None),
            Document::Index(entries) => {
                let entry = choose_platform(&entries, platform)
                    .map_err(|e| e.context(&ctx(reference.manifest_ref())))?;
                let digest = validate_digest(&entry.digest)
                    .map_err(|e| e.context(&ctx(reference.manifest_ref())))?;
                let child = fetch_manifest(net, auth, base, repo, &digest, Some(&digest))?;
                (child, entry.platform.as_ref().map(describe))
            }
        };
    let manifest_digest = sha256_digest(&body);
    let layers = match parse_document(&body).map_err(|e| e.context(&ctx(&manifest_digest)))? {
        Document::Manifest(layers) => layers,
        Document::Index(_) => {
            return Err(Error::unsupported(format!(
                "{}: an image index inside an image index",
                ctx(&manifest_digest)
            )))
        }
    };
    Ok(ResolvedManifest {
        manifest_digest,
        platform: chosen_platform,
        layers,
    })
}

/// `REGISTRY/REPO: manifest REF`, the prefix of messages about a manifest.
pub fn manifest_context(reference: &Reference, manifest: &str) -> String {
    format!(
        "{}/{}: manifest {manifest}",
        reference.registry, reference.repository
    )
}

/// Resolve `reference` to one layer: through an index by `platform` when needed, then by
/// `layer` / `blob_digest`.
pub fn resolve(
    net: &Net,
    auth: &RefCell<Auth>,
    base: &Url,
    reference: &Reference,
    platform: &Platform,
    layer: Option<u32>,
    blob_digest: Option<&str>,
) -> Result<Resolved> {
    let m = resolve_manifest(net, auth, base, reference, platform)?;
    let layer = choose_layer(&m.layers, layer, blob_digest)
        .map_err(|e| e.context(&manifest_context(reference, &m.manifest_digest)))?;
    let blob_url = base.resolve(&format!(
        "/v2/{}/blobs/{}",
        reference.repository, layer.digest
    ))?;
    Ok(Resolved {
        manifest_digest: m.manifest_digest,
        platform: m.platform,
        layer,
        blob_url,
    })
}
