//! Targeted corruptions of the plain-tar fixture: each gives an error (never a panic) on the affected
//! path, while the rest of the tree keeps working.

mod common;

use common::{resolve, Device};
use erofs_image::{crc32c, Error, FileType, Filesystem, ReadAt, VerifyLimits};

const FIXTURE: &str = "plain-tar";

fn setup() -> (Device, Filesystem) {
    let mut dev = Device::open(FIXTURE);
    let fs = Filesystem::open(&mut dev).expect("open pristine image");
    (dev, fs)
}

/// Recompute the superblock checksum after editing bytes it covers (blksz 512: bytes 1024..1536).
fn reseal(meta: &mut [u8]) {
    let mut area = meta[1024..1536].to_vec();
    area[4..8].fill(0);
    let crc = crc32c(0xFFFF_FFFF, &area);
    meta[1028..1032].copy_from_slice(&crc.to_le_bytes());
}

fn reopen(dev: &mut Device) -> Filesystem {
    reseal(&mut dev.meta);
    Filesystem::open(dev).expect("reopen after corruption")
}

fn nid_of(fs: &Filesystem, dev: &mut Device, path: &str) -> u64 {
    resolve(fs, dev, path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn inode_pos(fs: &Filesystem, nid: u64) -> usize {
    fs.inode_location(nid).unwrap() as usize
}

/// 32 for a compact inode, 64 for an extended one.
fn inode_size(dev: &Device, pos: usize) -> usize {
    if dev.meta[pos] & 1 == 1 {
        64
    } else {
        32
    }
}

/// Absolute position of the dirent `name` inside directory `dir`, and of the start of its block.
fn dirent_pos(fs: &Filesystem, dev: &mut Device, dir: &str, name: &[u8]) -> (usize, usize) {
    let dnid = nid_of(fs, dev, dir);
    let size = fs.getattr(dev, dnid).unwrap().size;
    for blk in 0..size.div_ceil(512) {
        let ext = fs.physical_extents(dev, dnid, blk * 512, 512).unwrap();
        assert_eq!(ext.len(), 1);
        let p = ext[0].physical.unwrap() as usize;
        let len = ext[0].len as usize;
        let block = dev.meta[p..p + len].to_vec();
        let count = u16::from_le_bytes([block[8], block[9]]) as usize / 12;
        for i in 0..count {
            let off = u16::from_le_bytes([block[i * 12 + 8], block[i * 12 + 9]]) as usize;
            let end = if i + 1 < count {
                u16::from_le_bytes([block[i * 12 + 20], block[i * 12 + 21]]) as usize
            } else {
                len
            };
            let n: Vec<u8> = block[off..end]
                .iter()
                .copied()
                .take_while(|&c| c != 0)
                .collect();
            if n == name {
                return (p + i * 12, p);
            }
        }
    }
    panic!("{dir}/{}: dirent not found", String::from_utf8_lossy(name));
}

/// Every expected entry outside `skip` (path prefixes) still resolves, stats and reads.
fn others_ok(fs: &Filesystem, dev: &mut Device, skip: &[&str]) -> usize {
    let exp = common::expected(FIXTURE);
    let mut n = 0;
    for e in exp["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        if skip
            .iter()
            .any(|s| path == *s || path.starts_with(&format!("{s}/")))
        {
            continue;
        }
        let nid = resolve(fs, dev, path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let a = fs
            .getattr(dev, nid)
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        assert_eq!(a.size, e["size"].as_u64().unwrap(), "{path}");
        match a.file_type() {
            FileType::Regular => {
                let got = fs
                    .read(dev, nid, 0, 4096)
                    .unwrap_or_else(|err| panic!("{path}: {err}"));
                assert_eq!(got.len() as u64, a.size.min(4096), "{path}");
            }
            FileType::Directory => {
                fs.readdir(dev, nid, 0, usize::MAX)
                    .unwrap_or_else(|err| panic!("{path}: {err}"));
            }
            FileType::Symlink => {
                fs.readlink(dev, nid)
                    .unwrap_or_else(|err| panic!("{path}: {err}"));
            }
            _ => {}
        }
        fs.listxattr(dev, nid)
            .unwrap_or_else(|err| panic!("{path}: {err}"));
        n += 1;
    }
    assert!(n > 40, "checked {n} entries");
    n
}

fn is_corrupt<T: std::fmt::Debug>(r: Result<T, Error>) -> String {
    match r {
        Err(Error::Corrupt(m)) => m,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[test]
fn superblock_checksum_mismatch() {
    let mut dev = Device::open(FIXTURE);
    dev.meta[1024 + 64] ^= 0x55; // volume_name, covered by the checksum
    let m = is_corrupt(Filesystem::open(&mut dev));
    assert!(m.contains("checksum"), "{m}");
    assert_eq!(Filesystem::open(&mut dev).unwrap_err().errno(), 117);
    // The checksum covers the first 512 bytes from 1024, including the root inode at 1280.
    let mut dev = Device::open(FIXTURE);
    dev.meta[1500] ^= 1;
    is_corrupt(Filesystem::open(&mut dev));
    // After resealing, the volume name change is harmless.
    let mut dev = Device::open(FIXTURE);
    dev.meta[1024 + 64] ^= 0x55;
    let fs = reopen(&mut dev);
    others_ok(&fs, &mut dev, &[]);
}

#[test]
fn superblock_field_checks() {
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut dev = Device::open(FIXTURE);
        f(&mut dev.meta);
        reseal(&mut dev.meta);
        Filesystem::open(&mut dev).map(|_| ())
    };
    // Bad magic.
    assert!(matches!(edit(&|m| m[1024] = 0), Err(Error::Corrupt(_))));
    // Unknown incompat bit.
    assert!(matches!(
        edit(&|m| m[1024 + 81] |= 0x80),
        Err(Error::Unsupported(_))
    ));
    // Block size 2^20.
    assert!(matches!(
        edit(&|m| m[1024 + 12] = 20),
        Err(Error::Unsupported(_))
    ));
    // More metadata blocks than the device holds.
    assert!(matches!(
        edit(&|m| m[1024 + 39] = 0x7f),
        Err(Error::Corrupt(_))
    ));
    // Root nid past the metadata.
    assert!(matches!(
        edit(&|m| m[1024 + 15] = 0xff),
        Err(Error::Corrupt(_))
    ));
    // Root nid pointing at a regular file's inode (nid 0 is inside the superblock area: garbage).
    assert!(edit(&|m| m[1024 + 14..1024 + 16].copy_from_slice(&0u16.to_le_bytes())).is_err());
    // Device table slot overlapping the metadata.
    assert!(matches!(
        edit(&|m| m[1152 + 68] = 1),
        Err(Error::Corrupt(_))
    ));
    // CHUNKED_FILE set is fine; clearing the checksum flag disables the check.
    assert!(edit(&|m| m[1024 + 80] |= 0x4).is_ok());
    let mut dev = Device::open(FIXTURE);
    dev.meta[1024 + 8] &= !1;
    dev.meta[1024 + 64] ^= 0x55;
    assert!(Filesystem::open(&mut dev).is_ok());
    // A device too small for the superblock.
    let mut dev = Device::open(FIXTURE);
    dev.meta.truncate(1100);
    dev.tail = common::Tail::Mem(Vec::new());
    assert!(matches!(Filesystem::open(&mut dev), Err(Error::Corrupt(_))));
}

#[test]
fn corrupt_inode_fields() {
    for (what, offset, value, expect_unsupported) in [
        ("bogus i_mode type", 5usize, 0x00u8, false),
        ("data layout 7", 0, 0x0f, true),
        ("unknown i_format bit", 1, 0x80, true),
        ("huge xattr count", 3, 0xff, false),
        ("mtime nsec >= 1e9", 43, 0xff, false),
    ] {
        let (mut dev, fs) = setup();
        let nid = nid_of(&fs, &mut dev, "sizes/f513");
        let pos = inode_pos(&fs, nid);
        dev.meta[pos + offset] = value;
        let fs = reopen(&mut dev);
        // The dirent is intact, so lookup still answers; the inode itself is refused.
        assert_eq!(resolve(&fs, &mut dev, "sizes/f513").unwrap(), nid);
        let r = fs.getattr(&mut dev, nid);
        match (&r, expect_unsupported) {
            (Err(Error::Unsupported(_)), true) | (Err(Error::Corrupt(_)), false) => {}
            _ => panic!("{what}: {r:?}"),
        }
        assert!(fs.read(&mut dev, nid, 0, 100).is_err(), "{what}");
        assert!(fs.listxattr(&mut dev, nid).is_err(), "{what}");
        let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
        assert!(
            v.to_string().contains("sizes/f513") || v.to_string().contains("hardlink-to-f513"),
            "{what}: {v}"
        );
        others_ok(&fs, &mut dev, &["sizes/f513", "names/hardlink-to-f513"]);
    }
}

#[test]
fn inline_tail_crossing_block_boundary() {
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, "names/long-link");
    let pos = inode_pos(&fs, nid);
    // Claim a 4000-byte target: the inline tail now runs past its block.
    dev.meta[pos + 8..pos + 16].copy_from_slice(&4000u64.to_le_bytes());
    let fs = reopen(&mut dev);
    let m = is_corrupt(fs.readlink(&mut dev, nid));
    // (Its start block, unused until now, is also outside the metadata.)
    assert!(
        m.contains("block boundary") || m.contains("past") || m.contains("outside the metadata"),
        "{m}"
    );
    others_ok(&fs, &mut dev, &["names/long-link"]);
}

#[test]
fn dirent_nameoff_past_block() {
    let (mut dev, fs) = setup();
    let (p, _) = dirent_pos(
        &fs,
        &mut dev,
        "many",
        b"entry-0150-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
    );
    dev.meta[p + 8..p + 10].copy_from_slice(&0xfff0u16.to_le_bytes());
    let fs = reopen(&mut dev);
    let many = nid_of(&fs, &mut dev, "many");
    is_corrupt(fs.lookup(&mut dev, many, b"entry-0150-xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"));
    is_corrupt(fs.readdir(&mut dev, many, 0, usize::MAX));
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(v.to_string().contains("/many"), "{v}");
    // Names in other blocks of the same directory still resolve.
    assert!(fs.lookup(&mut dev, many, b"entry-0000-").is_ok());
    others_ok(&fs, &mut dev, &["many"]);
}

#[test]
fn dirent_nid_out_of_range() {
    let (mut dev, fs) = setup();
    let (p, _) = dirent_pos(&fs, &mut dev, "sizes", b"f1");
    dev.meta[p..p + 8].copy_from_slice(&0x0000_00ff_ffff_ffffu64.to_le_bytes());
    let fs = reopen(&mut dev);
    let sizes = nid_of(&fs, &mut dev, "sizes");
    let (nid, _) = fs.lookup(&mut dev, sizes, b"f1").unwrap();
    let m = is_corrupt(fs.getattr(&mut dev, nid));
    assert!(m.contains(&format!("nid {nid}")), "{m}");
    is_corrupt(fs.read(&mut dev, nid, 0, 1));
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(v.to_string().contains("/sizes/f1:"), "{v}");
    others_ok(&fs, &mut dev, &["sizes/f1"]);
}

#[test]
fn directory_cycle() {
    let (mut dev, fs) = setup();
    let root = fs.root_nid();
    let (p, _) = dirent_pos(&fs, &mut dev, "names/d00-abcdefghij", b"d01-abcdefghij");
    dev.meta[p..p + 8].copy_from_slice(&root.to_le_bytes());
    let fs = reopen(&mut dev);
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(matches!(v, Error::Corrupt(_)));
    assert!(
        v.to_string()
            .contains("names/d00-abcdefghij/d01-abcdefghij"),
        "{v}"
    );
    assert!(v.to_string().contains("twice"), "{v}");
    // Following the cycle is harmless: it lands on the root.
    assert_eq!(
        resolve(&fs, &mut dev, "names/d00-abcdefghij/d01-abcdefghij/sizes").unwrap(),
        nid_of(&fs, &mut dev, "sizes")
    );
    others_ok(&fs, &mut dev, &["names/d00-abcdefghij/d01-abcdefghij"]);
}

/// Position of the first chunk index of a chunk-based file (extended inode, no xattrs).
fn chunk_index_pos(fs: &Filesystem, dev: &mut Device, path: &str) -> (u64, usize) {
    let nid = nid_of(fs, dev, path);
    let pos = inode_pos(fs, nid);
    let format = u16::from_le_bytes([dev.meta[pos], dev.meta[pos + 1]]);
    assert_eq!((format >> 1) & 7, 4, "{path} is chunk based");
    assert_eq!(format & 1, 1, "{path} has an extended inode");
    let icount = u16::from_le_bytes([dev.meta[pos + 2], dev.meta[pos + 3]]) as usize;
    let xattrs = if icount == 0 {
        0
    } else {
        12 + 4 * (icount - 1)
    };
    (nid, (pos + 64 + xattrs).next_multiple_of(8))
}

#[test]
fn bad_chunk_index() {
    let path = "sizes/f4096";
    // device id 7 with a 1-slot table.
    let (mut dev, fs) = setup();
    let (nid, ci) = chunk_index_pos(&fs, &mut dev, path);
    assert_eq!(u16::from_le_bytes([dev.meta[ci + 2], dev.meta[ci + 3]]), 1);
    dev.meta[ci + 2] = 7;
    let fs = reopen(&mut dev);
    assert!(fs.getattr(&mut dev, nid).is_ok());
    let m = is_corrupt(fs.read(&mut dev, nid, 0, 10));
    assert!(m.contains("device id 7"), "{m}");
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(v.to_string().contains(path), "{v}");
    others_ok(&fs, &mut dev, &[path]);

    // Start block past the end of the tar slot.
    let (mut dev, fs) = setup();
    let (nid, ci) = chunk_index_pos(&fs, &mut dev, path);
    let slot_blocks = fs.devices()[0].blocks as u32;
    dev.meta[ci + 4..ci + 8].copy_from_slice(&(slot_blocks - 1).to_le_bytes());
    let fs = reopen(&mut dev);
    is_corrupt(fs.read(&mut dev, nid, 0, 10));
    assert!(fs.verify(&mut dev, VerifyLimits::default()).is_err());
    others_ok(&fs, &mut dev, &[path]);

    // A hole reads as zeros and is valid.
    let (mut dev, fs) = setup();
    let (nid, ci) = chunk_index_pos(&fs, &mut dev, path);
    dev.meta[ci + 4..ci + 8].copy_from_slice(&u32::MAX.to_le_bytes());
    let fs = reopen(&mut dev);
    assert_eq!(fs.read(&mut dev, nid, 0, 8192).unwrap(), vec![0u8; 4096]);
    let ext = fs.physical_extents(&mut dev, nid, 0, u64::MAX).unwrap();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].physical, None);
    fs.verify(&mut dev, VerifyLimits::default()).unwrap();

    // Unknown chunk format bits are refused at getattr.
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, path);
    let pos = inode_pos(&fs, nid);
    dev.meta[pos + 16] |= 0x80;
    let fs = reopen(&mut dev);
    is_corrupt(fs.getattr(&mut dev, nid));
    others_ok(&fs, &mut dev, &[path]);

    // A size needing more chunks than the index array allows runs past the metadata.
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, path);
    let pos = inode_pos(&fs, nid);
    dev.meta[pos + 8..pos + 16].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let fs = reopen(&mut dev);
    is_corrupt(fs.getattr(&mut dev, nid));
    others_ok(&fs, &mut dev, &[path]);
}

#[test]
fn corrupt_xattrs() {
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, "xattrs/file");
    let pos = inode_pos(&fs, nid);
    let icount = u16::from_le_bytes([dev.meta[pos + 2], dev.meta[pos + 3]]);
    assert!(icount > 0);
    // First inline entry (no shared xattrs): value size far past the area.
    let first = pos + inode_size(&dev, pos) + 12;
    dev.meta[first + 2..first + 4].copy_from_slice(&0xfff0u16.to_le_bytes());
    let fs = reopen(&mut dev);
    is_corrupt(fs.listxattr(&mut dev, nid));
    is_corrupt(fs.getxattr(&mut dev, nid, b"user.demo"));
    assert!(fs.read(&mut dev, nid, 0, 10).is_ok(), "data is unaffected");
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(v.to_string().contains("xattrs/file"), "{v}");
    others_ok(&fs, &mut dev, &["xattrs/file"]);

    // A long-prefix index with no prefix table.
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, "xattrs/file");
    dev.meta[first + 1] = 0x85;
    let fs = reopen(&mut dev);
    is_corrupt(fs.listxattr(&mut dev, nid));
    // Too many shared xattr ids for the area.
    let (mut dev, fs) = setup();
    let nid = nid_of(&fs, &mut dev, "xattrs/file");
    let isz = inode_size(&dev, pos);
    dev.meta[pos + isz + 4] = 200;
    let fs = reopen(&mut dev);
    is_corrupt(fs.listxattr(&mut dev, nid));
}

#[test]
fn unsorted_directory_is_reported() {
    let (mut dev, fs) = setup();
    // Rename "f1" to "f9" in place: "sizes" is no longer sorted.
    let (p, block_start) = dirent_pos(&fs, &mut dev, "sizes", b"f1");
    let nameoff = u16::from_le_bytes([dev.meta[p + 8], dev.meta[p + 9]]) as usize;
    assert_eq!(
        &dev.meta[block_start + nameoff..block_start + nameoff + 2],
        b"f1"
    );
    dev.meta[block_start + nameoff + 1] = b'9';
    let fs = reopen(&mut dev);
    let v = fs.verify(&mut dev, VerifyLimits::default()).unwrap_err();
    assert!(v.to_string().contains("out of order"), "{v}");
    assert!(v.to_string().contains("/sizes/"), "{v}");
}

#[test]
fn verify_limits_are_enforced() {
    let (mut dev, fs) = setup();
    let limits = VerifyLimits {
        max_depth: 5,
        ..VerifyLimits::default()
    };
    let v = fs.verify(&mut dev, limits).unwrap_err();
    assert!(v.to_string().contains("deeper than 5"), "{v}");
    let limits = VerifyLimits {
        max_entries: 10,
        ..VerifyLimits::default()
    };
    assert!(matches!(fs.verify(&mut dev, limits), Err(Error::Range(_))));
}

#[test]
fn short_device_reads_fail_cleanly() {
    // The tar is missing: every data read is an I/O error, metadata still works.
    let (mut dev, fs) = setup();
    dev.tail = common::Tail::Mem(Vec::new());
    let nid = nid_of(&fs, &mut dev, "sizes/f4096");
    assert!(fs.getattr(&mut dev, nid).is_ok());
    assert!(matches!(fs.read(&mut dev, nid, 0, 10), Err(Error::Io(_))));
    assert_eq!(dev.size(), dev.meta.len() as u64);
}
