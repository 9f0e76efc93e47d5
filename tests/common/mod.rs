//! Helpers shared by the end-to-end tests: where things are, running `erofs-host`, and
//! the tree comparison against a fixture's `expected.json` (what the Linux kernel showed).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// `erofs-host mount` with a Drop that unmounts.
pub mod host_mount;
/// The registry harness (tests/registry/harness.py) and its proxies, started and stopped.
pub mod registry;
/// External tools with deadlines (also used by erofs-nbd's own tests).
pub mod tools;

#[allow(unused_imports)]
pub use host_mount::{fuse_available, HostMount};
#[allow(unused_imports)]
pub use registry::HarnessRegistry;

pub const GZIP_FIXTURES: [&str; 5] = ["basic", "multimember", "pigz", "aufs", "large"];
pub const ALL_FIXTURES: [&str; 6] = ["basic", "multimember", "pigz", "aufs", "large", "plain-tar"];

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures").join(name)
}

pub fn host_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_erofs-host"))
}

/// The release component, built by `just build` (cargo cannot build it for us here:
/// it is another target).
pub fn component() -> PathBuf {
    let p = root().join("target/wasm32-wasip2/release/erofs_component.wasm");
    assert!(
        p.exists(),
        "{} is missing: run `just build` first",
        p.display()
    );
    p
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let base = std::env::temp_dir().join(format!(
            "erofs-e2e-{tag}-{}-{:?}",
            std::process::id(),
            Instant::now()
        ));
        let p = PathBuf::from(
            base.to_string_lossy()
                .replace([' ', '{', '}', ':', ','], ""),
        );
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The arguments that describe a fixture's device, for `cat`, `bench`, `mount`...
pub fn device_args(dir: &str) -> Vec<String> {
    let f = fixture(dir);
    let s = |p: PathBuf| p.to_string_lossy().into_owned();
    if dir == "plain-tar" {
        vec![
            s(component()),
            "--tarindex".into(),
            s(f.join("meta.erofs")),
            s(f.join("layer.tar")),
        ]
    } else {
        vec![
            s(component()),
            "--tarindex".into(),
            s(f.join("meta.erofs")),
            "--zinfo".into(),
            s(f.join("layer.zinfo")),
            s(f.join("layer.tar.gz")),
        ]
    }
}

/// Run erofs-host with a deadline: a hang is a failure, never a stuck test run.
pub fn run_host<S: AsRef<std::ffi::OsStr>>(args: &[S], timeout: Duration) -> Output {
    run_host_with(args, &[], None, timeout)
}

/// `run_host` with extra environment variables and, optionally, bytes on stdin.
pub fn run_host_with<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &str)],
    stdin: Option<&[u8]>,
    timeout: Duration,
) -> Output {
    let mut cmd = Command::new(host_bin());
    cmd.args(args)
        .env(
            "EROFS_WASM_CACHE_DIR",
            std::env::temp_dir().join("erofs-e2e-cwasm"),
        )
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn erofs-host");
    if let (Some(bytes), Some(mut input)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        let _ = input.write_all(bytes);
    }
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || read_all(stdout));
    let err_reader = std::thread::spawn(move || read_all(stderr));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "erofs-host {:?} hung for more than {timeout:?}",
                args.iter().map(|a| a.as_ref()).collect::<Vec<_>>()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn read_all(mut r: impl std::io::Read) -> Vec<u8> {
    let mut v = Vec::new();
    let _ = r.read_to_end(&mut v);
    v
}

/// meta ‖ uncompressed tar, computed without our code.
pub fn expected_device(dir: &str) -> Vec<u8> {
    let f = fixture(dir);
    let mut dev = std::fs::read(f.join("meta.erofs")).unwrap();
    if dir == "plain-tar" {
        dev.extend(std::fs::read(f.join("layer.tar")).unwrap());
    } else {
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(f.join("layer.tar.gz"))
            .output()
            .unwrap();
        assert!(out.status.success());
        dev.extend(out.stdout);
    }
    dev
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Assert that a run's stderr names `needle` (compared in lower case when `needle` is),
/// showing the whole stderr when it does not.
pub fn assert_stderr_contains(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let haystack = if needle.chars().all(|c| !c.is_uppercase()) {
        stderr.to_lowercase()
    } else {
        stderr.to_string()
    };
    assert!(
        haystack.contains(needle),
        "expected `{needle}` in: {stderr}"
    );
}

/// Say loudly that a test did not run, and why.
/// Written to the real stderr, not through `eprintln!`, so that the test harness's
/// output capture cannot hide it: a skip must show in every `cargo test` run.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n*** SKIPPED: {test}: {why} ***\n");
}

/// Compare the tree under `mountpoint` with a fixture's expected.json. Returns the list of
/// mismatches (empty when everything matches): modes, owners, sizes, nanosecond mtimes,
/// link counts, symlink targets, rdev, xattrs and content sha256.
pub fn compare_tree(mountpoint: &Path, expected_json: &Path) -> Vec<String> {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(expected_json).unwrap()).unwrap();
    let entries = expected["entries"].as_array().expect("entries");
    let mut failures = Vec::new();
    let mut expected_paths = BTreeMap::new();
    for e in entries {
        let rel = e["path"].as_str().unwrap();
        expected_paths.insert(rel.to_string(), ());
        let p = mountpoint.join(rel);
        let mut fail = |what: String| failures.push(format!("{rel}: {what}"));
        let md = match std::fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(err) => {
                fail(format!("lstat failed: {err}"));
                continue;
            }
        };
        let mode =
            u32::from_str_radix(e["mode"].as_str().unwrap().trim_start_matches("0o"), 8).unwrap();
        if md.mode() != mode {
            fail(format!("mode {:o} != expected {:o}", md.mode(), mode));
        }
        for (field, got) in [
            ("uid", md.uid() as u64),
            ("gid", md.gid() as u64),
            ("nlink", md.nlink()),
        ] {
            if e[field].as_u64() != Some(got) {
                fail(format!("{field} {got} != expected {}", e[field]));
            }
        }
        let mtime_ns = md.mtime() as i128 * 1_000_000_000 + md.mtime_nsec() as i128;
        if e["mtime_ns"].as_i64().map(|v| v as i128) != Some(mtime_ns) {
            fail(format!("mtime_ns {mtime_ns} != expected {}", e["mtime_ns"]));
        }
        let ft = md.file_type();
        if e["size"].as_u64() != Some(md.size()) {
            fail(format!("size {} != expected {}", md.size(), e["size"]));
        }
        if let Some(want) = e.get("sha256").and_then(|v| v.as_str()) {
            match std::fs::read(&p) {
                Ok(data) if sha256_hex(&data) == want => {}
                Ok(_) => fail("content sha256 differs".into()),
                Err(err) => fail(format!("read failed: {err}")),
            }
        }
        if let Some(want) = e.get("target").and_then(|v| v.as_str()) {
            match std::fs::read_link(&p) {
                Ok(t) if t.as_os_str() == std::ffi::OsStr::new(want) => {}
                Ok(t) => fail(format!("symlink target {t:?} != expected {want:?}")),
                Err(err) => fail(format!("readlink failed: {err}")),
            }
        }
        if let Some(rdev) = e.get("rdev").and_then(|v| v.as_array()) {
            let (major, minor) = (libc::major(md.rdev()) as u64, libc::minor(md.rdev()) as u64);
            if rdev.first().and_then(|v| v.as_u64()) != Some(major)
                || rdev.get(1).and_then(|v| v.as_u64()) != Some(minor)
            {
                fail(format!("rdev {major}:{minor} != expected {rdev:?}"));
            }
            if !(ft.is_char_device() || ft.is_block_device()) {
                fail("not a device node".into());
            }
        }
        let want_xattrs: BTreeMap<String, String> = e
            .get("xattrs_hex")
            .and_then(|v| v.as_object())
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let got_xattrs = read_xattrs(&p);
        match got_xattrs {
            Ok(got) if got == want_xattrs => {}
            Ok(got) => fail(format!("xattrs {got:?} != expected {want_xattrs:?}")),
            Err(err) => fail(format!("xattrs: {err}")),
        }
    }
    // Nothing extra in the tree.
    let mut stack = vec![mountpoint.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            failures.push(format!("{}: readdir failed", dir.display()));
            continue;
        };
        for ent in rd.flatten() {
            let p = ent.path();
            let rel = p
                .strip_prefix(mountpoint)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if !expected_paths.contains_key(&rel) {
                failures.push(format!("{rel}: present but not expected"));
            }
            if ent.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                stack.push(p);
            }
        }
    }
    failures
}

/// Every xattr of a path (not following symlinks), as name -> hex value.
pub fn read_xattrs(p: &Path) -> Result<BTreeMap<String, String>, String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let c = CString::new(p.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut names = vec![0u8; 65536];
    // SAFETY: valid NUL-terminated path and a buffer of the stated length.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n < 0 {
        return Err(format!("llistxattr: {}", std::io::Error::last_os_error()));
    }
    let mut out = BTreeMap::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
    {
        let cname = CString::new(name).map_err(|e| e.to_string())?;
        let mut value = vec![0u8; 65536];
        // SAFETY: as above.
        let v = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr().cast(),
                value.len(),
            )
        };
        if v < 0 {
            return Err(format!(
                "lgetxattr {}: {}",
                String::from_utf8_lossy(name),
                std::io::Error::last_os_error()
            ));
        }
        out.insert(
            String::from_utf8_lossy(name).into_owned(),
            hex::encode(&value[..v as usize]),
        );
    }
    Ok(out)
}

/// Unmounts (lazily, as a last resort) when dropped, so a failing test leaves nothing.
pub struct MountGuard(pub PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let mp = self.0.to_string_lossy().into_owned();
        if Command::new("umount")
            .arg(&mp)
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
        {
            return;
        }
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mp)
            .stderr(Stdio::null())
            .status();
    }
}

/// CRC32C (Castagnoli), bit by bit: the superblock checksum's algorithm.
pub fn crc32c(mut crc: u32, data: &[u8]) -> u32 {
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// After tampering inside the first block, make the superblock checksum match again, so
/// the defect under test is the one reached.
pub fn fix_superblock_checksum(meta: &mut [u8]) {
    if meta[1024 + 8] & 1 == 0 {
        return;
    }
    let block = 1usize << meta[1024 + 12].min(20);
    let len = if block <= 1024 { block } else { block - 1024 };
    if meta.len() < 1024 + len {
        return;
    }
    meta[1028..1032].fill(0);
    let sum = crc32c(0xFFFF_FFFF, &meta[1024..1024 + len]);
    meta[1028..1032].copy_from_slice(&sum.to_le_bytes());
}
