//! The streaming indexer end to end on synthetic blobs: format detection, errors that
//! stick, hostile but accepted tars giving images our reader verifies.

use super::tar::tests::{end, member, record};
use super::test_support::Mem;
use super::zinfo_writer::tests::gzip;
use super::*;

fn verify(index: &Index, tar: &[u8]) -> erofs_image::VerifyReport {
    let mut dev = Mem([index.meta.clone(), tar.to_vec()].concat());
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    fs.verify(&mut dev, Default::default()).unwrap()
}

fn sample_tar() -> Vec<u8> {
    let mut tar = member("./etc/", b'5', b"", "");
    tar.extend(member("./etc/hosts", b'0', b"127.0.0.1 localhost\n", ""));
    tar.extend(end());
    tar
}

#[test]
fn detects_the_format() {
    let tar = sample_tar();
    let plain = index_bytes(&tar, IndexOptions::default()).unwrap();
    assert!(plain.zinfo.is_none());
    assert_eq!(plain.stats.entries, 2);
    assert_eq!(plain.stats.blob_sha256, plain.stats.tar_sha256);
    let gz = index_bytes(&gzip(&tar), IndexOptions::default()).unwrap();
    assert!(gz.zinfo.is_some());
    assert_eq!(gz.stats.tar_sha256, plain.stats.tar_sha256);
    assert_eq!(gz.stats.checkpoints, 1);
    // Same tree, different blob: the UUID (from the blob digest) is all that differs.
    assert_ne!(gz.meta, plain.meta);
    let without_uuid = |meta: &[u8]| {
        let mut m = meta.to_vec();
        m[1024 + 4..1024 + 8].fill(0); // the checksum covers the UUID
        m[1024 + 48..1024 + 64].fill(0);
        m
    };
    assert_eq!(without_uuid(&gz.meta), without_uuid(&plain.meta));
    assert_eq!(verify(&plain, &tar).entries, 2);
    let fixed = IndexOptions {
        uuid: Some([1; 16]),
        ..IndexOptions::default()
    };
    let a = index_bytes(&tar, fixed).unwrap();
    assert_eq!(&a.meta[1024 + 48..1024 + 64], &[1u8; 16]);
    // Forced formats.
    let forced = IndexOptions {
        format: BlobFormat::Gzip,
        ..IndexOptions::default()
    };
    assert!(index_bytes(&tar, forced)
        .unwrap_err()
        .to_string()
        .contains("gzip"));
    // An empty blob is an empty archive: a root and nothing else.
    let empty = index_bytes(&[], IndexOptions::default()).unwrap();
    assert_eq!(empty.stats.inodes, 1);
    assert_eq!(verify(&empty, &[]).entries, 0);
}

#[test]
fn errors_stick() {
    let mut tar = sample_tar();
    tar[600] ^= 1; // inside the second header: its checksum fails
    let mut ix = Indexer::new(IndexOptions::default()).unwrap();
    let first = ix.write(&tar).unwrap_err();
    assert!(first.to_string().contains("bad checksum"), "{first}");
    assert_eq!(ix.write(b"more").unwrap_err(), first);
    assert_eq!(ix.finish().unwrap_err(), first);
    // A truncated gzip blob.
    let gz = gzip(&sample_tar());
    let e = index_bytes(&gz[..gz.len() - 4], IndexOptions::default()).unwrap_err();
    assert!(e.to_string().contains("inside a gzip member"), "{e}");
}

#[test]
fn hostile_but_accepted_tars_verify() {
    // Absolute names, `./` and `//`, duplicates, a link before its target, implied
    // parents, a PAX path with nanoseconds, an aufs opaque dir and whiteout.
    let mut tar = member("/abs//deep/file", b'0', b"abc", "");
    tar.extend(member("dup", b'0', b"first", ""));
    tar.extend(member("dup", b'0', b"second!", ""));
    tar.extend(member("early-link", b'1', b"", "dup"));
    tar.extend(member("late-link", b'1', b"", "target"));
    tar.extend(member("target", b'0', b"t", ""));
    let mut pax = record("path", "név/ファイル".as_bytes());
    pax.extend(record("mtime", b"1700000000.000000001"));
    tar.extend(member("PaxHeader", b'x', &pax, ""));
    tar.extend(member("ignored", b'0', b"x", ""));
    tar.extend(member("o/.wh..wh..opq", b'0', b"", ""));
    tar.extend(member("o/.wh.gone", b'0', b"", ""));
    tar.extend(member(".wh..wh.plnk", b'0', b"", ""));
    tar.extend(end());
    let options = IndexOptions {
        aufs: true,
        ..IndexOptions::default()
    };
    let index = index_bytes(&tar, options).unwrap();
    assert_eq!(index.stats.notes.len(), 2, "{:?}", index.stats.notes);
    assert!(index.stats.notes[0].contains("1 absolute member names"));
    let report = verify(&index, &tar);
    assert_eq!(report.nlink_mismatches, 0);
    let mut dev = Mem([index.meta.clone(), tar.clone()].concat());
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let look = |fs: &erofs_image::Filesystem, dev: &mut Mem, path: &str| {
        let mut nid = fs.root_nid();
        for part in path.split('/') {
            nid = fs.lookup(dev, nid, part.as_bytes()).unwrap().0;
        }
        nid
    };
    let dup = look(&fs, &mut dev, "dup");
    assert_eq!(fs.read(&mut dev, dup, 0, 100).unwrap(), b"second!");
    assert_eq!(look(&fs, &mut dev, "early-link"), dup);
    assert_eq!(fs.getattr(&mut dev, dup).unwrap().nlink, 2);
    let t = look(&fs, &mut dev, "target");
    assert_eq!(look(&fs, &mut dev, "late-link"), t);
    let f = look(&fs, &mut dev, "abs/deep/file");
    assert_eq!(fs.read(&mut dev, f, 0, 100).unwrap(), b"abc");
    let p = look(&fs, &mut dev, "név/ファイル");
    assert_eq!(fs.getattr(&mut dev, p).unwrap().mtime_nsec, 1);
    let o = look(&fs, &mut dev, "o");
    assert_eq!(
        fs.getxattr(&mut dev, o, b"trusted.overlay.opaque").unwrap(),
        b"y"
    );
    let g = look(&fs, &mut dev, "o/gone");
    assert_eq!(fs.getattr(&mut dev, g).unwrap().mode, 0o020000);
}
