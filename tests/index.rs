//! `erofs-host index`: every fixture indexed by us reads back exactly (`cat`, the kernel's
//! loop mount and our FUSE mount against the fixture's expected.json, the zinfo checked by
//! the system zlib), the output is deterministic, and hostile tars get a clear error or a
//! documented treatment, never a panic, a hang or a partial output file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;

const T: Duration = Duration::from_secs(120);

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn blob_of(dir: &str) -> PathBuf {
    if dir == "plain-tar" {
        fixture(dir).join("layer.tar")
    } else {
        fixture(dir).join("layer.tar.gz")
    }
}

/// Run `erofs-host index` on `blob` into `out/meta` (and `out/zinfo` when `zinfo`).
fn index(blob: &Path, out: &Path, zinfo: bool, aufs: bool) -> Output {
    let mut args = vec![
        "index".to_string(),
        s(&component()),
        s(blob),
        "--tarindex".into(),
        s(&out.join("meta")),
    ];
    if zinfo {
        args.extend(["--zinfo".into(), s(&out.join("zinfo"))]);
    }
    if aufs {
        args.push("--aufs".into());
    }
    run_host(&args, T)
}

/// Index a fixture, asserting success; returns (meta, zinfo).
fn index_fixture(dir: &str, out: &Path) -> (Vec<u8>, Option<Vec<u8>>) {
    let gz = dir != "plain-tar";
    let o = index(&blob_of(dir), out, gz, dir == "aufs");
    assert!(
        o.status.success(),
        "{dir}: index failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let meta = std::fs::read(out.join("meta")).unwrap();
    let zinfo = gz.then(|| std::fs::read(out.join("zinfo")).unwrap());
    (meta, zinfo)
}

/// The device arguments with our outputs in place of the reference's.
fn our_device_args(dir: &str, out: &Path) -> Vec<String> {
    let mut args = vec![s(&component()), "--tarindex".into(), s(&out.join("meta"))];
    if dir != "plain-tar" {
        args.extend(["--zinfo".into(), s(&out.join("zinfo"))]);
    }
    args.push(s(&blob_of(dir)));
    args
}

fn uncompressed_tar(dir: &str) -> Vec<u8> {
    if dir == "plain-tar" {
        return std::fs::read(blob_of(dir)).unwrap();
    }
    let out = Command::new("gzip")
        .arg("-dc")
        .arg(blob_of(dir))
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

fn expected_json(dir: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture(dir).join("expected.json")).unwrap()).unwrap()
}

#[test]
fn every_fixture_reads_back_and_is_deterministic() {
    for dir in ALL_FIXTURES {
        let a = TempDir::new("index-a");
        let b = TempDir::new("index-b");
        let (meta, zinfo) = index_fixture(dir, a.path());
        let (meta2, zinfo2) = index_fixture(dir, b.path());
        assert!(meta == meta2 && zinfo == zinfo2, "{dir}: two runs differ");
        assert_eq!(meta.len() % 512, 0, "{dir}: meta is whole 512-byte blocks");

        let tar = uncompressed_tar(dir);
        let want = expected_json(dir);
        assert_eq!(
            sha256_hex(&tar),
            want["tar_sha256"].as_str().unwrap(),
            "{dir}: the fixture's tar"
        );
        // `cat` with our index is our META ‖ the tar, byte for byte.
        let out = run_host(
            &[&["cat".to_string()][..], &our_device_args(dir, a.path())].concat(),
            T,
        );
        assert!(
            out.status.success(),
            "{dir}: cat: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout.len() == meta.len() + tar.len()
                && out.stdout[..meta.len()] == meta[..]
                && out.stdout[meta.len()..] == tar[..],
            "{dir}: cat is not our META ‖ tar"
        );
        // Our own verify walks the whole image.
        let out = run_host(
            &[&["verify".to_string()][..], &our_device_args(dir, a.path())].concat(),
            T,
        );
        assert!(
            out.status.success(),
            "{dir}: verify: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The zinfo, checked by the system zlib (ctypes: inflatePrime +
        // inflateSetDictionary at every checkpoint), not by our code.
        if zinfo.is_some() {
            let tar_path = a.path().join("tar");
            std::fs::write(&tar_path, &tar).unwrap();
            let check = Command::new("python3")
                .arg(root().join("tests/build-zinfo-check.py"))
                .arg(a.path().join("zinfo"))
                .arg(blob_of(dir))
                .arg(&tar_path)
                .arg((2u64 << 20).to_string())
                .output()
                .unwrap();
            assert!(
                check.status.success(),
                "{dir}: zinfo check: {}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            );
            eprintln!(
                "{dir}: zinfo: {}",
                String::from_utf8_lossy(&check.stdout).trim()
            );
        }
        // The report names the digests: the blob's and the diff_id.
        let report = String::from_utf8_lossy(
            &index(&blob_of(dir), b.path(), zinfo.is_some(), dir == "aufs").stdout,
        )
        .into_owned();
        assert!(
            report.contains(&format!(
                "diff_id sha256:{}",
                want["tar_sha256"].as_str().unwrap()
            )),
            "{dir}: {report}"
        );
        eprintln!("{dir}: cat, verify, zinfo and a second run all match");
    }
}

/// A mount made with `erofs-host mount`, stopped and unmounted on drop.
struct FuseMount(PathBuf);

impl Drop for FuseMount {
    fn drop(&mut self) {
        let out = run_host(&["umount", &s(&self.0)], T);
        if !out.status.success() {
            let _ = run_host(&["umount", "--lazy", &s(&self.0)], T);
        }
    }
}

fn loop_mount(image: &Path, mnt: &Path) -> Result<MountGuard, String> {
    let out = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(image)
        .arg(mnt)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(MountGuard(mnt.to_path_buf()))
}

#[test]
fn kernel_and_fuse_mounts_of_our_index_match_the_kernel_view() {
    if !is_root() {
        return skip(
            "kernel_and_fuse_mounts_of_our_index_match_the_kernel_view",
            "needs root to mount",
        );
    }
    for dir in ALL_FIXTURES {
        let tmp = TempDir::new("index-mount");
        let (meta, _) = index_fixture(dir, tmp.path());
        let expected = fixture(dir).join("expected.json");

        // The kernel's EROFS over META ‖ tar.
        let image = tmp.path().join("device.img");
        std::fs::write(&image, [meta, uncompressed_tar(dir)].concat()).unwrap();
        let mnt = tmp.path().join("kernel");
        std::fs::create_dir(&mnt).unwrap();
        let guard = loop_mount(&image, &mnt)
            .unwrap_or_else(|e| panic!("{dir}: the kernel refused our image: {e}"));
        let failures = compare_tree(&mnt, &expected);
        drop(guard);
        assert!(
            failures.is_empty(),
            "{dir}: kernel mount: {} differ:\n{}",
            failures.len(),
            failures.join("\n")
        );

        // Our FUSE mount, the image parsed in the sandbox.
        if !Path::new("/dev/fuse").exists() {
            skip("FUSE part of the index mount test", "no /dev/fuse");
            continue;
        }
        let fmnt = tmp.path().join("fuse");
        std::fs::create_dir(&fmnt).unwrap();
        let args = our_device_args(dir, tmp.path());
        let mut full = vec![
            "mount".to_string(),
            args[0].clone(),
            args[args.len() - 1].clone(),
            s(&fmnt),
        ];
        full.extend(args[1..args.len() - 1].iter().cloned());
        let out = run_host(&full, T);
        assert!(
            out.status.success(),
            "{dir}: fuse mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let guard = FuseMount(fmnt.clone());
        let failures = compare_tree(&fmnt, &expected);
        drop(guard);
        assert!(
            failures.is_empty(),
            "{dir}: fuse mount: {} differ:\n{}",
            failures.len(),
            failures.join("\n")
        );
        eprintln!("{dir}: kernel and FUSE mounts of our index match expected.json");
    }
}

#[test]
fn gzip_needs_a_zinfo_and_a_plain_tar_refuses_one() {
    let tmp = TempDir::new("index-zinfo-rule");
    let o = index(&blob_of("basic"), tmp.path(), false, false);
    assert!(!o.status.success());
    assert_stderr_contains(&o, "give --zinfo");
    let o = index(&blob_of("plain-tar"), tmp.path(), true, false);
    assert!(!o.status.success());
    assert_stderr_contains(&o, "drop --zinfo");
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "a refusal writes nothing"
    );
}

#[test]
fn an_interrupted_run_leaves_no_file() {
    let tmp = TempDir::new("index-sigint");
    let mut child = Command::new(host_bin())
        .args(["index", &s(&component()), &s(&blob_of("large"))])
        .args(["--tarindex", &s(&tmp.path().join("meta"))])
        .args(["--zinfo", &s(&tmp.path().join("zinfo"))])
        .env(
            "EROFS_WASM_CACHE_DIR",
            std::env::temp_dir().join("erofs-e2e-cwasm"),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: kill(2) on the child we started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    if status.success() {
        // The run finished before the signal: both outputs, nothing else.
        assert_eq!(left.len(), 2, "{left:?}");
    } else {
        assert_eq!(status.code(), Some(128 + libc::SIGINT), "{status:?}");
        assert!(left.is_empty(), "an interrupted run left {left:?}");
    }
}

/// Index layers straight from a registry on 127.0.0.1 (tests/registry/harness.py: Debian's
/// docker-registry, Basic auth, TLS with its own CA): the outputs equal the local ones.
#[test]
fn oci_layers_index_like_the_local_blob() {
    let args = ["--auth", "basic", "--tls", "--images", "basic,plain-tar"];
    let Some(reg) = HarnessRegistry::start(
        "oci_layers_index_like_the_local_blob",
        "index-registry",
        &args,
    ) else {
        return;
    };
    for dir in ["basic", "plain-tar"] {
        let local = TempDir::new("index-local");
        let (meta, zinfo) = index_fixture(dir, local.path());
        let remote = TempDir::new("index-remote");
        let reference = reg.oci(dir);
        let mut args = vec![
            "index".to_string(),
            s(&component()),
            reference.clone(),
            "--ca-file".into(),
            reg.s("ca_file"),
            "--tarindex".into(),
            s(&remote.path().join("meta")),
        ];
        let gz = zinfo.is_some();
        if gz {
            // Without --zinfo a gzip layer is refused, before the blob is fetched whole.
            let o = reg.run_host(&args, T);
            assert!(!o.status.success(), "{dir}: a gzip layer without --zinfo");
            assert_stderr_contains(&o, "give --zinfo");
            args.extend(["--zinfo".into(), s(&remote.path().join("zinfo"))]);
        }
        let o = reg.run_host(&args, T);
        assert!(
            o.status.success(),
            "{dir}: {reference}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(
            std::fs::read(remote.path().join("meta")).unwrap(),
            meta,
            "{dir}: META"
        );
        if let Some(z) = zinfo {
            assert_eq!(
                std::fs::read(remote.path().join("zinfo")).unwrap(),
                z,
                "{dir}: zinfo"
            );
        }
        let report = String::from_utf8_lossy(&o.stdout);
        let layer = reg.image(dir)["layer_digest"].as_str().unwrap();
        assert!(
            report.contains(layer),
            "{dir}: the report names the layer digest: {report}"
        );
        eprintln!("{dir}: {reference} indexes to the same bytes as the local blob");
    }
}

// ---- hostile tars ----------------------------------------------------------------------

const BLOCK: usize = 512;

struct Header {
    name: Vec<u8>,
    typeflag: u8,
    size: usize,
    link: Vec<u8>,
    magic: &'static [u8; 8],
    raw_size: Option<[u8; 12]>,
}

fn hdr(name: &[u8], typeflag: u8, size: usize) -> Header {
    Header {
        name: name.to_vec(),
        typeflag,
        size,
        link: Vec::new(),
        magic: b"ustar\x0000",
        raw_size: None,
    }
}

fn octal(field: &mut [u8], value: u64) {
    let text = format!("{value:0width$o}\0", width = field.len() - 1);
    field.copy_from_slice(text.as_bytes());
}

fn seal(h: &mut [u8]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn header_block(h: &Header) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    let n = h.name.len().min(100);
    b[..n].copy_from_slice(&h.name[..n]);
    octal(&mut b[100..108], 0o644);
    octal(&mut b[108..116], 0);
    octal(&mut b[116..124], 0);
    match h.raw_size {
        Some(raw) => b[124..136].copy_from_slice(&raw),
        None => octal(&mut b[124..136], h.size as u64),
    }
    octal(&mut b[136..148], 1_700_000_000);
    b[156] = h.typeflag;
    b[157..157 + h.link.len()].copy_from_slice(&h.link);
    b[257..265].copy_from_slice(h.magic);
    seal(&mut b);
    b
}

fn padded(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.resize(data.len().div_ceil(BLOCK) * BLOCK, 0);
    v
}

fn member(name: &str, data: &[u8]) -> Vec<u8> {
    [
        header_block(&hdr(name.as_bytes(), b'0', data.len())),
        padded(data),
    ]
    .concat()
}

fn typed(name: &str, typeflag: u8, link: &str) -> Vec<u8> {
    let mut h = hdr(name.as_bytes(), typeflag, 0);
    h.link = link.as_bytes().to_vec();
    header_block(&h)
}

fn record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut n = body + 1;
    while n.to_string().len() + body != n {
        n += 1;
    }
    [
        format!("{n} {key}=").into_bytes(),
        value.to_vec(),
        b"\n".to_vec(),
    ]
    .concat()
}

fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|(k, v)| record(k, v)).collect();
    [
        header_block(&hdr(b"PaxHeader", b'x', body.len())),
        padded(&body),
    ]
    .concat()
}

fn end() -> Vec<u8> {
    vec![0u8; 2 * BLOCK]
}

/// What the builder must do with a hostile tar.
enum Expect {
    /// Fail with this text in the message.
    Refuse(&'static str),
    /// Succeed; in the mounted image each check holds: `PATH` exists, `!PATH` does not,
    /// `PATH=TEXT` has that content.
    Accept(&'static [&'static str]),
}

fn hostile_cases() -> Vec<(&'static str, Expect, Vec<u8>)> {
    use Expect::*;
    let mut bad_sum = header_block(&hdr(b"x", b'0', 0));
    bad_sum[0] = b'y';
    let mut huge = hdr(b"huge", b'0', 0);
    let mut raw = [0u8; 12];
    raw[0] = 0x80;
    raw[4] = 0x40;
    huge.raw_size = Some(raw);
    let mut v7 = hdr(b"v7", 0, 3);
    v7.magic = &[0; 8];
    let long_component = [b"d/".to_vec(), vec![b'n'; 300]].concat();
    vec![
        (
            "truncated-header",
            Refuse("truncated header"),
            [member("ok", b"fine"), member("next", b"")[..300].to_vec()].concat(),
        ),
        (
            "bad-checksum",
            Refuse("checksum"),
            [bad_sum, end()].concat(),
        ),
        (
            "huge-base256-size",
            Refuse("runs past"),
            [header_block(&huge), end()].concat(),
        ),
        (
            "size-past-end",
            Refuse("runs past the end"),
            [header_block(&hdr(b"big", b'0', 1 << 20)), vec![b'x'; 1000]].concat(),
        ),
        (
            "pax-longer-than-archive",
            Refuse("runs past the end"),
            [
                header_block(&hdr(b"PaxHeader", b'x', 100_000)),
                record("path", b"a"),
            ]
            .concat(),
        ),
        (
            "dotdot-traversal",
            Refuse("`..`"),
            [member("../../etc/passwd", b"root"), end()].concat(),
        ),
        (
            "absolute-names",
            Accept(&["etc/passwd=root"]),
            [member("/etc/passwd", b"root"), end()].concat(),
        ),
        (
            "nul-in-name",
            Refuse("NUL"),
            [pax(&[("path", b"a\0b")]), member("x", b""), end()].concat(),
        ),
        (
            "hardlink-loop",
            Refuse("loop"),
            [typed("a", b'1', "b"), typed("b", b'1', "a"), end()].concat(),
        ),
        (
            "hardlink-missing",
            Refuse("not in the archive"),
            [typed("a", b'1', "nowhere"), end()].concat(),
        ),
        (
            "hardlink-before-target",
            Accept(&["early=data", "target=data"]),
            [
                typed("early", b'1', "target"),
                member("target", b"data"),
                end(),
            ]
            .concat(),
        ),
        (
            "component-300",
            Refuse("300-byte component"),
            [pax(&[("path", &long_component)]), member("x", b""), end()].concat(),
        ),
        (
            "duplicates",
            Accept(&["dup=second", "d/kept"]),
            [
                member("dup", b"first"),
                member("d/kept", b""),
                member("dup", b"second"),
                typed("d/", b'5', ""),
                end(),
            ]
            .concat(),
        ),
        (
            "aufs-whiteout-root",
            Refuse("names nothing"),
            [member("./.wh..", b""), end()].concat(),
        ),
        (
            "aufs-bare-wh",
            Refuse("names nothing"),
            [member("dir/.wh.", b""), end()].concat(),
        ),
        (
            "aufs-internals",
            Accept(&["f", "!.wh..wh.aufs", "!.wh..wh.plnk"]),
            [
                member(".wh..wh.aufs", b""),
                member(".wh..wh.plnk/x", b""),
                member("f", b""),
                end(),
            ]
            .concat(),
        ),
        (
            "xattr-65536",
            Refuse("65536-byte value"),
            [
                pax(&[("SCHILY.xattr.user.big", &[b'v'; 65536])]),
                member("x", b""),
                end(),
            ]
            .concat(),
        ),
        (
            "gnu-old-sparse",
            Refuse("sparse"),
            [typed("s", b'S', ""), end()].concat(),
        ),
        (
            "root-as-file",
            Refuse("root can only be a directory"),
            [member("./", b"x"), end()].concat(),
        ),
        (
            "parent-is-file",
            Refuse("is not a directory"),
            [member("f", b"x"), member("f/g", b""), end()].concat(),
        ),
        (
            "v7-regular",
            Accept(&["v7=old"]),
            [header_block(&v7), padded(b"old"), end()].concat(),
        ),
        ("no-end-marker", Accept(&["a=x"]), member("a", b"x")),
        (
            "unknown-typeflag",
            Refuse("type flag"),
            [typed("q", b'Q', ""), end()].concat(),
        ),
        // An empty blob is an empty layer: an image with only the root directory.
        ("empty-blob", Accept(&["!x"]), Vec::new()),
        ("gz-truncated", Refuse("gzip"), {
            let gz = std::fs::read(blob_of("pigz")).unwrap();
            gz[..gz.len() / 2].to_vec()
        }),
        ("gz-trailing-garbage", Refuse("gzip"), {
            let gz = std::fs::read(blob_of("pigz")).unwrap();
            [gz, b"garbage!".to_vec()].concat()
        }),
    ]
}

/// Index `tar` and check the verdict. Names starting with `aufs-` are indexed with
/// `--aufs`; `gz-` ones are gzip blobs (refused ones only: the kernel check mounts tars).
fn check_hostile(name: &str, expect: &Expect, tar: &[u8], dir: &Path) -> Result<(), String> {
    let blob = dir.join(format!("{name}.tar"));
    std::fs::write(&blob, tar).unwrap();
    let out_dir = dir.join(name);
    std::fs::create_dir(&out_dir).unwrap();
    let gzip = name.starts_with("gz-");
    let o = index(&blob, &out_dir, gzip, name.starts_with("aufs-"));
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    // A trap says one of these (host/src/sandbox/trap.rs).
    let trapped = ["trapped", "ran out of memory", "was interrupted"]
        .iter()
        .any(|t| stderr.contains(t));
    if stderr.contains("panicked") || trapped {
        return Err(format!("a panic or trap: {stderr}"));
    }
    match expect {
        Expect::Refuse(text) => {
            if o.status.success() {
                return Err("accepted; want a refusal".into());
            }
            if !stderr.contains(text) {
                return Err(format!("refused without `{text}`: {stderr}"));
            }
            let left = std::fs::read_dir(&out_dir).unwrap().count();
            if left != 0 {
                return Err(format!("a refusal left {left} files"));
            }
            eprintln!("ok {name}: refused: {}", stderr.trim());
            Ok(())
        }
        Expect::Accept(checks) => {
            if !o.status.success() {
                return Err(format!("refused; want acceptance: {stderr}"));
            }
            let meta = out_dir.join("meta");
            let v = run_host(
                &[
                    "verify",
                    &s(&component()),
                    &s(&blob),
                    "--tarindex",
                    &s(&meta),
                ],
                T,
            );
            if !v.status.success() {
                return Err(format!("verify: {}", String::from_utf8_lossy(&v.stderr)));
            }
            if !is_root() {
                eprintln!("ok {name}: accepted and verified (no kernel mount: not root)");
                return Ok(());
            }
            let image = out_dir.join("device.img");
            std::fs::write(
                &image,
                [std::fs::read(&meta).unwrap(), tar.to_vec()].concat(),
            )
            .unwrap();
            let mnt = out_dir.join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            let guard = loop_mount(&image, &mnt).map_err(|e| format!("kernel mount: {e}"))?;
            let mut bad = Vec::new();
            for check in checks.iter() {
                let ok = if let Some(p) = check.strip_prefix('!') {
                    !mnt.join(p).exists()
                } else if let Some((p, want)) = check.split_once('=') {
                    std::fs::read(mnt.join(p)).ok().as_deref() == Some(want.as_bytes())
                } else {
                    mnt.join(check).exists()
                };
                if !ok {
                    bad.push(*check);
                }
            }
            let walk = Command::new("ls").arg("-laR").arg(&mnt).output();
            drop(guard);
            if !walk.map(|w| w.status.success()).unwrap_or(false) {
                return Err("ls -laR of the kernel mount failed".into());
            }
            if !bad.is_empty() {
                return Err(format!("checks failed in the kernel mount: {bad:?}"));
            }
            eprintln!("ok {name}: accepted, verified, kernel mount checks {checks:?}");
            Ok(())
        }
    }
}

#[test]
fn hostile_tars_get_a_clear_error_or_a_documented_treatment() {
    let tmp = TempDir::new("index-hostile");
    let cases = hostile_cases();
    assert!(cases.len() >= 15);
    let mut failures = Vec::new();
    for (name, expect, tar) in &cases {
        if let Err(e) = check_hostile(name, expect, tar, tmp.path()) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile tars failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    eprintln!("{} hostile tars: all as expected", cases.len());
}
