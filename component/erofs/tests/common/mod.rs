//! Shared test helpers: the fixture device (meta ‖ tar) and tree walking.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;

use erofs_image::{Error, FileType, Filesystem, ReadAt};

/// Where the reference fixtures live (`EROFS_FIXTURES` overrides).
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("EROFS_FIXTURES") {
        return PathBuf::from(p);
    }
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures"))
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
    assert_eq!(std::fs::metadata(&tmp).unwrap().len(), want, "{name}: tar size");
    std::fs::rename(&tmp, &out).expect("rename temp tar");
    out
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
