//! A whole image: the layers of the manifest an `oci://` reference names, bottom first,
//! each checked as a layer this reader can serve (gzip or plain tar; zstd and anything
//! else refused, naming the layer). The embedder mounts them one by one, each pinned to
//! the manifest digest found here, so a tag moved meanwhile cannot mix two images.

use std::cell::RefCell;

use super::auth::Auth;
use super::manifest::{self, compression_of, manifest_context, Layer, Platform, DEFAULT_PLATFORM};
use super::net::Net;
use super::reference::{validate_digest, Reference};
use super::url::shorten;
use super::{RemoteOptions, Transport};
use crate::error::{Error, Result};

/// What [`image_layers`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageLayers {
    /// `REGISTRY/REPO`, as the reference named them (Docker Hub defaults applied).
    pub registry: String,
    pub repository: String,
    /// Digest of the image manifest (the platform's, when the reference names an index).
    pub manifest_digest: String,
    /// The index entry's platform, when the reference named an index.
    pub platform: Option<String>,
    /// Every layer, bottom first.
    pub layers: Vec<Layer>,
}

/// Resolve `reference` (through an image index by `platform`, default linux/amd64) to
/// its image manifest and classify every layer.
pub fn image_layers(
    reference: &str,
    platform: Option<&str>,
    transport: Box<dyn Transport>,
    opts: &RemoteOptions,
) -> Result<ImageLayers> {
    let net = Net::new(transport, opts);
    let r = Reference::parse(reference)?;
    let platform = Platform::parse(platform.unwrap_or(DEFAULT_PLATFORM))?;
    let base = r.api_base(opts.insecure)?;
    let auth = RefCell::new(Auth::new(base.clone(), &r.repository));
    let m = manifest::resolve_manifest(&net, &auth, &base, &r, &platform)?;
    if m.layers.is_empty() {
        return Err(Error::bad(format!(
            "{}: the image manifest has no layers",
            manifest_context(&r, &m.manifest_digest)
        )));
    }
    let mut layers = Vec::with_capacity(m.layers.len());
    for (index, d) in m.layers.iter().enumerate() {
        let ctx = format!(
            "{}: layer {index} ({})",
            manifest_context(&r, &m.manifest_digest),
            shorten(&d.digest)
        );
        let index =
            u32::try_from(index).map_err(|_| Error::bad(format!("{ctx}: too many layers")))?;
        let digest = validate_digest(&d.digest).map_err(|e| e.context(&ctx))?;
        let media_type = d
            .media_type
            .clone()
            .ok_or_else(|| Error::bad(format!("{ctx}: no mediaType")))?;
        // zstd and anything else that is not a tar we serve is refused here, by name.
        let compression = compression_of(&media_type).map_err(|e| e.context(&ctx))?;
        layers.push(Layer {
            index,
            media_type,
            digest,
            size: d.size,
            compression,
        });
    }
    Ok(ImageLayers {
        registry: r.registry.clone(),
        repository: r.repository.clone(),
        manifest_digest: m.manifest_digest,
        platform: m.platform,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::remote::fake::{resp, FakeTransport};
    use crate::remote::manifest::{sha256_digest, DOCKER_MANIFEST};
    use crate::remote::Compression;

    fn layer(mt: &str, c: char, size: u64) -> String {
        let hex = c.to_string().repeat(64);
        format!(r#"{{"mediaType":"{mt}","digest":"sha256:{hex}","size":{size}}}"#)
    }

    /// A registry with one manifest at `/v2/app/manifests/v1`, by tag.
    fn serve(manifest: String) -> FakeTransport {
        FakeTransport::serving(move |req| {
            if req.url.ends_with("/v2/app/manifests/v1") {
                Ok(resp(200, &[], manifest.as_bytes()))
            } else {
                Ok(resp(404, &[], b""))
            }
        })
    }

    #[test]
    fn every_layer_bottom_first() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","layers":[{},{},{}]}}"#,
            layer("application/vnd.docker.image.rootfs.diff.tar.gzip", 'a', 10),
            layer("application/vnd.oci.image.layer.v1.tar", 'b', 20),
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 'c', 30),
        );
        let digest = sha256_digest(manifest.as_bytes());
        let got = image_layers(
            "reg.io/app:v1",
            None,
            Box::new(serve(manifest)),
            &RemoteOptions::default(),
        )
        .unwrap();
        assert_eq!(got.manifest_digest, digest);
        assert_eq!(
            (got.registry.as_str(), got.repository.as_str()),
            ("reg.io", "app")
        );
        let summary: Vec<(u32, char, u64, Compression)> = got
            .layers
            .iter()
            .map(|l| {
                (
                    l.index,
                    l.digest.chars().last().unwrap(),
                    l.size,
                    l.compression,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (0, 'a', 10, Compression::Gzip),
                (1, 'b', 20, Compression::Uncompressed),
                (2, 'c', 30, Compression::Gzip)
            ]
        );
    }

    #[test]
    fn a_zstd_layer_is_refused_by_name() {
        let manifest = format!(
            r#"{{"schemaVersion":2,"layers":[{},{}]}}"#,
            layer("application/vnd.oci.image.layer.v1.tar+gzip", 'a', 10),
            layer("application/vnd.oci.image.layer.v1.tar+zstd", 'd', 20),
        );
        let err = image_layers(
            "reg.io/app:v1",
            None,
            Box::new(serve(manifest)),
            &RemoteOptions::default(),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("unsupported"), "{text}");
        assert!(text.contains("layer 1"), "{text}");
        assert!(text.contains(&"d".repeat(64)), "{text}");
        assert!(text.contains("zstd"), "{text}");
        // No layers at all: said so.
        let err = image_layers(
            "reg.io/app:v1",
            None,
            Box::new(serve(r#"{"schemaVersion":2,"layers":[]}"#.into())),
            &RemoteOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no layers"), "{err}");
    }
}
