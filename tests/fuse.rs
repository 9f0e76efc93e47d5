//! `erofs-host mount`: every fixture through every backend against the kernel's view,
//! everyday tools on the mounted tree, concurrency, xattrs, corrupt images and traps.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn mount_with(args: &[String], backend: &str) -> Result<HostMount, String> {
    HostMount::new(args, &["--backend", backend])
}

fn fuse_available() -> bool {
    common::fuse_available("FUSE mount tests")
}

fn mount(dir: &str, backend: &str) -> HostMount {
    mount_with(&device_args(dir), backend)
        .unwrap_or_else(|e| panic!("{dir} ({backend}): mount failed: {e}"))
}

#[test]
fn every_fixture_matches_the_kernel_view_on_every_backend() {
    if !fuse_available() {
        return;
    }
    for backend in ["fuse", "loop"] {
        for dir in ALL_FIXTURES {
            let m = mount(dir, backend);
            let failures = compare_tree(&m.path(), &fixture(dir).join("expected.json"));
            let entries = serde_json::from_slice::<serde_json::Value>(
                &std::fs::read(fixture(dir).join("expected.json")).unwrap(),
            )
            .unwrap()["entries"]
                .as_array()
                .unwrap()
                .len();
            eprintln!(
                "{dir} via {backend}: {} passed, {} failed",
                entries.saturating_sub(failures.len()),
                failures.len()
            );
            assert!(
                failures.is_empty(),
                "{dir} via {backend}:\n{}",
                failures.join("\n")
            );
        }
    }
}

fn sh(cmd: &str, dir: &Path) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn find_ls_tar_and_cp_work_on_the_mounted_tree() {
    if !fuse_available() {
        return;
    }
    let m = mount("basic", "fuse");
    let entries = 351;
    let out = sh("find . | wc -l", &m.path());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (entries + 1).to_string(),
        "find"
    );
    let out = sh("ls -lR . > /dev/null", &m.path());
    assert!(
        out.status.success(),
        "ls -lR: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // tar reads every file (output to a pipe, so GNU tar cannot skip the reads).
    let out = sh("tar -cf - . | tar -tf - | wc -l", &m.path());
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        (entries + 1).to_string(),
        "tar -c lists every entry"
    );
    // cp -a out, then the copy must match the kernel's view too.
    let dest = TempDir::new("cp");
    let out = Command::new("cp")
        .arg("-a")
        .arg(m.path().join("."))
        .arg(dest.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "cp -a: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A copy on a real filesystem has that filesystem's directory sizes; all else must match.
    let failures: Vec<_> = compare_tree(dest.path(), &fixture("basic").join("expected.json"))
        .into_iter()
        .filter(|f| {
            !(f.contains(": size ") && dest.path().join(f.split(':').next().unwrap_or("")).is_dir())
        })
        .collect();
    assert!(
        failures.is_empty(),
        "cp -a copy differs:\n{}",
        failures.join("\n")
    );
}

#[test]
fn eight_concurrent_readers_of_one_file_get_the_same_bytes() {
    if !fuse_available() {
        return;
    }
    let m = mount("basic", "fuse");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("basic").join("expected.json")).unwrap())
            .unwrap();
    let big = expected["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("sha256").is_some())
        .max_by_key(|e| e["size"].as_u64().unwrap())
        .unwrap();
    let path = m.path().join(big["path"].as_str().unwrap());
    let want = big["sha256"].as_str().unwrap().to_string();
    let readers: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                // Different read sizes, so requests interleave at different offsets.
                use std::io::Read;
                let mut f = std::fs::File::open(&path).unwrap();
                let mut buf = vec![0u8; 4096 * (i + 1)];
                let mut all = Vec::new();
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    all.extend_from_slice(&buf[..n]);
                }
                sha256_hex(&all)
            })
        })
        .collect();
    for r in readers {
        assert_eq!(r.join().unwrap(), want);
    }
}

#[test]
fn getfattr_and_listxattr_show_the_xattrs() {
    if !fuse_available() {
        return;
    }
    let m = mount("basic", "fuse");
    let file = m.path().join("xattrs/file");
    let out = Command::new("getfattr")
        .args(["-d", "-m", "-", "-e", "hex", "--absolute-names"])
        .arg(&file)
        .output();
    match out {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains("user.demo=0x68656c6c6f"), "{text}");
            assert!(text.contains("trusted.t1=0x000162696e617279"), "{text}");
            assert!(text.contains("user.empty"), "{text}");
        }
        Err(_) => skip("getfattr", "the attr package is not installed"),
    }
    let xattrs = read_xattrs(&file).unwrap();
    assert_eq!(xattrs.len(), 3, "{xattrs:?}");
    // A missing xattr is ENODATA, not an error of the mount.
    let c = std::ffi::CString::new(file.to_string_lossy().as_bytes()).unwrap();
    let name = std::ffi::CString::new("user.absent").unwrap();
    let mut buf = [0u8; 16];
    // SAFETY: valid C strings and buffer.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert_eq!(n, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::ENODATA)
    );
}

/// The nid of a path, as the FUSE mount reports it (st_ino is the nid, except the root).
fn nid_of(mp: &Path, rel: &str) -> u64 {
    std::fs::symlink_metadata(mp.join(rel)).unwrap().ino()
}

/// Byte offset of the dirent that points at `nid` (12-byte records; nid LE u64 first).
fn dirent_offset(meta: &[u8], nid: u64, file_type: u8) -> usize {
    let pat = nid.to_le_bytes();
    (0..meta.len() - 12)
        .find(|&i| meta[i..i + 8] == pat && meta[i + 10] == file_type && meta[i + 11] == 0)
        .unwrap_or_else(|| panic!("no dirent for nid {nid}"))
}

/// Mount a copy of `basic` with its metadata changed by `tamper`, through FUSE.
fn mount_tampered(tamper: impl Fn(&mut Vec<u8>)) -> (HostMount, TempDir) {
    let (args, tmp) = tampered_args(tamper);
    let m = mount_with(&args, "fuse").unwrap_or_else(|e| panic!("mount failed: {e}"));
    (m, tmp)
}

/// The device arguments of `basic` with a tampered copy of its metadata (kept in the
/// returned directory), its superblock checksum made right again.
fn tampered_args(tamper: impl Fn(&mut Vec<u8>)) -> (Vec<String>, TempDir) {
    let tmp = TempDir::new("tampered");
    let mut meta = std::fs::read(fixture("basic").join("meta.erofs")).unwrap();
    tamper(&mut meta);
    fix_superblock_checksum(&mut meta);
    let meta_path = tmp.path().join("meta.erofs");
    std::fs::write(&meta_path, &meta).unwrap();
    let mut args = device_args("basic");
    let i = args.iter().position(|a| a.ends_with("meta.erofs")).unwrap();
    args[i] = meta_path.to_string_lossy().into_owned();
    (args, tmp)
}

fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// The rest of the tree still reads right: every regular file outside `except`.
fn rest_is_readable(mp: &Path, except: &[&str]) {
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("basic").join("expected.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for e in expected["entries"].as_array().unwrap() {
        let path = e["path"].as_str().unwrap();
        if except.iter().any(|x| path.starts_with(x)) {
            continue;
        }
        if let Some(want) = e.get("sha256").and_then(|v| v.as_str()) {
            let data = std::fs::read(mp.join(path)).unwrap_or_else(|err| panic!("{path}: {err}"));
            assert_eq!(sha256_hex(&data), want, "{path}");
            checked += 1;
        }
    }
    assert!(checked > 300, "only {checked} files checked");
}

#[test]
fn corrupt_images_fail_only_the_affected_path() {
    if !fuse_available() {
        return;
    }
    let clean = mount("basic", "fuse");
    let mp = clean.path();
    let f513 = nid_of(&mp, "sizes/f513");
    let f4097 = nid_of(&mp, "sizes/f4097");
    let owners = nid_of(&mp, "owners");
    let d01 = nid_of(&mp, "names/d00-abcdefghij/d01-abcdefghij");
    let d00 = nid_of(&mp, "names/d00-abcdefghij");
    let f1 = nid_of(&mp, "sizes/f1");
    drop(clean);
    let eio_like = |e: Option<i32>| matches!(e, Some(libc::EIO) | Some(libc::EUCLEAN));

    // 1. An inode with an impossible data layout.
    let (m, _t) = mount_tampered(|meta| {
        let at = (f513 * 32) as usize;
        meta[at] = (meta[at] & 1) | (7 << 1);
    });
    // The kernel answers an unknown layout with EOPNOTSUPP; so do we.
    let e = errno_of(std::fs::read(m.path().join("sizes/f513")));
    assert!(
        eio_like(e) || e == Some(libc::EOPNOTSUPP),
        "bad inode layout: {e:?}"
    );
    rest_is_readable(&m.path(), &["sizes/f513", "names/hardlink-to-f513"]);

    // 2. A chunk index pointing past the tar.
    let (m, _t) = mount_tampered(|meta| {
        let inode = (f4097 * 32) as usize;
        let icount = u16::from_le_bytes([meta[inode + 2], meta[inode + 3]]) as usize;
        let xattr = if icount == 0 {
            0
        } else {
            12 + 4 * (icount - 1)
        };
        let index = (inode + 64 + xattr).div_ceil(8) * 8;
        meta[index + 4..index + 8].copy_from_slice(&0x7fff_0000u32.to_le_bytes());
    });
    assert!(
        std::fs::metadata(m.path().join("sizes/f4097")).is_ok(),
        "stat still works"
    );
    assert!(
        eio_like(errno_of(std::fs::read(m.path().join("sizes/f4097")))),
        "chunk past the tar"
    );
    rest_is_readable(&m.path(), &["sizes/f4097"]);

    // 3. A dirent whose name offset is past its block.
    let (m, _t) = mount_tampered(|meta| {
        let at = dirent_offset(meta, f1, 1);
        meta[at + 8..at + 10].copy_from_slice(&0xfff0u16.to_le_bytes());
    });
    assert!(
        eio_like(errno_of(
            std::fs::read_dir(m.path().join("sizes"))
                .and_then(|d| d.collect::<Result<Vec<_>, _>>())
        )),
        "nameoff past the block"
    );
    rest_is_readable(&m.path(), &["sizes/"]);

    // 4. A dirent whose nid is far outside the image.
    let (m, _t) = mount_tampered(|meta| {
        let at = dirent_offset(meta, owners, 2);
        meta[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    assert!(
        eio_like(errno_of(std::fs::metadata(m.path().join("owners")))),
        "nid out of range"
    );
    rest_is_readable(&m.path(), &["owners/"]);

    // 5. A directory cycle: d00/d01 points back at d00. Walking it must end.
    let (m, _t) = mount_tampered(|meta| {
        let at = dirent_offset(meta, d01, 2);
        meta[at..at + 8].copy_from_slice(&d00.to_le_bytes());
    });
    let started = Instant::now();
    let _ = sh(
        "find . > /dev/null 2>&1; ls -R . > /dev/null 2>&1",
        &m.path(),
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "find did not end on a cycle"
    );
    rest_is_readable(&m.path(), &["names/"]);
}

#[test]
fn loop_backend_refuses_an_image_that_fails_verification() {
    if !fuse_available() {
        return;
    }
    let clean = mount("basic", "fuse");
    let owners = nid_of(&clean.path(), "owners");
    drop(clean);
    let (args, _tmp) = tampered_args(|meta| {
        let at = dirent_offset(meta, owners, 2);
        meta[at..at + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    });
    let err = mount_with(&args, "loop")
        .err()
        .expect("a corrupt image must be refused");
    assert!(err.contains("failed verification"), "{err}");
}

#[test]
fn a_trap_gives_eio_and_the_next_read_works() {
    if !fuse_available() {
        return;
    }
    let mut args = device_args("basic");
    // Opening two instances reads the blob a few times; trap on a later read.
    args.insert(1, "--inject-trap-after-blob-reads".into());
    args.insert(2, "12".into());
    let m = mount_with(&args, "fuse").unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("basic").join("expected.json")).unwrap())
            .unwrap();
    let mut failed = Vec::new();
    for e in expected["entries"].as_array().unwrap() {
        let (Some(want), Some(path)) =
            (e.get("sha256").and_then(|v| v.as_str()), e["path"].as_str())
        else {
            continue;
        };
        // O_DIRECT: each read is one FUSE request, so an EIO is not hidden by the
        // kernel retrying a failed readahead.
        match read_direct(&m.path().join(path)) {
            Ok(data) => assert_eq!(sha256_hex(&data), want, "{path}"),
            Err(err) => {
                assert_eq!(err.raw_os_error(), Some(libc::EIO), "{path}: {err}");
                failed.push((path.to_string(), want.to_string()));
            }
        }
    }
    assert_eq!(
        failed.len(),
        1,
        "exactly one read meets the injected trap: {failed:?}"
    );
    let (path, want) = &failed[0];
    let data = read_direct(&m.path().join(path)).expect("the next read works");
    assert_eq!(&sha256_hex(&data), want);
}

/// Read a whole file with O_DIRECT, in 128 KiB requests from an aligned buffer.
fn read_direct(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)?;
    const CHUNK: usize = 128 * 1024;
    let mut backing = vec![0u8; CHUNK + 4096];
    let skew = backing.as_ptr().align_offset(4096);
    let buf = &mut backing[skew..skew + CHUNK];
    let mut all = Vec::new();
    loop {
        let n = f.read(buf)?;
        if n == 0 {
            return Ok(all);
        }
        all.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn nbd_backend_mounts_where_the_kernel_has_nbd_and_fails_clearly_where_not() {
    if !fuse_available() {
        return;
    }
    let have_nbd = Path::new("/dev/nbd0").exists() || Path::new("/sys/block/nbd0").exists();
    let started = Instant::now();
    let result = mount_with(&device_args("basic"), "nbd");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "mount --backend nbd must not hang"
    );
    if have_nbd {
        let m = result.unwrap_or_else(|e| panic!("mount --backend nbd failed: {e}"));
        let failures = compare_tree(&m.path(), &fixture("basic").join("expected.json"));
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    } else {
        skip(
            "mount --backend nbd (kernel attach)",
            "this kernel has no nbd driver (/dev/nbd*); only the clear refusal is checked",
        );
        let err = result
            .err()
            .expect("without /dev/nbd* the nbd backend must fail");
        assert!(err.contains("nbd"), "{err}");
    }
}
