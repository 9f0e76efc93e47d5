//! The device against the reference fixtures, natively: whole-device equality, the edges
//! the issue names, and random/interleaved reads with a cache small enough to evict.

use std::path::PathBuf;
use std::process::Command;

use erofs_component::gzran::zinfo::Zinfo;
use erofs_component::gzran::Options;
use erofs_component::source::{MemSource, SizedSource};
use erofs_component::tarindex::Device;
use rand::{rngs::SmallRng, Rng, SeedableRng};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(name)
}

fn source(name: &'static str, bytes: Vec<u8>) -> SizedSource {
    SizedSource::new(name, Box::new(MemSource(bytes))).unwrap()
}

/// meta ‖ uncompressed tar, computed without our code (gzip -dc).
fn expected_device(dir: &str) -> Vec<u8> {
    let mut dev = std::fs::read(fixture(dir).join("meta.erofs")).unwrap();
    let tar = if dir == "plain-tar" {
        std::fs::read(fixture(dir).join("layer.tar")).unwrap()
    } else {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(fixture(dir).join("layer.tar.gz"))
            .output()
            .unwrap();
        assert!(out.status.success());
        out.stdout
    };
    dev.extend_from_slice(&tar);
    dev
}

fn open(dir: &str, zinfo_name: &str, options: Options) -> Device {
    let meta = std::fs::read(fixture(dir).join("meta.erofs")).unwrap();
    if dir == "plain-tar" {
        let blob = std::fs::read(fixture(dir).join("layer.tar")).unwrap();
        return Device::open(source("meta", meta), source("blob", blob), None, options).unwrap();
    }
    let blob = std::fs::read(fixture(dir).join("layer.tar.gz")).unwrap();
    let zinfo = std::fs::read(fixture(dir).join(zinfo_name)).unwrap();
    Device::open(
        source("meta", meta),
        source("blob", blob),
        Some(source("zinfo", zinfo)),
        options,
    )
    .unwrap()
}

const GZIP_FIXTURES: [&str; 5] = ["basic", "multimember", "pigz", "aufs", "large"];

#[test]
fn whole_device_equals_meta_and_gunzip() {
    for dir in GZIP_FIXTURES.iter().chain(["plain-tar"].iter()) {
        let want = expected_device(dir);
        let mut dev = open(dir, "layer.zinfo", Options::default());
        assert_eq!(dev.size(), want.len() as u64, "{dir}: size");
        let mut got = Vec::new();
        let mut off = 0u64;
        while off < dev.size() {
            let piece = dev.pread(off, 128 * 1024 + 17).unwrap();
            assert!(!piece.is_empty());
            off += piece.len() as u64;
            got.extend_from_slice(&piece);
        }
        assert!(got == want, "{dir}: device bytes differ");
        assert!(
            dev.pread(dev.size(), 10).unwrap().is_empty(),
            "{dir}: read at end"
        );
        assert!(
            dev.pread(dev.size() + 4096, 10).unwrap().is_empty(),
            "{dir}: read past end"
        );
        assert!(
            dev.pread(u64::MAX - 3, 10).unwrap().is_empty(),
            "{dir}: read near u64::MAX"
        );
    }
}

#[test]
fn v1_zinfo_reads_the_same() {
    let want = expected_device("basic");
    let mut dev = open("basic", "layer.v1.zinfo", Options::default());
    let got = dev.pread(0, want.len() as u32).unwrap();
    assert!(got == want);
}

#[test]
fn edges_match() {
    for dir in GZIP_FIXTURES {
        let want = expected_device(dir);
        let mut dev = open(
            dir,
            "layer.zinfo",
            Options {
                cache_bytes: 0,
                ..Options::default()
            },
        );
        let meta = dev.meta_size();
        let size = dev.size();
        let mut points = vec![0, meta - 1, meta, meta + 1, size - 1, size, size + 1];
        // Every zinfo checkpoint ±1, as the component's zinfo parser reads them.
        let z = source(
            "zinfo",
            std::fs::read(fixture(dir).join("layer.zinfo")).unwrap(),
        );
        let blob_size = std::fs::metadata(fixture(dir).join("layer.tar.gz"))
            .unwrap()
            .len();
        let zinfo = Zinfo::parse(&z, blob_size).unwrap();
        for cp in &zinfo.checkpoints {
            let out = cp.out;
            points.extend([meta + out.saturating_sub(1), meta + out, meta + out + 1]);
        }
        for &p in &points {
            for len in [1u32, 2, 4096, 70000] {
                let got = dev.pread(p, len).unwrap();
                let lo = (p as usize).min(want.len());
                let hi = (p as usize).saturating_add(len as usize).min(want.len());
                assert!(got[..] == want[lo..hi], "{dir}: read at {p} len {len}");
            }
        }
    }
}

#[test]
fn random_interleaved_reads_with_eviction() {
    let want = expected_device("large");
    let options = Options {
        cache_bytes: 256 * 1024,
        max_cursors: 2,
        learn_interval: 256 * 1024,
        max_learned: 8,
        ..Default::default()
    };
    let mut dev = open("large", "layer.zinfo", options);
    let mut rng = SmallRng::seed_from_u64(7);
    let size = want.len() as u64;
    // Two sequential streams interleaved with random reads.
    let mut streams = [rng.gen_range(0..size / 2), rng.gen_range(size / 2..size)];
    for i in 0..3000 {
        let (off, len) = match i % 3 {
            0 | 1 => {
                let s = &mut streams[i % 3];
                let off = *s;
                *s = (*s + 20_000) % size;
                (off, 20_000u32)
            }
            _ => (rng.gen_range(0..size + 100), rng.gen_range(0..200_000u32)),
        };
        let got = dev.pread(off, len).unwrap();
        let lo = (off as usize).min(want.len());
        let hi = (off as usize).saturating_add(len as usize).min(want.len());
        assert!(got[..] == want[lo..hi], "read {i} at {off} len {len}");
    }
}
