//! `open_blob`: plain URLs (size probe) and OCI references against a fake registry.

use std::cell::Cell;
use std::collections::HashMap;

use super::*;
use crate::error::Kind;
use crate::remote::manifest::{sha256_digest, DOCKER_LIST, OCI_MANIFEST};
use crate::remote::{open_blob, BlobInfo, BlobLocation, Compression};
use crate::source::Source;

fn open_url(
    fake: &FakeTransport,
    url: &str,
    o: &RemoteOptions,
) -> crate::error::Result<(RemoteBlob, BlobInfo)> {
    open_blob(&BlobLocation::Url(url.into()), Box::new(fake.clone()), o)
}

#[test]
fn url_probe_finds_the_size() {
    let d = data(3000);
    let fake = server(&d);
    let (b, info) = open_url(&fake, "https://files.io/layer.tar.gz", &opts(1000)).unwrap();
    assert_eq!(
        (b.size(), info.size, info.compression),
        (3000, 3000, Compression::Unknown)
    );
    assert_eq!(fake.ranges(), ["bytes=0-0"]);
    assert_eq!(b.pread(2500, 1000).unwrap(), &d[2500..]);
    // A server without Range support: the probe's body is the blob.
    let dd = d.clone();
    let fake = FakeTransport::serving(move |_| Ok(resp(200, &[], &dd)));
    let (b, _) = open_url(&fake, "https://files.io/x", &opts(1000)).unwrap();
    assert_eq!(b.size(), 3000);
    assert_eq!(b.pread(10, 10).unwrap(), &d[10..20]);
    assert_eq!(b.stats().requests, 1);
    // ... unless the blob is above the full-body limit.
    let small_cap = RemoteOptions {
        memory_cap_for_full_body: 2000,
        ..opts(1000)
    };
    let err = open_url(&fake, "https://files.io/x", &small_cap).unwrap_err();
    assert!(err.message().contains("2000-byte full-body limit"), "{err}");
    // An empty file.
    let fake = FakeTransport::new();
    fake.push(resp(416, &[("Content-Range", "bytes */0")], b""));
    assert_eq!(
        open_url(&fake, "https://files.io/x", &opts(1000))
            .unwrap()
            .0
            .size(),
        0
    );
    // No total, or a wrong range: errors.
    let fake = FakeTransport::new();
    fake.push(resp(206, &[("Content-Range", "bytes 0-0/*")], b"x"));
    assert!(open_url(&fake, "https://files.io/x", &opts(1000))
        .unwrap_err()
        .message()
        .contains("size"));
    let fake = FakeTransport::new();
    fake.push(resp(404, &[], b""));
    assert!(open_url(&fake, "https://files.io/x", &opts(1000))
        .unwrap_err()
        .message()
        .contains("404"));
}

#[test]
fn plain_http_needs_insecure() {
    let d = data(100);
    let fake = server(&d);
    let err = open_url(&fake, "http://files.io/x", &opts(1000)).unwrap_err();
    assert!(err.message().contains("`insecure` remote option"), "{err}");
    assert!(fake.requests().is_empty());
    let o = RemoteOptions {
        insecure: true,
        ..opts(1000)
    };
    assert_eq!(
        open_url(&fake, "http://files.io/x", &o).unwrap().0.size(),
        100
    );
    // Nor may an https server redirect to plain http.
    let fake = FakeTransport::new();
    fake.push(resp(302, &[("Location", "http://files.io/y")], b""));
    assert!(open_url(&fake, "https://files.io/x", &opts(1000))
        .unwrap_err()
        .message()
        .contains("plain http"));
}

/// A registry: manifests by path, a blob, and optionally Bearer auth.
struct Registry {
    docs: HashMap<String, Vec<u8>>,
    blob: Rc<Vec<u8>>,
    blob_digest: String,
    token: Option<&'static str>,
    seen: Rc<Cell<u32>>,
}

impl Registry {
    fn transport(self) -> FakeTransport {
        FakeTransport::serving(move |req| {
            self.seen.set(self.seen.get() + 1);
            let url = Url::parse(&req.url).unwrap();
            if url.authority == "auth.reg.io" {
                return Ok(resp(
                    200,
                    &[],
                    format!(r#"{{"token":"{}"}}"#, self.token.unwrap()).as_bytes(),
                ));
            }
            if let Some(t) = self.token {
                if req.header("authorization") != Some(&format!("Bearer {t}")) {
                    let c = r#"Bearer realm="https://auth.reg.io/token",service="reg.io""#;
                    return Ok(resp(401, &[("WWW-Authenticate", c)], b""));
                }
            }
            let path = url.path_and_query.as_str();
            if path == format!("/v2/app/blobs/{}", self.blob_digest) {
                return Ok(range_reply(&self.blob, req));
            }
            match self.docs.get(path) {
                Some(body) => Ok(resp(200, &[], body)),
                None => Ok(resp(404, &[], b"")),
            }
        })
    }
}

fn layer_json(mt: &str, digest: &str, size: usize) -> String {
    format!(r#"{{"mediaType":"{mt}","digest":"{digest}","size":{size}}}"#)
}

fn registry(layer_type: &str, with_index: bool, token: Option<&'static str>) -> (Registry, String) {
    let blob = data(30_000);
    let blob_digest = sha256_digest(&blob);
    let config = layer_json(
        "application/vnd.oci.image.config.v1+json",
        &sha256_digest(b"{}"),
        2,
    );
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{config},"layers":[{}]}}"#,
        layer_json(layer_type, &blob_digest, blob.len())
    );
    let manifest_digest = sha256_digest(manifest.as_bytes());
    let mut docs = HashMap::new();
    docs.insert(
        format!("/v2/app/manifests/{manifest_digest}"),
        manifest.clone().into_bytes(),
    );
    if with_index {
        let other = sha256_digest(b"other");
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{DOCKER_LIST}","manifests":[
              {{"mediaType":"{OCI_MANIFEST}","digest":"{other}","size":9,"platform":{{"os":"linux","architecture":"amd64"}}}},
              {{"mediaType":"{OCI_MANIFEST}","digest":"{manifest_digest}","size":9,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#
        );
        docs.insert("/v2/app/manifests/v1".into(), index.into_bytes());
    } else {
        docs.insert("/v2/app/manifests/v1".into(), manifest.into_bytes());
    }
    let r = Registry {
        docs,
        blob,
        blob_digest,
        token,
        seen: Rc::new(Cell::new(0)),
    };
    (r, manifest_digest)
}

fn oci(reference: &str, platform: Option<&str>) -> BlobLocation {
    BlobLocation::Oci {
        reference: reference.into(),
        layer: None,
        digest: None,
        platform: platform.map(Into::into),
    }
}

#[test]
fn oci_index_with_bearer_auth() {
    let gz = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    let (reg, manifest_digest) = registry(gz, true, Some("secret-token"));
    let blob_data = reg.blob.clone();
    let fake = reg.transport();
    let (b, info) = open_blob(
        &oci("oci://reg.io/app:v1", Some("linux/arm64/v8")),
        Box::new(fake.clone()),
        &opts(4096),
    )
    .unwrap();
    assert_eq!(info.compression, Compression::Gzip);
    assert_eq!(info.size, 30_000);
    assert_eq!(
        info.digest.as_deref(),
        Some(sha256_digest(&blob_data).as_str())
    );
    assert_eq!(
        info.manifest_digest.as_deref(),
        Some(manifest_digest.as_str())
    );
    assert_eq!(info.platform.as_deref(), Some("linux/arm64"));
    assert_eq!(info.layer_index, Some(0));
    assert_eq!(
        info.url,
        format!("https://reg.io/v2/app/blobs/{}", sha256_digest(&blob_data))
    );
    let reqs = fake.requests();
    assert_eq!(reqs.len(), 4, "{reqs:#?}");
    assert!(reqs[0].header("accept").unwrap().contains(OCI_MANIFEST));
    assert!(reqs[0].header("accept").unwrap().contains(DOCKER_LIST));
    assert!(reqs[1]
        .url
        .starts_with("https://auth.reg.io/token?service=reg.io&scope=repository%3Aapp%3Apull"));
    assert!(reqs[3].url.ends_with(&manifest_digest));
    assert_eq!(b.pread(29_000, 2000).unwrap(), &blob_data[29_000..]);
    assert_eq!(
        fake.requests()[4].header("authorization"),
        Some("Bearer secret-token")
    );
    assert_eq!(fake.requests().len(), 5);
    assert_eq!(b.stats().token_fetches, 1);
}

#[test]
fn oci_digest_references_are_verified() {
    let tar = "application/vnd.oci.image.layer.v1.tar";
    let (reg, manifest_digest) = registry(tar, false, None);
    let fake = reg.transport();
    let reference = format!("reg.io/app@{manifest_digest}");
    let (_, info) = open_blob(&oci(&reference, None), Box::new(fake.clone()), &opts(4096)).unwrap();
    assert_eq!(info.compression, Compression::Uncompressed);
    assert_eq!(
        fake.requests()[0].url,
        format!("https://reg.io/v2/app/manifests/{manifest_digest}")
    );
    // A registry that answers a digest with other bytes is caught. (In a fresh instance:
    // this one keeps the manifest it verified above, manifest_memo.rs.)
    let err = std::thread::spawn(move || {
        let (mut reg, manifest_digest) = registry(tar, false, None);
        let path = format!("/v2/app/manifests/{manifest_digest}");
        let mut tampered = reg.docs[&path].clone();
        tampered.push(b' ');
        reg.docs.insert(path, tampered);
        open_blob(
            &oci(&format!("reg.io/app@{manifest_digest}"), None),
            Box::new(reg.transport()),
            &opts(4096),
        )
        .unwrap_err()
    })
    .join()
    .unwrap();
    assert!(
        err.is(Kind::BadInput) && err.message().contains("digest"),
        "{err}"
    );
}

#[test]
fn oci_errors_are_clear() {
    let (reg, _) = registry("application/vnd.oci.image.layer.v1.tar+zstd", false, None);
    let err = open_blob(
        &oci("reg.io/app:v1", None),
        Box::new(reg.transport()),
        &opts(4096),
    )
    .unwrap_err();
    assert!(
        err.is(Kind::Unsupported) && err.message().contains("zstd"),
        "{err}"
    );
    let (reg, _) = registry("application/vnd.oci.image.layer.v1.tar+gzip", true, None);
    let err = open_blob(
        &oci("reg.io/app:v1", Some("linux/s390x")),
        Box::new(reg.transport()),
        &opts(4096),
    )
    .unwrap_err();
    assert!(err.message().contains("linux/amd64, linux/arm64"), "{err}");
    let (reg, _) = registry("application/vnd.oci.image.layer.v1.tar+gzip", false, None);
    let err = open_blob(
        &oci("reg.io/app:nope", None),
        Box::new(reg.transport()),
        &opts(4096),
    )
    .unwrap_err();
    assert!(err.message().contains("not found"), "{err}");
    let err = open_blob(
        &oci("reg.io/App", None),
        Box::new(FakeTransport::new()),
        &opts(4096),
    )
    .unwrap_err();
    assert!(err.message().contains("image reference"), "{err}");
    let err = open_blob(
        &oci("reg.io/app", Some("linux")),
        Box::new(FakeTransport::new()),
        &opts(4096),
    )
    .unwrap_err();
    assert!(err.message().contains("platform"), "{err}");
}

#[test]
fn oci_insecure_uses_plain_http() {
    let (reg, _) = registry("application/vnd.oci.image.layer.v1.tar", false, None);
    let fake = reg.transport();
    let o = RemoteOptions {
        insecure: true,
        ..opts(4096)
    };
    let (_, info) = open_blob(
        &oci("oci://reg.io/app:v1", None),
        Box::new(fake.clone()),
        &o,
    )
    .unwrap();
    assert!(info.url.starts_with("http://reg.io/v2/app/blobs/"));
    assert!(fake.requests()[0]
        .url
        .starts_with("http://reg.io/v2/app/manifests/v1"));
    // Docker Hub stays on https.
    let fake = FakeTransport::new();
    fake.push(resp(404, &[], b""));
    let _ = open_blob(&oci("busybox", None), Box::new(fake.clone()), &o);
    assert_eq!(
        fake.requests()[0].url,
        "https://registry-1.docker.io/v2/library/busybox/manifests/latest"
    );
}
