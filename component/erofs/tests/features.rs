//! Format features the reference fixtures do not use, made by editing the plain-tar fixture in place:
//! 48-bit addressing, directories without a stored `.`, chunk indexes on the primary device.

mod common;

use common::{reseal, resolve, Device};
use erofs_image::{Error, FileType, Filesystem, VerifyLimits};

const FIXTURE: &str = "plain-tar";

fn setup() -> (Device, Filesystem) {
    let mut dev = Device::open(FIXTURE);
    let fs = Filesystem::open(&mut dev).expect("open pristine image");
    (dev, fs)
}

/// All expected entries (except `skip`) still match.
fn all_match(fs: &Filesystem, dev: &mut Device, skip: &str) {
    let exp = common::expected(FIXTURE);
    let entries = exp["entries"].as_array().unwrap();
    common::compare_all(FIXTURE, fs, dev, entries, false, Some(skip));
}

#[test]
fn incompat_48bit() {
    let (mut dev, fs) = setup();
    let root = fs.root_nid();
    let m = &mut dev.meta;
    m[1024 + 80] |= 0x80; // INCOMPAT_48BIT
    m[1024 + 112..1024 + 120].copy_from_slice(&root.to_le_bytes()); // rootnid_8b
    m[1024 + 14..1024 + 16].copy_from_slice(&0u16.to_le_bytes()); // now blocks_hi
    reseal(m);
    let fs = Filesystem::open(&mut dev).expect("open 48-bit");
    assert_eq!(fs.root_nid(), root);
    assert!(fs.superblock().is_48bit());
    all_match(&fs, &mut dev, "");
    fs.verify(&mut dev, VerifyLimits::default()).unwrap();

    // 48-bit chunk indexes: with bit 0x40 the high half of the start block counts.
    let nid = resolve(&fs, &mut dev, "sizes/f4096").unwrap();
    let pos = fs.inode_location(nid).unwrap() as usize;
    let before = fs.read(&mut dev, nid, 0, 4096).unwrap();
    dev.meta[pos + 16] |= 0x40;
    reseal(&mut dev.meta);
    assert_eq!(
        fs.read(&mut dev, nid, 0, 4096).unwrap(),
        before,
        "hi = 0 changes nothing"
    );
    let ci = (pos + 64).next_multiple_of(8);
    dev.meta[ci] = 1; // startblk_hi = 1: 2^32 blocks further, outside the tar slot
    assert!(matches!(
        fs.read(&mut dev, nid, 0, 1),
        Err(Error::Corrupt(_))
    ));
    dev.meta[pos + 16] &= !0x40; // without the format bit startblk_hi is ignored
    assert_eq!(fs.read(&mut dev, nid, 0, 4096).unwrap(), before);

    // A root nid that only exists in the 16-bit field is not used any more.
    let (mut dev, _) = setup();
    dev.meta[1024 + 80] |= 0x80;
    reseal(&mut dev.meta);
    assert!(
        Filesystem::open(&mut dev).is_err(),
        "rootnid_8b is 0: nid 0 is not a directory"
    );
}

#[test]
fn directory_without_dot_entry() {
    let (mut dev, fs) = setup();
    let dir = resolve(&fs, &mut dev, "sizes").unwrap();
    let full = fs.readdir(&mut dev, dir, 0, usize::MAX).unwrap();
    let a = fs.getattr(&mut dev, dir).unwrap();
    let pos = fs.inode_location(dir).unwrap() as usize;
    assert_eq!(dev.meta[pos] & 1, 0, "compact inode");
    assert_eq!((dev.meta[pos] >> 1) & 7, 2, "inline directory");
    assert!(a.size < 512);
    // Rebuild the inline block without ".".
    let kept: Vec<_> = full.iter().filter(|e| e.name != b".").collect();
    let table = kept.len() * 12;
    let mut block = Vec::new();
    let mut names = Vec::new();
    for e in &kept {
        block.extend_from_slice(&e.nid.to_le_bytes());
        block.extend_from_slice(&((table + names.len()) as u16).to_le_bytes());
        block.push(match e.file_type {
            FileType::Regular => 1,
            FileType::Directory => 2,
            other => panic!("{other:?}"),
        });
        block.push(0);
        names.extend_from_slice(&e.name);
    }
    block.extend_from_slice(&names);
    let ext = fs.physical_extents(&mut dev, dir, 0, a.size).unwrap();
    let p = ext[0].physical.unwrap() as usize;
    dev.meta[p..p + block.len()].copy_from_slice(&block);
    dev.meta[pos + 8..pos + 12].copy_from_slice(&(block.len() as u32).to_le_bytes());
    dev.meta[pos] |= 0x10; // "." omitted
    reseal(&mut dev.meta);
    let fs = Filesystem::open(&mut dev).unwrap();
    // readdir still shows "." (synthesized at cookie 0) and the same entries.
    let got = fs.readdir(&mut dev, dir, 0, usize::MAX).unwrap();
    assert_eq!(got[0].name, b".");
    assert_eq!(got[0].nid, dir);
    let mut names_got: Vec<_> = got.iter().map(|e| e.name.clone()).collect();
    let mut names_want: Vec<_> = full.iter().map(|e| e.name.clone()).collect();
    names_got.sort();
    names_want.sort();
    assert_eq!(names_got, names_want);
    // Resuming from every cookie.
    for (i, e) in got.iter().enumerate() {
        assert_eq!(
            fs.readdir(&mut dev, dir, e.next_cookie, usize::MAX)
                .unwrap(),
            got[i + 1..]
        );
    }
    assert_eq!(
        fs.lookup(&mut dev, dir, b".").unwrap(),
        (dir, FileType::Directory)
    );
    assert_eq!(fs.lookup(&mut dev, dir, b"..").unwrap().0, fs.root_nid());
    // nlink still comes from i_nb for directories.
    assert_eq!(fs.getattr(&mut dev, dir).unwrap().nlink, a.nlink);
    fs.verify(&mut dev, VerifyLimits::default()).unwrap();
    // Everything else is unchanged (the directory itself is 13 bytes smaller).
    all_match(&fs, &mut dev, "sizes");
}

#[test]
fn chunk_on_primary_device() {
    let (mut dev, fs) = setup();
    let nid = resolve(&fs, &mut dev, "sizes/f512").unwrap();
    let pos = fs.inode_location(nid).unwrap() as usize;
    let ci = (pos + 64).next_multiple_of(8);
    // device_id 0, start block 2: the bytes 1024..1536 of the metadata (the superblock).
    dev.meta[ci + 2..ci + 4].copy_from_slice(&0u16.to_le_bytes());
    dev.meta[ci + 4..ci + 8].copy_from_slice(&2u32.to_le_bytes());
    reseal(&mut dev.meta);
    let fs = Filesystem::open(&mut dev).unwrap();
    let got = fs.read(&mut dev, nid, 0, 512).unwrap();
    assert_eq!(got, dev.meta[1024..1536]);
    // Past the metadata's block count it is corrupt.
    let blocks = fs.superblock().blocks as u32;
    dev.meta[ci + 4..ci + 8].copy_from_slice(&blocks.to_le_bytes());
    assert!(matches!(
        fs.read(&mut dev, nid, 0, 1),
        Err(Error::Corrupt(_))
    ));
}
