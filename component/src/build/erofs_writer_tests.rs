//! EROFS writer tests: images read back with erofs-image over `META ‖ tar`.

use std::collections::BTreeMap;

use super::*;
use crate::build::tar::{Entry, Kind};
use crate::build::test_support::{entry, Mem};
use crate::build::tree::{TreeBuilder, TreeOptions};
use crate::build::xattr::check_xattr;

/// Build an image from entries; the fake tar has `data` at block 1.
fn image(entries: Vec<Entry>, tar: &[u8]) -> (Vec<u8>, Mem) {
    let mut b = TreeBuilder::new(TreeOptions::default());
    for e in entries {
        b.add(e).unwrap();
    }
    let tree = b.finish().unwrap();
    let (meta, _) = write_image(&tree, tar.len() as u64, [7u8; 16]).unwrap();
    let mut dev = meta.clone();
    dev.extend_from_slice(tar);
    (meta, Mem(dev))
}

fn nid_of(fs: &erofs_image::Filesystem, dev: &mut Mem, path: &str) -> u64 {
    let mut nid = fs.root_nid();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        nid = fs.lookup(dev, nid, part.as_bytes()).unwrap().0;
    }
    nid
}

#[test]
fn a_small_tree_reads_back() {
    let mut tar = vec![0u8; 512];
    tar.extend_from_slice(b"hello, world");
    tar.resize(2048, 0);
    let mut f = entry("dir/file", Kind::Regular);
    f.size = 12;
    f.data_offset = 512;
    f.mtime_nsec = 5;
    f.xattrs = vec![
        (b"user.a".to_vec(), b"1".to_vec()),
        (b"trusted.b".to_vec(), vec![0u8; 300]),
        (b"system.posix_acl_access".to_vec(), vec![2, 0, 0, 0]),
    ];
    let mut s = entry("dir/link", Kind::Symlink);
    s.link = b"x".repeat(600);
    s.mode = 0o777;
    let mut d = entry("dev", Kind::BlockDevice);
    d.dev_major = 259;
    d.dev_minor = 300_000;
    let mut big_uid = entry("owned", Kind::Fifo);
    big_uid.uid = 100_000;
    let (meta, mut dev) = image(vec![f, s, d, big_uid, entry("empty", Kind::Regular)], &tar);
    assert_eq!(meta.len() % 512, 0);
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let report = fs.verify(&mut dev, Default::default()).unwrap();
    assert_eq!(report.entries, 6);
    let nid = nid_of(&fs, &mut dev, "dir/file");
    assert_eq!(fs.read(&mut dev, nid, 0, 100).unwrap(), b"hello, world");
    let attr = fs.getattr(&mut dev, nid).unwrap();
    assert_eq!((attr.mtime_sec, attr.mtime_nsec), (1_700_000_000, 5));
    assert_eq!(
        fs.getxattr(&mut dev, nid, b"trusted.b").unwrap(),
        vec![0u8; 300]
    );
    assert_eq!(
        fs.getxattr(&mut dev, nid, b"system.posix_acl_access")
            .unwrap(),
        vec![2, 0, 0, 0]
    );
    let link = nid_of(&fs, &mut dev, "dir/link");
    assert_eq!(fs.readlink(&mut dev, link).unwrap(), b"x".repeat(600));
    let d_nid = nid_of(&fs, &mut dev, "dev");
    let d = fs.getattr(&mut dev, d_nid).unwrap();
    assert_eq!((d.major(), d.minor()), (259, 300_000));
    let o_nid = nid_of(&fs, &mut dev, "owned");
    let o = fs.getattr(&mut dev, o_nid).unwrap();
    assert_eq!((o.uid, o.mode), (100_000, 0o010644));
    // The superblock: checksum, features, device slot.
    let sb = &meta[1024..1152];
    assert_eq!(&sb[8..12], &3u32.to_le_bytes());
    assert_eq!(&sb[80..84], &8u32.to_le_bytes());
    let blocks = (meta.len() / 512) as u32;
    assert_eq!(&sb[36..40], &blocks.to_le_bytes());
    assert_eq!(&meta[1152 + 64..1152 + 68], &4u32.to_le_bytes());
    assert_eq!(&meta[1152 + 68..1152 + 72], &blocks.to_le_bytes());
    let mut copy = meta[1024..1536].to_vec();
    copy[4..8].fill(0);
    assert_eq!(
        erofs_image::crc32c(0xFFFF_FFFF, &copy).to_le_bytes(),
        sb[4..8]
    );
}

/// A root whose dirents leave a tail too long to sit inline after the root inode at
/// byte 1280 is moved to the next block; the superblock must name it there (the
/// build_tar fuzz target found the superblock still saying nid 40).
#[test]
fn a_root_moved_by_its_inline_tail_is_the_root() {
    // 20 names of 10 bytes, `.` and `..`: 467 bytes of dirents, above the 224 bytes left
    // after a compact inode at 1280.
    let entries = (0..20)
        .map(|i| entry(&format!("name-{i:05}"), Kind::Regular))
        .collect();
    let (meta, mut dev) = image(entries, &[0u8; 512]);
    let root_nid = u16::from_le_bytes([meta[1024 + 14], meta[1024 + 15]]);
    assert_ne!(root_nid, 40, "the root should have moved to the next block");
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let root = fs.getattr(&mut dev, fs.root_nid()).unwrap();
    assert_eq!(root.mode & 0o170000, 0o040000);
    fs.verify(&mut dev, Default::default()).unwrap();
    nid_of(&fs, &mut dev, "name-00019");
}

#[test]
fn big_directories_and_determinism() {
    let mut entries = vec![entry("d", Kind::Directory)];
    for i in 0..400 {
        let name = format!("d/{}-{i}", "n".repeat(i % 200));
        entries.push(entry(&name, Kind::Regular));
    }
    entries.push(entry("d/!first", Kind::Regular));
    let (meta, mut dev) = image(entries.clone(), &[0u8; 1024]);
    let (meta2, _) = image(entries, &[0u8; 1024]);
    assert_eq!(meta, meta2);
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    fs.verify(&mut dev, Default::default()).unwrap();
    let d = nid_of(&fs, &mut dev, "d");
    let list = fs.readdir(&mut dev, d, 0, 10_000).unwrap();
    let names: Vec<Vec<u8>> = list.iter().map(|e| e.name.clone()).collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(names.len(), 403);
    assert_eq!(
        names[0], b"!first",
        "names below '.' sort before the dot entries"
    );
    for i in [0usize, 199, 399] {
        nid_of(&fs, &mut dev, &format!("d/{}-{i}", "n".repeat(i % 200)));
    }
}

#[test]
fn compact_inodes_only_at_the_epoch() {
    let mut odd = entry("odd", Kind::Regular);
    odd.mtime = 5;
    let (meta, mut dev) = image(
        vec![entry("a", Kind::Regular), entry("b", Kind::Regular), odd],
        &[0u8; 1024],
    );
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let epoch = u64::from_le_bytes(meta[1024 + 24..1024 + 32].try_into().unwrap());
    assert_eq!(epoch, 1_700_000_000);
    for (path, mtime, compact) in [("a", 1_700_000_000, true), ("odd", 5, false)] {
        let nid = nid_of(&fs, &mut dev, path);
        let at = nid as usize * 32;
        assert_eq!(meta[at] & 1 == 0, compact, "{path}");
        assert_eq!(fs.getattr(&mut dev, nid).unwrap().mtime_sec, mtime);
    }
}

#[test]
fn chunk_formats() {
    // A 513-byte file gets chunkbits 10 (format 0x21); a 9 GiB one 34 bits.
    let tree_with = |size: u64, offset: u64| {
        let mut e = entry("f", Kind::Regular);
        e.size = size;
        e.data_offset = offset;
        let mut b = TreeBuilder::new(TreeOptions::default());
        b.add(e).unwrap();
        b.finish().unwrap()
    };
    let t = tree_with(513, 512);
    let (meta, _) = write_image(&t, 2048, [0; 16]).unwrap();
    let f = find_inode(&meta, &t);
    assert_eq!(u16::from_le_bytes([meta[f + 16], meta[f + 17]]), 0x21);
    let t = tree_with(9 << 30, 1 << 20);
    let (meta, _) = write_image(&t, (9 << 30) + (2 << 20), [0; 16]).unwrap();
    let f = find_inode(&meta, &t);
    assert_eq!(
        u16::from_le_bytes([meta[f + 16], meta[f + 17]]),
        0x20 | (34 - 9)
    );
    // Past 2 TiB of tar: refused (needs the 48-bit format).
    let t = tree_with(1, 3 << 40);
    assert!(matches!(
        write_image(&t, (3 << 40) + 1024, [0; 16]),
        Err(e) if e.kind == crate::error::Kind::Unsupported
    ));
}

/// Byte offset of the only file's inode (the root's first dirent after the dots).
fn find_inode(meta: &[u8], _tree: &Tree) -> usize {
    let mut dev = Mem(meta.to_vec());
    dev.0.resize(meta.len() + (1 << 20), 0);
    let fs = erofs_image::Filesystem::open(&mut dev).unwrap();
    let list = fs.readdir(&mut dev, fs.root_nid(), 0, 10).unwrap();
    let f = list.iter().find(|e| e.name == b"f").unwrap();
    f.nid as usize * 32
}

#[test]
fn xattr_limits() {
    assert!(check_xattr(b"user.x", &vec![0u8; 65535]).is_ok());
    assert!(check_xattr(b"user.x", &vec![0u8; 65536])
        .unwrap_err()
        .contains("65536-byte"));
    assert!(
        check_xattr(b"user.", b"").is_err(),
        "an empty suffix names nothing"
    );
    assert!(check_xattr(b"system.posix_acl_access", b"").is_ok());
    assert!(check_xattr(b"system.posix_acl_accessX", b"").is_err());
    // Too many xattrs for the 16-bit icount.
    let mut node_xattrs = BTreeMap::new();
    for i in 0..5 {
        node_xattrs.insert(format!("user.{i}").into_bytes(), vec![0u8; 65535]);
    }
    let mut b = TreeBuilder::new(TreeOptions::default());
    let mut e = entry("f", Kind::Regular);
    e.xattrs = node_xattrs.into_iter().collect();
    b.add(e).unwrap();
    let t = b.finish().unwrap();
    let msg = write_image(&t, 1024, [0; 16]).unwrap_err().to_string();
    assert!(
        msg.contains("\"/f\"") && msg.contains("inline xattrs"),
        "{msg}"
    );
}
