//! The registry of live mounts: where a mount server records its mount, how to tell
//! whether a path is mounted (and whether its FUSE server died), and the unmount syscall.
//! Used by the `mount` and `umount` commands.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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
}

/// `/run/erofs-wasm` for root; `$XDG_RUNTIME_DIR/erofs-wasm` or `/tmp/erofs-wasm-UID`
/// otherwise. Created 0700 on first use.
pub fn state_dir() -> Result<PathBuf> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let dir = if uid == 0 && Path::new("/run").is_dir() {
        PathBuf::from("/run/erofs-wasm")
    } else if let Some(x) = crate::env::path("XDG_RUNTIME_DIR") {
        x.join("erofs-wasm")
    } else {
        PathBuf::from(format!("/tmp/erofs-wasm-{uid}"))
    };
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("{}: cannot create the state directory", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).with_context(|| {
        format!(
            "{}: cannot make the state directory private (0700)",
            dir.display()
        )
    })?;
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
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
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

pub fn read_registration(mountpoint: &Path) -> Result<Option<Registration>> {
    let path = registration_path(mountpoint)?;
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(registration) => Ok(Some(registration)),
            // A damaged record (a server killed mid-write) must not block `umount`
            // of the mount itself: say so, and go on without it.
            Err(e) => {
                tracing::warn!(
                    "{}: unreadable registration ({e}); ignoring it",
                    path.display()
                );
                Ok(None)
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
}

/// The filesystem type mounted exactly at `path`, from /proc/self/mountinfo.
pub fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.as_os_str().as_bytes();
    let mut found = None;
    for line in info.lines() {
        // id parent major:minor root MOUNTPOINT options [optional...] - FSTYPE source super
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(mp) = fields.get(4) else { continue };
        if unescape(mp) == want {
            let dash = fields.iter().position(|f| *f == "-");
            // The last mount at a path is the visible one.
            found = dash.and_then(|d| fields.get(d + 1)).map(|s| s.to_string());
        }
    }
    found
}

/// mountinfo escapes space, tab, newline and backslash as \\ooo.
fn unescape(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 4]).unwrap_or("x"), 8)
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
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
    if mounted_at(dir).is_some() {
        if let Err(e) = unmount(dir, true) {
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

/// umount2(2). `detach` unmounts lazily (MNT_DETACH).
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

pub fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    unsafe { libc::kill(pid, 0) == 0 }
}
