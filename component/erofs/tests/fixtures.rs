//! Every reference fixture, compared entry by entry with the kernel's view in expected.json.

mod common;

use std::collections::BTreeSet;

use common::{check_readdir, resolve, walk, Device};
use erofs_image::{Error, FileType, Filesystem, VerifyLimits};

fn run_fixture(name: &str) {
    let exp = common::expected(name);
    let mut dev = Device::open(name);
    assert_eq!(dev.meta.len() as u64, exp["meta_size"].as_u64().unwrap());
    let fs = Filesystem::open(&mut dev).expect("open");
    assert_eq!(
        fs.meta_size(),
        dev.meta.len() as u64,
        "superblock blocks match the meta size"
    );
    assert_eq!(fs.block_size(), 512);
    assert_eq!(fs.devices().len(), 1);
    assert_eq!(fs.devices()[0].uniaddr * 512, dev.meta.len() as u64);

    // Compare every expected entry.
    let entries = exp["entries"].as_array().unwrap();
    common::compare_all(name, &fs, &mut dev, entries, false, None);

    // The tree holds exactly the expected paths.
    let tree = walk(&fs, &mut dev).unwrap();
    let got: BTreeSet<String> = tree.iter().map(|(p, _, _)| p.clone()).collect();
    let want: BTreeSet<String> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(got.len(), tree.len(), "no duplicate paths");
    assert_eq!(got, want, "{name}: path set");

    // Dirent types agree with the inodes; lookup agrees with readdir.
    for (path, nid, ft) in &tree {
        let a = fs.getattr(&mut dev, *nid).unwrap();
        assert_eq!(a.file_type(), *ft, "{path}");
        assert_eq!(resolve(&fs, &mut dev, path).unwrap(), *nid, "{path}");
    }

    // readdir resumption on every directory (root included).
    let mut dirs = vec![fs.root_nid()];
    dirs.extend(
        tree.iter()
            .filter(|t| t.2 == FileType::Directory)
            .map(|t| t.1),
    );
    let mut n = 0;
    for d in dirs {
        n += check_readdir(&fs, &mut dev, d);
    }
    assert!(n > tree.len());

    // verify() passes.
    let report = fs
        .verify(&mut dev, VerifyLimits::default())
        .expect("verify");
    assert_eq!(report.entries as usize, tree.len(), "{report:?}");
    assert_eq!(report.nlink_mismatches, 0, "{report:?}");
    eprintln!("{name}: {} entries OK, {report:?}", entries.len());
}

#[test]
fn fixture_plain_tar() {
    run_fixture("plain-tar");
}

#[test]
fn fixture_basic() {
    run_fixture("basic");
}

#[test]
fn fixture_pigz() {
    run_fixture("pigz");
}

#[test]
fn fixture_aufs() {
    run_fixture("aufs");
}

#[test]
fn fixture_multimember() {
    run_fixture("multimember");
}

#[test]
fn fixture_large() {
    run_fixture("large");
}

/// Reads at odd offsets and lengths agree with one sequential read of the same file.
#[test]
fn unaligned_reads_match() {
    let mut dev = Device::open("basic");
    let fs = Filesystem::open(&mut dev).unwrap();
    let exp = common::expected("basic");
    let mut checked = 0;
    for e in exp["entries"].as_array().unwrap() {
        if e.get("sha256").is_none() {
            continue;
        }
        let nid = resolve(&fs, &mut dev, e["path"].as_str().unwrap()).unwrap();
        let size = e["size"].as_u64().unwrap();
        if size > 2 << 20 {
            continue;
        }
        let whole = fs.read(&mut dev, nid, 0, size as u32 + 100).unwrap();
        assert_eq!(whole.len() as u64, size);
        for (off, len) in [
            (1u64, 510u32),
            (511, 2),
            (4095, 4097),
            (size / 2, 12345),
            (size.saturating_sub(3), 100),
        ] {
            let got = fs.read(&mut dev, nid, off, len).unwrap();
            let lo = (off as usize).min(whole.len());
            let hi = (off as usize + len as usize).min(whole.len());
            assert_eq!(got, whole[lo..hi], "{} at {off}+{len}", e["path"]);
        }
        checked += 1;
    }
    assert!(checked > 10);
}

/// Error kinds of the API on the wrong inode types.
#[test]
fn api_errors() {
    let mut dev = Device::open("basic");
    let fs = Filesystem::open(&mut dev).unwrap();
    let root = fs.root_nid();
    let file = resolve(&fs, &mut dev, "sizes/f4096").unwrap();
    assert_eq!(fs.read(&mut dev, root, 0, 10), Err(Error::IsDir));
    assert_eq!(fs.readlink(&mut dev, file), Err(Error::NotSymlink));
    assert_eq!(fs.lookup(&mut dev, file, b"x"), Err(Error::NotDir));
    assert_eq!(fs.readdir(&mut dev, file, 0, 10), Err(Error::NotDir));
    assert_eq!(fs.lookup(&mut dev, root, b"nope"), Err(Error::NotFound));
    assert_eq!(fs.lookup(&mut dev, root, b""), Err(Error::NotFound));
    assert_eq!(fs.lookup(&mut dev, root, b"a/b"), Err(Error::NotFound));
    assert_eq!(
        fs.lookup(&mut dev, root, &[b'x'; 256]),
        Err(Error::NameTooLong)
    );
    assert_eq!(fs.lookup(&mut dev, root, b".").unwrap().0, root);
    assert_eq!(fs.lookup(&mut dev, root, b"..").unwrap().0, root);
    assert_eq!(fs.getxattr(&mut dev, file, b"user.x"), Err(Error::NoAttr));
    assert!(matches!(
        fs.read(&mut dev, file, 0, u32::MAX),
        Err(Error::Range(_))
    ));
    let dev_nid = resolve(&fs, &mut dev, "special/null").unwrap();
    assert!(matches!(
        fs.read(&mut dev, dev_nid, 0, 1),
        Err(Error::Range(_))
    ));
    assert_eq!(Error::Corrupt(String::new()).errno(), 117);
    assert_eq!(Error::NoAttr.errno(), 61);
    assert_eq!(Error::Unsupported(String::new()).errno(), 95);
    // Extents of a file: one chunk in the tar slot.
    let ext = fs.physical_extents(&mut dev, file, 0, u64::MAX).unwrap();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].len, 4096);
    let phys = ext[0].physical.unwrap();
    assert!(phys >= fs.meta_size() && phys.is_multiple_of(512));
}
