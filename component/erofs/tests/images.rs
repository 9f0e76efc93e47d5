//! Images made by Debian's erofs-utils 1.5 (see tests/data/make_images.py), checked against the
//! kernel's view: 4 KiB blocks, compact inodes, FLAT_PLAIN / FLAT_INLINE data, 4-byte chunk block
//! maps, shared xattrs, POSIX ACL xattrs, a 500-entry directory, and LZ4 files (refused cleanly).

mod common;

use std::collections::BTreeSet;

use common::{check_readdir, reseal, resolve, walk, Device};
use erofs_image::{Error, FileType, Filesystem, VerifyLimits};

fn load(name: &str) -> (Device, serde_json::Value) {
    common::load_data_image(name)
}

/// Compare the whole tree; returns the filesystem for further checks.
fn run(name: &str, compressed: bool) -> (Device, Filesystem) {
    let (mut dev, exp) = load(name);
    let fs = Filesystem::open(&mut dev).expect("open");
    assert_eq!(fs.block_size(), 4096);
    assert_eq!(fs.meta_size(), dev.meta.len() as u64);
    let entries = exp["entries"].as_array().unwrap();
    common::compare_all(name, &fs, &mut dev, entries, compressed, None);
    // The root's own attributes.
    let root = fs.getattr(&mut dev, fs.root_nid()).unwrap();
    let want_root = &exp["root"];
    assert_eq!(
        format!("0o{:o}", root.mode),
        want_root["mode"].as_str().unwrap()
    );
    assert_eq!(u64::from(root.nlink), want_root["nlink"].as_u64().unwrap());
    assert_eq!(root.size, want_root["size"].as_u64().unwrap());
    // Exactly the expected paths.
    let tree = walk(&fs, &mut dev).unwrap();
    let got: BTreeSet<String> = tree.iter().map(|t| t.0.clone()).collect();
    let want: BTreeSet<String> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got, want);
    let mut dirs = vec![fs.root_nid()];
    dirs.extend(
        tree.iter()
            .filter(|t| t.2 == FileType::Directory)
            .map(|t| t.1),
    );
    for d in dirs {
        check_readdir(&fs, &mut dev, d);
    }
    eprintln!("{name}: {} entries match the kernel", entries.len());
    (dev, fs)
}

#[test]
fn mkfs15_compact_4k() {
    let (mut dev, fs) = run("compact4k", false);
    let report = fs
        .verify(&mut dev, VerifyLimits::default())
        .expect("verify");
    assert_eq!(report.hard_links, 1);
    assert_eq!(report.xattrs, 11, "{report:?}");
    // A 500-entry directory spans several 4 KiB blocks.
    let big = resolve(&fs, &mut dev, "big").unwrap();
    assert!(fs.getattr(&mut dev, big).unwrap().size > 4096 * 4);
}

#[test]
fn mkfs15_chunked_block_map() {
    let (mut dev, fs) = run("chunked4k", false);
    fs.verify(&mut dev, VerifyLimits::default())
        .expect("verify");
    // 70001 bytes in 8 KiB chunks: 9 chunks of the primary device (merged where contiguous).
    let nid = resolve(&fs, &mut dev, "sizes/f70001").unwrap();
    let ext = fs.physical_extents(&mut dev, nid, 0, u64::MAX).unwrap();
    assert_eq!(ext.iter().map(|e| e.len).sum::<u64>(), 70001);
    assert!(ext
        .iter()
        .all(|e| e.physical.is_some_and(|p| p < fs.meta_size())));
    // Windowed extents start where asked.
    let ext = fs.physical_extents(&mut dev, nid, 10_000, 100).unwrap();
    assert_eq!((ext[0].file_offset, ext[0].len), (10_000, 100));
}

#[test]
fn mkfs15_lz4_is_refused_cleanly() {
    let (mut dev, fs) = run("lz4", true);
    let nid = resolve(&fs, &mut dev, "sizes/f70001").unwrap();
    let err = fs.read(&mut dev, nid, 0, 4096).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err:?}");
    assert_eq!(err.errno(), 95);
    // Metadata of compressed files still works.
    assert_eq!(fs.getattr(&mut dev, nid).unwrap().size, 70001);
    assert!(matches!(
        fs.verify(&mut dev, VerifyLimits::default()),
        Err(Error::Unsupported(_))
    ));
    let limits = VerifyLimits {
        check_data_map: false,
        ..VerifyLimits::default()
    };
    fs.verify(&mut dev, limits).expect("metadata-only verify");
}

/// Position of the inline xattr entry whose stored name (without prefix) is `suffix`.
fn inline_xattr_entry(meta: &[u8], pos: usize, suffix: &[u8]) -> usize {
    let isz = if meta[pos] & 1 == 1 { 64 } else { 32 };
    let icount = u16::from_le_bytes([meta[pos + 2], meta[pos + 3]]) as usize;
    let area = pos + isz;
    let end = area + 12 + 4 * (icount - 1);
    let mut p = area + 12 + 4 * meta[area + 4] as usize;
    while p < end {
        let nl = meta[p] as usize;
        let vs = u16::from_le_bytes([meta[p + 2], meta[p + 3]]) as usize;
        if &meta[p + 4..p + 4 + nl] == suffix {
            return p;
        }
        p += (4 + nl + vs).next_multiple_of(4);
    }
    panic!("xattr {suffix:?} not found");
}

/// Turn `user.own1` of xattrs/shared1 into a long-prefix entry: prefix 0 = "user." + "com.example.".
fn with_long_prefix(name: &str, packed: bool) -> (Device, Filesystem, u64) {
    let (mut dev, _) = load(name);
    let fs = Filesystem::open(&mut dev).unwrap();
    let nid = resolve(&fs, &mut dev, "xattrs/shared1").unwrap();
    let pos = fs.inode_location(nid).unwrap() as usize;
    let e = inline_xattr_entry(&dev.meta, pos, b"own1");
    assert_eq!(dev.meta[e + 1], 1, "user. index");
    dev.meta[e + 1] = 0x80;
    let mut record = 13u16.to_le_bytes().to_vec();
    record.push(1);
    record.extend_from_slice(b"com.example.");
    let start = if packed {
        // The table lives at offset 0 of the packed inode's data: borrow a plain file for it.
        let pnid = resolve(&fs, &mut dev, "sizes/f4096").unwrap();
        let ext = fs.physical_extents(&mut dev, pnid, 0, 4096).unwrap();
        let p = ext[0].physical.unwrap() as usize;
        dev.meta[p..p + record.len()].copy_from_slice(&record);
        dev.meta[1024 + 96..1024 + 104].copy_from_slice(&pnid.to_le_bytes());
        0u32
    } else {
        // Free bytes after the shared xattrs, inside the metadata.
        assert!(dev.meta[1196..1216].iter().all(|&b| b == 0));
        dev.meta[1196..1196 + record.len()].copy_from_slice(&record);
        1196 / 4
    };
    dev.meta[1024 + 80] |= 0x40; // INCOMPAT_XATTR_PREFIXES
    dev.meta[1024 + 91] = 1; // xattr_prefix_count
    dev.meta[1024 + 92..1024 + 96].copy_from_slice(&start.to_le_bytes());
    reseal(&mut dev.meta);
    let fs = Filesystem::open(&mut dev).expect("open with a prefix table");
    (dev, fs, nid)
}

#[test]
fn long_xattr_prefixes() {
    for packed in [false, true] {
        let (mut dev, fs, nid) = with_long_prefix("compact4k", packed);
        let names = fs.listxattr(&mut dev, nid).unwrap();
        assert!(
            names.contains(&b"user.com.example.own1".to_vec()),
            "{names:?}"
        );
        assert!(!names.contains(&b"user.own1".to_vec()));
        assert_eq!(
            fs.getxattr(&mut dev, nid, b"user.com.example.own1")
                .unwrap(),
            vec![b'v'; 50]
        );
        assert_eq!(fs.getxattr(&mut dev, nid, b"user.own1"), Err(Error::NoAttr));
        // Shared xattrs are unaffected.
        assert_eq!(fs.getxattr(&mut dev, nid, b"trusted.common").unwrap(), b"T");
        fs.verify(&mut dev, VerifyLimits::default()).unwrap();
        // An index past the table is corrupt.
        let pos = fs.inode_location(nid).unwrap() as usize;
        let e = inline_xattr_entry(&dev.meta, pos, b"own1");
        dev.meta[e + 1] = 0x81;
        assert!(matches!(
            fs.listxattr(&mut dev, nid),
            Err(Error::Corrupt(_))
        ));
    }
    // The plain-prefix compat bit moves the table back into the metadata even with a packed inode.
    let (mut dev, _fs, nid) = with_long_prefix("compact4k", false);
    dev.meta[1024 + 96..1024 + 104].copy_from_slice(&12345u64.to_le_bytes());
    dev.meta[1024 + 8] |= 0x10;
    reseal(&mut dev.meta);
    let fs = Filesystem::open(&mut dev).unwrap();
    assert!(fs.getxattr(&mut dev, nid, b"user.com.example.own1").is_ok());
}

#[test]
fn long_prefix_table_in_compressed_packed_inode_is_unsupported() {
    let (mut dev, _) = load("lz4");
    let fs = Filesystem::open(&mut dev).unwrap();
    let nid = resolve(&fs, &mut dev, "xattrs/shared1").unwrap();
    let compressed = resolve(&fs, &mut dev, "sizes/f70001").unwrap();
    assert!(matches!(
        fs.read(&mut dev, compressed, 0, 1),
        Err(Error::Unsupported(_))
    ));
    let pos = fs.inode_location(nid).unwrap() as usize;
    let e = inline_xattr_entry(&dev.meta, pos, b"own1");
    dev.meta[e + 1] = 0x80;
    dev.meta[1024 + 96..1024 + 104].copy_from_slice(&compressed.to_le_bytes());
    dev.meta[1024 + 80] |= 0x40;
    dev.meta[1024 + 91] = 1;
    reseal(&mut dev.meta);
    // Opening works; only xattrs that need the table fail, with EOPNOTSUPP.
    let fs = Filesystem::open(&mut dev).unwrap();
    let err = fs.listxattr(&mut dev, nid).unwrap_err();
    assert_eq!(err.errno(), 95, "{err:?}");
    let other = resolve(&fs, &mut dev, "xattrs/shared2").unwrap();
    assert_eq!(fs.listxattr(&mut dev, other).unwrap().len(), 3);
}
