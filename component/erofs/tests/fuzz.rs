//! Randomized robustness: flip random bytes of the metadata thousands of times and call every API on
//! every reachable inode. Errors are fine; a panic (or a hang) is a failure.
//!
//! `EROFS_FUZZ_SEED` and `EROFS_FUZZ_ITERS` override the fixed seed and the iteration count.

mod common;

use std::collections::HashSet;
use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{reseal, Device};
use erofs_image::{Filesystem, VerifyLimits};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Call every API on inodes reachable from the root, within `budget` calls.
fn exercise(fs: &Filesystem, dev: &mut Device, rng: &mut SmallRng, mut budget: u32) {
    let mut queue = vec![fs.root_nid()];
    let mut seen = HashSet::new();
    let mut spend = |n: u32| {
        budget = budget.saturating_sub(n);
        budget > 0
    };
    while let Some(nid) = queue.pop() {
        if !seen.insert(nid) || !spend(1) {
            continue;
        }
        let attr = fs.getattr(dev, nid);
        let size = attr.as_ref().map(|a| a.size).unwrap_or(0);
        if let Ok(a) = &attr {
            let _ = (a.major(), a.minor(), a.file_type(), a.blocks_512());
        }
        if let Ok(names) = fs.listxattr(dev, nid) {
            for n in names.iter().take(8) {
                let _ = fs.getxattr(dev, nid, n);
            }
        }
        let _ = fs.getxattr(dev, nid, b"user.nope");
        let _ = fs.getxattr(dev, nid, b"trusted.overlay.opaque");
        let _ = fs.readlink(dev, nid);
        let _ = fs.read(dev, nid, 0, 4096);
        let off = if size > 0 {
            rng.gen_range(0..size)
        } else {
            rng.gen()
        };
        let _ = fs.read(dev, nid, off, rng.gen_range(0..70_000));
        let _ = fs.read(dev, nid, rng.gen(), rng.gen());
        let _ = fs.physical_extents(dev, nid, 0, u64::MAX);
        let _ = fs.physical_extents(dev, nid, off, rng.gen());
        // readdir, chained, and lookups of what it returns.
        let mut cookie = 0;
        for _ in 0..64 {
            if !spend(1) {
                break;
            }
            let Ok(batch) = fs.readdir(dev, nid, cookie, 16) else {
                break;
            };
            let Some(last) = batch.last() else { break };
            if last.next_cookie <= cookie {
                break;
            }
            cookie = last.next_cookie;
            for e in batch {
                let _ = fs.lookup(dev, nid, &e.name);
                if e.name != b"." && e.name != b".." {
                    queue.push(e.nid);
                }
            }
        }
        let _ = fs.readdir(dev, nid, rng.gen(), 4);
        let _ = fs.readdir(dev, nid, rng.gen_range(0..1 << 20), 4);
        let _ = fs.lookup(dev, nid, b"sizes");
        let _ = fs.lookup(dev, nid, b"..");
        let _ = fs.lookup(dev, nid, b"zzzz");
    }
    // Random nids too.
    for _ in 0..8 {
        let nid = rng.gen_range(0..2048);
        let _ = fs.getattr(dev, nid);
        let _ = fs.readdir(dev, nid, 0, 8);
        let _ = fs.listxattr(dev, nid);
        let _ = fs.read(dev, nid, 0, 512);
    }
    let limits = VerifyLimits {
        max_depth: 64,
        max_entries: 4096,
        ..VerifyLimits::default()
    };
    let _ = fs.verify(dev, limits);
}

fn fuzz_fixture(name: &str, iters: u64, seed: u64) {
    let base = if let Some(image) = name.strip_prefix("data/") {
        common::load_data_image(image).0
    } else {
        Device::open_in_memory(name)
    };
    let pristine = base.meta.clone();
    let mut dev = base;
    let mut rng = SmallRng::seed_from_u64(seed);
    let (mut opened, mut failed_open) = (0u64, 0u64);
    for it in 0..iters {
        dev.meta.copy_from_slice(&pristine);
        let mut edits = Vec::new();
        for _ in 0..rng.gen_range(1..=4) {
            let pos = match rng.gen_range(0..10) {
                0..=2 => rng.gen_range(1024..1280.min(dev.meta.len())),
                _ => rng.gen_range(1024..dev.meta.len()),
            };
            let v = match rng.gen_range(0..4) {
                0 => dev.meta[pos] ^ (1 << rng.gen_range(0..8)),
                1 => 0xff,
                2 => 0,
                _ => rng.gen(),
            };
            dev.meta[pos] = v;
            edits.push((pos, v));
        }
        if rng.gen_range(0..5) != 0 {
            reseal(&mut dev.meta);
        }
        let iter_seed: u64 = rng.gen();
        let r = catch_unwind(AssertUnwindSafe(|| {
            let mut local = SmallRng::seed_from_u64(iter_seed);
            match Filesystem::open(&mut dev) {
                Ok(fs) => {
                    exercise(&fs, &mut dev, &mut local, 600);
                    true
                }
                Err(e) => {
                    let _ = e.errno();
                    false
                }
            }
        }));
        match r {
            Ok(true) => opened += 1,
            Ok(false) => failed_open += 1,
            Err(_) => panic!("{name}: panic at iteration {it} (seed {seed}), edits {edits:?}"),
        }
    }
    eprintln!("{name}: {iters} iterations, {opened} opened, {failed_open} refused at open");
    assert!(opened > iters / 4, "most mutations should still open");
}

#[test]
fn random_byte_flips_plain_tar() {
    let seed = env_u64("EROFS_FUZZ_SEED", 0x00E0_F5E1);
    let iters = env_u64("EROFS_FUZZ_ITERS", 1200);
    fuzz_fixture("plain-tar", iters, seed);
}

#[test]
fn random_byte_flips_aufs() {
    let seed = env_u64("EROFS_FUZZ_SEED", 0x00E0_F5E2);
    let iters = env_u64("EROFS_FUZZ_ITERS", 3000);
    fuzz_fixture("aufs", iters, seed);
}

#[test]
fn random_byte_flips_mkfs15_images() {
    let seed = env_u64("EROFS_FUZZ_SEED", 0x00E0_F5E3);
    let iters = env_u64("EROFS_FUZZ_ITERS", 600);
    fuzz_fixture("data/compact4k", iters, seed);
    fuzz_fixture("data/chunked4k", iters, seed ^ 1);
}
