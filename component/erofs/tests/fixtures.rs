//! Every reference fixture, compared entry by entry with the kernel's view in expected.json.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{resolve, walk, Device};
use erofs_image::{Error, FileType, Filesystem, ReadAt, VerifyLimits};
use sha2::{Digest, Sha256};

/// Read a whole regular file in `step`-byte requests (as a FUSE bridge would) and hash it.
fn sha256_file(fs: &Filesystem, dev: &mut dyn ReadAt, nid: u64, size: u64, step: u32) -> String {
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < size {
        let got = fs.read(dev, nid, off, step).expect("read");
        assert!(!got.is_empty(), "short read at {off} of {size}");
        assert!(got.len() as u64 <= u64::from(step));
        off += got.len() as u64;
        h.update(&got);
    }
    assert!(fs.read(dev, nid, size, step).unwrap().is_empty(), "read at EOF");
    assert!(fs.read(dev, nid, size + 12345, 10).unwrap().is_empty(), "read past EOF");
    hex::encode(h.finalize())
}

/// Compare one entry; returns the list of differences.
fn compare(fs: &Filesystem, dev: &mut Device, want: &serde_json::Value) -> Vec<String> {
    let path = want["path"].as_str().unwrap();
    let mut bad = Vec::new();
    let nid = match resolve(fs, dev, path) {
        Ok(n) => n,
        Err(e) => return vec![format!("lookup: {e}")],
    };
    let a = match fs.getattr(dev, nid) {
        Ok(a) => a,
        Err(e) => return vec![format!("getattr: {e}")],
    };
    let mode = u32::from_str_radix(want["mode"].as_str().unwrap().trim_start_matches("0o"), 8).unwrap();
    let mut check = |what: &str, got: String, exp: String| {
        if got != exp {
            bad.push(format!("{what}: want {exp} got {got}"));
        }
    };
    check("mode", format!("{:o}", a.mode), format!("{mode:o}"));
    check("uid", a.uid.to_string(), want["uid"].to_string());
    check("gid", a.gid.to_string(), want["gid"].to_string());
    check("size", a.size.to_string(), want["size"].to_string());
    check("nlink", a.nlink.to_string(), want["nlink"].to_string());
    let mtime_ns = i128::from(a.mtime_sec) * 1_000_000_000 + i128::from(a.mtime_nsec);
    check("mtime_ns", mtime_ns.to_string(), want["mtime_ns"].to_string());
    if let Some(sha) = want.get("sha256") {
        check("type", format!("{:?}", a.file_type()), "Regular".into());
        let got = sha256_file(fs, dev, nid, a.size, 128 * 1024);
        check("sha256", got, sha.as_str().unwrap().to_string());
    }
    if let Some(t) = want.get("target") {
        let got = fs.readlink(dev, nid).map(|v| String::from_utf8_lossy(&v).into_owned());
        check("target", format!("{got:?}"), format!("{:?}", Ok::<_, Error>(t.as_str().unwrap().to_string())));
    } else {
        check("readlink", format!("{:?}", fs.readlink(dev, nid).err()), format!("{:?}", Some(Error::NotSymlink)));
    }
    if let Some(r) = want.get("rdev") {
        check("rdev", format!("[{}, {}]", a.major(), a.minor()), format!("[{}, {}]", r[0], r[1]));
    }
    let mut want_x = BTreeMap::new();
    if let Some(x) = want.get("xattrs_hex") {
        for (k, v) in x.as_object().unwrap() {
            want_x.insert(k.clone(), v.as_str().unwrap().to_string());
        }
    }
    let mut got_x = BTreeMap::new();
    match fs.listxattr(dev, nid) {
        Ok(names) => {
            for n in names {
                let v = fs.getxattr(dev, nid, &n).map(hex::encode).unwrap_or_else(|e| format!("ERR {e}"));
                got_x.insert(String::from_utf8(n).unwrap(), v);
            }
        }
        Err(e) => {
            got_x.insert("listxattr error".into(), e.to_string());
        }
    }
    check("xattrs", format!("{got_x:?}"), format!("{want_x:?}"));
    check(
        "getxattr missing",
        format!("{:?}", fs.getxattr(dev, nid, b"user.does-not-exist")),
        format!("{:?}", Err::<Vec<u8>, _>(Error::NoAttr)),
    );
    bad
}

/// readdir of every directory: one call vs. one entry at a time vs. resuming from every cookie.
fn check_readdir(fs: &Filesystem, dev: &mut Device, dir: u64) -> usize {
    let full = fs.readdir(dev, dir, 0, usize::MAX).unwrap();
    assert!(full.iter().any(|e| e.name == b"." && e.nid == dir));
    assert!(full.iter().any(|e| e.name == b".."));
    // One by one.
    let mut cookie = 0;
    let mut single = Vec::new();
    loop {
        let got = fs.readdir(dev, dir, cookie, 1).unwrap();
        assert!(got.len() <= 1);
        let Some(e) = got.into_iter().next() else { break };
        assert!(e.next_cookie > cookie, "cookies increase");
        cookie = e.next_cookie;
        single.push(e);
    }
    assert_eq!(single, full);
    // Resume from every cookie.
    for (i, e) in full.iter().enumerate() {
        let rest = fs.readdir(dev, dir, e.next_cookie, usize::MAX).unwrap();
        assert_eq!(rest, full[i + 1..], "resume after entry {i}");
        let some = fs.readdir(dev, dir, e.next_cookie, 7).unwrap();
        assert_eq!(some, full[i + 1..(i + 8).min(full.len())]);
    }
    assert!(fs.readdir(dev, dir, 0, 0).unwrap().is_empty());
    // Sorted names.
    for w in full.windows(2) {
        assert!(w[0].name < w[1].name, "sorted");
    }
    full.len()
}

fn run_fixture(name: &str) {
    let exp = common::expected(name);
    let mut dev = Device::open(name);
    assert_eq!(dev.meta.len() as u64, exp["meta_size"].as_u64().unwrap());
    let fs = Filesystem::open(&mut dev).expect("open");
    assert_eq!(fs.meta_size(), dev.meta.len() as u64, "superblock blocks match the meta size");
    assert_eq!(fs.block_size(), 512);
    assert_eq!(fs.devices().len(), 1);
    assert_eq!(fs.devices()[0].uniaddr * 512, dev.meta.len() as u64);

    // Compare every expected entry.
    let entries = exp["entries"].as_array().unwrap();
    let mut failures = Vec::new();
    for want in entries {
        let bad = compare(&fs, &mut dev, want);
        if !bad.is_empty() {
            failures.push(format!("{}: {}", want["path"], bad.join("; ")));
        }
    }
    assert!(failures.is_empty(), "{name}: {} failures:\n{}", failures.len(), failures.join("\n"));

    // The tree holds exactly the expected paths.
    let tree = walk(&fs, &mut dev).unwrap();
    let got: BTreeSet<String> = tree.iter().map(|(p, _, _)| p.clone()).collect();
    let want: BTreeSet<String> =
        entries.iter().map(|e| e["path"].as_str().unwrap().to_string()).collect();
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
    dirs.extend(tree.iter().filter(|t| t.2 == FileType::Directory).map(|t| t.1));
    let mut n = 0;
    for d in dirs {
        n += check_readdir(&fs, &mut dev, d);
    }
    assert!(n > tree.len());

    // verify() passes.
    let report = fs.verify(&mut dev, VerifyLimits::default()).expect("verify");
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
        for (off, len) in [(1u64, 510u32), (511, 2), (4095, 4097), (size / 2, 12345), (size.saturating_sub(3), 100)] {
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
    assert_eq!(fs.lookup(&mut dev, root, &[b'x'; 256]), Err(Error::NameTooLong));
    assert_eq!(fs.lookup(&mut dev, root, b".").unwrap().0, root);
    assert_eq!(fs.lookup(&mut dev, root, b"..").unwrap().0, root);
    assert_eq!(fs.getxattr(&mut dev, file, b"user.x"), Err(Error::NoAttr));
    assert!(matches!(fs.read(&mut dev, file, 0, u32::MAX), Err(Error::Range(_))));
    let dev_nid = resolve(&fs, &mut dev, "special/null").unwrap();
    assert!(matches!(fs.read(&mut dev, dev_nid, 0, 1), Err(Error::Range(_))));
    assert_eq!(Error::Corrupt(String::new()).errno(), 117);
    assert_eq!(Error::NoAttr.errno(), 61);
    assert_eq!(Error::Unsupported(String::new()).errno(), 95);
    // Extents of a file: one chunk in the tar slot.
    let ext = fs.physical_extents(&mut dev, file, 0, u64::MAX).unwrap();
    assert_eq!(ext.len(), 1);
    assert_eq!(ext[0].len, 4096);
    let phys = ext[0].physical.unwrap();
    assert!(phys >= fs.meta_size() && phys % 512 == 0);
}
