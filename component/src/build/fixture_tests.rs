//! The builder against the reference fixtures (tests/fixtures): our META and ZINFO for each
//! layer must give, through our own reader (zinfo parser, gzran, EROFS reader), the tree the
//! Linux kernel showed for the reference image (expected.json), with the tar bytes gunzip
//! gives (expected.json's tar_sha256). Two runs must give identical bytes.

use sha2::{Digest, Sha256};

use super::{index_bytes, IndexOptions};
use crate::source::{MemSource, SizedSource};
use crate::tarindex::Device;

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Dev<'a>(&'a mut Device);

impl erofs_image::ReadAt for Dev<'_> {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), erofs_image::Error> {
        let got = self
            .0
            .pread(offset, buf.len() as u32)
            .map_err(|e| erofs_image::Error::Io(e.to_string()))?;
        if got.len() != buf.len() {
            return Err(erofs_image::Error::Io(format!("short read at {offset}")));
        }
        buf.copy_from_slice(&got);
        Ok(())
    }
    fn size(&self) -> u64 {
        self.0.size()
    }
}

fn check_fixture(name: &str) {
    let dir = fixtures().join(name);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let gz = dir.join("layer.tar.gz");
    let (blob, is_gzip) = if gz.exists() {
        (std::fs::read(&gz).unwrap(), true)
    } else {
        (std::fs::read(dir.join("layer.tar")).unwrap(), false)
    };
    let options = IndexOptions {
        aufs: name == "aufs",
        ..IndexOptions::default()
    };
    // Stream in odd-sized pieces, as a network body would arrive.
    let mut indexer = super::Indexer::new(options).unwrap();
    for piece in blob.chunks(65_537) {
        indexer.write(piece).unwrap();
    }
    let index = indexer.finish().unwrap();
    let again = index_bytes(&blob, options).unwrap();
    assert_eq!(index.meta, again.meta, "{name}: META differs between runs");
    assert_eq!(
        index.zinfo, again.zinfo,
        "{name}: ZINFO differs between runs"
    );
    assert_eq!(index.zinfo.is_some(), is_gzip);
    let s = &index.stats;
    assert_eq!(
        hex(&s.tar_sha256),
        expected["tar_sha256"].as_str().unwrap(),
        "{name}"
    );
    assert_eq!(s.tar_size, expected["tar_size"].as_u64().unwrap(), "{name}");

    // Our reader over META ‖ tar (gzip through our zinfo).
    let meta = SizedSource::new("meta", Box::new(MemSource(index.meta.clone()))).unwrap();
    let blob_src = SizedSource::new("blob", Box::new(MemSource(blob.clone()))).unwrap();
    let zinfo = index
        .zinfo
        .clone()
        .map(|z| SizedSource::new("zinfo", Box::new(MemSource(z))).unwrap());
    let mut device = Device::open(meta, blob_src, zinfo, Default::default()).unwrap();
    assert_eq!(device.tar_size(), s.tar_size);
    let meta_size = device.meta_size();
    assert_eq!(meta_size, index.meta.len() as u64);
    let mut tar = Vec::with_capacity(s.tar_size as usize);
    let mut at = meta_size;
    while at < device.size() {
        let piece = device.pread(at, 1 << 20).unwrap();
        assert!(!piece.is_empty());
        at += piece.len() as u64;
        tar.extend_from_slice(&piece);
    }
    assert_eq!(
        hex(&Sha256::digest(&tar)),
        expected["tar_sha256"].as_str().unwrap(),
        "{name}: the tar read through our zinfo differs from gunzip's"
    );
    // Random reads across checkpoint boundaries.
    let mut x = 12345u64;
    for _ in 0..50 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 11) % s.tar_size;
        let len = ((x >> 40) % 70_000) as u32 + 1;
        let got = device.pread(meta_size + off, len).unwrap();
        let end = (off + len as u64).min(s.tar_size) as usize;
        assert_eq!(got, tar[off as usize..end], "{name}: read at {off}");
    }

    let mut dev = Dev(&mut device);
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let report = fs.verify(&mut dev, Default::default()).unwrap();
    assert_eq!(report.nlink_mismatches, 0, "{name}");
    let entries = expected["entries"].as_array().unwrap();
    assert_eq!(report.entries, entries.len() as u64, "{name}");
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let mut nid = fs.root_nid();
        for part in path.split('/') {
            nid = fs.lookup(&mut dev, nid, part.as_bytes()).unwrap().0;
        }
        let attr = fs.getattr(&mut dev, nid).unwrap();
        let want_mode =
            u32::from_str_radix(e["mode"].as_str().unwrap().trim_start_matches("0o"), 8).unwrap();
        assert_eq!(attr.mode, want_mode, "{name}: {path} mode");
        let numbers = [
            ("uid", u64::from(attr.uid)),
            ("gid", u64::from(attr.gid)),
            ("size", attr.size),
            ("nlink", u64::from(attr.nlink)),
        ];
        for (field, got) in numbers {
            assert_eq!(got, e[field].as_u64().unwrap(), "{name}: {path} {field}");
        }
        let mtime_ns = attr.mtime_sec as i128 * 1_000_000_000 + attr.mtime_nsec as i128;
        assert_eq!(
            mtime_ns,
            e["mtime_ns"].as_i64().unwrap() as i128,
            "{name}: {path} mtime"
        );
        if let Some(sha) = e["sha256"].as_str() {
            let mut h = Sha256::new();
            let mut off = 0;
            while off < attr.size {
                let piece = fs.read(&mut dev, nid, off, 1 << 20).unwrap();
                off += piece.len() as u64;
                h.update(&piece);
            }
            assert_eq!(hex(&h.finalize()), sha, "{name}: {path} data");
        }
        if let Some(target) = e["target"].as_str() {
            assert_eq!(
                fs.readlink(&mut dev, nid).unwrap(),
                target.as_bytes(),
                "{name}: {path}"
            );
        }
        if let Some(rdev) = e["rdev"].as_array() {
            assert_eq!(
                attr.major() as u64,
                rdev[0].as_u64().unwrap(),
                "{name}: {path}"
            );
            assert_eq!(
                attr.minor() as u64,
                rdev[1].as_u64().unwrap(),
                "{name}: {path}"
            );
        }
        let want: std::collections::BTreeMap<String, String> = e["xattrs_hex"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let mut got = std::collections::BTreeMap::new();
        for xname in fs.listxattr(&mut dev, nid).unwrap() {
            let v = fs.getxattr(&mut dev, nid, &xname).unwrap();
            got.insert(String::from_utf8(xname).unwrap(), hex(&v));
        }
        assert_eq!(got, want, "{name}: {path} xattrs");
    }
}

#[test]
fn fixture_basic() {
    check_fixture("basic");
}

#[test]
fn fixture_aufs() {
    check_fixture("aufs");
}

#[test]
fn fixture_multimember() {
    check_fixture("multimember");
}

#[test]
fn fixture_pigz() {
    check_fixture("pigz");
}

#[test]
fn fixture_plain_tar() {
    check_fixture("plain-tar");
}

#[test]
fn fixture_large() {
    check_fixture("large");
}
