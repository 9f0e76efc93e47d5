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

mod common;
#[path = "image/support.rs"]
#[allow(dead_code)]
mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;
/// The second unprivileged user: the one who must not unmount nobody's mount.
const OTHER_USER: &str = "daemon";
const T: Duration = Duration::from_secs(300);

/// One test at a time (see the module doc).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why these tests cannot run here, if they cannot.
fn cannot_run() -> Option<&'static str> {
    if !is_root() {
        return Some(
            "needs root (to prepare files for nobody and to make the kernel's reference mounts)",
        );
    }
    if !Command::new("runuser")
        .args(["-u", "nobody", "--", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return Some("runuser -u nobody does not work here");
    }
    None
}

/// /dev/fuse opened to everyone for the guard's life, the old mode restored on drop.
struct FuseOpenToAll {
    old_mode: u32,
}

impl FuseOpenToAll {
    fn new() -> FuseOpenToAll {
        let md = std::fs::metadata("/dev/fuse").expect("/dev/fuse");
        let old_mode = md.permissions().mode() & 0o7777;
        if old_mode & 0o006 != 0o006 {
            eprintln!(
                "\n*** rootless tests: setting /dev/fuse to 0666 for this test (it is {old_mode:04o} here; Debian's udev makes it 0666); it is restored afterwards ***\n"
            );
            std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(0o666))
                .expect("chmod /dev/fuse");
        }
        FuseOpenToAll { old_mode }
    }
}

impl Drop for FuseOpenToAll {
    fn drop(&mut self) {
        if let Err(e) =
            std::fs::set_permissions("/dev/fuse", std::fs::Permissions::from_mode(self.old_mode))
        {
            eprintln!(
                "\n*** rootless tests: could not restore /dev/fuse to {:04o}: {e} ***\n",
                self.old_mode
            );
        } else if self.old_mode & 0o006 != 0o006 {
            eprintln!(
                "*** rootless tests: /dev/fuse is {:04o} again ***",
                self.old_mode
            );
        }
    }
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    chown(path, uid, gid);
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A workspace `nobody` owns: a copy of the component, a private runtime directory (its
/// XDG_RUNTIME_DIR), its own precompiled cache, and a home.
struct Space {
    tmp: TempDir,
}

impl Space {
    fn new(tag: &str) -> Space {
        let tmp = TempDir::new(tag);
        chmod(tmp.path(), 0o755);
        let s = Space { tmp };
        for d in ["run", "cache", "home", "mnt"] {
            std::fs::create_dir_all(s.path(d)).unwrap();
        }
        std::fs::copy(component(), s.path("component.wasm")).unwrap();
        chown_tree(s.tmp.path(), NOBODY, NOGROUP);
        chmod(&s.path("run"), 0o700);
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// Copy a fixture's files into the workspace, owned by nobody.
    fn fixture(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["meta.erofs", "layer.zinfo", "layer.tar.gz", "expected.json"] {
            std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
        }
        chown_tree(&dir, NOBODY, NOGROUP);
        dir
    }

    /// The environment of a run as `user`: a runtime directory and a cache of its own.
    fn env(&self, runtime_dir: &str) -> Vec<(String, String)> {
        vec![
            ("XDG_RUNTIME_DIR".into(), self.s(runtime_dir)),
            ("EROFS_WASM_CACHE_DIR".into(), self.s("cache")),
            ("HOME".into(), self.s("home")),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    }
}

/// Run `program args` as `user` (runuser), with `env`, under a deadline.
fn run_as(user: &str, env: &[(String, String)], program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(program).args(args);
    run_with_deadline(cmd, T)
}

fn run_with_deadline(mut cmd: Command, limit: Duration) -> Output {
    cmd.current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out, &mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} hung for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    }
}

fn host_as(user: &str, space: &Space, runtime_dir: &str, args: &[&str]) -> Output {
    run_as(user, &space.env(runtime_dir), &host_bin(), args)
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn ok(what: &str, o: &Output) {
    assert!(o.status.success(), "{what}: {}", text(o));
}

fn refused(what: &str, o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "{what}: should have been refused: {}",
        text(o)
    );
    assert_stderr_contains(o, needle);
}

fn mounted(path: &Path) -> bool {
    support::mounts_mentioning(&path.to_string_lossy())
        .iter()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// Unmounts a path lazily at the end whatever happened (a failing test leaves nothing).
struct Cleanup(Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            for _ in 0..4 {
                if !mounted(p) {
                    break;
                }
                let _ = Command::new("umount").arg("-l").arg(p).status();
            }
        }
    }
}

/// A process that must survive: `sleep` as nobody, killed on drop.
struct Bystander(std::process::Child);

impl Bystander {
    fn start() -> Bystander {
        let child = Command::new("sleep")
            .arg("300")
            .uid(NOBODY)
            .gid(NOGROUP)
            .spawn()
            .unwrap();
        Bystander(child)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
    fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mount_id(mountpoint: &Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes())[..8])
}

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

// ---------------------------------------------------------------------------------
// 10.14: the FUSE tree for an unprivileged user, against the kernel's EROFS.

/// Walk a tree as the calling user and print, for every entry: lstat, access, the
/// xattr list and every value (or the errno of each), a read of the first bytes and a
/// directory listing: what an unprivileged user can tell about the tree.
const WALKER: &str = r#"
import errno, json, os, stat, sys
root = sys.argv[1]
def err(f):
    try:
        return f()
    except OSError as e:
        return "errno " + errno.errorcode.get(e.errno, str(e.errno))
out = {}
def visit(rel):
    p = os.path.join(root, rel) if rel else root
    st = os.lstat(p)
    e = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid, "size": st.st_size,
         "nlink": st.st_nlink, "mtime_ns": st.st_mtime_ns}
    link = stat.S_ISLNK(st.st_mode)
    if not link:
        e["access"] = [os.access(p, m) for m in (os.R_OK, os.W_OK, os.X_OK)]
    names = err(lambda: sorted(os.listxattr(p, follow_symlinks=False)))
    e["listxattr"] = names
    wanted = set(names) if isinstance(names, list) else set()
    wanted |= {"trusted.t1", "trusted.x", "user.demo", "system.posix_acl_access", "system.posix_acl_default"}
    e["getxattr"] = {n: err(lambda: os.getxattr(p, n, follow_symlinks=False).hex()) for n in sorted(wanted)}
    if stat.S_ISREG(st.st_mode):
        e["read"] = err(lambda: open(p, "rb").read(64).hex())
    out[rel] = e
    if stat.S_ISDIR(st.st_mode):
        entries = err(lambda: sorted(os.listdir(p)))
        e["listdir"] = entries
        if isinstance(entries, list):
            for n in entries:
                visit(os.path.join(rel, n) if rel else n)
visit("")
print(json.dumps(out, sort_keys=True))
"#;

fn walk_as(user: &str, root: &Path) -> serde_json::Value {
    let out = run_as(
        user,
        &[("PATH".into(), "/usr/bin:/bin".into())],
        Path::new("/usr/bin/python3"),
        &["-c", WALKER, &root.to_string_lossy()],
    );
    ok(&format!("walk {} as {user}", root.display()), &out);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The entries where two walks differ, one line each.
fn differences(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["not a walk".into()];
    };
    let mut diffs = Vec::new();
    for (path, ea) in a {
        match b.get(path) {
            None => diffs.push(format!("{path}: only in the first")),
            Some(eb) if eb != ea => diffs.push(format!("{path}:\n  fuse   {ea}\n  kernel {eb}")),
            _ => {}
        }
    }
    for path in b.keys().filter(|p| !a.contains_key(*p)) {
        diffs.push(format!("{path}: only in the second"));
    }
    diffs
}

/// A gzip layer with POSIX ACLs (a named user allowed where the mode denies, and denied
/// where the mode allows), a default ACL, and user.* and trusted.* xattrs.
const ACL_LAYER: &str = r#"
import gzip, io, struct, sys, tarfile
def acl(entries):
    # posix_acl_xattr: version 2, then (tag u16, perm u16, id u32), sorted by tag and id.
    return (struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, p, i) for t, p, i in entries)).decode("utf-8", "surrogateescape")
U = 0xFFFFFFFF
nobody = 65534
allow = acl([(1, 6, U), (2, 4, nobody), (4, 4, U), (0x10, 4, U), (0x20, 0, U)])
deny = acl([(1, 6, U), (2, 0, nobody), (4, 4, U), (0x10, 4, U), (0x20, 4, U)])
dflt = acl([(1, 7, U), (4, 5, U), (0x20, 5, U)])
buf = io.BytesIO()
with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
    def add(name, mode, data=None, pax=None, kind=tarfile.REGTYPE):
        i = tarfile.TarInfo(name)
        i.type, i.mode, i.mtime, i.uid, i.gid = kind, mode, 1700000000, 0, 0
        i.pax_headers = pax or {}
        if data is None:
            t.addfile(i)
        else:
            i.size = len(data)
            t.addfile(i, io.BytesIO(data))
    add("acl", 0o755, kind=tarfile.DIRTYPE, pax={"SCHILY.xattr.system.posix_acl_default": dflt})
    add("acl/allow", 0o640, b"allowed by the ACL\n", {"SCHILY.xattr.system.posix_acl_access": allow})
    add("acl/deny", 0o644, b"denied by the ACL\n", {"SCHILY.xattr.system.posix_acl_access": deny})
    add("acl/plain", 0o600, b"no ACL\n")
    add("xattrs", 0o644, b"x\n", {"SCHILY.xattr.user.demo": "hello", "SCHILY.xattr.trusted.x": "secret"})
open(sys.argv[1], "wb").write(gzip.compress(buf.getvalue(), mtime=0))
"#;

#[test]
fn fuse_matches_the_kernel_for_an_unprivileged_user() {
    let _serial = serial();
    if let Some(why) = cannot_run() {
        return skip("fuse_matches_the_kernel_for_an_unprivileged_user", why);
    }
    let space = Space::new("rl-view");
    let acl_dir = space.path("acl");
    std::fs::create_dir(&acl_dir).unwrap();
    let blob = acl_dir.join("layer.tar.gz");
    let out = Command::new("/usr/bin/python3")
        .args(["-c", ACL_LAYER])
        .arg(&blob)
        .output()
        .unwrap();
    ok("make the ACL layer", &out);
    let index = |dir: &Path| {
        let a: Vec<String> = vec![
            "index".into(),
            component().to_string_lossy().into_owned(),
            dir.join("layer.tar.gz").to_string_lossy().into_owned(),
            "--quiet".into(),
            "--tarindex".into(),
            dir.join("meta.erofs").to_string_lossy().into_owned(),
            "--zinfo".into(),
            dir.join("layer.zinfo").to_string_lossy().into_owned(),
        ];
        ok("index", &run_host(&a, T));
    };
    index(&acl_dir);
    space.fixture("basic");
    chown_tree(&acl_dir, NOBODY, NOGROUP);

    let _fuse = FuseOpenToAll::new();
    let mut total = 0;
    for name in ["acl", "basic"] {
        let dir = space.path(name);
        let s = |f: &str| dir.join(f).to_string_lossy().into_owned();
        let dev = [
            s("meta.erofs"),
            "--zinfo".into(),
            s("layer.zinfo"),
            s("layer.tar.gz"),
        ];
        let fuse_root = dir.join("fuse-root");
        let fuse_nobody = dir.join("fuse-nobody");
        let kernel = dir.join("kernel");
        for d in [&fuse_root, &fuse_nobody, &kernel] {
            std::fs::create_dir(d).unwrap();
        }
        chown(&fuse_nobody, NOBODY, NOGROUP);
        let _cleanup = Cleanup(vec![fuse_root.clone(), fuse_nobody.clone(), kernel.clone()]);

        // The kernel's EROFS of the same device.
        let mut cat = vec![
            "cat".to_string(),
            component().to_string_lossy().into_owned(),
            "--tarindex".into(),
        ];
        cat.extend(dev.iter().cloned());
        let image = run_host(&cat, T);
        ok("cat", &image);
        let img = dir.join("device.img");
        std::fs::write(&img, &image.stdout).unwrap();
        assert!(Command::new("mount")
            .args(["-t", "erofs", "-o", "loop,ro"])
            .arg(&img)
            .arg(&kernel)
            .status()
            .unwrap()
            .success());
        // Root's FUSE mount (allow_other), and nobody's own.
        let mut m = vec![
            "mount".to_string(),
            component().to_string_lossy().into_owned(),
            "--tarindex".into(),
        ];
        m.extend(dev.iter().cloned());
        m.push(fuse_root.to_string_lossy().into_owned());
        ok("mount as root", &run_host(&m, T));
        let mut m: Vec<String> = vec![
            "mount".into(),
            space.s("component.wasm"),
            "--tarindex".into(),
        ];
        m.extend(dev.iter().cloned());
        m.push(fuse_nobody.to_string_lossy().into_owned());
        let m: Vec<&str> = m.iter().map(String::as_str).collect();
        ok("mount as nobody", &host_as("nobody", &space, "run", &m));

        let by_kernel = walk_as("nobody", &kernel);
        for (what, at) in [
            ("root's FUSE mount", &fuse_root),
            ("nobody's FUSE mount", &fuse_nobody),
        ] {
            let by_fuse = walk_as("nobody", at);
            let diffs = differences(&by_fuse, &by_kernel);
            assert!(
                diffs.is_empty(),
                "{name}: {what} as nobody differs from the kernel's EROFS in {} entries:\n{}",
                diffs.len(),
                diffs.join("\n")
            );
        }
        if name == "acl" {
            // The ACL cases really are what the kernel enforces here.
            let allow = &by_kernel["acl/allow"];
            eprintln!("acl: the kernel gives nobody {allow}");
        }
        let n = by_kernel.as_object().map_or(0, |o| o.len());
        total += n;
        ok(
            "umount as nobody",
            &host_as(
                "nobody",
                &space,
                "run",
                &["umount", &fuse_nobody.to_string_lossy()],
            ),
        );
        ok(
            "umount as root",
            &run_host(&["umount", &*fuse_root.to_string_lossy()], T),
        );
        assert!(Command::new("umount")
            .arg(&kernel)
            .status()
            .unwrap()
            .success());
        eprintln!(
            "{name}: {n} entries equal as nobody (FUSE by root, FUSE by nobody, kernel EROFS)"
        );
    }
    assert!(total > 0);
}

// ---------------------------------------------------------------------------------
// 17: every command as an unprivileged user.

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
