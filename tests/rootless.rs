//! Without root (issue 17) and the local-user holes of the trust issue (issue 10 items 7,
//! 8, 14): every command an unprivileged user needs, run as `nobody` (through `runuser`,
//! or a child with its uid and gid set) on files that user owns; the state directory,
//! registrations, logs and the precompiled cache refusing what another user planted; and
//! the FUSE tree seen by an unprivileged user equal to the kernel's EROFS.
//!
//! The test process is root (it prepares files, starts the registry, makes the kernel's
//! reference mounts). This machine's /dev/fuse is 0600, unlike Debian's 0666: the tests
//! that mount as `nobody` set it to 0666 while they run and put the old mode back on every
//! path (a guard's drop, failure included), saying so on stderr. The tests of this file
//! run one at a time (one lock), so that the mode is restored only when none needs it.

//!
//! Layout: `rootless/support.rs` (users, files, runs, guards), `rootless/view.rs` (FUSE
//! against the kernel's EROFS, 10.14), `rootless/commands.rs` (every command as nobody,
//! 17); the state, log and cache checks (10.7, 10.8) are here.

#[path = "rootless/commands.rs"]
mod commands;
mod common;
#[path = "rootless/support.rs"]
mod rootless_support;
#[path = "image/support.rs"]
#[allow(dead_code)]
mod support;
#[path = "rootless/view.rs"]
mod view;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use rootless_support::*;
// ---------------------------------------------------------------------------------
// 10.8: the state directory, registrations and logs.

#[test]
fn planted_state_is_refused_and_no_foreign_pid_is_signalled() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip(
            "planted_state_is_refused_and_no_foreign_pid_is_signalled",
            why,
        );
    }
    let space = Space::new("rl-plant");
    let state = space.path("run/erofs-wasm");
    let mnt = space.path("mnt");
    let mnt_s = space.s("mnt");
    let umount = || host_as("nobody", &space, "run", &["umount", &mnt_s]);

    // Made by someone else (root here), open to all.
    std::fs::create_dir(&state).unwrap();
    chmod(&state, 0o777);
    refused(
        "a state directory of root's",
        &umount(),
        "belongs to uid 0, not to you",
    );

    // A symlink to a directory nobody owns.
    std::fs::remove_dir(&state).unwrap();
    let elsewhere = space.path("home/elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    chown(&elsewhere, NOBODY, NOGROUP);
    std::os::unix::fs::symlink(&elsewhere, &state).unwrap();
    refused("a symlinked state directory", &umount(), "is a symlink");
    std::fs::remove_file(&state).unwrap();

    // nobody's own, but 0777 (anyone could have planted in it): refused, and the planted
    // registration's pid is not signalled.
    let mut victim = Bystander::start();
    std::fs::create_dir(&state).unwrap();
    chown(&state, NOBODY, NOGROUP);
    chmod(&state, 0o777);
    let reg_path = state.join(format!("{}.json", mount_id(&mnt)));
    let planted = serde_json::json!({
        "pid": victim.pid(), "mountpoint": mnt, "backend": "fuse", "backing": null,
    });
    std::fs::write(&reg_path, planted.to_string()).unwrap();
    chown(&reg_path, NOBODY, NOGROUP);
    chmod(&reg_path, 0o600);
    refused("a state directory open to all", &umount(), "has mode 0777");
    assert!(
        victim.alive(),
        "the planted registration's pid was signalled"
    );

    // A private state directory, but a registration whose pid is not the server it names
    // (no proof, or a start time that is not the pid's): the pid is left alone.
    chmod(&state, 0o700);
    let out = umount();
    assert_stderr_contains(&out, &format!("not signalling pid {}", victim.pid()));
    assert!(
        victim.alive(),
        "a pid without proof was signalled: {}",
        text(&out)
    );
    let mut identity = serde_json::json!({
        "pid": victim.pid(), "boot_id": "x", "start_time": 1, "exe_dev": 0, "exe_ino": 0, "uid": NOBODY,
    });
    identity["boot_id"] = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .into();
    let mut with_proof = planted.clone();
    with_proof["server"] = identity;
    std::fs::write(&reg_path, with_proof.to_string()).unwrap();
    chown(&reg_path, NOBODY, NOGROUP);
    let out = umount();
    assert_stderr_contains(&out, "the pid was reused");
    assert!(victim.alive(), "a reused pid was signalled: {}", text(&out));

    // A registration naming a path outside the mount's own: nothing is removed.
    let precious = space.path("home/precious");
    std::fs::create_dir(&precious).unwrap();
    let mut foreign = planted.clone();
    foreign["backing"] = serde_json::json!(precious);
    std::fs::write(&reg_path, foreign.to_string()).unwrap();
    chown(&reg_path, NOBODY, NOGROUP);
    refused(
        "a registration naming a foreign path",
        &umount(),
        "not one of this mount's private paths",
    );
    assert!(
        precious.is_dir(),
        "umount removed a directory a registration named"
    );

    // A planted symlink as the registration.
    std::fs::remove_file(&reg_path).unwrap();
    std::os::unix::fs::symlink(&precious, &reg_path).unwrap();
    refused("a symlinked registration", &umount(), "is a symlink");
    assert!(victim.alive());
}

#[test]
fn a_planted_log_symlink_is_refused() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip("a_planted_log_symlink_is_refused", why);
    }
    let tmp = TempDir::new("rl-log");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup(vec![mnt.clone()]);
    let victim = tmp.path().join("victim");
    let state = Path::new("/run/erofs-wasm");
    std::fs::create_dir_all(state).unwrap();
    let log = state.join(format!("{}.log", mount_id(&mnt)));
    let _ = std::fs::remove_file(&log);
    std::os::unix::fs::symlink(&victim, &log).unwrap();
    let mut args = vec!["mount".to_string()];
    args.extend(device_args("basic"));
    args.push(mnt.to_string_lossy().into_owned());
    let out = run_host(&args, T);
    let _ = std::fs::remove_file(&log);
    refused("mount with a planted log symlink", &out, "is a symlink");
    assert!(
        !victim.exists(),
        "the daemon wrote through a planted log symlink"
    );
    assert!(!mounted(&mnt), "a refused mount stayed mounted");
}

#[test]
fn umount_takes_down_only_its_own_mount() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip("umount_takes_down_only_its_own_mount", why);
    }
    let tmp = TempDir::new("rl-top");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let _cleanup = Cleanup(vec![mnt.clone()]);
    let mnt_s = mnt.to_string_lossy().into_owned();
    let mut args = vec!["mount".to_string()];
    args.extend(device_args("basic"));
    args.push(mnt_s.clone());
    ok("mount", &run_host(&args, T));

    // Something mounted on top: refused, and both stay.
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "ontop"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let out = run_host(&["umount", &mnt_s], T);
    refused(
        "umount under a foreign mount",
        &out,
        "mounted on top of erofs-host's mount",
    );
    let stack = support::mounts_mentioning(&mnt_s);
    assert_eq!(stack.len(), 2, "both mounts must stay: {stack:?}");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
    ok("umount", &run_host(&["umount", &mnt_s], T));
    assert!(!mounted(&mnt));

    // A mount that is not erofs-host's at all, with no registration: refused.
    assert!(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "plain"])
        .arg(&mnt)
        .status()
        .unwrap()
        .success());
    let out = run_host(&["umount", &mnt_s], T);
    refused("umount of a tmpfs", &out, "not mounted by erofs-host");
    assert!(mounted(&mnt), "erofs-host umount took down a tmpfs");
    assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
}

// ---------------------------------------------------------------------------------
// 10.7: the precompiled-component cache.

#[test]
fn the_precompiled_cache_is_roots_own_and_checked() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip("the_precompiled_cache_is_roots_own_and_checked", why);
    }
    let tmp = TempDir::new("rl-cwasm");
    chmod(tmp.path(), 0o755);
    let cat_args = {
        let mut a = vec!["cat".to_string()];
        a.extend(device_args("basic"));
        a.extend(["--length".into(), "512".into()]);
        a
    };
    let run = |env: &[(&str, &str)], unset_cache_env: bool| {
        let mut cmd = Command::new(host_bin());
        cmd.args(&cat_args);
        if unset_cache_env {
            cmd.env_remove("EROFS_WASM_CACHE_DIR");
        } else {
            cmd.env(
                "EROFS_WASM_CACHE_DIR",
                std::env::temp_dir().join("erofs-e2e-cwasm"),
            );
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_deadline(cmd, T)
    };
    let cwasm_files = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|r| {
                r.map(|e| e.unwrap().path())
                    .filter(|p| p.extension().is_some_and(|x| x == "cwasm"))
                    .collect()
            })
            .unwrap_or_default()
    };

    // Root under `sudo -E`: HOME and XDG_CACHE_HOME are another user's, open to all.
    let home = tmp.path().join("home");
    let xdg = tmp.path().join("xdg");
    for d in [&home, &xdg] {
        std::fs::create_dir(d).unwrap();
        chown(d, NOBODY, NOGROUP);
        chmod(d, 0o777);
    }
    let out = run(
        &[
            ("HOME", &*home.to_string_lossy()),
            ("XDG_CACHE_HOME", &*xdg.to_string_lossy()),
        ],
        true,
    );
    ok("cat as root", &out);
    assert!(
        cwasm_files(&xdg.join("erofs-wasm")).is_empty()
            && cwasm_files(&home.join(".cache/erofs-wasm")).is_empty(),
        "root cached native code in another user's directory"
    );
    let root_cache = Path::new("/var/cache/erofs-wasm");
    let md = std::fs::metadata(root_cache).expect("root's cache /var/cache/erofs-wasm");
    assert_eq!(md.uid(), 0);
    assert_eq!(md.mode() & 0o022, 0, "root's cache is writable by others");
    assert!(
        !cwasm_files(root_cache).is_empty(),
        "root's cache holds no component"
    );

    // A cache directory another user owns: not used (a warning names it).
    let theirs = tmp.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    chown(&theirs, NOBODY, NOGROUP);
    chmod(&theirs, 0o755);
    let out = run(
        &[("EROFS_WASM_CACHE_DIR", &*theirs.to_string_lossy())],
        false,
    );
    ok("cat with a foreign cache", &out);
    assert_stderr_contains(&out, "belongs to uid 65534, not to you");
    assert!(
        cwasm_files(&theirs).is_empty(),
        "native code cached in another user's directory"
    );

    // Our own cache, but its file made writable by others: not loaded.
    let own = tmp.path().join("own");
    let out = run(&[("EROFS_WASM_CACHE_DIR", &*own.to_string_lossy())], false);
    ok("cat with a fresh cache", &out);
    assert_eq!(std::fs::metadata(&own).unwrap().mode() & 0o777, 0o700);
    let files = cwasm_files(&own);
    assert_eq!(files.len(), 1, "{files:?}");
    chmod(&files[0], 0o666);
    let out = run(&[("EROFS_WASM_CACHE_DIR", &*own.to_string_lossy())], false);
    ok("cat with a loose cache file", &out);
    assert_stderr_contains(&out, "writable by group or others");
}
