//! Image references: `oci://REGISTRY/REPO:TAG`, `oci://REGISTRY/REPO@sha256:HEX`, or the
//! same without `oci://`, with Docker Hub's defaults for short names.
//!
//! The grammar follows the OCI distribution spec's names (`[a-z0-9]+` runs joined by `.`,
//! `_`, `__` or dashes, separated by `/`) and tags (`[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
//! A first component with a `.` or a `:`, or `localhost`, is a registry; otherwise the
//! registry is Docker Hub.

// Parses outside data under erofs-image's lint rules (`parser_modules!` in lib.rs).

use super::url::{shorten, Scheme, Url};
use crate::error::{Error, Result};

/// Docker Hub as users write it, and the host its API answers on.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
pub const DEFAULT_TAG: &str = "latest";

/// Longest repository name the distribution spec lets registries accept.
const MAX_REPOSITORY: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// The registry as written, lower case (`docker.io` when none was written).
    pub registry: String,
    /// `host[:port]` of the registry API (`registry-1.docker.io` for Docker Hub).
    pub api_host: String,
    /// Repository path, with `library/` added for a one-component Docker Hub name.
    pub repository: String,
    /// The tag (`latest` when neither a tag nor a digest was written).
    pub tag: Option<String>,
    /// `sha256:<64 hex>` when the reference pins a digest; it wins over a tag.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference> {
        parse(text).map_err(|e| e.context(&format!("image reference `{}`", shorten(text))))
    }

    /// What to put after `/manifests/`: the digest if there is one, else the tag.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or(DEFAULT_TAG)
    }

    pub fn is_docker_hub(&self) -> bool {
        self.registry == DOCKER_HUB
    }

    /// `oci://REGISTRY/REPO@MANIFEST-DIGEST`: this repository's manifest `digest`, named
    /// so that it opens the same manifest however the tag moves.
    pub fn pinned(&self, manifest_digest: &str) -> String {
        format!(
            "oci://{}/{}@{manifest_digest}",
            self.registry, self.repository
        )
    }

    /// The registry API's base URL, `SCHEME://API_HOST/`: plain http only when the user
    /// said `insecure`, and never for Docker Hub, which serves only https.
    pub fn api_base(&self, insecure: bool) -> Result<Url> {
        let scheme = if insecure && !self.is_docker_hub() {
            Scheme::Http
        } else {
            Scheme::Https
        };
        Url::parse(&format!("{}://{}/", scheme.as_str(), self.api_host))
    }
}

fn parse(text: &str) -> Result<Reference> {
    let body = match text.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("oci://") => &text[6..],
        _ => text,
    };
    if body.contains("://") {
        return Err(Error::bad("only oci:// references are accepted here"));
    }
    if body.is_empty() {
        return Err(Error::bad("empty"));
    }
    if body.len() > 4096 {
        return Err(Error::bad("longer than 4096 bytes"));
    }
    if let Some(c) = body.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(Error::bad(format!("character {c:?} is not allowed")));
    }
    let (name, digest) = match body.split_once('@') {
        Some((name, digest)) => (name, Some(validate_digest(digest)?)),
        None => (body, None),
    };
    let (registry, rest) = match name.split_once('/') {
        Some((first, rest)) if is_registry(first) => (first.to_ascii_lowercase(), rest),
        _ => (DOCKER_HUB.to_string(), name),
    };
    Url::parse(&format!("https://{registry}/"))
        .map_err(|e| Error::bad(format!("bad registry `{registry}`: {}", e.message())))?;
    let (repository, tag) = match rest.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository, Some(tag)),
        Some(_) => return Err(Error::bad("`:` inside the repository name")),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        validate_tag(tag)?;
    }
    validate_repository(repository)?;
    let hub = matches!(
        registry.as_str(),
        DOCKER_HUB | "index.docker.io" | DOCKER_HUB_API
    );
    let (registry, api_host, repository) = if hub {
        let repo = if repository.contains('/') {
            repository.to_string()
        } else {
            format!("library/{repository}")
        };
        (DOCKER_HUB.to_string(), DOCKER_HUB_API.to_string(), repo)
    } else {
        (registry.clone(), registry, repository.to_string())
    };
    if repository.len() > MAX_REPOSITORY {
        return Err(Error::bad(format!(
            "repository name is {} bytes, above the limit of {MAX_REPOSITORY}",
            repository.len()
        )));
    }
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_TAG.to_string()),
    };
    Ok(Reference {
        registry,
        api_host,
        repository,
        tag,
        digest,
    })
}

fn is_registry(first: &str) -> bool {
    first.contains('.') || first.contains(':') || first == "localhost"
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or one or more `-`, components joined by `/`.
fn validate_repository(repo: &str) -> Result<()> {
    if repo.is_empty() {
        return Err(Error::bad("no repository name"));
    }
    for component in repo.split('/') {
        if !valid_component(component) {
            return Err(Error::bad(format!(
                "repository component `{component}` is not valid (lower-case letters and \
                 digits, joined by `.`, `_`, `__` or `-`)"
            )));
        }
    }
    Ok(())
}

fn valid_component(c: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    // Between the alphanumeric runs (the component starts and ends with one), each
    // separator run must be `.`, `_`, `__`, or any number of `-`.
    c.split(|ch: char| u8::try_from(ch).is_ok_and(alnum))
        .filter(|sep| !sep.is_empty())
        .all(|sep| matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-'))
}

fn validate_tag(tag: &str) -> Result<()> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 128
        && bytes.first().is_some_and(|&b| word(b))
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if !ok {
        return Err(Error::bad(format!(
            "tag `{tag}` is not valid (1 to 128 of letters, digits, `_`, `.`, `-`; not \
             starting with `.` or `-`)"
        )));
    }
    Ok(())
}

/// Check a digest as written by a user or found in a manifest: `sha256:` and 64
/// lower-case hex digits. Other algorithms are reported as unsupported.
pub fn validate_digest(digest: &str) -> Result<String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(Error::bad(format!(
            "digest `{}` has no `algorithm:` prefix (expected sha256:<64 hex digits>)",
            shorten(digest)
        )));
    };
    if algorithm != "sha256" {
        let plausible = !algorithm.is_empty()
            && algorithm
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+._-".contains(&b));
        if plausible {
            return Err(Error::unsupported(format!(
                "digest algorithm `{algorithm}` (only sha256 is supported)"
            )));
        }
        return Err(Error::bad(format!(
            "digest `{}` is not valid",
            shorten(digest)
        )));
    }
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(Error::bad(format!(
            "digest `{}` is not valid: sha256 needs exactly 64 lower-case hex digits",
            shorten(digest)
        )));
    }
    Ok(digest.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn p(s: &str) -> Reference {
        Reference::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn registry_with_port_and_tag() {
        let r = p("oci://127.0.0.1:5000/test/layer:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.api_host, "127.0.0.1:5000");
        assert_eq!(r.repository, "test/layer");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_ref(), "v1.2");
    }

    #[test]
    fn digest_references() {
        let r = p(&format!("ghcr.io/org/img@{D}"));
        assert_eq!(r.registry, "ghcr.io");
        assert_eq!(r.repository, "org/img");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        let both = p(&format!("OCI://Quay.IO/a/b:t@{D}"));
        assert_eq!(both.registry, "quay.io");
        assert_eq!(both.tag.as_deref(), Some("t"));
        assert_eq!(both.manifest_ref(), D);
    }

    #[test]
    fn a_pinned_reference_names_the_same_manifest_by_digest() {
        for text in ["oci://127.0.0.1:5000/test/layer:v1", "busybox", "quay.io/a/b:t"] {
            let r = p(text);
            let pinned = p(&r.pinned(D));
            assert_eq!(pinned.registry, r.registry, "{text}");
            assert_eq!(pinned.api_host, r.api_host, "{text}");
            assert_eq!(pinned.repository, r.repository, "{text}");
            assert_eq!(pinned.manifest_ref(), D, "{text}");
        }
    }

    #[test]
    fn docker_hub_defaults() {
        let r = p("busybox");
        assert_eq!(
            (
                r.registry.as_str(),
                r.api_host.as_str(),
                r.repository.as_str()
            ),
            ("docker.io", "registry-1.docker.io", "library/busybox")
        );
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert!(r.is_docker_hub());
        assert_eq!(
            p("oci://docker.io/ubuntu:22.04").repository,
            "library/ubuntu"
        );
        assert_eq!(p("index.docker.io/user/app").repository, "user/app");
        assert_eq!(p("user/app:1").repository, "user/app");
        assert_eq!(p("user/app:1").registry, "docker.io");
    }

    #[test]
    fn localhost_is_a_registry() {
        let r = p("localhost/foo/bar");
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.api_host, "localhost");
        assert_eq!(r.repository, "foo/bar");
        assert_eq!(p("localhost:5000/x").repository, "x");
        assert_eq!(p("[::1]:5000/x").api_host, "[::1]:5000");
    }

    #[test]
    fn repository_grammar() {
        assert_eq!(
            p("r.io/a__b/c-d---e/f.g_h").repository,
            "a__b/c-d---e/f.g_h"
        );
        for bad in [
            "r.io/",
            "r.io/UPPER",
            "r.io/a//b",
            "r.io/a/",
            "r.io/-a",
            "r.io/a.",
            "r.io/a___b",
            "r.io/a..b",
            "r.io/a._b",
            "r.io/a b",
            "",
            "oci://",
            "docker://busybox",
            "r.io/a:b/c",
            "r.io/a:",
            "r.io/a:.x",
            "r.io/a:-x",
            "bad_host.io:x/y",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} should fail");
        }
        let long_tag = format!("r.io/a:{}", "t".repeat(129));
        assert!(Reference::parse(&long_tag).is_err());
        assert!(Reference::parse(&format!("r.io/a:{}", "t".repeat(128))).is_ok());
        let long_repo = format!("r.io/{}", "a".repeat(256));
        assert!(Reference::parse(&long_repo).is_err());
    }

    #[test]
    fn digest_validation() {
        assert!(validate_digest(D).is_ok());
        let upper = D.to_uppercase().replace("SHA256", "sha256");
        for bad in [
            "sha256:abc",
            "0123",
            ":abc",
            "sha256:",
            &upper,
            &format!("{D}0"),
        ] {
            assert!(
                matches!(validate_digest(bad), Err(e) if e.is(Kind::BadInput)),
                "{bad}"
            );
        }
        assert!(matches!(
            validate_digest(&format!("sha512:{}", "a".repeat(128))),
            Err(e) if e.is(Kind::Unsupported)
        ));
        let err = Reference::parse("r.io/a@sha256:xyz").unwrap_err();
        assert!(err.message().contains("64 lower-case hex"), "{err}");
        assert!(
            err.message()
                .starts_with("image reference `r.io/a@sha256:xyz`"),
            "{err}"
        );
    }
}
