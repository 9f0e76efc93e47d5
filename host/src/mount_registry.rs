//! The registry of live mounts: where a mount server records its mount (in a private
//! state directory), how `umount` proves that a mount and a server are its own, how to
//! tell whether a path is mounted (and whether its FUSE server died), and unmounting
//! (umount2 as root, `fusermount3 -u` otherwise). Used by `mount` and `umount`.
//!
//! - [`private`]: the ownership and mode checks on the state directory, its files and
//!   the precompiled-component cache;
//! - [`mountinfo`]: what is mounted where, and by whom;
//! - [`process`]: which process a registered pid is;
//! - [`stats_file`]: the counters a tree server publishes for `stats`.

pub mod mountinfo;
pub mod private;
pub mod process;
pub mod stats_file;

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use self::mountinfo::MountEntry;
use self::private::DirRule;
pub use self::process::{is_zombie, process_alive, ProcessIdentity};

/// What a running server records about its mount, for `umount`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Registration {
    pub pid: u32,
    pub mountpoint: PathBuf,
    pub backend: String,
    /// `--backend loop`: the private FUSE mount that serves `device.img`.
    pub backing: Option<PathBuf>,
    /// Whole image: each layer's mount (and loop backing), top layer first, to detach
    /// if the server died; and the directory that holds them.
    #[serde(default)]
    pub layers: Vec<PathBuf>,
    #[serde(default)]
    pub layers_dir: Option<PathBuf>,
    /// The server, as `umount` must find it before it sends a signal (a registration
    /// without it is never signalled).
    #[serde(default)]
    pub server: Option<ProcessIdentity>,
    /// The mount at the mountpoint as it was made: `umount` unmounts only this one.
    #[serde(default)]
    pub mount: Option<MountEntry>,
}

impl Registration {
    /// A registration of this process's mount at `mountpoint`: the server's identity and
    /// the mount now on top there.
    pub fn of_self(mountpoint: &Path, backend: &str) -> Result<Registration> {
        Ok(Registration {
            pid: std::process::id(),
            mountpoint: mountpoint.to_path_buf(),
            backend: backend.to_string(),
            backing: None,
            layers: Vec::new(),
            layers_dir: None,
            server: Some(ProcessIdentity::of_self().context("reading our own /proc entry")?),
            mount: mountinfo::topmost(mountpoint),
        })
    }

    /// Every path the registration names for `umount` to clean up must be ours: inside
    /// the state directory, named after this mount, without `..`.
    fn check_paths(&self, state: &Path, id: &str) -> Result<()> {
        let paths = self
            .backing
            .iter()
            .chain(&self.layers)
            .chain(self.layers_dir.iter());
        for p in paths {
            let inside = p
                .strip_prefix(state)
                .ok()
                .and_then(|rest| rest.components().next())
                .is_some_and(|first| first.as_os_str().as_bytes().starts_with(id.as_bytes()));
            if !inside || p.components().any(|c| c == Component::ParentDir) {
                bail!(
                    "the registration names {}, which is not one of this mount's private paths under {}; refusing it",
                    p.display(),
                    state.display()
                );
            }
        }
        Ok(())
    }
}

/// `/run/erofs-wasm` for root; `$XDG_RUNTIME_DIR/erofs-wasm` or `/tmp/erofs-wasm-UID`
/// otherwise. Created 0700 on first use; refused unless it is a directory of ours with
/// mode 0700 (see `private`).
pub fn state_dir() -> Result<PathBuf> {
    let uid = private::euid();
    let dir = if uid == 0 && Path::new("/run").is_dir() {
        PathBuf::from("/run/erofs-wasm")
    } else if let Some(x) = crate::env::path("XDG_RUNTIME_DIR") {
        x.join("erofs-wasm")
    } else {
        PathBuf::from(format!("/tmp/erofs-wasm-{uid}"))
    };
    private::ensure_dir(&dir, DirRule::Private, "the state directory")?;
    Ok(dir)
}

/// The mountpoint as an absolute path, without touching it (a dead FUSE mount cannot be
/// stat'ed, so canonicalize would fail on exactly the paths umount must handle).
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let p = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()?.join(path)
    };
    // Fold "." and ".." textually.
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    Ok(out)
}

/// A short stable id for a mountpoint: names its registration and its private files.
pub fn mount_id(mountpoint: &Path) -> String {
    hex::encode(&Sha256::digest(mountpoint.as_os_str().as_bytes())[..8])
}

pub fn registration_path(mountpoint: &Path) -> Result<PathBuf> {
    Ok(state_dir()?.join(format!("{}.json", mount_id(mountpoint))))
}

/// The daemon's log (its stdout and stderr once it is serving).
pub fn log_path(mountpoint: &Path) -> Result<PathBuf> {
    Ok(state_dir()?.join(format!("{}.log", mount_id(mountpoint))))
}

/// The registration of `mountpoint`, if there is one. A planted one (a symlink, another
/// owner, loose mode, paths outside this mount's private ones) is an error; a damaged
/// one (a server killed mid-write) is ignored with a warning, so that `umount` of the
/// mount itself is not blocked.
pub fn read_registration(mountpoint: &Path) -> Result<Option<Registration>> {
    let path = registration_path(mountpoint)?;
    let Some(mut file) = private::open_own_file(&path, "the registration")? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let registration: Registration = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(
                "{}: unreadable registration ({e}); ignoring it",
                path.display()
            );
            return Ok(None);
        }
    };
    if registration.mountpoint != mountpoint {
        bail!(
            "{}: the registration is for {}, not {}; refusing it",
            path.display(),
            registration.mountpoint.display(),
            mountpoint.display()
        );
    }
    registration.check_paths(&state_dir()?, &mount_id(mountpoint))?;
    Ok(Some(registration))
}

/// A written registration: removed on drop, with the daemon's log if it stayed empty.
pub struct RegistrationGuard {
    path: PathBuf,
    log: PathBuf,
}

/// Record `registration` (atomically, 0600, in the state directory) for `umount`.
pub fn register(registration: &Registration) -> Result<RegistrationGuard> {
    register_in(&state_dir()?, registration)
}

fn register_in(state: &Path, registration: &Registration) -> Result<RegistrationGuard> {
    let id = mount_id(&registration.mountpoint);
    let path = state.join(format!("{id}.json"));
    let bytes = serde_json::to_vec(registration)?;
    private::write_own_file(&path, &bytes, "the registration")?;
    Ok(RegistrationGuard {
        path,
        log: state.join(format!("{id}.log")),
    })
}

impl Drop for RegistrationGuard {
    fn drop(&mut self) {
        remove_file_quietly(&self.path);
        // The daemon's log holds only warnings; an empty one is not worth keeping.
        if std::fs::symlink_metadata(&self.log).is_ok_and(|m| m.is_file() && m.len() == 0) {
            remove_file_quietly(&self.log);
        }
    }
}

/// The filesystem type mounted exactly at `path` (the visible mount), if any.
pub fn mounted_at(path: &Path) -> Option<String> {
    mountinfo::topmost(path).map(|e| e.fstype)
}

/// True when `path` is a FUSE mount whose server is gone ("Transport endpoint is not
/// connected").
pub fn is_dead_fuse_mount(path: &Path) -> bool {
    matches!(std::fs::metadata(path), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Refuse a mountpoint that cannot take a new mount, saying how to fix it.
pub fn check_mountpoint(mountpoint: &Path) -> Result<()> {
    if is_dead_fuse_mount(mountpoint) {
        bail!(
            "{}: a FUSE mount whose server died is still attached here; clear it with `erofs-host umount {}` (or `umount -l {}`)",
            mountpoint.display(),
            mountpoint.display(),
            mountpoint.display()
        );
    }
    let md = std::fs::metadata(mountpoint)
        .with_context(|| format!("{}: mountpoint", mountpoint.display()))?;
    if !md.is_dir() {
        bail!("{}: mountpoint is not a directory", mountpoint.display());
    }
    if let Some(fstype) = mounted_at(mountpoint) {
        bail!(
            "{}: already mounted ({fstype}); unmount it first (`erofs-host umount {}`)",
            mountpoint.display(),
            mountpoint.display()
        );
    }
    Ok(())
}

/// Best-effort cleanup after a mount is down: lazily detach `path` if something is still
/// mounted there, then remove the directory. Failures are logged, not returned: the
/// caller is already tearing down and has nothing better to do.
pub fn detach_and_remove_dir(dir: &Path) {
    if mounted_at(dir).is_some() || is_dead_fuse_mount(dir) {
        if let Err(e) = unmount_any(dir, true) {
            tracing::warn!("{}: cannot detach: {e}", dir.display());
        }
    }
    remove_quietly(dir, std::fs::remove_dir(dir));
}

/// Remove a file of ours, best effort: one already gone is fine, any other failure is
/// logged.
pub fn remove_file_quietly(path: &Path) {
    remove_quietly(path, std::fs::remove_file(path));
}

fn remove_quietly(path: &Path, result: std::io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!("{}: cannot remove: {e}", path.display()),
    }
}

/// umount2(2). `detach` unmounts lazily (MNT_DETACH). Needs root.
pub fn unmount(path: &Path, detach: bool) -> std::io::Result<()> {
    let c =
        CString::new(path.as_os_str().as_bytes()).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let flags = if detach { libc::MNT_DETACH } else { 0 };
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), flags) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unmount a mount of ours: umount2 as root; `fusermount3 -u` otherwise (the setuid
/// helper is the only way an unprivileged user takes a FUSE mount down, and it takes
/// down only the caller's own). A busy mount is `ErrorKind::ResourceBusy`.
pub fn unmount_any(path: &Path, lazy: bool) -> std::io::Result<()> {
    if private::euid() == 0 {
        return unmount(path, lazy);
    }
    let mut cmd = Command::new("fusermount3");
    cmd.arg("-u");
    if lazy {
        cmd.arg("-z");
    }
    let out = cmd
        .arg("--")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("running fusermount3 (apt-get install fuse3): {e}"),
            )
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let kind = if text.contains("busy") {
        std::io::ErrorKind::ResourceBusy
    } else {
        std::io::ErrorKind::Other
    };
    Err(std::io::Error::new(kind, format!("fusermount3 -u: {text}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(backing: Option<&str>, layers: &[&str]) -> Registration {
        Registration {
            pid: 1,
            mountpoint: PathBuf::from("/m"),
            backend: "fuse".into(),
            backing: backing.map(PathBuf::from),
            layers: layers.iter().map(PathBuf::from).collect(),
            layers_dir: None,
            server: None,
            mount: None,
        }
    }

    #[test]
    fn a_registration_goes_with_its_empty_log() {
        use std::os::unix::fs::PermissionsExt;
        let state = std::env::temp_dir().join(format!("erofs-reg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(&state).unwrap();
        let r = reg(None, &[]);
        let id = mount_id(&r.mountpoint);
        let (json, log) = (
            state.join(format!("{id}.json")),
            state.join(format!("{id}.log")),
        );
        for log_text in ["", "a warning\n"] {
            let guard = register_in(&state, &r).unwrap();
            std::fs::write(&log, log_text).unwrap();
            let md = std::fs::metadata(&json).unwrap();
            assert_eq!(md.permissions().mode() & 0o777, 0o600);
            drop(guard);
            assert!(!json.exists());
            // An empty log goes; one with something in it stays for the user to read.
            assert_eq!(log.exists(), !log_text.is_empty());
        }
        std::fs::remove_dir_all(&state).unwrap();
    }

    #[test]
    fn registered_paths_stay_inside_the_mount_own_ones() {
        let state = Path::new("/run/erofs-wasm");
        assert!(reg(
            Some("/run/erofs-wasm/abcd"),
            &["/run/erofs-wasm/abcd.layers/0"]
        )
        .check_paths(state, "abcd")
        .is_ok());
        for bad in [
            reg(Some("/etc"), &[]),
            reg(None, &["/run/erofs-wasm/other.layers/0"]),
            reg(None, &["/run/erofs-wasm/abcd.layers/../../../etc"]),
        ] {
            assert!(bad.check_paths(state, "abcd").is_err(), "{bad:?}");
        }
    }
}
