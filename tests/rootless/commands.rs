//! 17: every command an unprivileged user needs, run as `nobody`: index, cat, verify,
//! mount (a layer and a whole image) and umount, serve-nbd on a unix socket; another
//! user's umount refused; a program run from a rootless whole-image mount.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::rootless_support::*;
use crate::support;

#[test]
fn an_unprivileged_user_indexes_mounts_reads_and_unmounts() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip(
            "an_unprivileged_user_indexes_mounts_reads_and_unmounts",
            why,
        );
    }
    let space = Space::new("rl-cmds");
    let f = space.fixture("basic");
    let mnt = space.path("mnt");
    let mnt_s = space.s("mnt");
    let _cleanup = Cleanup(vec![mnt.clone()]);
    let as_nobody = |args: &[&str]| host_as("nobody", &space, "run", args);

    // index: the tar index and zinfo of nobody's own blob, made as nobody.
    let meta = space.s("basic/own.meta");
    let zinfo = space.s("basic/own.zinfo");
    let blob = space.s("basic/layer.tar.gz");
    let wasm = space.s("component.wasm");
    ok(
        "index as nobody",
        &as_nobody(&[
            "index",
            &wasm,
            &blob,
            "--quiet",
            "--tarindex",
            &meta,
            "--zinfo",
            &zinfo,
        ]),
    );
    // cat and verify with that index.
    let dev = [wasm.as_str(), "--tarindex", &meta, "--zinfo", &zinfo, &blob];
    let out = as_nobody(&[&["cat"][..], &dev].concat());
    ok("cat as nobody", &out);
    let gunzipped = Command::new("gzip")
        .arg("-dc")
        .arg(f.join("layer.tar.gz"))
        .output()
        .unwrap();
    let meta_len = std::fs::metadata(&meta).unwrap().len() as usize;
    assert_eq!(
        &out.stdout[meta_len..],
        &gunzipped.stdout[..],
        "cat as nobody: the tar differs"
    );
    ok(
        "verify as nobody",
        &as_nobody(&[&["verify"][..], &dev].concat()),
    );

    // The kernel backends need root: refused before any work, nothing left mounted.
    for backend in ["loop", "nbd"] {
        let out = as_nobody(&[&["mount"][..], &dev, &[&mnt_s, "--backend", backend]].concat());
        refused(
            &format!("--backend {backend} as nobody"),
            &out,
            &format!("--backend {backend} needs root"),
        );
        assert!(!mounted(&mnt), "--backend {backend}: a half-made mount");
    }

    let _fuse = FuseOpenToAll::new();
    ok(
        "mount as nobody",
        &as_nobody(&[&["mount"][..], &dev, &[&mnt_s]].concat()),
    );
    let line = support::mounts_mentioning(&mnt_s).join("\n");
    assert!(line.contains("user_id=65534"), "not nobody's mount: {line}");
    let read = run_as(
        "nobody",
        &[],
        Path::new("/bin/cat"),
        &[&format!("{mnt_s}/xattrs/file")],
    );
    ok("reading the mount as nobody", &read);

    // stats, as its owner: the counters of nobody's own mount (written once a second).
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let stats = as_nobody(&["stats", "--json", &mnt_s]);
    ok("stats as nobody", &stats);
    let json: serde_json::Value = serde_json::from_slice(&stats.stdout).unwrap();
    assert!(
        json["total"]["bytes_decoded"].as_u64().unwrap_or(0) > 0,
        "stats as nobody counted no decoded bytes: {json}"
    );

    // Another unprivileged user may not take it down.
    let other_run = space.path("other-run");
    std::fs::create_dir(&other_run).unwrap();
    let daemon_uid = Command::new("id")
        .args(["-u", OTHER_USER])
        .output()
        .unwrap();
    let daemon_uid: u32 = String::from_utf8_lossy(&daemon_uid.stdout)
        .trim()
        .parse()
        .unwrap();
    chown(&other_run, daemon_uid, daemon_uid);
    chmod(&other_run, 0o700);
    let mut env = space.env("other-run");
    env.retain(|(k, _)| k != "EROFS_WASM_CACHE_DIR");
    let out = run_as(OTHER_USER, &env, &host_bin(), &["umount", &mnt_s]);
    refused(
        "umount by another user",
        &out,
        "mounted by another user (uid 65534)",
    );
    assert!(mounted(&mnt), "another user's umount took the mount down");

    // Its owner may, with fusermount3 -u; the server exits and its files go.
    ok("umount as nobody", &as_nobody(&["umount", &mnt_s]));
    assert!(!mounted(&mnt), "still mounted after umount");
    let state = space.path("run/erofs-wasm");
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(left.is_empty(), "left in the state directory: {left:?}");
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);

    // serve-nbd on a unix socket, as nobody; a client reads the whole device.
    let sock = space.path("run/nbd.sock");
    let log = std::fs::File::create(space.path("serve-nbd.log")).unwrap();
    let mut server = Command::new(host_bin());
    server
        .args([
            "serve-nbd",
            &wasm,
            &blob,
            "--tarindex",
            &meta,
            "--zinfo",
            &zinfo,
            "--listen",
        ])
        .arg(format!("unix:{}", sock.display()))
        .env("EROFS_WASM_CACHE_DIR", space.path("cache"))
        .env("XDG_RUNTIME_DIR", space.path("run"))
        .env("HOME", space.path("home"))
        .uid(NOBODY)
        .gid(NOGROUP)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    let server = tools::ChildGuard(Some(server.spawn().unwrap()));
    let start = Instant::now();
    while !sock.exists() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        sock.exists(),
        "serve-nbd as nobody made no socket: {}",
        std::fs::read_to_string(space.path("serve-nbd.log")).unwrap_or_default()
    );
    let copy = space.path("nbd.img");
    let out = Command::new("nbdcopy")
        .arg(format!("nbd+unix:///?socket={}", sock.display()))
        .arg(&copy)
        .output()
        .unwrap();
    drop(server);
    ok("nbdcopy from nobody's serve-nbd", &out);
    let got = std::fs::read(&copy).unwrap();
    assert_eq!(
        &got[meta_len..],
        &gunzipped.stdout[..],
        "serve-nbd as nobody: the tar differs"
    );
    eprintln!(
        "nobody: index, cat, verify, mount, umount, serve-nbd ({} bytes) all worked",
        got.len()
    );
}

#[test]
fn an_unprivileged_user_mounts_a_whole_image_and_runs_python_from_it() {
    let name = "an_unprivileged_user_mounts_a_whole_image_and_runs_python_from_it";
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip(name, why);
    }
    for tool in ["buildah", "fuse-overlayfs", "unshare"] {
        if Command::new(tool).arg("--version").output().is_err() {
            return skip(name, &format!("{tool} is not installed"));
        }
    }
    let Some(reg) = support::Registry::start("rootless", "aufs") else {
        return;
    };
    let space = Space::new("rl-image");
    let work = space.path("buildah");
    let out = Command::new("sh")
        .arg(root().join("tests/image/build.sh"))
        .arg(&work)
        .arg(reg.addr())
        .arg("test/rootless")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&work);
    ok("build.sh", &out);
    let blobs = space.path("blobs");
    std::fs::create_dir(&blobs).unwrap();
    let layers = support::fetch_layers(&reg.addr(), "test/rootless", "oci", &blobs);
    let index = space.path("index");
    std::fs::create_dir(&index).unwrap();
    chown_tree(space.tmp.path(), NOBODY, NOGROUP);
    chmod(&space.path("run"), 0o700);
    let wasm = space.s("component.wasm");
    for (digest, media_type, blob) in &layers {
        let stem = digest.replace(':', "-");
        let mut a = vec![
            "index".to_string(),
            wasm.clone(),
            blob.to_string_lossy().into_owned(),
            "--aufs".into(),
            "--quiet".into(),
            "--tarindex".into(),
            index
                .join(format!("{stem}.meta"))
                .to_string_lossy()
                .into_owned(),
        ];
        if media_type.contains("gzip") {
            a.push("--zinfo".into());
            a.push(
                index
                    .join(format!("{stem}.zinfo"))
                    .to_string_lossy()
                    .into_owned(),
            );
        }
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        ok(
            "index a layer as nobody",
            &host_as("nobody", &space, "run", &a),
        );
    }

    let _fuse = FuseOpenToAll::new();
    let mnt = space.path("mnt");
    let mnt_s = space.s("mnt");
    let state = space.path("run/erofs-wasm");
    let mut cleanup = Cleanup(vec![mnt.clone()]);
    let reference = format!("oci://{}/test/rootless:oci", reg.addr());
    let out = host_as(
        "nobody",
        &space,
        "run",
        &[
            "mount",
            &wasm,
            &reference,
            &mnt_s,
            "--insecure",
            "--tarindex-dir",
            &index.to_string_lossy(),
        ],
    );
    // Whatever is mounted under the state directory is unmounted at the end too.
    for l in support::mounts_mentioning(&state.to_string_lossy()) {
        if let Some(p) = l.split(' ').nth(4) {
            cleanup.0.insert(0, PathBuf::from(p));
        }
    }
    ok("whole-image mount as nobody", &out);
    assert!(
        support::mounts_mentioning(&mnt_s)
            .join("\n")
            .contains("fuse-overlayfs"),
        "not merged by fuse-overlayfs"
    );
    let py = run_as(
        "nobody",
        &[("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
        Path::new("/usr/bin/unshare"),
        &[
            "-r",
            "chroot",
            &mnt_s,
            "/usr/bin/python3",
            "-c",
            "import json, email, http.client, sys, os; print(json.dumps({'ok': sys.version_info[0], 'gone': os.path.exists('/etc/file-to-delete')}))",
        ],
    );
    ok("unshare -r chroot MNT python3", &py);
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        r#"{"ok": 3, "gone": false}"#
    );
    ok(
        "umount as nobody",
        &host_as("nobody", &space, "run", &["umount", &mnt_s]),
    );
    assert!(!mounted(&mnt));
    let left = support::mounts_mentioning(&state.to_string_lossy());
    assert!(left.is_empty(), "layer mounts left: {left:?}");
    eprintln!("nobody: a {}-layer image mounted (fuse-overlayfs), python3 ran under unshare -r chroot, unmounted", layers.len());
}
