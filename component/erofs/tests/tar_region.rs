//! Metadata outside the metadata image (issue 10, item 4): in a tar index, blocks past the
//! metadata are the layer's tar, whose bytes any file of the layer can choose. A
//! directory, symlink or other metadata whose data points there must be refused (only
//! regular-file data may be in the tar), while every fixture still reads cleanly.

mod common;

use common::{reseal, resolve, Device};
use erofs_image::{Error, Filesystem, VerifyLimits};

const FIXTURE: &str = "plain-tar";
const S_IFDIR: u16 = 0o040000;
const S_IFLNK: u16 = 0o120000;

fn open() -> (Device, Filesystem) {
    let mut dev = Device::open(FIXTURE);
    let fs = Filesystem::open(&mut dev).expect("open pristine image");
    (dev, fs)
}

/// Byte offset of the inode at `path` in the metadata.
fn inode_at(fs: &Filesystem, dev: &mut Device, path: &str) -> usize {
    let nid = resolve(fs, dev, path).unwrap_or_else(|e| panic!("{path}: {e}"));
    fs.inode_location(nid).unwrap() as usize
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn outside(r: Result<impl std::fmt::Debug, Error>, what: &str) -> String {
    match r {
        Err(Error::Corrupt(m)) => {
            assert!(
                m.contains(&format!("{what} data at blocks"))
                    && m.contains("lies outside the metadata"),
                "{m}"
            );
            m
        }
        other => panic!("expected Corrupt ({what} outside the metadata), got {other:?}"),
    }
}

fn verify_fails(fs: &Filesystem, dev: &mut Device, what: &str) {
    let limits = VerifyLimits {
        check_data_map: true,
        ..VerifyLimits::default()
    };
    outside(fs.verify(dev, limits).map(|_| ()), what);
}

#[test]
fn a_directory_whose_blocks_are_in_the_tar_is_refused() {
    let (mut dev, fs) = open();
    let blocks = fs.superblock().blocks;
    let at = inode_at(&fs, &mut dev, "many");
    // +16 i_u: the start block of a flat directory. Point it at the first tar block.
    set_u32(&mut dev.meta, at + 16, u32::try_from(blocks).unwrap());
    reseal(&mut dev.meta);
    let fs = Filesystem::open(&mut dev).unwrap();
    let nid = resolve(&fs, &mut dev, "sizes").unwrap();
    assert!(
        fs.readdir(&mut dev, nid, 0, 100).is_ok(),
        "others still read"
    );
    let (many, _) = fs.lookup(&mut dev, fs.root_nid(), b"many").unwrap();
    outside(fs.readdir(&mut dev, many, 0, 100), "directory");
    outside(fs.lookup(&mut dev, many, b"entry-0001-x"), "directory");
    verify_fails(&fs, &mut dev, "directory");
}

#[test]
fn a_regular_file_turned_directory_or_symlink_is_refused() {
    // The inode keeps its chunk index into the tar: a crafted tar member's contents
    // would be parsed as dirents or served as a link target.
    for (mode, what) in [(S_IFDIR | 0o755, "directory"), (S_IFLNK | 0o777, "symlink")] {
        let (mut dev, fs) = open();
        let at = inode_at(&fs, &mut dev, "sizes/f513");
        let nid = resolve(&fs, &mut dev, "sizes/f513").unwrap();
        // +4 i_mode.
        set_u16(&mut dev.meta, at + 4, mode);
        reseal(&mut dev.meta);
        let fs = Filesystem::open(&mut dev).unwrap();
        let r = if what == "directory" {
            fs.readdir(&mut dev, nid, 0, 100).map(|_| ())
        } else {
            fs.readlink(&mut dev, nid).map(|_| ())
        };
        outside(r, what);
        assert!(fs
            .physical_extents(&mut dev, nid, 0, 513)
            .is_err_and(|e| matches!(e, Error::Corrupt(_))));
        // verify meets the dirent's type first; either way the tree is refused.
        assert!(fs.verify(&mut dev, VerifyLimits::default()).is_err());
    }
}

#[test]
fn regular_files_in_the_tar_and_every_fixture_still_pass() {
    // No false alarms: verify with every data map on each reference fixture.
    let limits = VerifyLimits {
        check_data_map: true,
        check_xattrs: true,
        ..VerifyLimits::default()
    };
    let dir = common::fixtures_dir();
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !dir.join(&name).join("meta.erofs").exists() {
            continue;
        }
        let mut dev = Device::open(&name);
        let fs = Filesystem::open(&mut dev).unwrap_or_else(|e| panic!("{name}: {e}"));
        fs.verify(&mut dev, limits)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        checked += 1;
    }
    assert!(checked >= 4, "{checked} fixtures");
}
