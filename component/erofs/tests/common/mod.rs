//! Shared test helpers: the fixture device (meta ‖ tar) and tree walking.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use std::collections::BTreeMap;

use erofs_image::{Error, FileType, Filesystem, ReadAt};
use sha2::{Digest, Sha256};

/// Where the reference fixtures live: the project's copy in tests/fixtures
/// (`EROFS_FIXTURES` overrides).
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("EROFS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures"))
}

pub fn expected(name: &str) -> serde_json::Value {
    let p = fixtures_dir().join(name).join("expected.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("expected.json parses")
}

pub fn meta(name: &str) -> Vec<u8> {
    let p = fixtures_dir().join(name).join("meta.erofs");
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Path of the uncompressed tar of a fixture: `layer.tar` itself, or `gzip -dc layer.tar.gz` into a
/// cache file under the target directory (written atomically, reused when its size matches).
pub fn tar_path(name: &str) -> PathBuf {
    // One decompression at a time within a test binary; across binaries the rename is atomic.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = fixtures_dir().join(name);
    let plain = dir.join("layer.tar");
    if plain.exists() {
        return plain;
    }
    let want = expected(name)["tar_size"].as_u64().expect("tar_size");
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("erofs-image-fixtures");
    std::fs::create_dir_all(&cache).expect("create cache dir");
    let out = cache.join(format!("{name}.tar"));
    if std::fs::metadata(&out).map(|m| m.len()).ok() == Some(want) {
        return out;
    }
    let tmp = cache.join(format!("{name}.tar.{}.tmp", std::process::id()));
    let f = File::create(&tmp).expect("create temp tar");
    let status = Command::new("gzip")
        .arg("-dc")
        .arg(dir.join("layer.tar.gz"))
        .stdout(f)
        .status()
        .expect("run gzip -dc");
    assert!(status.success(), "gzip -dc failed for {name}");
    assert_eq!(
        std::fs::metadata(&tmp).unwrap().len(),
        want,
        "{name}: tar size"
    );
    std::fs::rename(&tmp, &out).expect("rename temp tar");
    out
}

/// One of the extra images in tests/data (gzipped single-device images) and its expected.json.
pub fn load_data_image(name: &str) -> (Device, serde_json::Value) {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data")).join(name);
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(dir.join("image.erofs.gz"))
        .output()
        .expect("run gzip -dc");
    assert!(out.status.success(), "gzip -dc {name}");
    let text = std::fs::read_to_string(dir.join("expected.json")).expect("expected.json");
    let exp: serde_json::Value = serde_json::from_str(&text).expect("expected.json parses");
    assert_eq!(out.stdout.len() as u64, exp["image_size"].as_u64().unwrap());
    let dev = Device {
        meta: out.stdout,
        tail: Tail::Mem(Vec::new()),
    };
    (dev, exp)
}

/// Recompute the superblock checksum after editing bytes it covers.
pub fn reseal(meta: &mut [u8]) {
    erofs_image::reseal_superblock(meta);
}

/// Where the tar bytes come from.
pub enum Tail {
    File(File, u64),
    Mem(Vec<u8>),
}

/// The virtual device: metadata bytes (kept in memory so tests can corrupt them) then the tar.
pub struct Device {
    pub meta: Vec<u8>,
    pub tail: Tail,
}

impl Device {
    pub fn open(name: &str) -> Device {
        let f = File::open(tar_path(name)).expect("open tar");
        let len = f.metadata().unwrap().len();
        Device {
            meta: meta(name),
            tail: Tail::File(f, len),
        }
    }

    /// Same, with the tar loaded into memory (fast for randomized tests).
    pub fn open_in_memory(name: &str) -> Device {
        Device {
            meta: meta(name),
            tail: Tail::Mem(std::fs::read(tar_path(name)).expect("read tar")),
        }
    }

    fn tail_len(&self) -> u64 {
        match &self.tail {
            Tail::File(_, n) => *n,
            Tail::Mem(v) => v.len() as u64,
        }
    }
}

impl ReadAt for Device {
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), Error> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or_else(|| Error::Io("offset overflow".into()))?;
        if end > self.size() {
            return Err(Error::Io(format!("read {offset}+{} past end", buf.len())));
        }
        let mlen = self.meta.len() as u64;
        let mut done = 0usize;
        if offset < mlen {
            let n = ((mlen - offset) as usize).min(buf.len());
            buf[..n].copy_from_slice(&self.meta[offset as usize..offset as usize + n]);
            done = n;
        }
        if done < buf.len() {
            let toff = offset + done as u64 - mlen;
            match &self.tail {
                Tail::File(f, _) => f
                    .read_exact_at(&mut buf[done..], toff)
                    .map_err(|e| Error::Io(e.to_string()))?,
                Tail::Mem(v) => {
                    let rest = buf.len() - done;
                    buf[done..].copy_from_slice(&v[toff as usize..toff as usize + rest]);
                }
            }
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.meta.len() as u64 + self.tail_len()
    }
}

/// Resolve a relative path ("a/b/c") from the root, one lookup per component.
pub fn resolve(fs: &Filesystem, dev: &mut dyn ReadAt, path: &str) -> Result<u64, Error> {
    let mut nid = fs.root_nid();
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        nid = fs.lookup(dev, nid, comp.as_bytes())?.0;
    }
    Ok(nid)
}

/// All entries below the root as (relative path, nid, dirent type), from readdir.
pub fn walk(fs: &Filesystem, dev: &mut dyn ReadAt) -> Result<Vec<(String, u64, FileType)>, Error> {
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), fs.root_nid())];
    while let Some((path, nid)) = stack.pop() {
        for e in fs.readdir(dev, nid, 0, usize::MAX)? {
            if e.name == b"." || e.name == b".." {
                continue;
            }
            let name = String::from_utf8(e.name.clone()).expect("utf-8 names in fixtures");
            let p = if path.is_empty() {
                name
            } else {
                format!("{path}/{name}")
            };
            if e.file_type == FileType::Directory {
                stack.push((p.clone(), e.nid));
            }
            out.push((p, e.nid, e.file_type));
        }
    }
    Ok(out)
}

/// Read a whole regular file in `step`-byte requests (as a FUSE bridge would) and hash it.
pub fn sha256_file(
    fs: &Filesystem,
    dev: &mut dyn ReadAt,
    nid: u64,
    size: u64,
    step: u32,
) -> String {
    let mut h = Sha256::new();
    let mut off = 0u64;
    while off < size {
        let got = fs.read(dev, nid, off, step).expect("read");
        assert!(!got.is_empty(), "short read at {off} of {size}");
        assert!(got.len() as u64 <= u64::from(step));
        off += got.len() as u64;
        h.update(&got);
    }
    assert!(
        fs.read(dev, nid, size, step).unwrap().is_empty(),
        "read at EOF"
    );
    assert!(
        fs.read(dev, nid, size + 12345, 10).unwrap().is_empty(),
        "read past EOF"
    );
    hex::encode(h.finalize())
}

/// Compare every entry of `entries` whose path is not `skip`; panics listing all the
/// differences, prefixed with `name`.
pub fn compare_all(
    name: &str,
    fs: &Filesystem,
    dev: &mut Device,
    entries: &[serde_json::Value],
    unsupported_data_ok: bool,
    skip: Option<&str>,
) {
    let mut failures = Vec::new();
    for want in entries {
        if skip.is_some_and(|s| want["path"] == s) {
            continue;
        }
        let bad = compare(fs, dev, want, unsupported_data_ok);
        if !bad.is_empty() {
            failures.push(format!("{}: {}", want["path"], bad.join("; ")));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Compare one entry; returns the list of differences.
///
/// With `unsupported_data_ok`, a regular file whose data read fails with `Unsupported` (compressed)
/// is accepted without a hash check.
pub fn compare(
    fs: &Filesystem,
    dev: &mut Device,
    want: &serde_json::Value,
    unsupported_data_ok: bool,
) -> Vec<String> {
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
    let mode =
        u32::from_str_radix(want["mode"].as_str().unwrap().trim_start_matches("0o"), 8).unwrap();
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
    check(
        "mtime_ns",
        mtime_ns.to_string(),
        want["mtime_ns"].to_string(),
    );
    if let Some(sha) = want.get("sha256") {
        check("type", format!("{:?}", a.file_type()), "Regular".into());
        if unsupported_data_ok && matches!(fs.read(dev, nid, 0, 1), Err(Error::Unsupported(_))) {
            // Compressed data: refused cleanly, as documented.
        } else {
            let got = sha256_file(fs, dev, nid, a.size, 128 * 1024);
            check("sha256", got, sha.as_str().unwrap().to_string());
        }
    }
    if let Some(t) = want.get("target") {
        let got = fs
            .readlink(dev, nid)
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        check(
            "target",
            format!("{got:?}"),
            format!("{:?}", Ok::<_, Error>(t.as_str().unwrap().to_string())),
        );
    } else {
        check(
            "readlink",
            format!("{:?}", fs.readlink(dev, nid).err()),
            format!("{:?}", Some(Error::NotSymlink)),
        );
    }
    if let Some(r) = want.get("rdev") {
        check(
            "rdev",
            format!("[{}, {}]", a.major(), a.minor()),
            format!("[{}, {}]", r[0], r[1]),
        );
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
                let v = fs
                    .getxattr(dev, nid, &n)
                    .map(hex::encode)
                    .unwrap_or_else(|e| format!("ERR {e}"));
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
pub fn check_readdir(fs: &Filesystem, dev: &mut Device, dir: u64) -> usize {
    let full = fs.readdir(dev, dir, 0, usize::MAX).unwrap();
    assert!(full.iter().any(|e| e.name == b"." && e.nid == dir));
    assert!(full.iter().any(|e| e.name == b".."));
    // One by one.
    let mut cookie = 0;
    let mut single = Vec::new();
    loop {
        let got = fs.readdir(dev, dir, cookie, 1).unwrap();
        assert!(got.len() <= 1);
        let Some(e) = got.into_iter().next() else {
            break;
        };
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
