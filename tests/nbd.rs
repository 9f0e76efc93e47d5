//! `erofs-host serve-nbd` with real NBD clients (nbdinfo, nbdcopy, qemu-img, nbdfuse plus
//! a kernel loop mount) and a raw-socket client, on 127.0.0.1 and on unix sockets.
//! Missing tools make a test print a loud SKIPPED line and return.

mod common;
#[path = "nbd/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use erofs_host::commands::DeviceArgs;
use erofs_host::sandbox::DevicePool;
use erofs_host::sandbox::Runtime;
use support::*;

const TOOL_TIMEOUT: Duration = Duration::from_secs(180);

/// Stops the server with SIGTERM and checks the clean exit and, for a unix socket, that
/// the socket file is gone.
fn stop_cleanly(server: NbdServer) {
    let socket = server.socket.clone();
    let status = server.terminate();
    assert!(
        status.success(),
        "serve-nbd exited with {status} on SIGTERM"
    );
    if let Some(p) = socket {
        assert!(!p.exists(), "{}: socket left behind", p.display());
    }
}

fn start(tmp: &TempDir, dir: &str, via: Via, extra: &[&str]) -> NbdServer {
    NbdServer::start(tmp.path(), &device_args(dir), via, extra)
        .unwrap_or_else(|stderr| panic!("{dir}: serve-nbd failed to start: {stderr}"))
}

#[test]
fn nbdinfo_shows_size_read_only_and_name() {
    let test = "nbdinfo_shows_size_read_only_and_name";
    if !have_tool(test, "nbdinfo") {
        return;
    }
    let tmp = TempDir::new("nbdinfo");
    let size = expected_device("basic").len() as u64;
    for (via, extra, name) in [
        (Via::Tcp, &[][..], "layer.tar.gz"),
        (Via::Unix, &["--export-name", "layer0"][..], "layer0"),
    ] {
        let server = start(&tmp, "basic", via, extra);
        let run = run_tool(
            tmp.path(),
            "nbdinfo",
            &["--json", &server.uri],
            TOOL_TIMEOUT,
        );
        assert!(run.ok(), "nbdinfo {}: {}", server.uri, run.stderr);
        let info: serde_json::Value = serde_json::from_str(&run.stdout).expect("nbdinfo JSON");
        let export = &info["exports"][0];
        assert_eq!(
            export["export-size"].as_u64(),
            Some(size),
            "{via:?}: {}",
            run.stdout
        );
        assert_eq!(
            export["is_read_only"].as_bool(),
            Some(true),
            "{}",
            run.stdout
        );
        assert_eq!(export["export-name"].as_str(), Some(name), "{}", run.stdout);
        assert_eq!(
            export["can_multi_conn"].as_bool(),
            Some(true),
            "{}",
            run.stdout
        );
        assert_eq!(
            export["block_size_maximum"].as_u64(),
            Some(32 << 20),
            "{}",
            run.stdout
        );
        stop_cleanly(server);
    }
}

#[test]
fn nbdcopy_and_qemu_img_give_the_exact_device_bytes() {
    let test = "nbdcopy_and_qemu_img_give_the_exact_device_bytes";
    if !have_tool(test, "nbdcopy") || !have_tool(test, "qemu-img") {
        return;
    }
    let tmp = TempDir::new("nbdcopy");
    for (i, dir) in ALL_FIXTURES.iter().enumerate() {
        let want = expected_device(dir);
        let want_sha = sha256_hex(&want);
        let via = if i % 2 == 0 { Via::Tcp } else { Via::Unix };
        let server = start(&tmp, dir, via, &[]);

        let out = tmp.path().join(format!("{dir}.nbdcopy.img"));
        let run = run_tool(
            tmp.path(),
            "nbdcopy",
            &[&server.uri, &out.to_string_lossy()],
            TOOL_TIMEOUT,
        );
        assert!(run.ok(), "{dir}: nbdcopy: {}", run.stderr);
        let got = std::fs::read(&out).expect("nbdcopy output");
        assert_eq!(got.len(), want.len(), "{dir}: nbdcopy size");
        assert_eq!(sha256_hex(&got), want_sha, "{dir}: nbdcopy bytes");

        let out = tmp.path().join(format!("{dir}.qemu.img"));
        let args = [
            "convert",
            "-f",
            "raw",
            "-O",
            "raw",
            &server.uri,
            &out.to_string_lossy(),
        ];
        let run = run_tool(tmp.path(), "qemu-img", &args, TOOL_TIMEOUT);
        assert!(run.ok(), "{dir}: qemu-img: {}", run.stderr);
        let got = std::fs::read(&out).expect("qemu-img output");
        // qemu-img works in 512-byte sectors: it may pad the tail with zeros.
        assert!(
            got.len() >= want.len() && got.len() - want.len() < 512,
            "{dir}: qemu-img size {}",
            got.len()
        );
        assert!(
            got[want.len()..].iter().all(|&b| b == 0),
            "{dir}: qemu-img padding"
        );
        assert_eq!(
            sha256_hex(&got[..want.len()]),
            want_sha,
            "{dir}: qemu-img bytes"
        );
        stop_cleanly(server);
        eprintln!(
            "{dir} ({via:?}): nbdcopy and qemu-img match ({} bytes)",
            want.len()
        );
    }
}

#[test]
fn four_concurrent_nbdcopy_clients_get_the_same_bytes() {
    if !have_tool(
        "four_concurrent_nbdcopy_clients_get_the_same_bytes",
        "nbdcopy",
    ) {
        return;
    }
    let tmp = TempDir::new("nbdcopy4");
    let want = sha256_hex(&expected_device("large"));
    for via in [Via::Tcp, Via::Unix] {
        let server = start(&tmp, "large", via, &[]);
        let outs: Vec<_> = (0..4)
            .map(|i| tmp.path().join(format!("copy{i}.img")))
            .collect();
        let running: Vec<_> = outs
            .iter()
            .map(|o| spawn_tool(tmp.path(), "nbdcopy", &[&server.uri, &o.to_string_lossy()]))
            .collect();
        for (i, (guard, out, err)) in running.into_iter().enumerate() {
            let run = finish(guard, &out, &err, TOOL_TIMEOUT);
            assert!(run.ok(), "client {i}: {}", run.stderr);
            let got = std::fs::read(&outs[i]).expect("copy");
            assert_eq!(sha256_hex(&got), want, "client {i} ({via:?})");
        }
        stop_cleanly(server);
    }
}

/// nbdfuse shows the export as a file; the kernel loop-mounts that file as EROFS.
#[test]
fn nbdfuse_then_kernel_loop_mount_matches_expected() {
    let test = "nbdfuse_then_kernel_loop_mount_matches_expected";
    if !is_root() {
        return skip(test, "needs root for mount -o loop");
    }
    if !Path::new("/dev/fuse").exists() {
        return skip(test, "no /dev/fuse");
    }
    if !have_tool(test, "nbdfuse") {
        return;
    }
    for (i, dir) in ALL_FIXTURES.iter().enumerate() {
        let tmp = TempDir::new("nbdfuse");
        let via = if i % 2 == 0 { Via::Unix } else { Via::Tcp };
        let server = start(&tmp, dir, via, &[]);
        let fuse_dir = tmp.path().join("fuse");
        let mnt = tmp.path().join("mnt");
        std::fs::create_dir(&fuse_dir).unwrap();
        std::fs::create_dir(&mnt).unwrap();
        let pidfile = tmp.path().join("nbdfuse.pid");
        let (nbdfuse, _, nbdfuse_err) = spawn_tool(
            tmp.path(),
            "nbdfuse",
            &[
                "-P",
                &pidfile.to_string_lossy(),
                "-r",
                &fuse_dir.to_string_lossy(),
                &server.uri,
            ],
        );
        // Dropped in reverse order: the loop mount, then the FUSE mount, then nbdfuse
        // (which exits once unmounted; the guard kills it otherwise), then the server.
        let _nbdfuse = nbdfuse;
        let _fuse_guard = MountGuard(fuse_dir.clone());
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pidfile.exists() {
            assert!(
                Instant::now() < deadline,
                "{dir}: nbdfuse not ready: {}",
                std::fs::read_to_string(&nbdfuse_err).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let image = fuse_dir.join("nbd");
        let size = std::fs::metadata(&image).expect("nbdfuse file").len();
        assert_eq!(
            size,
            expected_device(dir).len() as u64,
            "{dir}: nbdfuse file size"
        );
        let status = Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&image)
            .arg(&mnt)
            .status()
            .expect("run mount");
        if !status.success() {
            return skip(
                test,
                "mount -t erofs -o loop,ro failed (no erofs or loop here?)",
            );
        }
        let loop_guard = MountGuard(mnt.clone());
        let failures = compare_tree(&mnt, &fixture(dir).join("expected.json"));
        drop(loop_guard);
        assert!(
            failures.is_empty(),
            "{dir}: {} failed:\n{}",
            failures.len(),
            failures.join("\n")
        );
        eprintln!("{dir} ({via:?}): nbdfuse + kernel loop mount match expected.json (0 failed)");
        drop(_fuse_guard);
        drop(_nbdfuse);
        stop_cleanly(server);
    }
}

/// Hostile and unsupported requests on raw sockets: each gets the right reply (or, for a
/// bad magic, a closed connection), and the server keeps serving other clients.
#[test]
fn raw_requests_get_the_right_replies() {
    let tmp = TempDir::new("nbdraw");
    let want = expected_device("large");
    let size = want.len() as u64;
    let server = start(&tmp, "large", Via::Tcp, &[]);
    let slice = |off: u64, len: u32| &want[off as usize..(off + u64::from(len)) as usize];

    for structured in [false, true] {
        let mut c = server.connect(structured);
        // WRITE (its payload is consumed), TRIM: the export is read-only.
        c.request_with(REQUEST_MAGIC, CMD_WRITE, 1, 0, 4096, &[0xaa; 4096]);
        let r = c.reply(0);
        assert_eq!((r.cookie, r.error, r.data.len()), (1, EPERM, 0));
        c.request(CMD_TRIM, 0, 2, 0, 4096);
        let r = c.reply(0);
        assert_eq!((r.cookie, r.error), (2, EPERM));
        // An unknown command.
        c.request(42, 0, 3, 0, 512);
        let r = c.reply(0);
        assert_eq!((r.cookie, r.error), (3, EINVAL));
        // Out of range: past the end, straddling the end, and above 32 MiB.
        for (cookie, off, len) in [(4, size, 1), (5, size - 100, 4096), (6, 0, (32 << 20) + 1)] {
            let r = c.read(cookie, off, len);
            assert_eq!((r.error, r.data.len()), (EINVAL, 0), "read {off}+{len}");
        }
        // FLUSH is a no-op that succeeds; reads still work on the same connection,
        // including the exact last byte and the largest request, 32 MiB.
        c.request(CMD_FLUSH, 0, 7, 0, 0);
        assert_eq!(c.reply(0).error, 0);
        let r = c.read(8, size - 1, 1);
        assert_eq!((r.error, r.data.as_slice()), (0, slice(size - 1, 1)));
        let r = c.read(9, size - (32 << 20), 32 << 20);
        assert!(
            r.error == 0 && r.data == slice(size - (32 << 20), 32 << 20),
            "32 MiB read"
        );
        // Pipelined: four requests sent before any reply is read; replies by cookie.
        let reqs = [
            (10u64, 0u64, 65536u32),
            (11, 1_000_000, 300_000),
            (12, size - 4096, 4096),
            (13, 512, 1),
        ];
        for &(cookie, off, len) in &reqs {
            c.request(CMD_READ, 0, cookie, off, len);
        }
        for _ in 0..reqs.len() {
            let r = c.reply_lookup(|cookie| {
                reqs.iter()
                    .find(|q| q.0 == cookie)
                    .map_or(0, |q| q.2 as usize)
            });
            let &(_, off, len) = reqs.iter().find(|q| q.0 == r.cookie).expect("known cookie");
            assert_eq!(r.error, 0);
            assert!(r.data == slice(off, len), "cookie {} data", r.cookie);
        }
        // DISC: the server closes after answering everything.
        c.request(CMD_DISC, 0, 14, 0, 0);
        assert!(c.is_closed(), "DISC closes the connection");
    }

    // A bad magic closes that connection only.
    let mut other = server.connect(false);
    let mut bad = server.connect(false);
    bad.request_with(0x1234_5678, CMD_READ, 1, 0, 512, &[]);
    assert!(bad.is_closed(), "a bad magic closes the connection");
    // A client that leaves mid-transfer: a large read whose reply it never reads, and one
    // that hangs up in the middle of a request header.
    let mut gone = server.connect(false);
    gone.request(CMD_READ, 0, 1, 0, (size.min(16 << 20)) as u32);
    drop(gone);
    let mut half = server.connect(false);
    half.send(&[0x25, 0x60, 0x95]).expect("partial header");
    drop(half);
    // The others still get correct bytes: an existing connection and a new one.
    let r = other.read(20, 4096, 8192);
    assert!(r.error == 0 && r.data == slice(4096, 8192));
    let mut fresh = server.connect(true);
    let r = fresh.read(21, size / 2, 100_000);
    assert!(r.error == 0 && r.data == slice(size / 2, 100_000));
    stop_cleanly(server);
}

/// A meta whose directory "many" has an entry renamed out of order, superblock intact.
fn meta_with_unsorted_dirent(tmp: &TempDir) -> Vec<String> {
    let mut meta = std::fs::read(fixture("basic").join("meta.erofs")).unwrap();
    let name = b"entry-0005-";
    let at = meta
        .windows(name.len())
        .position(|w| w == name)
        .expect("dirent name");
    assert!(
        at >= 1536,
        "the name must lie outside the checksummed superblock block"
    );
    meta[at + 7] = b'9'; // entry-0005 -> entry-0905: after entry-0006
    let path = tmp.path().join("meta.erofs");
    std::fs::write(&path, &meta).unwrap();
    let mut args = device_args("basic");
    let i = args.iter().position(|a| a.ends_with("meta.erofs")).unwrap();
    args[i] = path.to_string_lossy().into_owned();
    args
}

#[test]
fn a_bad_image_is_refused_with_the_defect_named() {
    let tmp = TempDir::new("nbdbad");
    let args = meta_with_unsorted_dirent(&tmp);
    let started = Instant::now();
    let Err(stderr) = NbdServer::start(tmp.path(), &args, Via::Unix, &[]) else {
        panic!("a corrupt image must be refused before serving");
    };
    assert!(stderr.contains("failed verification"), "{stderr}");
    assert!(
        stderr.contains("/many/entry-0006-xxxxxx: directory entries out of order"),
        "{stderr}"
    );
    assert!(!stderr.contains("serving"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(30));
    // Nothing is left listening.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "sock"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // --no-verify skips the check: the device is served as it is.
    let server = NbdServer::start(tmp.path(), &args, Via::Unix, &["--no-verify"])
        .unwrap_or_else(|e| panic!("--no-verify must serve: {e}"));
    let mut c = server.connect(false);
    let r = c.read(1, 0, 4096);
    assert_eq!(r.error, 0);
    stop_cleanly(server);
}

/// The hidden fault-injection flag makes one blob read trap the component: that request
/// fails with EIO and no data, and the same request then succeeds on a rebuilt instance.
#[test]
fn an_injected_trap_fails_one_request_and_the_next_succeeds() {
    let tmp = TempDir::new("nbdtrap");
    let want = expected_device("plain-tar");
    let meta_size = std::fs::metadata(fixture("plain-tar").join("meta.erofs"))
        .unwrap()
        .len();
    let mut args = device_args("plain-tar");
    // Opening the device reads the blob a few times; the trap comes on a later read.
    // Without the cache, every read of the tar region reads the blob.
    args.extend(["--inject-trap-after-blob-reads", "8", "--decode-cache", "0"].map(String::from));
    let server = NbdServer::start(tmp.path(), &args, Via::Tcp, &[]).expect("serve");
    for structured in [false, true] {
        let mut c = server.connect(structured);
        let mut failures = 0;
        for k in 0..24u64 {
            let off = meta_size + k * 20_000;
            let expect = &want[off as usize..off as usize + 16_384];
            let r = c.read(k, off, 16_384);
            if r.error != 0 {
                assert_eq!((r.error, r.data.len()), (EIO, 0), "read {k}");
                failures += 1;
                let again = c.read(100 + k, off, 16_384);
                assert_eq!(again.error, 0, "the request after the trap must work");
                assert!(again.data == expect);
            } else {
                assert!(r.data == expect, "read {k}");
            }
        }
        // The countdown is shared by every instance and fires once.
        let want_failures = if structured { 0 } else { 1 };
        assert_eq!(failures, want_failures, "structured={structured}");
    }
    stop_cleanly(server);
}

/// The pool behind serve-nbd, used directly: four threads streaming from four places far
/// apart in the device, in odd-sized reads, all get the right bytes, on at most the
/// configured number of instances.
#[test]
fn the_device_pool_serves_concurrent_streams() {
    let want = Arc::new(expected_device("large"));
    // The device as the command line describes it, with an 8 MiB cache per instance.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        device: DeviceArgs,
    }
    let mut argv = vec!["test".to_string()];
    argv.extend(device_args("large"));
    argv.extend(["--decode-cache", "8M"].map(String::from));
    let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
    let (spec, limits) = cli.device.spec().unwrap();
    let runtime = Runtime::load(&component()).unwrap();
    let pool = Arc::new(DevicePool::open(runtime, spec, limits, 3).unwrap());
    assert_eq!(pool.size(), want.len() as u64);
    let quarter = want.len() as u64 / 4;
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (pool, want) = (Arc::clone(&pool), Arc::clone(&want));
            std::thread::spawn(move || {
                let (mut off, end) = (t * quarter, (t + 1) * quarter);
                while off < end {
                    let len = (end - off).min(300_000 + t * 4099) as u32;
                    let got = pool.pread(off, len).expect("pool read");
                    assert!(
                        got == want[off as usize..(off + u64::from(len)) as usize],
                        "{off}"
                    );
                    off += u64::from(len);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    let n = pool.instances();
    assert!((1..=3).contains(&n), "{n} instances");
    // Past the end: nothing, as the device contract says.
    assert!(pool.pread(want.len() as u64, 10).unwrap().is_empty());
}
