//! The binding checks over the reference fixtures: every right pair passes (PAX-free and
//! long names, hard links, whiteouts, several gzip members, a plain tar); a META of
//! another layer fails on open; a file pointed at another file's bytes fails on read.

use std::path::PathBuf;

use super::*;
use crate::error::Kind;
use crate::fs::Filesystem;
use crate::gzran::Options;
use crate::source::{MemSource, SizedSource};

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(dir)
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn source(name: &'static str, bytes: Vec<u8>) -> SizedSource {
    SizedSource::new(name, Box::new(MemSource(bytes))).unwrap()
}

fn open(meta: Vec<u8>, layer: &str, samples: u32) -> Result<Device> {
    let (blob, zinfo) = if layer == "plain-tar" {
        (fixture(layer, "layer.tar"), None)
    } else {
        (
            fixture(layer, "layer.tar.gz"),
            Some(source("zinfo", fixture(layer, "layer.zinfo"))),
        )
    };
    Device::open_with(
        source("meta", meta),
        source("blob", blob),
        zinfo,
        Options::default(),
        samples,
    )
}

const FIXTURES: [&str; 6] = ["basic", "large", "multimember", "pigz", "aufs", "plain-tar"];

#[test]
fn right_pairs_pass_the_sample_and_the_deep_check() {
    for dir in FIXTURES {
        let device = open(fixture(dir, "meta.erofs"), dir, DEFAULT_HEADER_SAMPLES)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let report = device.sample_report();
        assert!(report.files >= 2, "{dir}: {report:?}");
        assert!(report.files <= DEFAULT_HEADER_SAMPLES, "{dir}: {report:?}");
        let mut fs = Filesystem::open(device).unwrap();
        let files = fs.verify_headers().unwrap_or_else(|e| panic!("{dir}: {e}"));
        let expect = fs.verify().unwrap().regular_files;
        eprintln!("{dir}: {files} of {expect} files, sample {report:?}");
        assert!(files > 0 && files <= expect, "{dir}: {files} of {expect}");
    }
}

#[test]
fn a_meta_of_another_layer_fails_on_open() {
    let err = match open(
        fixture("basic", "meta.erofs"),
        "large",
        DEFAULT_HEADER_SAMPLES,
    ) {
        Ok(_) => panic!("basic's META opened over large's blob"),
        Err(e) => e,
    };
    eprintln!("{err}");
    assert!(err.is(Kind::Mismatch), "{err}");
    assert!(
        err.message()
            .starts_with("tarindex does not match the blob: "),
        "{err}"
    );
    assert!(err.message().contains(" at tar offset "), "{err}");
    assert!(err.offset.is_some(), "{err:?}");
}

#[test]
fn without_the_sample_every_read_of_a_wrong_file_fails() {
    let device = open(fixture("basic", "meta.erofs"), "large", 0).unwrap();
    let mut fs = Filesystem::open(device).unwrap();
    let mut files = Vec::new();
    let image_walk = fs.verify().unwrap();
    assert!(image_walk.regular_files > 0);
    let root = fs.root();
    collect_files(&mut fs, root, &mut files);
    let mut failed = 0;
    for (nid, size) in files {
        if size == 0 {
            continue;
        }
        match fs.read(nid, 0, 4096) {
            Err(e) => {
                assert!(e.is(Kind::Mismatch), "{e}");
                failed += 1;
                // Remembered: the same error again without a new check.
                let again = fs.read(nid, 0, 1).unwrap_err();
                assert_eq!(again, e);
            }
            Ok(_) => panic!("nid {nid} read over the wrong blob"),
        }
    }
    assert!(failed > 10, "{failed}");
    assert!(fs.verify_headers().unwrap_err().is(Kind::Mismatch));
}

fn collect_files(fs: &mut Filesystem, dir: u64, out: &mut Vec<(u64, u64)>) {
    for e in fs.readdir(dir, 0, 4096).unwrap() {
        if e.name == b"." || e.name == b".." {
            continue;
        }
        let a = fs.getattr(e.nid).unwrap();
        match a.file_type() {
            erofs_image::FileType::Directory => collect_files(fs, e.nid, out),
            erofs_image::FileType::Regular => out.push((e.nid, a.size)),
            _ => {}
        }
    }
}

#[test]
fn first_reads_bitmap_is_bounded_by_the_metadata() {
    let fr = FirstReads::new(1 << 20);
    assert_eq!(fr.good.len() as u64, (1u64 << 20) / 32 / 64 + 1);
    assert!(!fr.is_good(u64::MAX));
    assert_eq!(fr.good_count(), 0);
}
