//! Helpers of the rootless tests: the unprivileged users, a workspace `nobody` owns,
//! runs as another user under a deadline, and guards that restore /dev/fuse's mode,
//! unmount, and kill a bystander on every path.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::support;

pub const NOBODY: u32 = 65534;
pub const NOGROUP: u32 = 65534;
/// The second unprivileged user: the one who must not unmount nobody's mount.
pub const OTHER_USER: &str = "daemon";
pub const T: Duration = Duration::from_secs(300);

/// One test at a time (see the module doc).
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why these tests cannot run here, if they cannot.
pub fn cannot_run() -> Option<&'static str> {
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
pub struct FuseOpenToAll {
    old_mode: u32,
}

impl FuseOpenToAll {
    pub fn new() -> FuseOpenToAll {
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

pub fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

pub fn chown_tree(path: &Path, uid: u32, gid: u32) {
    chown(path, uid, gid);
    if std::fs::symlink_metadata(path).unwrap().is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

pub fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// A workspace `nobody` owns: a copy of the component, a private runtime directory (its
/// XDG_RUNTIME_DIR), its own precompiled cache, and a home.
pub struct Space {
    pub tmp: TempDir,
}

impl Space {
    pub fn new(tag: &str) -> Space {
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

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    pub fn s(&self, rel: &str) -> String {
        self.path(rel).to_string_lossy().into_owned()
    }

    /// Copy a fixture's files into the workspace, owned by nobody.
    pub fn fixture(&self, name: &str) -> PathBuf {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["meta.erofs", "layer.zinfo", "layer.tar.gz", "expected.json"] {
            std::fs::copy(fixture(name).join(f), dir.join(f)).unwrap();
        }
        chown_tree(&dir, NOBODY, NOGROUP);
        dir
    }

    /// The environment of a run as `user`: a runtime directory and a cache of its own.
    pub fn env(&self, runtime_dir: &str) -> Vec<(String, String)> {
        vec![
            ("XDG_RUNTIME_DIR".into(), self.s(runtime_dir)),
            ("EROFS_WASM_CACHE_DIR".into(), self.s("cache")),
            ("HOME".into(), self.s("home")),
            ("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        ]
    }
}

/// Run `program args` as `user` (runuser), with `env`, under a deadline.
pub fn run_as(user: &str, env: &[(String, String)], program: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", user, "--", "env", "-i"]);
    for (k, v) in env {
        cmd.arg(format!("{k}={v}"));
    }
    cmd.arg(program).args(args);
    run_with_deadline(cmd, T)
}

pub fn run_with_deadline(mut cmd: Command, limit: Duration) -> Output {
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

pub fn host_as(user: &str, space: &Space, runtime_dir: &str, args: &[&str]) -> Output {
    run_as(user, &space.env(runtime_dir), &host_bin(), args)
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn ok(what: &str, o: &Output) {
    assert!(o.status.success(), "{what}: {}", text(o));
}

pub fn refused(what: &str, o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "{what}: should have been refused: {}",
        text(o)
    );
    assert_stderr_contains(o, needle);
}

pub fn mounted(path: &Path) -> bool {
    support::mounts_mentioning(&path.to_string_lossy())
        .iter()
        .any(|l| l.split(' ').nth(4) == Some(&*path.to_string_lossy()))
}

/// Unmounts a path lazily at the end whatever happened (a failing test leaves nothing).
pub struct Cleanup(pub Vec<PathBuf>);

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
pub struct Bystander(pub std::process::Child);

impl Bystander {
    pub fn start() -> Bystander {
        let child = Command::new("sleep")
            .arg("300")
            .uid(NOBODY)
            .gid(NOGROUP)
            .spawn()
            .unwrap();
        Bystander(child)
    }
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
    pub fn alive(&mut self) -> bool {
        matches!(self.0.try_wait(), Ok(None))
    }
}

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn mount_id(mountpoint: &Path) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(mountpoint.as_os_str().as_encoded_bytes())[..8])
}
