use super::*;
use crate::error::Kind;

fn subject() -> Subject {
    Subject {
        media_type: OCI_MANIFEST.into(),
        digest: sha256_digest(b"image"),
        size: 5,
    }
}

fn layer(i: u8, gzip: bool) -> LayerIndex {
    LayerIndex {
        layer_digest: sha256_digest(&[b'l', i]),
        diff_id: sha256_digest(&[b't', i]),
        span: gzip.then_some(2 << 20),
        meta: vec![b'm', i],
        zinfo: gzip.then(|| vec![b'z', i]),
    }
}

fn want<'a>(s: &'a Subject, l: &'a LayerIndex, index: usize) -> Wanted<'a> {
    Wanted {
        subject: &s.digest,
        index,
        layer_digest: &l.layer_digest,
        diff_id: &l.diff_id,
    }
}

#[test]
fn the_manifest_is_deterministic_and_reads_back() {
    let s = subject();
    let layers = [layer(0, true), layer(1, false)];
    let a = build_manifest(&s, &layers).unwrap();
    let b = build_manifest(&s, &layers).unwrap();
    assert_eq!(a, b);
    let text = String::from_utf8(a.body.clone()).unwrap();
    assert!(
        text.contains(r#""artifactType":"application/vnd.erofs-wasm.index.v1+json""#),
        "{text}"
    );
    assert!(text.contains(r#""data":"e30=""#), "{text}");
    let e0 = layer_entry(&a.body, "x", &want(&s, &layers[0], 0)).unwrap();
    assert_eq!(e0.meta.digest, sha256_digest(&layers[0].meta));
    assert_eq!(e0.zinfo.as_ref().unwrap().size, 2);
    assert_eq!(e0.span, Some(2 << 20));
    let e1 = layer_entry(&a.body, "x", &want(&s, &layers[1], 1)).unwrap();
    assert_eq!((e1.zinfo, e1.span), (None, None));
    let missing = layer_entry(&a.body, "x", &want(&s, &layers[1], 2)).unwrap_err();
    assert!(
        missing
            .message()
            .contains("no application/vnd.erofs-wasm.tarindex.v1 blob for layer 2"),
        "{missing}"
    );
}

#[test]
fn foreign_or_mismatched_artifacts_are_refused() {
    let s = subject();
    let layers = [layer(0, true)];
    let a = build_manifest(&s, &layers).unwrap();
    let other = layer(7, true);
    let err = layer_entry(&a.body, "x", &want(&s, &other, 0)).unwrap_err();
    assert!(
        err.is(Kind::BadInput) && err.message().contains("another layer"),
        "{err}"
    );
    let mut same_blob_other_tar = layers[0].clone();
    same_blob_other_tar.diff_id = sha256_digest(b"x");
    let err = layer_entry(&a.body, "x", &want(&s, &same_blob_other_tar, 0)).unwrap_err();
    assert!(err.message().contains("another tar"), "{err}");
    let other_subject = Subject {
        digest: sha256_digest(b"other"),
        ..subject()
    };
    let err = layer_entry(&a.body, "x", &want(&other_subject, &layers[0], 0)).unwrap_err();
    assert!(err.message().contains("field `subject`"), "{err}");
    let text = String::from_utf8(a.body.clone()).unwrap();
    let retyped = text.replace(ARTIFACT_TYPE, "application/vnd.other+json");
    let err = layer_entry(retyped.as_bytes(), "x", &want(&s, &layers[0], 0)).unwrap_err();
    assert!(err.message().contains("field `artifactType`"), "{err}");
    let twice = text.replace(ZINFO_MEDIA_TYPE, META_MEDIA_TYPE);
    let err = layer_entry(twice.as_bytes(), "x", &want(&s, &layers[0], 0)).unwrap_err();
    assert!(err.message().contains("a second"), "{err}");
    for junk in [&b"{"[..], b"[]", b"{\"schemaVersion\":2}"] {
        assert!(layer_entry(junk, "x", &want(&s, &layers[0], 0)).is_err());
    }
}

#[test]
fn referrers_lists_keep_others_and_replace_ours() {
    let s = subject();
    let a = build_manifest(&s, &[layer(0, true)]).unwrap();
    let b = build_manifest(&s, &[layer(1, true)]).unwrap();
    let first = updated_referrers(None, &referrer_descriptor(&a).unwrap()).unwrap();
    assert_eq!(candidates(&first).unwrap().len(), 1);
    let sig = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","size":1,"artifactType":"application/x-sig"}]}"#;
    let with_sig =
        updated_referrers(Some(sig.as_bytes()), &referrer_descriptor(&a).unwrap()).unwrap();
    let replaced = updated_referrers(Some(&with_sig), &referrer_descriptor(&b).unwrap()).unwrap();
    let ours = candidates(&replaced).unwrap();
    assert_eq!(
        ours,
        [Candidate {
            digest: b.digest.clone(),
            size: b.body.len() as u64
        }]
    );
    assert!(String::from_utf8(replaced)
        .unwrap()
        .contains("application/x-sig"));
    // A tag that holds a manifest is not overwritten.
    let err = updated_referrers(Some(&a.body), &referrer_descriptor(&b).unwrap()).unwrap_err();
    assert!(err.message().contains("not overwriting"), "{err}");
    assert!(is_our_manifest(&a.body) && !is_our_manifest(sig.as_bytes()));
}
