//! Publishing and discovery against an in-memory registry: blobs, uploads, manifests by
//! tag and digest, and (optionally) the referrers API.

use std::cell::RefCell;
use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::error::Kind;
use crate::remote::artifact::{
    LayerIndex, ANNOTATION_DIFF_ID, ANNOTATION_LAYER_DIGEST, ARTIFACT_TYPE,
};
use crate::remote::discover::NO_INDEX;
use crate::remote::manifest::{sha256_digest, OCI_INDEX, OCI_MANIFEST};
use crate::remote::push::fallback_tag;
use crate::remote::{inspect_image, open_published, push_index, BlobLocation};
use crate::source::Source;

const REF: &str = "reg.io/r:latest";

#[derive(Default)]
struct Store {
    blobs: HashMap<String, Vec<u8>>,
    /// Manifests by digest, with their media type.
    manifests: HashMap<String, (String, Vec<u8>)>,
    tags: HashMap<String, String>,
    uploads: u32,
    referrers_api: bool,
}

fn path_of(url: &str) -> &str {
    url.strip_prefix("https://reg.io").unwrap_or(url)
}

fn serve(store: &RefCell<Store>, req: &HttpRequest) -> HttpResponse {
    let path = path_of(&req.url).to_string();
    let rest = path.strip_prefix("/v2/r/").unwrap_or("");
    let mut s = store.borrow_mut();
    match (req.method, rest.split_once('/')) {
        (Method::Post, Some(("blobs", "uploads/"))) => {
            s.uploads += 1;
            let loc = format!("/v2/r/blobs/uploads/u{}", s.uploads);
            resp(202, &[("Location", &loc)], b"")
        }
        (Method::Put, Some(("blobs", upload))) => {
            let digest = upload.split("digest=").nth(1).unwrap().replace("%3A", ":");
            assert_eq!(sha256_digest(&req.body), digest, "upload digest");
            s.blobs.insert(digest, req.body.clone());
            resp(201, &[], b"")
        }
        (Method::Get | Method::Head, Some(("blobs", digest))) => match s.blobs.get(digest) {
            Some(b) if req.method == Method::Get => resp(200, &[], b),
            Some(_) => resp(200, &[], b""),
            None => resp(404, &[], b""),
        },
        (Method::Put, Some(("manifests", reference))) => {
            let digest = sha256_digest(&req.body);
            let media = req.header("content-type").unwrap().to_string();
            s.manifests
                .insert(digest.clone(), (media, req.body.clone()));
            let mut headers = vec![];
            if !reference.starts_with("sha256:") {
                s.tags.insert(reference.to_string(), digest.clone());
            }
            let subject = serde_json::from_slice::<serde_json::Value>(&req.body).unwrap()
                ["subject"]["digest"]
                .as_str()
                .map(str::to_string);
            if let (true, Some(subject)) = (s.referrers_api, subject) {
                headers.push(("OCI-Subject", subject));
            }
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            resp(201, &headers, b"")
        }
        (Method::Get, Some(("manifests", reference))) => {
            let digest = s
                .tags
                .get(reference)
                .cloned()
                .unwrap_or(reference.to_string());
            match s.manifests.get(&digest) {
                Some((media, body)) => resp(200, &[("Content-Type", media)], body),
                None => resp(404, &[], b""),
            }
        }
        (Method::Get, Some(("referrers", subject))) if s.referrers_api => {
            let subject = subject.split('?').next().unwrap();
            let manifests: Vec<_> = s
                .manifests
                .iter()
                .filter_map(|(d, (_, body))| {
                    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
                    (v["subject"]["digest"] == subject).then(|| {
                        json!({"mediaType": OCI_MANIFEST, "digest": d, "size": body.len(),
                               "artifactType": v["artifactType"]})
                    })
                })
                .collect();
            let body = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
            resp(200, &[], body.to_string().as_bytes())
        }
        _ => resp(404, &[], b"404 page not found"),
    }
}

/// A registry holding image `r:latest` with two layers (gzip, then plain tar).
fn registry(referrers_api: bool) -> (Rc<RefCell<Store>>, FakeTransport) {
    let store = Rc::new(RefCell::new(Store {
        referrers_api,
        ..Store::default()
    }));
    {
        let mut s = store.borrow_mut();
        let config = json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [digest_of(b"tar0"), digest_of(b"tar1")]}})
        .to_string()
        .into_bytes();
        let config_digest = sha256_digest(&config);
        s.blobs.insert(config_digest.clone(), config.clone());
        for l in [&b"layer0"[..], b"layer1"] {
            s.blobs.insert(sha256_digest(l), l.to_vec());
        }
        let manifest = json!({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": config.len()},
            "layers": [
                {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                 "digest": digest_of(b"layer0"), "size": 6},
                {"mediaType": "application/vnd.oci.image.layer.v1.tar",
                 "digest": digest_of(b"layer1"), "size": 6}]})
        .to_string()
        .into_bytes();
        let digest = sha256_digest(&manifest);
        s.manifests
            .insert(digest.clone(), (OCI_MANIFEST.to_string(), manifest));
        s.tags.insert("latest".into(), digest);
    }
    let s = store.clone();
    let fake = FakeTransport::serving(move |req| Ok(serve(&s, req)));
    (store, fake)
}

fn digest_of(b: &[u8]) -> String {
    sha256_digest(b)
}

fn indexes() -> Vec<LayerIndex> {
    vec![
        LayerIndex {
            layer_digest: digest_of(b"layer0"),
            diff_id: digest_of(b"tar0"),
            span: Some(1 << 20),
            meta: b"meta of layer 0".to_vec(),
            zinfo: Some(b"zinfo of layer 0".to_vec()),
        },
        LayerIndex {
            layer_digest: digest_of(b"layer1"),
            diff_id: digest_of(b"tar1"),
            span: None,
            meta: b"meta of layer 1".to_vec(),
            zinfo: None,
        },
    ]
}

fn oci(layer: u32) -> BlobLocation {
    BlobLocation::Oci {
        reference: REF.into(),
        layer: Some(layer),
        digest: None,
        platform: None,
    }
}

fn publish(fake: &FakeTransport) -> crate::remote::push::Pushed {
    let o = RemoteOptions::default();
    let image = inspect_image(REF, None, Box::new(fake.clone()), &o).unwrap();
    push_index(
        REF,
        &image.manifest_digest,
        &indexes(),
        Box::new(fake.clone()),
        &o,
    )
    .unwrap()
}

#[test]
fn push_then_find_through_the_fallback_tag() {
    let (store, fake) = registry(false);
    let o = RemoteOptions::default();
    let image = inspect_image(REF, None, Box::new(fake.clone()), &o).unwrap();
    assert_eq!(image.layers.len(), 2);
    assert_eq!(image.layers[1].diff_id, digest_of(b"tar1"));
    let pushed = publish(&fake);
    assert_eq!((pushed.blobs_uploaded, pushed.blobs_present), (4, 0));
    let tag = fallback_tag(&image.manifest_digest);
    assert_eq!(pushed.fallback_tag.as_deref(), Some(tag.as_str()));
    for layer in 0..2 {
        let (blob, info, found) = open_published(&oci(layer), Box::new(fake.clone()), &o).unwrap();
        assert_eq!(found.meta, format!("meta of layer {layer}").as_bytes());
        assert_eq!(found.zinfo.is_some(), layer == 0);
        assert_eq!(found.artifact_digest, pushed.artifact_digest);
        assert_eq!(found.via, format!("tag {tag}"));
        assert_eq!(info.layer_index, Some(layer));
        assert_eq!(
            blob.pread(0, 6).unwrap(),
            format!("layer{layer}").as_bytes()
        );
    }
    // Pushing again uploads nothing and leaves one referrer of ours; other referrers in
    // the list stay.
    {
        let mut s = store.borrow_mut();
        let list_digest = s.tags[&tag].clone();
        let (_, body) = s.manifests[&list_digest].clone();
        let mut list: serde_json::Value = serde_json::from_slice(&body).unwrap();
        list["manifests"].as_array_mut().unwrap().push(json!({
            "mediaType": OCI_MANIFEST, "digest": digest_of(b"sig"), "size": 3,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}));
        let body = list.to_string().into_bytes();
        let d = sha256_digest(&body);
        s.manifests.insert(d.clone(), (OCI_INDEX.into(), body));
        s.tags.insert(tag.clone(), d);
    }
    let again = publish(&fake);
    assert_eq!((again.blobs_uploaded, again.blobs_present), (0, 4));
    assert_eq!(
        again.artifact_digest, pushed.artifact_digest,
        "deterministic"
    );
    let s = store.borrow();
    let (_, body) = &s.manifests[&s.tags[&tag]];
    let list: serde_json::Value = serde_json::from_slice(body).unwrap();
    let types: Vec<&str> = list["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["artifactType"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "application/vnd.dev.cosign.artifact.sig.v1+json",
            ARTIFACT_TYPE
        ]
    );
}

#[test]
fn with_the_referrers_api_no_tag_is_written() {
    let (store, fake) = registry(true);
    let pushed = publish(&fake);
    assert_eq!(pushed.fallback_tag, None);
    assert_eq!(store.borrow().tags.len(), 1, "only `latest`");
    let (_, _, found) =
        open_published(&oci(1), Box::new(fake.clone()), &RemoteOptions::default()).unwrap();
    assert_eq!(found.via, "referrers API");
    assert_eq!(found.meta, b"meta of layer 1");
}

#[test]
fn no_index_says_so() {
    let (_, fake) = registry(false);
    let err = open_published(&oci(0), Box::new(fake), &RemoteOptions::default()).unwrap_err();
    assert!(err.message().starts_with(NO_INDEX), "{err}");
    assert!(err.message().contains("sha256-"), "{err}");
}

#[test]
fn a_tampered_blob_is_refused() {
    let (store, fake) = registry(false);
    publish(&fake);
    let meta_digest = digest_of(b"meta of layer 0");
    store
        .borrow_mut()
        .blobs
        .insert(meta_digest.clone(), b"meta of layer X".to_vec());
    let err = open_published(&oci(0), Box::new(fake), &RemoteOptions::default()).unwrap_err();
    assert!(err.is(Kind::BadInput), "{err}");
    assert!(
        err.message().contains(&format!("not the {meta_digest}"))
            && err.message().contains("tar index of layer 0"),
        "{err}"
    );
}

#[test]
fn push_refuses_indexes_of_other_layers_or_tars() {
    let (_, fake) = registry(false);
    let o = RemoteOptions::default();
    let image = inspect_image(REF, None, Box::new(fake.clone()), &o).unwrap();
    let mut wrong = indexes();
    wrong.swap(0, 1);
    let err = push_index(
        REF,
        &image.manifest_digest,
        &wrong,
        Box::new(fake.clone()),
        &o,
    )
    .unwrap_err();
    assert!(err.message().contains("the image's layer is"), "{err}");
    let mut wrong = indexes();
    wrong[1].diff_id = digest_of(b"other tar");
    let err = push_index(
        REF,
        &image.manifest_digest,
        &wrong,
        Box::new(fake.clone()),
        &o,
    )
    .unwrap_err();
    assert!(err.message().contains("rootfs.diff_ids[1]"), "{err}");
    let err = push_index(
        REF,
        &image.manifest_digest,
        &indexes()[..1],
        Box::new(fake),
        &o,
    )
    .unwrap_err();
    assert!(
        err.message()
            .contains("1 layer indexes for an image of 2 layers"),
        "{err}"
    );
}

/// Rewrite the published artifact with `edit`, and point the fallback tag's list at the
/// result (as a hostile pusher could).
fn rewrite_artifact(store: &RefCell<Store>, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut s = store.borrow_mut();
    let tag = s
        .tags
        .keys()
        .find(|t| t.starts_with("sha256-"))
        .unwrap()
        .clone();
    let (_, list_body) = s.manifests[&s.tags[&tag]].clone();
    let mut list: serde_json::Value = serde_json::from_slice(&list_body).unwrap();
    let old = list["manifests"][0]["digest"].as_str().unwrap().to_string();
    let (_, body) = s.manifests[&old].clone();
    let mut artifact: serde_json::Value = serde_json::from_slice(&body).unwrap();
    edit(&mut artifact);
    let body = artifact.to_string().into_bytes();
    let d = sha256_digest(&body);
    list["manifests"][0]["digest"] = json!(d);
    list["manifests"][0]["size"] = json!(body.len());
    s.manifests.insert(d, (OCI_MANIFEST.into(), body));
    let list = list.to_string().into_bytes();
    let ld = sha256_digest(&list);
    s.manifests.insert(ld.clone(), (OCI_INDEX.into(), list));
    s.tags.insert(tag, ld);
}

/// Set the annotation `key` of every blob of the published artifact to `value`.
fn rewrite_annotation(store: &RefCell<Store>, key: &str, value: &str) {
    rewrite_artifact(store, |artifact| {
        for l in artifact["layers"].as_array_mut().unwrap() {
            l["annotations"][key] = json!(value);
        }
    });
}

#[test]
fn an_index_for_another_layer_or_tar_is_refused() {
    let (store, fake) = registry(false);
    publish(&fake);
    rewrite_annotation(&store, ANNOTATION_LAYER_DIGEST, &digest_of(b"layer9"));
    let err =
        open_published(&oci(0), Box::new(fake.clone()), &RemoteOptions::default()).unwrap_err();
    assert!(
        err.message().contains("this index is for another layer"),
        "{err}"
    );
    assert_eq!(err.field.as_deref(), Some(ANNOTATION_LAYER_DIGEST));

    let (store, fake) = registry(false);
    publish(&fake);
    rewrite_annotation(&store, ANNOTATION_DIFF_ID, &digest_of(b"tar9"));
    let err = open_published(&oci(1), Box::new(fake), &RemoteOptions::default()).unwrap_err();
    assert!(err.message().contains("rootfs.diff_ids[1]"), "{err}");
    assert_eq!(err.field.as_deref(), Some(ANNOTATION_DIFF_ID));
}

#[test]
fn a_tag_moved_to_another_manifest_is_not_trusted() {
    // The list under the fallback tag names an artifact whose subject is another image.
    let (store, fake) = registry(false);
    publish(&fake);
    rewrite_subject(&store);
    let err = open_published(&oci(0), Box::new(fake), &RemoteOptions::default()).unwrap_err();
    assert!(err.message().contains("field `subject`"), "{err}");
}

fn rewrite_subject(store: &RefCell<Store>) {
    rewrite_artifact(store, |artifact| {
        artifact["subject"]["digest"] = json!(digest_of(b"another image"));
    });
}
