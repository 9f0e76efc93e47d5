//! The header check on tiny tars built here and indexed by the index builder: PAX and GNU
//! long names, a hard link, files of equal size; an index rewritten to point one file at
//! another's bytes fails that file only, with the file and the tar offset named.

use crate::build::tar::tests::{end, member, record};
use crate::build::{index_bytes, BlobFormat, IndexOptions};
use crate::error::Kind;
use crate::fs::Filesystem;
use crate::gzran::Options;
use crate::source::{MemSource, SizedSource};
use crate::tarindex::Device;

fn source(name: &'static str, bytes: Vec<u8>) -> SizedSource {
    SizedSource::new(name, Box::new(MemSource(bytes))).unwrap()
}

/// `d/d/.../pax-leaf` (PAX path), `gnu/nnn...` (GNU long name), `a` and `b` (same
/// size), `link` (a hard link to `a`), and an empty file.
fn tar() -> Vec<u8> {
    let long = "d/".repeat(70) + "pax-leaf";
    // Parent directories first (members of their own, as tar writers emit them).
    let mut tar = Vec::new();
    for depth in 1..=70 {
        let dir = "d/".repeat(depth);
        tar.extend(member(
            "PaxHeader",
            b'x',
            &record("path", dir.as_bytes()),
            "",
        ));
        tar.extend(member("dir", b'5', b"", ""));
    }
    tar.extend(member("gnu/", b'5', b"", ""));
    tar.extend(member(
        "PaxHeader",
        b'x',
        &record("path", long.as_bytes()),
        "",
    ));
    tar.extend(member(&long[..99], b'0', b"pax data", ""));
    let gnu = "gnu/".to_string() + &"n".repeat(150);
    let mut record = gnu.clone().into_bytes();
    record.push(0);
    tar.extend(member("././@LongLink", b'L', &record, ""));
    tar.extend(member(&gnu[..100], b'0', b"gnu data", ""));
    tar.extend(member("./a", b'0', &[b'a'; 700], ""));
    tar.extend(member("b", b'0', &[b'b'; 700], ""));
    tar.extend(member("link", b'1', b"", "a"));
    tar.extend(member("empty", b'0', b"", ""));
    tar.extend(end());
    tar
}

fn meta_of(tar: &[u8]) -> Vec<u8> {
    let options = IndexOptions {
        format: BlobFormat::Tar,
        ..IndexOptions::default()
    };
    index_bytes(tar, options).unwrap().meta
}

fn open(meta: Vec<u8>, tar: Vec<u8>, samples: u32) -> crate::error::Result<Filesystem> {
    let dev = Device::open_with(
        source("meta", meta),
        source("blob", tar),
        None,
        Options::default(),
        samples,
    )?;
    Filesystem::open(dev)
}

fn nid(fs: &mut Filesystem, path: &str) -> u64 {
    let mut at = fs.root();
    for part in path.split('/') {
        at = fs.lookup(at, part.as_bytes()).unwrap().nid;
    }
    at
}

#[test]
fn pax_and_gnu_names_and_hard_links_pass() {
    let tar = tar();
    let mut fs = open(meta_of(&tar), tar, 8).unwrap();
    assert_eq!(fs.verify_headers().unwrap(), 4);
    let pax = "d/".repeat(70) + "pax-leaf";
    let gnu = "gnu/".to_string() + &"n".repeat(150);
    for (path, want) in [
        (pax.as_str(), &b"pax data"[..]),
        (gnu.as_str(), b"gnu data"),
        ("a", &[b'a'; 700]),
        ("link", &[b'a'; 700]),
        ("b", &[b'b'; 700]),
        ("empty", b""),
    ] {
        let n = nid(&mut fs, path);
        assert_eq!(fs.read(n, 0, 4096).unwrap(), want, "{path}");
    }
}

/// The tar block where `path`'s data starts, by the index.
fn data_block(meta: &[u8], tar: &[u8], path: &str) -> u32 {
    let mut fs = open(meta.to_vec(), tar.to_vec(), 0).unwrap();
    let n = nid(&mut fs, path);
    let ext = fs.physical_extents(n).unwrap();
    let meta_size = fs.device_ref().meta_size();
    ((ext - meta_size) / 512) as u32
}

#[test]
fn a_file_pointed_at_another_files_bytes_fails_alone() {
    let tar = tar();
    let meta = meta_of(&tar);
    let (a, b) = (data_block(&meta, &tar, "a"), data_block(&meta, &tar, "b"));
    // The chunk index entry of `a`: startblk_hi 0, device 1, startblk_lo = a's block.
    let mut entry = vec![0, 0, 1, 0];
    entry.extend_from_slice(&a.to_le_bytes());
    let at = meta
        .windows(8)
        .position(|w| w == entry.as_slice())
        .expect("a's chunk index entry");
    let mut bad = meta.clone();
    bad[at + 4..at + 8].copy_from_slice(&b.to_le_bytes());
    // With 512-byte blocks the superblock checksum covers the first inodes too.
    bad[1028..1032].fill(0);
    let sum = erofs_image::crc32c(0xFFFF_FFFF, &bad[1024..1536]);
    bad[1028..1032].copy_from_slice(&sum.to_le_bytes());

    let mut fs = open(bad, tar, 0).unwrap();
    let na = nid(&mut fs, "a");
    let err = fs.read(na, 0, 10).unwrap_err();
    assert!(err.is(Kind::Mismatch), "{err}");
    let header_at = u64::from(b) * 512 - 512;
    assert_eq!(
        err.message(),
        format!("tarindex does not match the blob: the tar header at tar offset {header_at} is for b, not for a")
    );
    assert_eq!(err.offset, Some(header_at));
    // Every later read of it fails the same way; the others read on.
    assert_eq!(fs.read(na, 100, 10).unwrap_err(), err);
    let nb = nid(&mut fs, "b");
    assert_eq!(fs.read(nb, 0, 4096).unwrap(), [b'b'; 700]);
    assert!(fs.verify_headers().unwrap_err().is(Kind::Mismatch));
}

#[test]
fn an_index_of_another_tar_fails_on_open() {
    let tar = tar();
    let meta = meta_of(&tar);
    let mut other = member("zzz", b'0', &[b'z'; 4000], "");
    other.extend(tar);
    let err = match open(meta, other, 8) {
        Ok(_) => panic!("opened over another tar"),
        Err(e) => e,
    };
    assert!(err.is(Kind::Mismatch), "{err}");
    assert!(err.message().contains("at tar offset"), "{}", err.message());
}
