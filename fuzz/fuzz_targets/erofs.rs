//! The EROFS reader: every operation over every reachable inode (getattr, lookup of every
//! name readdir returns and of names that are not there, chained and out-of-range readdir
//! cookies, reads at the start, middle, end and past the end, readlink, listxattr and
//! getxattr of every name, physical extents), then verify. Input: the metadata image
//! (its superblock checksum is recomputed); the device behind it is the image followed by
//! a virtual tar of 64 MiB.
#![no_main]

use std::collections::HashSet;

use erofs_fuzz::{reseal, Padded};
use erofs_image::{Error, Filesystem, ReadAt, VerifyLimits};
use libfuzzer_sys::fuzz_target;

/// Virtual tar bytes after the image: room for the chunk addresses of a real layer.
const TAIL: u64 = 64 << 20;
/// Calls per input, so one input cannot take long however many inodes it reaches.
const BUDGET: u32 = 2000;
/// Inodes that get long reads (4 KiB at the start, 70,000 bytes from the middle).
const LONG_READS: u32 = 16;

struct Dev(Padded);

impl ReadAt for Dev {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        match offset.checked_add(buf.len() as u64) {
            Some(end) if end <= self.0.size => {
                self.0.fill(offset, buf);
                Ok(())
            }
            _ => Err(Error::Io(format!(
                "read of {} at {offset} past the end",
                buf.len()
            ))),
        }
    }
    fn size(&self) -> u64 {
        self.0.size
    }
}

fuzz_target!(|data: &[u8]| {
    erofs_fuzz::bound_memory(128);
    let mut meta = data.to_vec();
    reseal(&mut meta);
    let size = meta.len() as u64 + TAIL;
    let mut dev = Dev(Padded { head: meta, size });
    let Ok(fs) = Filesystem::open(&mut dev) else {
        return;
    };
    let _ = (
        fs.superblock(),
        fs.devices(),
        fs.block_size(),
        fs.meta_size(),
    );
    exercise(&fs, &mut dev);
    let limits = VerifyLimits {
        max_depth: 64,
        max_entries: 20_000,
        ..VerifyLimits::default()
    };
    let _ = fs.verify(&mut dev, limits);
});

fn exercise(fs: &Filesystem, dev: &mut Dev) {
    let mut budget = BUDGET;
    let mut spend = move || {
        budget = budget.saturating_sub(1);
        budget > 0
    };
    let mut queue = vec![fs.root_nid()];
    let mut seen = HashSet::new();
    let mut big = LONG_READS;
    while let Some(nid) = queue.pop() {
        if !seen.insert(nid) || !spend() {
            continue;
        }
        let size = match fs.getattr(dev, nid) {
            Ok(a) => {
                let _ = (a.major(), a.minor(), a.file_type(), a.blocks_512());
                a.size
            }
            Err(_) => 0,
        };
        if let Ok(names) = fs.listxattr(dev, nid) {
            for name in names.iter().take(16) {
                let _ = fs.getxattr(dev, nid, name);
            }
        }
        let _ = fs.getxattr(dev, nid, b"user.absent");
        let _ = fs.getxattr(dev, nid, b"");
        let _ = fs.readlink(dev, nid);
        // Long reads on the first few inodes only: the pattern behind the image costs
        // time per byte, and a real image has a thousand files.
        big = big.saturating_sub(1);
        let long = if big > 0 { 70_000 } else { 64 };
        for (offset, len) in [
            (0, long.min(4096)),
            (size / 2, long),
            (size.saturating_sub(1), 2),
            (size, 1),
            (u64::MAX, 1),
        ] {
            if let Ok(bytes) = fs.read(dev, nid, offset, len) {
                let want = offset
                    .saturating_add(u64::from(len))
                    .min(size)
                    .saturating_sub(offset);
                assert_eq!(
                    bytes.len() as u64,
                    want,
                    "read of {len} at {offset} (size {size})"
                );
            }
        }
        let _ = fs.physical_extents(dev, nid, 0, u64::MAX);
        let _ = fs.physical_extents(dev, nid, size / 2, 4096);
        let _ = fs.lookup(dev, nid, b"no-such-name");
        let _ = fs.lookup(dev, nid, &[b'x'; 300]);
        let _ = fs.readdir(dev, nid, u64::MAX, 4);
        let _ = fs.readdir(dev, nid, 7, 4);
        let mut cookie = 0;
        while spend() {
            let Ok(batch) = fs.readdir(dev, nid, cookie, 32) else {
                break;
            };
            let Some(last) = batch.last() else {
                break;
            };
            if last.next_cookie <= cookie {
                break;
            }
            cookie = last.next_cookie;
            for e in batch {
                if !spend() {
                    break;
                }
                let _ = fs.lookup(dev, nid, &e.name);
                if e.name != b"." && e.name != b".." {
                    queue.push(e.nid);
                }
            }
        }
    }
}
