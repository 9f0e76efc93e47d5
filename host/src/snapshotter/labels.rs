//! The snapshot labels a remote snapshotter reads: containerd's target reference
//! (`containerd.io/snapshot.ref`, the chain ID the layer is to be committed under) and
//! the image labels that CRI, `ctr-remote rpull` and `erofs-host pull` set on a layer's
//! Prepare. Together they name one layer of one image manifest in a registry.

use std::collections::HashMap;

/// The name containerd wants the layer committed under (its chain ID).
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// The image as the user named it, e.g. `127.0.0.1:5000/test/app:v1`.
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// The layer blob's digest in the manifest.
pub const LAYER_DIGEST: &str = "containerd.io/snapshot/cri.layer-digest";
/// The image manifest's digest (the platform's manifest, not an index).
pub const MANIFEST_DIGEST: &str = "containerd.io/snapshot/cri.manifest-digest";

/// A layer a Prepare asks to be mounted from the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRequest {
    /// The chain ID to commit under.
    pub target: String,
    /// `oci://REGISTRY/REPO@MANIFEST_DIGEST`: the image pinned by digest.
    pub image: String,
    pub layer_digest: String,
}

/// The remote layer the labels name, or why they do not name one (then the Prepare is
/// an ordinary one: containerd unpacks the layer itself). `None` without a target
/// reference at all (a container's rootfs, not a layer).
pub fn remote_request(labels: &HashMap<String, String>) -> Option<Result<RemoteRequest, String>> {
    let target = labels.get(TARGET)?;
    let get = |key: &str| {
        labels
            .get(key)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no {key} label (containerd 1.6's `ctr pull` sets none: use `erofs-host pull`, or CRI with disable_snapshot_annotations = false)"))
    };
    let request = (|| {
        let image_ref = get(IMAGE_REF)?;
        let layer_digest = get(LAYER_DIGEST)?;
        let manifest = get(MANIFEST_DIGEST)?;
        for (key, digest) in [(LAYER_DIGEST, layer_digest), (MANIFEST_DIGEST, manifest)] {
            if !is_sha256_digest(digest) {
                return Err(format!("{key}={digest}: not a sha256:<64 hex> digest"));
            }
        }
        Ok(RemoteRequest {
            target: target.clone(),
            image: format!("oci://{}@{manifest}", repository_of(image_ref)?),
            layer_digest: layer_digest.clone(),
        })
    })();
    Some(request)
}

/// `REGISTRY/REPO` of an image reference: without its `:tag` or `@digest`.
pub fn repository_of(image_ref: &str) -> Result<&str, String> {
    let name = image_ref.split_once('@').map_or(image_ref, |(n, _)| n);
    let last_slash = name.rfind('/').unwrap_or(0);
    let name = match name.rfind(':') {
        Some(colon) if colon > last_slash => &name[..colon],
        _ => name,
    };
    if name.is_empty() || !name.contains('/') {
        return Err(format!(
            "{IMAGE_REF}={image_ref}: not REGISTRY/REPO[:TAG|@DIGEST]"
        ));
    }
    Ok(name)
}

fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn repository_drops_tag_and_digest() {
        assert_eq!(
            repository_of("127.0.0.1:5000/test/app:v1"),
            Ok("127.0.0.1:5000/test/app")
        );
        assert_eq!(
            repository_of(&format!("127.0.0.1:5000/test/app@{D}")),
            Ok("127.0.0.1:5000/test/app")
        );
        assert_eq!(
            repository_of("127.0.0.1:5000/test/app"),
            Ok("127.0.0.1:5000/test/app")
        );
        assert!(repository_of("app:v1").is_err());
    }

    #[test]
    fn full_labels_name_a_remote_layer() {
        let l = labels(&[
            (TARGET, "sha256:chain"),
            (IMAGE_REF, "reg:5000/a/b:t"),
            (LAYER_DIGEST, D),
            (MANIFEST_DIGEST, D),
        ]);
        let r = remote_request(&l).unwrap().unwrap();
        assert_eq!(r.target, "sha256:chain");
        assert_eq!(r.image, format!("oci://reg:5000/a/b@{D}"));
        assert_eq!(r.layer_digest, D);
    }

    #[test]
    fn missing_or_bad_labels_say_which() {
        assert!(remote_request(&labels(&[])).is_none());
        let e = remote_request(&labels(&[(TARGET, "x")]))
            .unwrap()
            .unwrap_err();
        assert!(e.contains(IMAGE_REF), "{e}");
        let e = remote_request(&labels(&[
            (TARGET, "x"),
            (IMAGE_REF, "reg/a:t"),
            (LAYER_DIGEST, "sha256:zz"),
            (MANIFEST_DIGEST, D),
        ]))
        .unwrap()
        .unwrap_err();
        assert!(e.contains(LAYER_DIGEST), "{e}");
    }
}
