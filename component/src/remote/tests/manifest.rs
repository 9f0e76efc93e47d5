//! Manifest and index parsing, platform and layer choice, media types.

use crate::error::{Kind, Result};
use crate::remote::manifest::*;
use crate::remote::Compression;

fn desc(mt: &str, digest_char: char, size: u64) -> String {
    format!(
        r#"{{"mediaType":"{mt}","digest":"sha256:{}","size":{size}}}"#,
        digest_char.to_string().repeat(64)
    )
}

fn entry(os: &str, arch: &str, variant: Option<&str>, c: char) -> String {
    let v = variant
        .map(|v| format!(r#","variant":"{v}""#))
        .unwrap_or_default();
    format!(
        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"sha256:{}","size":1,"platform":{{"os":"{os}","architecture":"{arch}"{v}}}}}"#,
        c.to_string().repeat(64)
    )
}

fn index(entries: &[String]) -> Vec<Descriptor> {
    match parse_document(format!(r#"{{"manifests":[{}]}}"#, entries.join(",")).as_bytes()).unwrap()
    {
        Document::Index(e) => e,
        d => panic!("{d:?}"),
    }
}

fn pick(entries: &[Descriptor], want: &str) -> Result<char> {
    let e = choose_platform(entries, &Platform::parse(want).unwrap())?;
    Ok(e.digest.chars().last().unwrap())
}

#[test]
fn document_kinds() {
    let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
    let m = format!(r#"{{"schemaVersion":2,"layers":[{}]}}"#, desc(gz, 'a', 10));
    assert!(matches!(parse_document(m.as_bytes()).unwrap(), Document::Manifest(l) if l.len() == 1));
    let m = format!(
        r#"{{"schemaVersion":2,"mediaType":"{DOCKER_MANIFEST}","config":{},"layers":[]}}"#,
        desc("x", 'c', 1)
    );
    assert!(matches!(parse_document(m.as_bytes()).unwrap(), Document::Manifest(l) if l.is_empty()));
    let i = format!(r#"{{"mediaType":"{DOCKER_LIST}","manifests":[]}}"#);
    assert!(matches!(
        parse_document(i.as_bytes()).unwrap(),
        Document::Index(_)
    ));
    for bad in [
        "{}".to_string(),
        "[1]".to_string(),
        format!(r#"{{"mediaType":"{OCI_INDEX}","layers":[]}}"#),
        r#"{"manifests":[],"layers":[]}"#.to_string(),
        r#"{"layers":[{"digest":"x","size":-1}]}"#.to_string(),
        r#"{"layers":[{"size":1}]}"#.to_string(),
    ] {
        assert!(
            matches!(parse_document(bad.as_bytes()), Err(e) if e.is(Kind::BadInput)),
            "{bad}"
        );
    }
    let v1 = br#"{"schemaVersion":1,"fsLayers":[]}"#;
    assert!(matches!(parse_document(v1), Err(e) if e.is(Kind::Unsupported)));
}

#[test]
fn platform_choice() {
    let e = index(&[
        entry("linux", "amd64", None, '1'),
        entry("linux", "arm64", None, '2'),
        entry("linux", "arm", Some("v6"), '3'),
        entry("linux", "arm", Some("v7"), '4'),
        entry("unknown", "unknown", None, '5'),
        r#"{"mediaType":"x","digest":"sha256:6","size":1}"#.to_string(),
    ]);
    assert_eq!(pick(&e, "linux/amd64").unwrap(), '1');
    assert_eq!(pick(&e, "linux/x86_64").unwrap(), '1');
    assert_eq!(pick(&e, "linux/arm64/v8").unwrap(), '2');
    assert_eq!(pick(&e, "linux/aarch64").unwrap(), '2');
    assert_eq!(pick(&e, "linux/arm/v7").unwrap(), '4');
    assert_eq!(pick(&e, "linux/arm").unwrap(), '3');
    let err = pick(&e, "linux/arm/v5").unwrap_err();
    assert!(
        err.message().contains("linux/arm/v6, linux/arm/v7"),
        "{err}"
    );
    assert!(pick(&e, "windows/amd64").is_err());
    // An exact variant wins over an entry without one, and arm64/v8 over plain arm64.
    let e = index(&[
        entry("linux", "arm64", None, '1'),
        entry("linux", "arm64", Some("v8"), '2'),
    ]);
    assert_eq!(pick(&e, "linux/arm64/v8").unwrap(), '2');
    assert_eq!(pick(&e, "linux/arm64").unwrap(), '1');
    let e = index(&[entry("linux", "arm64", Some("v8"), '2')]);
    assert_eq!(pick(&e, "linux/arm64").unwrap(), '2');
    let e = index(&[entry("linux", "amd64", Some(""), '7')]);
    assert_eq!(pick(&e, "linux/amd64").unwrap(), '7');
    assert!(pick(&index(&[]), "linux/amd64")
        .unwrap_err()
        .message()
        .contains("no platforms"));
}

#[test]
fn platform_parsing() {
    assert_eq!(
        Platform::parse("Linux/ARM64/V8").unwrap(),
        Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
            variant: Some("v8".into())
        }
    );
    assert_eq!(
        Platform::parse(DEFAULT_PLATFORM).unwrap().to_string(),
        "linux/amd64"
    );
    for bad in ["linux", "linux/", "/amd64", "a/b/c/d", "linux/am d64", ""] {
        assert!(Platform::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn media_types() {
    use Compression::*;
    for (mt, c) in [
        ("application/vnd.oci.image.layer.v1.tar+gzip", Gzip),
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", Gzip),
        (
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            Gzip,
        ),
        (
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            Gzip,
        ),
        ("application/vnd.oci.image.layer.v1.tar", Uncompressed),
        ("Application/VND.OCI.image.layer.v1.tar; x=y", Uncompressed),
    ] {
        assert_eq!(compression_of(mt).unwrap(), c, "{mt}");
    }
    let zstd = compression_of("application/vnd.oci.image.layer.v1.tar+zstd").unwrap_err();
    assert!(
        zstd.is(Kind::Unsupported) && zstd.message().contains("zstd"),
        "{zstd}"
    );
    let other = compression_of("application/vnd.oci.image.config.v1+json").unwrap_err();
    assert!(
        other.is(Kind::Unsupported) && other.message().contains("not a tar layer"),
        "{other}"
    );
}

fn layers(n: usize) -> Vec<Descriptor> {
    let l: Vec<String> = (0..n)
        .map(|i| {
            desc(
                "application/vnd.oci.image.layer.v1.tar+gzip",
                char::from(b'a' + i as u8),
                100 + i as u64,
            )
        })
        .collect();
    match parse_document(format!(r#"{{"layers":[{}]}}"#, l.join(",")).as_bytes()).unwrap() {
        Document::Manifest(l) => l,
        d => panic!("{d:?}"),
    }
}

#[test]
fn layer_choice() {
    let one = layers(1);
    let l = choose_layer(&one, None, None).unwrap();
    assert_eq!(
        (l.index, l.size, l.compression),
        (0, 100, Compression::Gzip)
    );
    let three = layers(3);
    let err = choose_layer(&three, None, None).unwrap_err();
    assert!(
        err.message()
            .contains("3 layers; choose one by index or by digest"),
        "{err}"
    );
    assert_eq!(choose_layer(&three, Some(2), None).unwrap().size, 102);
    let b = format!("sha256:{}", "b".repeat(64));
    assert_eq!(choose_layer(&three, None, Some(&b)).unwrap().index, 1);
    assert_eq!(choose_layer(&three, Some(1), Some(&b)).unwrap().index, 1);
    assert!(choose_layer(&three, Some(0), Some(&b))
        .unwrap_err()
        .message()
        .contains("disagree"));
    assert!(matches!(
        choose_layer(&three, Some(3), None),
        Err(e) if e.is(Kind::OutOfRange)
    ));
    let z = format!("sha256:{}", "f".repeat(64));
    assert!(matches!(
        choose_layer(&three, None, Some(&z)),
        Err(e) if e.is(Kind::OutOfRange)
    ));
    assert!(choose_layer(&three, None, Some("sha256:bad")).is_err());
    assert!(choose_layer(&[], None, None)
        .unwrap_err()
        .message()
        .contains("no layers"));
    // A layer digest that is not a valid sha256 never reaches a URL.
    let evil = parse_document(br#"{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:../../x","size":1}]}"#).unwrap();
    let Document::Manifest(evil) = evil else {
        panic!()
    };
    assert!(choose_layer(&evil, None, None).is_err());
}

#[test]
fn digests() {
    assert_eq!(
        sha256_digest(b"abc"),
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}
