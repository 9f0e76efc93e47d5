//! The manifests this instance has fetched, by digest, so that fetching one again by its
//! digest costs no round trip. The host resolves a tag once (`image-layers`) and then opens
//! the device by the digest it got, in the same instance: without this, the open fetched
//! the same manifest a second time.
//!
//! Only bytes that hash to the digest are kept (their digest is computed here, as they
//! arrive), and only for the repository URL they came from, so a hit is exactly the body
//! the registry would send for that digest. The memo lives as long as the instance.

use std::cell::RefCell;

/// Manifests kept: an image index and its chosen manifest, twice over.
const MAX_KEPT: usize = 4;

/// Largest manifest kept (64 KiB): image manifests are a few KiB; bigger ones are fetched
/// again rather than held for the instance's life.
const MAX_KEPT_BYTES: usize = 64 << 10;

struct Kept {
    /// `https://registry/v2/REPO/manifests/` (the URL without the reference).
    repository_url: String,
    digest: String,
    body: Vec<u8>,
}

thread_local! {
    static KEPT: RefCell<Vec<Kept>> = const { RefCell::new(Vec::new()) };
}

/// A manifest fetched before from `repository_url` whose bytes hash to `digest`.
pub fn get(repository_url: &str, digest: &str) -> Option<Vec<u8>> {
    KEPT.with(|kept| {
        kept.borrow()
            .iter()
            .find(|k| k.repository_url == repository_url && k.digest == digest)
            .map(|k| k.body.clone())
    })
}

/// Keep `body`, fetched from `repository_url`, under its `digest` (its SHA-256, computed
/// by the caller from these bytes); the oldest gives way.
pub fn keep(repository_url: &str, digest: String, body: &[u8]) {
    if body.len() > MAX_KEPT_BYTES {
        return;
    }
    KEPT.with(|kept| {
        let mut kept = kept.borrow_mut();
        kept.retain(|k| !(k.repository_url == repository_url && k.digest == digest));
        if kept.len() >= MAX_KEPT {
            kept.remove(0);
        }
        kept.push(Kept {
            repository_url: repository_url.to_string(),
            digest,
            body: body.to_vec(),
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_manifest_is_found_by_its_repository_and_digest_only() {
        keep("https://r/v2/a/manifests/", "sha256:1".into(), b"one");
        assert_eq!(
            get("https://r/v2/a/manifests/", "sha256:1").as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(get("https://r/v2/b/manifests/", "sha256:1"), None);
        assert_eq!(get("https://r/v2/a/manifests/", "sha256:2"), None);
    }

    #[test]
    fn the_memo_is_bounded() {
        for i in 0..10 {
            keep("https://r/v2/c/manifests/", format!("sha256:{i}"), b"x");
        }
        assert_eq!(get("https://r/v2/c/manifests/", "sha256:0"), None);
        assert!(get("https://r/v2/c/manifests/", "sha256:9").is_some());
        keep(
            "https://r/v2/c/manifests/",
            "sha256:big".into(),
            &vec![0; MAX_KEPT_BYTES + 1],
        );
        assert_eq!(get("https://r/v2/c/manifests/", "sha256:big"), None);
    }
}
